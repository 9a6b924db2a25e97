"""The operator runs as its ServiceAccount under the shipped RBAC: a missing rule is named, a
rotated token is picked up without a restart, and built-in certificates work with that RBAC."""

from __future__ import annotations

import asyncio
import base64
import copy
from pathlib import Path
from typing import Any

import pytest

from capo_testkit import Harness, eventually, pod_ip
from capo_testkit.kube import Obj, path_for


def without_verb(docs: list[Obj], resource: str, verb: str) -> list[Obj]:
    """A copy of the RBAC in which no rule grants `verb` on `resource` (one rule loses a verb)."""
    out = copy.deepcopy(docs)
    removed = 0
    for doc in out:
        for rule in doc.get("rules") or []:
            if resource in rule.get("resources", []) and verb in rule.get("verbs", []):
                rule["verbs"] = [v for v in rule["verbs"] if v != verb]
                removed += 1
        if doc.get("rules"):
            doc["rules"] = [r for r in doc["rules"] if r.get("verbs")]  # RBAC refuses a rule with none
    assert removed, f"no rule grants {verb} {resource}"
    return out


async def readyz(op: Any) -> tuple[int, str]:
    """/readyz once the probe server answers (it starts after the permission check)."""

    async def probe() -> tuple[int, str]:
        result: tuple[int, str] = await op._get(op.health_port, "/readyz")
        return result

    answer: tuple[int, str] = await eventually(probe, lambda _: True, within=30, what="/readyz to answer")
    return answer


async def webhook_listening(op: Any) -> None:
    async def connects() -> bool:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", op.webhook_port)
        except OSError:
            return False
        writer.close()
        return True

    await eventually(connects, bool, within=30, what="the webhook server to listen")


async def log_contains(op: Any, *needles: str, within: float = 30) -> str:
    async def text() -> str:
        return str(op.log_text())

    found: str = await eventually(
        text, lambda t: all(n in t for n in needles), within=within, what=f"log lines {needles}"
    )
    return found


async def test_a_missing_critical_rule_is_named_keeps_the_replica_unready_and_its_403_is_loud(
    capo: Harness,
) -> None:
    c = capo.cluster
    await capo.set_rbac(without_verb(capo.rbac, "reservedips", "create"))
    op = capo.add_operator()
    op.start()
    await log_contains(op, "missing permission: critical:", "create reservedips.capo.io", "caches synced")
    await webhook_listening(op)  # started in full, only unready
    status, why = await readyz(op)
    assert status == 503 and "create reservedips.capo.io" in why, why

    # The webhook is still called (the test proxy ignores readiness): the IP goes to Calico, its
    # record cannot be created, and the refusal is logged with the server's own words.
    ns = await c.create_namespace("apps")
    ip = pod_ip(await c.create_pod(ns, "redis-0"))
    await c.delete_pod(ns, "redis-0")
    await eventually(c.reserved_ips, lambda ips: ip in ips, within=10, what=f"{ip} in the IPReservation")
    text = await log_contains(op, "forbidden by RBAC: POST /apis/capo.io/v1/reservedips")
    assert 'cannot create resource "reservedips" in API group "capo.io"' in text
    assert "system:serviceaccount:" in text
    m = await op.metrics()
    assert m.value("capo_api_forbidden_total", verb="create", resource="reservedips") >= 1
    assert m.value("capo_missing_permissions", critical="true") == 1
    assert await c.records() == {}


async def test_a_missing_minor_rule_is_named_but_the_replica_serves(capo: Harness) -> None:
    c = capo.cluster
    docs = without_verb(without_verb(capo.rbac, "events", "create"), "events", "patch")
    await capo.set_rbac(docs)
    [op] = await capo.start_operators(1)  # ready: Events are not worth refusing traffic for
    assert "is not allowed to create events (cluster-wide)" in op.log_text()
    ns = await c.create_namespace("apps")
    ip = pod_ip(await c.create_pod(ns, "redis-0"))
    await c.delete_pod(ns, "redis-0")
    await capo.wait_reserved(ip)
    await log_contains(op, "forbidden by RBAC: POST /api/v1/namespaces/", 'cannot create resource "events"')
    m = await op.metrics()
    assert m.value("capo_missing_permissions", critical="false") >= 1
    assert m.value("capo_missing_permissions", critical="true") == 0


