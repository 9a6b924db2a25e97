"""Rehearse the integration suite's real-cluster mode: run it twice in a row against one
long-lived API server, as it must pass on a real cluster (`make test-real-rehearsal`).

The server is the emulator as a separate process, with PodGC at the real default and nothing
reset between the runs: Events, records and Calico objects of the first run are still there when
the second starts, exactly what broke a second run on a real cluster. With CAPO_TEST_KUBECONFIG set
the same two runs go to that cluster instead.

While each run goes on, another tenant works on the same server: a namespace labelled
ip-reserve=enabled that belongs to no run, whose pods (IPs from a pool of their own) are deleted,
force-deleted and evicted by the kubelet over and over. The operators of a run watch every pod, so
only their `namespaceSelector` keeps them from reserving those IPs; any IPReservation entry or
ReservedIP record for the tenant's pods fails the rehearsal.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from capo_testkit.cluster import RECORDS, Cluster  # noqa: E402
from capo_testkit.kube import path_for, pods_path  # noqa: E402
from kube_emulator.testing import EmulatorProcess  # noqa: E402

# The other tenant's pods get IPs from here; the runs use CAPO_TEST_POD_CIDR (10.255.0.0/24).
TENANT_POOL = ipaddress.ip_network(os.environ.get("CAPO_REHEARSAL_TENANT_CIDR", "10.254.0.0/24"))


async def run_suite(kubeconfig: str, round_: int, extra: list[str]) -> int:
    env = {**os.environ, "CAPO_TEST_KUBECONFIG": kubeconfig}
    env.setdefault("CAPO_TEST_WEBHOOK_HOST", "127.0.0.1")
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/integration", *extra]
    print(f"--- real-cluster mode, run {round_} of 2: {' '.join(cmd[2:])}", flush=True)
    proc = await asyncio.create_subprocess_exec(*cmd, cwd=ROOT, env=env)
    return await proc.wait()


async def tenant_findings(c: Cluster, namespace: str) -> list[str]:
    """What any installation on the server holds for the tenant's pods."""
    found = [
        f"IPReservation entry {net}"
        for net in await c.reserved_networks()
        if net.version == 4 and net.subnet_of(TENANT_POOL)  # type: ignore[arg-type]
    ]
    for item in await c.kube.list(path_for(*RECORDS)):
        spec = item.get("spec") or {}
        if (spec.get("pod") or {}).get("namespace") == namespace:
            found.append(f"ReservedIP record {item['metadata']['name']} ({spec.get('ip')})")
    return found


async def other_tenant(kubeconfig: str, stop: asyncio.Event) -> tuple[int, list[str]]:
    """Delete, force-delete and kubelet-evict the tenant's pods until `stop`; returns how many
    pods went and what any run's operators reserved for them."""
    os.environ["CAPO_TEST_KUBECONFIG"] = kubeconfig  # Cluster.open: real-cluster mode, own run id
    findings: list[str] = []
    gone = 0
    async with Cluster.open() as c:
        c.pool4 = TENANT_POOL
        ns = await c.create_namespace("tenant")
        while not stop.is_set():
            name = f"redis-{gone}"
            await c.create_pod(ns, name)
            if gone % 3 == 0:
                await c.delete_pod(ns, name)
            elif gone % 3 == 1:
                await c.kube.delete(pods_path(ns, name), grace_period=0)
                await c.wait_gone(ns, name)
            else:
                await c.kubelet_evict(ns, name)
                await asyncio.sleep(1.0)  # the IP is free: a safety net without a scope reserves it now
                await c.kube.delete(pods_path(ns, name), grace_period=0)
                await c.wait_gone(ns, name)
            gone += 1
            findings += await tenant_findings(c, ns)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)
        await asyncio.sleep(2.0)  # a safety net pass after the last one
        findings += await tenant_findings(c, ns)
    return gone, sorted(set(findings))


async def rehearse(kubeconfig: str, extra: list[str]) -> int:
    codes = []
    for round_ in (1, 2):
        stop = asyncio.Event()
        tenant = asyncio.create_task(other_tenant(kubeconfig, stop))
        codes.append(await run_suite(kubeconfig, round_, extra))
        stop.set()
        gone, findings = await tenant
        print(f"--- other tenant, run {round_}: {gone} pods gone; held by a run: {findings or 'nothing'}")
        if findings:
            codes.append(1)
    return max(codes)


def main(argv: list[str]) -> int:
    given = os.environ.get("CAPO_TEST_KUBECONFIG")
    if given:
        return asyncio.run(rehearse(given, argv))
    with tempfile.TemporaryDirectory(prefix="capo-rehearsal-") as tmp:
        log = Path(tmp) / "emulator.log"
        # The emulator's own scheduler has no nodes to use: the suite binds its pods to a Node it
        # creates, plays kubelet for them and assigns IPs from its own test pool.
        with EmulatorProcess(log_file=str(log), nodes=0) as emu:
            code = asyncio.run(rehearse(emu.kubeconfig_path, argv))
        print(f"--- emulator log: {log.stat().st_size} bytes; exit code {code}", flush=True)
        return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
