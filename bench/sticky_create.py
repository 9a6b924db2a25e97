"""Sticky IPs: what the mutating webhook costs a pod CREATE.

The real operator process against the project's API emulator (one operator, the shipped webhook
configurations). Four phases of sequential pod creations, each measured by the client (API
answer time) and by the operator (CPU seconds of its process, and its own handler time from
`capo_webhook_duration_seconds{operation="create"}`):

  baseline   no MutatingWebhookConfiguration installed
  skipped    the sticky webhook installed, pods not sticky (the common case: answered at once)
  no-hold    sticky pods with no hold to claim (a scan of this installation's records)
  claimed    sticky pods each claiming its former incarnation's hold (one record write per IP)

    python bench/sticky_create.py [--pods 40] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from capo_testkit import Harness, OperatorProcess, pod_ip
from capo_testkit.kube import path_for, pods_path

STICKY = {"capo.io/sticky": "true"}


def cpu_seconds(op: OperatorProcess) -> float:
    assert op.proc is not None
    fields = Path(f"/proc/{op.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def handler_time(h: Harness) -> tuple[float, float]:
    m = await h.metrics()
    labels = {"operation": "create"}
    return m.value("capo_webhook_duration_seconds_sum", **labels), m.value(
        "capo_webhook_duration_seconds_count", **labels
    )


async def phase(
    h: Harness, name: str, ns: str, pods: list[dict[str, Any]], op: OperatorProcess
) -> dict[str, Any]:
    cpu0, (sum0, n0) = cpu_seconds(op), await handler_time(h)
    latencies = []
    for body in pods:
        started = time.perf_counter()
        await h.cluster.kube.create(pods_path(ns), body)
        latencies.append(time.perf_counter() - started)
    await asyncio.sleep(0.5)  # let the operator finish what the creations caused
    cpu1, (sum1, n1) = cpu_seconds(op), await handler_time(h)
    latencies.sort()
    return {
        "phase": name,
        "pods": len(pods),
        "create_ms_median": round(statistics.median(latencies) * 1000, 2),
        "create_ms_p95": round(latencies[int(len(latencies) * 0.95) - 1] * 1000, 2),
        "operator_cpu_ms_per_pod": round((cpu1 - cpu0) * 1000 / len(pods), 2),
        "handler_ms_mean": round((sum1 - sum0) * 1000 / (n1 - n0), 2) if n1 > n0 else None,
    }


def manifest(h: Harness, ns: str, name: str, owner: dict[str, Any], sticky: bool) -> dict[str, Any]:
    return h.cluster.pod_manifest(ns, name, owner=owner, annotations=STICKY if sticky else None)


async def run(pods: int) -> list[dict[str, Any]]:
    workdir = Path(tempfile.mkdtemp(prefix="capo-bench-sticky-"))
    async with Harness.open(workdir, force_emulator=True, kubelet_delay=0.05) as h:
        (op,) = await h.start_operators(1, reserve_time="10m", max_count=10_000)
        c = h.cluster
        ns = await c.create_namespace("bench")
        sts = await c.kube.create(
            path_for("apps", "v1", "statefulsets", ns),
            {
                "apiVersion": "apps/v1",
                "kind": "StatefulSet",
                "metadata": {"name": "db", "namespace": ns},
                "spec": {
                    "replicas": pods,
                    "serviceName": "db",
                    "selector": {"matchLabels": {"app": "db"}},
                    "template": {
                        "metadata": {"labels": {"app": "db"}},
                        "spec": {"containers": [{"name": "c", "image": "x"}]},
                    },
                },
            },
        )
        owner = {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "db", "uid": sts["metadata"]["uid"],
                 "controller": True}  # fmt: skip
        results = [
            await phase(h, "baseline", ns, [manifest(h, ns, f"a-{i}", owner, False) for i in range(pods)], op)
        ]
        await h.install_sticky_webhook()
        await asyncio.sleep(1)
        results.append(
            await phase(h, "skipped", ns, [manifest(h, ns, f"b-{i}", owner, False) for i in range(pods)], op)
        )
        results.append(
            await phase(h, "no-hold", ns, [manifest(h, ns, f"db-{i}", owner, True) for i in range(pods)], op)
        )
        ips = {}
        for i in range(pods):
            ips[i] = pod_ip(await c.wait_running(ns, f"db-{i}"))
        for i in range(pods):
            await c.delete_pod(ns, f"db-{i}", wait=False)
        for i in range(pods):
            await c.wait_gone(ns, f"db-{i}")
        await h.wait_reserved(*ips.values(), within=60)
        results.append(
            await phase(h, "claimed", ns, [manifest(h, ns, f"db-{i}", owner, True) for i in range(pods)], op)
        )
        got = {i: pod_ip(await c.wait_running(ns, f"db-{i}")) for i in range(pods)}
        results[-1]["own_ip_back"] = sum(got[i] == ips[i] for i in range(pods))
        return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pods", type=int, default=40)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results = asyncio.run(run(args.pods))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    keys = [
        "phase",
        "pods",
        "create_ms_median",
        "create_ms_p95",
        "operator_cpu_ms_per_pod",
        "handler_ms_mean",
    ]
    print("\n" + " | ".join(keys))
    for r in results:
        print(" | ".join(str(r.get(k)) for k in keys))


if __name__ == "__main__":
    main()