@pytest.mark.emulator_only
@pytest.mark.timeout(120)
async def test_a_rotated_token_is_used_after_the_old_one_expires_without_a_restart(capo: Harness) -> None:
    """The kubelet rewrites the projected token and the old one expires: the operator's client
    (shared by its informers) retries with the new token after its 401, and the pod watch, opened
    again after the server dropped it, still sees what only a watch shows."""
    c = capo.cluster
    [op] = await capo.start_operators(1)
    ns = await c.create_namespace("apps")
    ips = [pod_ip(await c.create_pod(ns, f"redis-{i}")) for i in range(3)]

    assert await c.control.expire_tokens(c.operator_namespace, "capo-operator") >= 1
    await capo.rotate_token()

    await c.delete_pod(ns, "redis-0")  # the operator's own client: 401, reload, retry
    await capo.wait_reserved(ips[0])
    # The pod informer's watch is dropped by the server and opened again: with the new token.
    await c.control.add_fault(path=r"^/api/v1/pods", drop_watch=True, times=1)
    await asyncio.sleep(1)
    await c.kubelet_evict(ns, "redis-1")  # seen only through the pod watch
    await capo.wait_reserved(ips[1], within=20)
    text = await log_contains(op, "retrying with reloaded ones")
    assert (await readyz(op))[0] == 200
    assert "system:anonymous" not in text


@pytest.mark.emulator_only
async def test_builtin_certificates_work_under_the_shipped_rbac(capo: Harness, tmp_path: Path) -> None:
    """`--certs builtin`: the operator creates the shared Secret and patches the caBundle of the
    shipped (Service-based) webhook configuration, with nothing but the shipped RBAC."""
    c = capo.cluster
    shipped = c.shipped_webhook_configuration()
    shipped["metadata"] = {"name": c.webhook_config_name}
    path = path_for("admissionregistration.k8s.io", "v1", "validatingwebhookconfigurations")
    await c.kube.delete(f"{path}/{c.webhook_config_name}", missing_ok=True)
    await c.kube.create(path, shipped)
    service = shipped["webhooks"][0]["clientConfig"]["service"]
    await c.control.set_service(
        service["namespace"],
        service["name"],
        service.get("port", 443),
        f"https://127.0.0.1:{capo.proxy.port}",
    )
    certs = tmp_path / "builtin-certs"
    op = capo.add_operator(
        args=[
            "--certs", "builtin",
            "--tls-cert-file", str(certs / "tls.crt"),
            "--tls-key-file", str(certs / "tls.key"),
            "--webhook-config-name", c.webhook_config_name,
            "--webhook-service", service["name"],
        ]
    )  # fmt: skip
    op.start()
    await op.wait_ready(within=60)
    await capo.wait_leader()
    config = await c.kube.get(f"{path}/{c.webhook_config_name}")
    bundle = config["webhooks"][0]["clientConfig"].get("caBundle", "")
    assert "BEGIN CERTIFICATE" in base64.b64decode(bundle).decode()
    secret = await c.kube.get(path_for("", "v1", "secrets", c.operator_namespace, "capo-webhook-tls"))
    assert {"tls.crt", "tls.key"} <= set(secret["data"])

    ns = await c.create_namespace("apps")
    ip = pod_ip(await c.create_pod(ns, "redis-0"))
    await c.delete_pod(ns, "redis-0")  # reviewed over TLS verified with the patched caBundle
    await capo.wait_reserved(ip)
    assert "forbidden" not in op.log_text()
