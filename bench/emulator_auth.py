"""Emulator authorization benchmark: what RBAC costs per request, against system:masters in the same run.

The operator's own RBAC (Roles, ClusterRoles and bindings of manifests/install.yaml) is loaded into an
in-process emulator. Measured:
- ``authorize``: one authorization decision for the operator's ServiceAccount, over a mix of the
  requests it makes (cached rules), and the same decisions for a ``system:masters`` user (baseline);
- ``compile``: the first decision after an RBAC object changed (the cached rules are rebuilt);
- ``https get``: a whole GET of one pod over HTTPS, as the admin (client certificate, masters) and
  as the operator (ServiceAccount bearer token, RBAC), sequential on one keep-alive connection.

    python bench/emulator_auth.py [--calls 20000] [--gets 400] [--runs 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kube_emulator.auth import service_account_user
from kube_emulator.context import UserInfo
from kube_emulator.requestinfo import RequestInfo, parse
from kube_emulator.testing import Emulator
from kube_emulator.tls import client_context

ROOT = Path(__file__).resolve().parent.parent
RBAC_KINDS = {
    "ServiceAccount": "/api/v1/namespaces/{ns}/serviceaccounts",
    "Role": "/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/roles",
    "RoleBinding": "/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings",
    "ClusterRole": "/apis/rbac.authorization.k8s.io/v1/clusterroles",
    "ClusterRoleBinding": "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
}
# The requests the operator makes, as the authorizer sees them.
MIX = [
    ("GET", "/api/v1/pods", {"watch": "true"}),
    ("GET", "/api/v1/namespaces/tenant/pods/web-0", {}),
    ("PATCH", "/apis/crd.projectcalico.org/v1/ipreservations/capo-reserved-ips", {}),
    ("POST", "/apis/capo.io/v1/reservedips", {}),
    ("POST", "/api/v1/namespaces/tenant/events", {}),
    ("PUT", "/apis/coordination.k8s.io/v1/namespaces/capo-system/leases/capo", {}),
    ("GET", "/apis/apps/v1", {}),
    ("DELETE", "/api/v1/namespaces/tenant/secrets/x", {}),  # refused: the worst case, every rule tried
]


async def load_operator_rbac(emu: Emulator, session: aiohttp.ClientSession) -> str:
    ctx = client_context(emu.server.pki.ca_pem, emu.server.pki.admin)
    account = ""
    async with session.post(
        emu.url + "/api/v1/namespaces", json={"metadata": {"name": "capo-system"}}, ssl=ctx
    ):
        pass
    for doc in yaml.safe_load_all((ROOT / "manifests" / "install.yaml").read_text()):
        if not doc or doc.get("kind") not in RBAC_KINDS:
            continue
        path = RBAC_KINDS[doc["kind"]].format(ns=doc["metadata"].get("namespace", ""))
        async with session.post(emu.url + path, json=doc, ssl=ctx) as resp:
            assert resp.status == 201, await resp.text()
        if doc["kind"] == "ServiceAccount":
            account = doc["metadata"]["name"]
    return account


def time_decisions(emu: Emulator, user: UserInfo, infos: list[RequestInfo], calls: int) -> float:
    """Microseconds per decision."""
    authorize = emu.cluster.auth.authorizer.authorize
    started = time.perf_counter()
    for i in range(calls):
        authorize(user, infos[i % len(infos)])
    return (time.perf_counter() - started) / calls * 1e6


def time_compile(emu: Emulator, user: UserInfo, info: RequestInfo, times: int = 200) -> float:
    authorizer = emu.cluster.auth.authorizer
    samples = []
    for _ in range(times):
        authorizer._cache.clear()  # what any RBAC write does
        started = time.perf_counter()
        authorizer.authorize(user, info)
        samples.append(time.perf_counter() - started)
    return statistics.median(samples) * 1e6


async def time_gets(
    session: aiohttp.ClientSession, url: str, ctx: Any, headers: dict[str, str], gets: int
) -> float:
    """Median milliseconds of one GET."""
    samples = []
    for _ in range(gets):
        started = time.perf_counter()
        async with session.get(url, ssl=ctx, headers=headers) as resp:
            await resp.read()
            assert resp.status == 200, resp.status
        samples.append(time.perf_counter() - started)
    return statistics.median(samples) * 1000


async def main(calls: int, gets: int, runs: int) -> dict[str, Any]:
    async with Emulator(kubelet_delay=0.05) as emu, aiohttp.ClientSession() as session:
        account = await load_operator_rbac(emu, session)
        operator = service_account_user("capo-system", account)
        masters = UserInfo("kube-emulator-admin", ("system:masters", "system:authenticated"))
        infos = [parse(m, p, q) for m, p, q in MIX]
        rules = len(emu.cluster.auth.authorizer._compile(operator, "tenant")[0])

        admin_ctx = client_context(emu.server.pki.ca_pem, emu.server.pki.admin)
        pod = {"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "x"}]}}
        async with session.post(emu.url + "/api/v1/namespaces/default/pods", json=pod, ssl=admin_ctx):
            pass
        token_path = f"/api/v1/namespaces/capo-system/serviceaccounts/{account}/token"
        async with session.post(emu.url + token_path, json={}, ssl=admin_ctx) as resp:
            token = (await resp.json())["status"]["token"]
        plain_ctx = client_context(emu.server.pki.ca_pem)
        pod_url = emu.url + "/api/v1/namespaces/default/pods/p"

        results: dict[str, list[float]] = {k: [] for k in ("masters_us", "operator_us", "compile_us")}
        results.update({"get_admin_ms": [], "get_operator_ms": []})
        for _ in range(runs):
            results["masters_us"].append(time_decisions(emu, masters, infos, calls))
            results["operator_us"].append(time_decisions(emu, operator, infos, calls))
            results["compile_us"].append(time_compile(emu, operator, infos[0]))
            results["get_admin_ms"].append(await time_gets(session, pod_url, admin_ctx, {}, gets))
            auth = {"Authorization": f"Bearer {token}"}
            results["get_operator_ms"].append(await time_gets(session, pod_url, plain_ctx, auth, gets))
    medians = {k: round(statistics.median(v), 3) for k, v in results.items()}
    return {
        "calls": calls,
        "gets": gets,
        "runs": runs,
        "operator_rules_in_tenant": rules,
        "median": medians,
        "runs_raw": {k: [round(x, 3) for x in v] for k, v in results.items()},
    }


def table(report: dict[str, Any]) -> str:
    m = report["median"]
    rows = [
        ("authorize, system:masters (baseline)", f"{m['masters_us']:.2f} us"),
        ("authorize, operator ServiceAccount (RBAC)", f"{m['operator_us']:.2f} us"),
        ("first decision after an RBAC change", f"{m['compile_us']:.1f} us"),
        ("HTTPS GET pod, admin certificate (baseline)", f"{m['get_admin_ms']:.3f} ms"),
        ("HTTPS GET pod, operator token + RBAC", f"{m['get_operator_ms']:.3f} ms"),
    ]
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"{name:<{width}}  {value:>12}" for name, value in rows)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--gets", type=int, default=400)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    report = asyncio.run(main(args.calls, args.gets, args.runs))
    text = json.dumps(report, indent=2)
    print(text)
    print(table(report))
    if args.json:
        Path(args.json).write_text(text + "\n")
