"""Admission as kube-apiserver v1 does it, and the pod deletion/eviction paths the operator relies on."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from kube_emulator.testing import Emulator

from .conftest import Http, pod
from .webhook_server import WebhookServer, make_pki, webhook_configuration

VWC = "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations"
NS = "tenant"
PODS = f"/api/v1/namespaces/{NS}/pods"


@pytest.fixture
async def webhook() -> AsyncIterator[WebhookServer]:
    server = WebhookServer(make_pki(["hook.capo-system.svc"]))
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def tenant(http: Http) -> str:
    s, _, _ = await http.post(
        "/api/v1/namespaces", {"metadata": {"name": NS, "labels": {"ip-reserve": "enabled"}}}
    )
    assert s == 201
    return NS


async def install(http: Http, webhook: WebhookServer, **kw: Any) -> None:
    config = webhook_configuration(
        "test", {"url": webhook.url + "/reserve", "caBundle": webhook.pki.ca_bundle}, **kw
    )
    s, body, _ = await http.post(VWC, config)
    assert s == 201, body


async def running_pod(
    http: Http, name: str, labels: dict[str, str] | None = None, ns: str = NS
) -> dict[str, Any]:
    s, body, _ = await http.post(f"/api/v1/namespaces/{ns}/pods", pod(name, labels))
    assert s == 201, body
    for _ in range(100):
        _, got, _ = await http.get(f"/api/v1/namespaces/{ns}/pods/{name}")
        if got["status"].get("phase") == "Running":
            return dict(got)
        await asyncio.sleep(0.02)
    raise AssertionError("pod did not start")


async def gone(http: Http, path: str, seconds: float = 5.0) -> bool:
    for _ in range(int(seconds / 0.05)):
        s, _, _ = await http.get(path)
        if s == 404:
            return True
        await asyncio.sleep(0.05)
    return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def test_graceful_delete_admits_the_request_and_both_writes_of_the_final_delete(
    http: Http, webhook: WebhookServer, tenant: str
) -> None:
    await install(http, webhook)
    p = await running_pod(http, "db-0")
    s, body, _ = await http.delete(f"{PODS}/db-0")
    assert (
        s == 200
        and body["metadata"]["deletionTimestamp"]
        and body["metadata"]["deletionGracePeriodSeconds"] == 30
    )
    assert await gone(http, f"{PODS}/db-0")
    deletes = webhook.requests("DELETE")
    # The kubelet's final delete (grace 0) shortens the grace period (one write) and then removes
    # the pod (a second write): kube-apiserver admits each write, so the webhook hears it twice.
    node = f"system:node:{p['spec']['nodeName']}"
    assert [r["userInfo"]["username"] for r in deletes] == ["kube-emulator-admin", node, node]
    first = deletes[0]
    assert (
        first["name"] == "db-0"
        and first["namespace"] == NS
        and first["kind"] == {"group": "", "version": "v1", "kind": "Pod"}
    )
    assert (
        first["resource"] == {"group": "", "version": "v1", "resource": "pods"} and "subResource" not in first
    )
    assert first["oldObject"]["status"]["podIPs"] == p["status"]["podIPs"] and first["object"] is None
    assert first["options"]["kind"] == "DeleteOptions" and first["dryRun"] is False
    assert first["options"]["gracePeriodSeconds"] == 30
    assert deletes[1]["options"]["gracePeriodSeconds"] == 0
    assert deletes[1]["oldObject"]["metadata"]["deletionGracePeriodSeconds"] == 30
    assert deletes[2]["oldObject"]["metadata"]["deletionGracePeriodSeconds"] == 0


async def test_every_pod_delete_is_two_writes_each_admitted(
    http: Http, webhook: WebhookServer, tenant: str
) -> None:
    # kube-apiserver's pod strategy always deletes gracefully (CheckGracefulDelete returns true, with
    # grace 0 for an unscheduled pod): the first write sets deletionTimestamp, the second removes the
    # pod, and each runs the DELETE through admission. Other resources are removed in one write.
    await install(http, webhook)
    await http.post(PODS, pod("pending", schedulerName="elsewhere"))
    s, _, _ = await http.delete(f"{PODS}/pending")
    assert s == 200 and await gone(http, f"{PODS}/pending", 0.1)
    await running_pod(http, "now")
    s, _, _ = await http.delete(f"{PODS}/now?gracePeriodSeconds=0")
    assert s == 200 and await gone(http, f"{PODS}/now", 0.1)
    await asyncio.sleep(0.5)  # a kubelet's late final delete would show up here
    deletes = webhook.requests("DELETE")
    assert [r["name"] for r in deletes] == ["pending", "pending", "now", "now"]
    assert [bool(r["oldObject"]["metadata"].get("deletionTimestamp")) for r in deletes] == [
        False,
        True,
        False,
        True,
    ]
    assert all(r["options"]["gracePeriodSeconds"] == 0 for r in deletes)


async def test_a_pod_held_by_a_finalizer_is_marked_once_and_every_delete_is_admitted(
    http: Http, webhook: WebhookServer, tenant: str
) -> None:
    await install(http, webhook)
    held = pod("held", schedulerName="elsewhere")
    held["metadata"]["finalizers"] = ["example.com/keep"]
    await http.post(PODS, held)
    s, marked, _ = await http.delete(f"{PODS}/held")
    assert s == 200 and marked["metadata"]["deletionTimestamp"]
    # Already being deleted: kube-apiserver admits the request again but writes nothing.
    s, again, _ = await http.delete(f"{PODS}/held")
    assert s == 200 and again["metadata"]["resourceVersion"] == marked["metadata"]["resourceVersion"]
    assert [r["name"] for r in webhook.requests("DELETE")] == ["held", "held"]
    # The last finalizer removed: the pod goes, without another admission of a DELETE.
    s, _, _ = await http.patch(f"{PODS}/held", {"metadata": {"finalizers": None}})
    assert s == 200 and await gone(http, f"{PODS}/held", 1.0)
    assert len(webhook.requests("DELETE")) == 2


async def test_a_grace_zero_pod_delete_is_watched_as_modified_then_deleted(
    http: Http, emu: Emulator, tenant: str
) -> None:
    await running_pod(http, "seen")
    _, listed, _ = await http.get(PODS)
    rv = listed["metadata"]["resourceVersion"]
    await emu.control.set_write_latency(0.05)
    started = time.monotonic()
    s, _, _ = await http.delete(f"{PODS}/seen?gracePeriodSeconds=0")
    elapsed = time.monotonic() - started
    assert s == 200
    seen = await http.watch(f"{PODS}?watch=1&resourceVersion={rv}&timeoutSeconds=1", limit=3)
    events = [
        (e["type"], bool(e["object"]["metadata"].get("deletionTimestamp")))
        for e in seen
        if e["object"]["metadata"].get("name") == "seen"
    ]
    assert events == [("MODIFIED", True), ("DELETED", True)]
    assert elapsed >= 2 * 0.05  # two writes, each paying the commit latency


async def test_eviction(http: Http, webhook: WebhookServer, tenant: str) -> None:
    await install(http, webhook)
    p = await running_pod(http, "ev")
    eviction = {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": "ev", "namespace": NS}}
    s, body, _ = await http.post(f"{PODS}/ev/eviction", eviction)
    assert s == 201 and body["status"] == "Success"
    assert await gone(http, f"{PODS}/ev")
    reqs = webhook.requests()
    assert [(r["operation"], r.get("subResource"), r["userInfo"]["username"]) for r in reqs] == [
        ("CREATE", "eviction", "kube-emulator-admin"),
        # The kubelet's final delete: the write shortening the grace period to 0, then the removal.
        ("DELETE", None, f"system:node:{p['spec']['nodeName']}"),
        ("DELETE", None, f"system:node:{p['spec']['nodeName']}"),
    ]
    ev = reqs[0]
    assert ev["kind"] == {"group": "policy", "version": "v1", "kind": "Eviction"}
    assert ev["resource"] == {"group": "", "version": "v1", "resource": "pods"} and ev["name"] == "ev"
    assert (
        ev["object"]["kind"] == "Eviction"
        and ev["oldObject"] is None
        and ev["options"]["kind"] == "CreateOptions"
    )


async def test_eviction_blocked_by_pdb(http: Http, webhook: WebhookServer, tenant: str) -> None:
    await install(http, webhook)
    await running_pod(http, "guarded", {"app": "db"})
    pdb_path = f"/apis/policy/v1/namespaces/{NS}/poddisruptionbudgets"
    await http.post(
        pdb_path,
        {"metadata": {"name": "db"}, "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "db"}}}},
    )
    await http.patch(
        f"{pdb_path}/db/status",
        {"status": {"disruptionsAllowed": 0, "currentHealthy": 1, "desiredHealthy": 1}},
    )
    s, body, _ = await http.post(
        f"{PODS}/guarded/eviction",
        {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": "guarded"}},
    )
    assert s == 429 and body["reason"] == "TooManyRequests"
    assert body["details"]["causes"][0]["reason"] == "DisruptionBudget"
    s, still, _ = await http.get(f"{PODS}/guarded")
    assert s == 200 and "deletionTimestamp" not in still["metadata"]
    assert [r.get("subResource") for r in webhook.requests()] == ["eviction"]  # admission ran before the PDB


async def test_dry_run(http: Http, webhook: WebhookServer, tenant: str) -> None:
    await install(http, webhook)
    await running_pod(http, "dry")
    s, _, _ = await http.delete(f"{PODS}/dry?dryRun=All")
    assert s == 200
    s, _, _ = await http.post(
        f"{PODS}/dry/eviction",
        {
            "apiVersion": "policy/v1",
            "kind": "Eviction",
            "metadata": {"name": "dry"},
            "deleteOptions": {"dryRun": ["All"]},
        },
    )
    assert s == 201
    s, _, _ = await http.post(
        f"{PODS}/dry/eviction?dryRun=All",
        {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": "dry"}},
    )
    assert s == 201
    await asyncio.sleep(0.3)
    s, still, _ = await http.get(f"{PODS}/dry")
    assert s == 200 and "deletionTimestamp" not in still["metadata"]
    reqs = webhook.requests()
    assert [r["dryRun"] for r in reqs] == [True, True, True]
    assert reqs[1]["object"]["deleteOptions"] == {"dryRun": ["All"]}


async def test_dry_run_rejected_by_webhooks_with_side_effects(
    http: Http, webhook: WebhookServer, tenant: str
) -> None:
    await install(http, webhook, side_effects="Unknown")
    await running_pod(http, "se")
    s, body, _ = await http.delete(f"{PODS}/se?dryRun=All")
    assert s == 400 and "does not support dry run" in body["message"]
    assert webhook.requests() == []


async def test_denial_and_warnings(http: Http, webhook: WebhookServer, tenant: str) -> None:
    await install(http, webhook)
    await running_pod(http, "keep")
    webhook.deny, webhook.message, webhook.warnings = True, "not today", ["careful"]
    s, body, headers = await http.delete(f"{PODS}/keep")
    assert s == 403 and body["message"] == 'admission webhook "hook.test.io" denied the request: not today'
    assert headers.getall("Warning") == ['299 - "careful"']
    webhook.deny = False
    s, _, headers = await http.delete(f"{PODS}/keep")
    assert s == 200 and headers.getall("Warning")[0] == '299 - "careful"'


async def test_kubelet_retries_a_refused_final_delete(
    http: Http, webhook: WebhookServer, tenant: str
) -> None:
    await install(http, webhook)
    await running_pod(http, "stuck")
    s, _, _ = await http.delete(f"{PODS}/stuck")
    assert s == 200
    webhook.deny = True  # the user's delete passed; now refuse the kubelet's
    await asyncio.sleep(0.4)
    s, still, _ = await http.get(f"{PODS}/stuck")
    assert s == 200 and still["metadata"]["deletionTimestamp"]
    webhook.deny = False
    assert await gone(http, f"{PODS}/stuck", 3)
    kubelet_calls = [
        r for r in webhook.requests("DELETE") if r["userInfo"]["username"].startswith("system:node:")
    ]
    assert len(kubelet_calls) >= 2


@pytest.mark.parametrize("policy", ["Ignore", "Fail"])
async def test_unreachable_webhook(http: Http, emu: Emulator, tenant: str, policy: str) -> None:
    config = webhook_configuration(
        "down", {"url": f"https://127.0.0.1:{free_port()}/x"}, failure_policy=policy
    )
    await http.post(VWC, config)
    await http.post(PODS, pod("p", schedulerName="none"))
    s, body, _ = await http.delete(f"{PODS}/p")
    if policy == "Ignore":
        assert s == 200
    else:
        assert s == 500 and body["reason"] == "InternalError"
        assert 'failed calling webhook "hook.test.io"' in body["message"]
    log = await emu.control.admission_log()
    assert log[-1]["outcome"] == ("ignored" if policy == "Ignore" else "error")


async def test_webhook_timeout(http: Http, webhook: WebhookServer, tenant: str) -> None:
    await install(http, webhook, timeout=1)
    webhook.delay = 1.5
    await http.post(PODS, pod("slow", schedulerName="none"))
    s, body, _ = await http.delete(f"{PODS}/slow")
    assert s == 500 and "context deadline exceeded" in body["message"]


async def test_webhook_fault_injection(
    http: Http, emu: Emulator, webhook: WebhookServer, tenant: str
) -> None:
    await install(http, webhook)
    await http.post(PODS, pod("f", schedulerName="none"))
    fault = await emu.control.add_fault("webhook", webhook="hook.test.io", status=0, times=1)
    assert fault > 0
    s, body, _ = await http.delete(f"{PODS}/f")
    assert s == 500 and "connection refused" in body["message"]
    s, _, _ = await http.delete(f"{PODS}/f")  # the fault was used up
    assert s == 200


async def test_wrong_ca_bundle_fails(http: Http, webhook: WebhookServer, tenant: str) -> None:
    other = make_pki(["other"])
    config = webhook_configuration("wrong", {"url": webhook.url + "/x", "caBundle": other.ca_bundle})
    await http.post(VWC, config)
    await http.post(PODS, pod("tls", schedulerName="none"))
    s, body, _ = await http.delete(f"{PODS}/tls")
    assert s == 500 and "tls" in body["message"] and "certificate" in body["message"]
    assert webhook.requests() == []


async def test_service_client_config_checks_service_hostname(
    http: Http, emu: Emulator, webhook: WebhookServer, tenant: str
) -> None:
    await emu.control.set_service("capo-system", "hook", 443, webhook.url)
    svc = {
        "service": {"namespace": "capo-system", "name": "hook", "path": "/reserve", "port": 443},
        "caBundle": webhook.pki.ca_bundle,
    }
    await http.post(VWC, webhook_configuration("svc", svc))
    await http.post(PODS, pod("a", schedulerName="none"))
    s, _, _ = await http.delete(f"{PODS}/a")
    assert s == 200 and len(webhook.requests()) == 2  # a pod delete is two admitted writes
    # The certificate does not name "wrong.capo-system.svc": the call fails although the URL is the same.
    await emu.control.set_service("capo-system", "wrong", 443, webhook.url)
    bad = webhook_configuration(
        "svc2", {**svc, "service": {**svc["service"], "name": "wrong"}}, hook_name="hook2.test.io"
    )
    await http.post(VWC, bad)
    await http.post(PODS, pod("b", schedulerName="none"))
    s, body, _ = await http.delete(f"{PODS}/b")
    assert s == 500 and "hook2.test.io" in body["message"]


async def test_namespace_selector(http: Http, webhook: WebhookServer, tenant: str) -> None:
    selector = {
        "matchExpressions": [
            {"key": "ip-reserve", "operator": "In", "values": ["enabled", "enable"]},
            {
                "key": "kubernetes.io/metadata.name",
                "operator": "NotIn",
                "values": ["kube-system", "capo-system"],
            },
        ]
    }
    await install(http, webhook, namespace_selector=selector)
    await http.post("/api/v1/namespaces", {"metadata": {"name": "plain"}})
    await http.post(PODS, pod("in", schedulerName="none"))
    await http.post("/api/v1/namespaces/plain/pods", pod("out", schedulerName="none"))
    await http.post("/api/v1/namespaces/kube-system/pods", pod("sys", schedulerName="none"))
    await http.delete(f"{PODS}/in")
    await http.delete("/api/v1/namespaces/plain/pods/out")
    await http.delete("/api/v1/namespaces/kube-system/pods/sys")
    assert [r["name"] for r in webhook.requests()] == ["in", "in"]


async def test_object_selector_never_matches_an_eviction(
    http: Http, webhook: WebhookServer, tenant: str
) -> None:
    await install(
        http,
        webhook,
        object_selector={"matchExpressions": [{"key": "app", "operator": "In", "values": ["db"]}]},
    )
    p = await running_pod(http, "labelled", {"app": "db"})
    s, _, _ = await http.post(
        f"{PODS}/labelled/eviction",
        {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": "labelled"}},
    )
    assert s == 201 and await gone(http, f"{PODS}/labelled")
    reqs = webhook.requests()
    # Only the kubelet's DELETE matched (the old object has the label); the eviction did not.
    assert [(r["operation"], r["userInfo"]["username"]) for r in reqs] == [
        ("DELETE", f"system:node:{p['spec']['nodeName']}")
    ] * 2


async def test_rule_matching_with_wildcards(http: Http, webhook: WebhookServer, tenant: str) -> None:
    rules = [
        {
            "apiGroups": ["*"],
            "apiVersions": ["*"],
            "operations": ["UPDATE"],
            "resources": ["pods/*"],
            "scope": "Namespaced",
        }
    ]
    await install(http, webhook, rules=rules)
    await http.post(PODS, pod("r", schedulerName="none"))
    await http.patch(f"{PODS}/r", {"metadata": {"labels": {"a": "b"}}})  # "pods/*" matches pods itself too
    await http.patch(f"{PODS}/r/status", {"status": {"phase": "Pending", "message": "x"}})
    assert [(r["operation"], r.get("subResource")) for r in webhook.requests()] == [
        ("UPDATE", None),
        ("UPDATE", "status"),
    ]
    await http.request("DELETE", VWC + "/test")
    await install(http, webhook, rules=[{**rules[0], "resources": ["*"]}])
    await http.patch(f"{PODS}/r/status", {"status": {"phase": "Pending", "message": "y"}})
    await http.patch(f"{PODS}/r", {"metadata": {"labels": {"a": "d"}}})
    assert [(r["operation"], r.get("subResource")) for r in webhook.requests()][2:] == [("UPDATE", None)]


async def test_delete_collection_calls_admission_per_pod_without_name(
    http: Http, webhook: WebhookServer, tenant: str
) -> None:
    await install(http, webhook)
    for name in ("c1", "c2", "c3"):
        await http.post(PODS, pod(name, {"grp": "x" if name != "c3" else "y"}, schedulerName="none"))
    s, body, _ = await http.request("DELETE", f"{PODS}?labelSelector=grp%3Dx")
    assert s == 200 and body["kind"] == "PodList" and len(body["items"]) == 2
    reqs = webhook.requests("DELETE")
    assert len(reqs) == 4 and all("name" not in r for r in reqs)  # two admitted writes per pod
    assert sorted(r["oldObject"]["metadata"]["name"] for r in reqs) == ["c1", "c1", "c2", "c2"]
    s, _, _ = await http.get(f"{PODS}/c3")
    assert s == 200


async def test_namespace_deletion_deletes_pods_through_admission(
    http: Http, webhook: WebhookServer, tenant: str
) -> None:
    await install(http, webhook)
    await running_pod(http, "n1")
    s, ns, _ = await http.delete(f"/api/v1/namespaces/{NS}")
    assert s == 200 and ns["status"]["phase"] == "Terminating"
    assert await gone(http, f"/api/v1/namespaces/{NS}")
    users = [(r["userInfo"]["username"], r.get("name")) for r in webhook.requests("DELETE")]
    assert users[0] == ("system:serviceaccount:kube-system:namespace-controller", None)
    assert users[1][0].startswith("system:node:")


async def test_webhook_connections_are_kept_alive_and_reused(
    http: Http, emu: Emulator, webhook: WebhookServer, tenant: str
) -> None:
    """kube-apiserver caches one client per clientConfig and reuses its keep-alive connections."""
    await install(http, webhook)
    for i in range(5):
        await http.post(PODS, pod(f"k{i}", schedulerName="none"))
        s, _, _ = await http.delete(f"{PODS}/k{i}")
        assert s == 200
    # Two calls per pod delete (two admitted writes), all on one connection.
    assert len(webhook.peers) == 10 and len(set(webhook.peers)) == 1
    # Concurrent calls open connections side by side (no limit), then those stay pooled for reuse.
    names = [f"c{i}" for i in range(6)]
    for name in names:
        await http.post(PODS, pod(name, schedulerName="none"))
    webhook.delay = 0.2
    results = await asyncio.gather(*(http.delete(f"{PODS}/{name}") for name in names))
    assert [s for s, _, _ in results] == [200] * 6
    burst = set(webhook.peers[10:])
    assert len(burst) > 1
    webhook.delay = 0.0
    await http.post(PODS, pod("after", schedulerName="none"))
    s, _, _ = await http.delete(f"{PODS}/after")
    assert s == 200 and webhook.peers[-1] in burst | set(webhook.peers[:10])
    assert emu.cluster.admission.clients == 1


async def test_webhook_client_changes_with_its_ca_bundle_and_survives_a_restart(
    http: Http, emu: Emulator, tenant: str
) -> None:
    server = WebhookServer(make_pki(["hook.capo-system.svc"]))
    await server.start()
    try:
        await install(http, server)
        await http.post(PODS, pod("r1", schedulerName="none"))
        assert (await http.delete(f"{PODS}/r1"))[0] == 200
        # The webhook restarts on the same port with a new certificate: its pooled connection is gone,
        # and the old caBundle no longer verifies it, as on a real server.
        await server.stop()
        server.pki = make_pki(["hook.capo-system.svc"])
        await server.start()
        await http.post(PODS, pod("r2", schedulerName="none"))
        s, body, _ = await http.delete(f"{PODS}/r2")
        assert s == 500 and "certificate" in body["message"]
        # A new caBundle is a new client: a new connection verified against it.
        s, config, _ = await http.get(f"{VWC}/test")
        config["webhooks"][0]["clientConfig"]["caBundle"] = server.pki.ca_bundle
        assert (await http.request("PUT", f"{VWC}/test", config))[0] == 200
        s, _, _ = await http.delete(f"{PODS}/r2")
        assert s == 200 and len(server.peers) == 4 and server.peers[0] != server.peers[-1]
        assert emu.cluster.admission.clients == 2
    finally:
        await server.stop()
