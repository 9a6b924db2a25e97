"""Informer benchmark: decoders, watch-event throughput, and initial sync against the emulator.

1. decoders: one LIST page of realistic pods (managedFields, a last-applied annotation, a
   container with env and resources, conditions) and single watch lines, decoded to PodFacts by
   json + dict, orjson + dict, and msgspec Structs (what the informer uses).
2. watch events/s: the pod informer fed MODIFIED lines from memory (decode + store + indexes +
   one handler), against a baseline loop of json.loads + PodFacts.from_pod into a dict.
3. initial sync: the API emulator as a separate process holding N pods; a fresh process runs the
   pod informer (paginated LIST through kubernetes.aio) until synced, then idles. Reported: time
   to synced, CPU, RSS, idle CPU; the emulator's CPU for the same LIST, and the time of the bare
   LIST (pages fetched, not decoded): if the informer's time is close to that, the emulator is
   the bottleneck. Baseline in the same run: the same LIST decoded into the client's generated
   models (`CoreV1Api.list_pod_for_all_namespaces`), at the smallest size.

    python bench/informer.py [--sizes 5000,10000,20000] [--runs 3] [--events 20000] [--json out.json]

Prints a JSON document, then a table; figures are medians of --runs.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import ipaddress
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncGenerator, Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from capo_operator.decisions.policy import PodFacts
from capo_operator.kube import PODS, Codec, KubeTransport, pod_informer
from kube_emulator.testing import EmulatorProcess

ROOT = Path(__file__).resolve().parent.parent
NAMESPACES = 20
POOL = ipaddress.ip_network("10.64.0.0/14")
CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- realistic pods ------------------------------------------------------------------------------


def pod_ip(i: int) -> str:
    return str(POOL.network_address + i + 1)


def pod_manifest(i: int) -> dict[str, Any]:
    """A StatefulSet-like pod as users write it (the emulator adds uid, status, IPs...)."""
    name = f"redis-{i}"
    container = {
        "name": "redis",
        "image": "registry.example.com/redis:7.2.4",
        "ports": [{"containerPort": 6379, "name": "redis"}, {"containerPort": 16379, "name": "bus"}],
        "env": [{"name": f"VAR_{k}", "value": f"value-{k}-{i}"} for k in range(6)],
        "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "512Mi"}},
        "volumeMounts": [{"name": "data", "mountPath": "/data"}, {"name": "conf", "mountPath": "/conf"}],
    }
    return {
        "metadata": {
            "name": name,
            "labels": {
                "app": "redis",
                "statefulset.kubernetes.io/pod-name": name,
                "controller-revision-hash": "redis-5d8f7c9b6",
            },
            "annotations": {
                # An explicit IP: the emulator's auto-assignment scans the pool (O(n) per pod).
                "cni.projectcalico.org/ipAddrs": json.dumps([pod_ip(i)]),
                "capo.io/reserve-time": "2h" if i % 10 == 0 else "40m",
                "kubectl.kubernetes.io/last-applied-configuration": json.dumps(container) * 2,
            },
            "ownerReferences": [
                {
                    "apiVersion": "apps/v1",
                    "kind": "StatefulSet",
                    "name": "redis",
                    "uid": "0b6a1c2e-0000-4000-8000-000000000001",
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": {
            "containers": [container],
            "volumes": [{"name": "data", "emptyDir": {}}, {"name": "conf", "configMap": {"name": "redis"}}],
            "tolerations": [
                {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute"}
            ],
        },
    }


def served_pod(i: int) -> dict[str, Any]:
    """The same pod as the API serves it (status, managedFields...), for the in-memory parts."""
    pod = pod_manifest(i)
    meta = pod["metadata"]
    meta.update(
        namespace=f"ns-{i % NAMESPACES}",
        uid=f"5f3c2a1e-{i:04x}-4000-8000-000000000000",
        resourceVersion=str(1000 + i),
        creationTimestamp="2026-01-01T00:00:00Z",
        managedFields=[
            {
                "manager": "kube-controller-manager",
                "operation": "Update",
                "apiVersion": "v1",
                "time": "2026-01-01T00:00:00Z",
                "fieldsType": "FieldsV1",
                "fieldsV1": {"f:metadata": {"f:labels": {"f:app": {}}}, "f:spec": {"f:containers": {}}},
            }
        ]
        * 2,
    )
    pod["spec"]["nodeName"] = f"node-{i % 3}"
    ip = pod_ip(i)
    pod["status"] = {
        "phase": "Running",
        "conditions": [
            {"type": t, "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"}
            for t in ("Initialized", "Ready", "ContainersReady", "PodScheduled")
        ],
        "hostIP": "192.168.0.1",
        "podIP": ip,
        "podIPs": [{"ip": ip}],
        "startTime": "2026-01-01T00:00:00Z",
        "containerStatuses": [
            {"name": "redis", "ready": True, "restartCount": 0, "image": "redis:7.2.4", "started": True}
        ],
    }
    return pod


def slim(facts: PodFacts) -> PodFacts:
    return replace(
        facts, annotations={k: v for k, v in facts.annotations.items() if k.startswith("capo.io/")}
    )


# -- 1. decoders --------------------------------------------------------------------------------


def median_time(fn: Callable[[], object], runs: int) -> float:
    times = []
    for _ in range(runs):
        gc.collect()
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def bench_decoders(runs: int) -> dict[str, Any]:
    page_items = [served_pod(i) for i in range(500)]
    page = json.dumps({"kind": "PodList", "metadata": {"resourceVersion": "9"}, "items": page_items}).encode()
    lines = [json.dumps({"type": "MODIFIED", "object": p}).encode() for p in page_items]
    codec = Codec(PODS)

    def page_json() -> object:
        return [slim(PodFacts.from_pod(p)) for p in json.loads(page)["items"]]

    def page_orjson() -> object:
        return [slim(PodFacts.from_pod(p)) for p in orjson.loads(page)["items"]]

    def page_msgspec() -> object:
        return [PODS.convert(item) for item in codec.decode_list(page)[1]]

    def lines_json() -> object:
        return [slim(PodFacts.from_pod(json.loads(line)["object"])) for line in lines]

    def lines_orjson() -> object:
        return [slim(PodFacts.from_pod(orjson.loads(line)["object"])) for line in lines]

    def lines_msgspec() -> object:
        return [PODS.convert(codec.decode_item(codec.decode_event(line)[1])) for line in lines]

    assert page_json() == page_orjson() == page_msgspec() == lines_msgspec()  # same result, or no race
    per_pod = 1e6 / len(page_items)
    result: dict[str, Any] = {"pod_json_bytes": len(page) // len(page_items), "us_per_pod": {}}
    for label, fn in (
        ("list page: json + dict", page_json),
        ("list page: orjson + dict", page_orjson),
        ("list page: msgspec Struct", page_msgspec),
        ("watch line: json + dict", lines_json),
        ("watch line: orjson + dict", lines_orjson),
        ("watch line: msgspec Struct", lines_msgspec),
    ):
        result["us_per_pod"][label] = round(median_time(fn, runs) * per_pod, 2)
    return result


# -- 2. watch throughput ---------------------------------------------------------------------------


class MemoryTransport:
    """A LIST of `pods` then one watch stream of `lines`, from memory."""

    def __init__(self, page: bytes, lines: list[bytes]) -> None:
        self.page = page
        self.lines = lines
        self.go = asyncio.Event()  # the stream starts when the clock does
        self.done = asyncio.Event()

    async def get(self, path: str, params: Mapping[str, str]) -> bytes:
        return self.page

    async def stream(self, path: str, params: Mapping[str, str], seconds: float) -> AsyncGenerator[bytes]:
        await self.go.wait()
        for line in self.lines:
            yield line
        self.done.set()
        await asyncio.Event().wait()  # an open, quiet stream
        yield b""  # pragma: no cover


async def watch_rate(pods: int, events: int) -> tuple[float, float]:
    served = [served_pod(i) for i in range(pods)]
    page = json.dumps({"metadata": {"resourceVersion": "1"}, "items": served}).encode()
    lines = []
    for n in range(events):
        pod = served[n % pods]
        pod["metadata"]["resourceVersion"] = str(2000 + n)
        pod["status"]["phase"] = "Pending" if (n // pods) % 2 == 0 else "Running"  # a change each time
        lines.append(json.dumps({"type": "MODIFIED", "object": pod}).encode())
    transport = MemoryTransport(page, lines)
    informer = pod_informer(transport, page_size=10**6, resync_period=None)
    changes = 0

    def on_update(old: PodFacts, new: PodFacts) -> None:
        nonlocal changes
        changes += old.phase != new.phase

    informer.add_handlers(on_update=on_update)
    task = asyncio.create_task(informer.run())
    await informer.synced.wait()
    wall, cpu = time.perf_counter(), time.process_time()
    transport.go.set()
    await transport.done.wait()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert informer.stats.events == events and changes == events
    return events / wall, events / cpu


def baseline_rate(pods: int, events: int) -> float:
    """json.loads + PodFacts.from_pod into a dict: no indexes, no handlers (a lower bound)."""
    served = [served_pod(i) for i in range(pods)]
    lines = [json.dumps({"type": "MODIFIED", "object": served[n % pods]}).encode() for n in range(events)]
    store: dict[str, PodFacts] = {}
    cpu = time.process_time()
    for line in lines:
        obj = json.loads(line)["object"]
        facts = slim(PodFacts.from_pod(obj))
        store[f"{facts.namespace}/{facts.name}"] = facts
    return events / (time.process_time() - cpu)


def bench_watch(events: int, runs: int) -> dict[str, Any]:
    rates = [asyncio.run(watch_rate(5000, events)) for _ in range(runs)]
    return {
        "events": events,
        "informer_events_per_s_wall": round(statistics.median(r[0] for r in rates)),
        "informer_events_per_s_cpu": round(statistics.median(r[1] for r in rates)),
        "baseline_json_dict_events_per_s_cpu": round(
            statistics.median(baseline_rate(5000, events) for _ in range(runs))
        ),
    }


# -- 3. initial sync against the emulator ------------------------------------------------------------


def proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def _api(kubeconfig: str) -> Any:
    from kubernetes.aio import client, config

    cfg = client.Configuration()
    await config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
    return client.ApiClient(cfg)


async def child_sync(kubeconfig: str, mode: str, idle: float) -> dict[str, Any]:
    """Runs in a fresh process: one measurement."""
    api = await _api(kubeconfig)
    try:
        started, cpu = time.perf_counter(), time.process_time()
        if mode == "informer":
            informer = pod_informer(KubeTransport(api), resync_period=None)
            task = asyncio.create_task(informer.run())
            await informer.synced.wait()
            count = len(informer.store)
        elif mode == "raw-list":
            transport, token, count = KubeTransport(api), "", 0
            while True:
                params = {"limit": "500", **({"continue": token} if token else {})}
                page = orjson.loads(await transport.get("/api/v1/pods", params))
                count += len(page["items"])
                token = page["metadata"].get("continue", "")
                if not token:
                    break
        else:  # generated models
            from kubernetes.aio import client

            core, token, count = client.CoreV1Api(api), "", 0
            while True:
                result = await core.list_pod_for_all_namespaces(limit=500, _continue=token or None)
                count += len(result.items)
                token = (result.metadata._continue if result.metadata else None) or ""
                if not token:
                    break
        out: dict[str, Any] = {
            "objects": count,
            "sync_s": time.perf_counter() - started,
            "cpu_s": time.process_time() - cpu,
            "rss_mb": rss_mb(),
        }
        if mode == "informer":
            gc.collect()
            out["rss_mb"] = rss_mb()
            idle_cpu = time.process_time()
            await asyncio.sleep(idle)
            out["idle_cpu_percent"] = 100 * (time.process_time() - idle_cpu) / idle
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        return out
    finally:
        await api.close()


def run_child(kubeconfig: str, mode: str, idle: float, emulator_pid: int) -> dict[str, Any]:
    before = proc_cpu(emulator_pid)
    done = subprocess.run(
        [sys.executable, __file__, "--child", mode, "--kubeconfig", kubeconfig, "--idle", str(idle)],
        check=True,
        capture_output=True,
        text=True,
    )
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    result["emulator_cpu_s"] = proc_cpu(emulator_pid) - before
    return result


async def seed(kubeconfig: str, start: int, stop: int) -> None:
    from kubernetes.aio import client

    api = await _api(kubeconfig)
    core = client.CoreV1Api(api)
    try:
        names = {f"ns-{i}" for i in range(NAMESPACES)}
        if start == 0:
            for name in sorted(names):
                await core.create_namespace({"metadata": {"name": name}})  # type: ignore[arg-type]
        queue = iter(range(start, stop))

        async def worker() -> None:
            for i in queue:
                body: Any = pod_manifest(i)  # the client sends a dict body as it is
                await core.create_namespaced_pod_without_preload_content(f"ns-{i % NAMESPACES}", body)

        await asyncio.gather(*(worker() for _ in range(16)))
    finally:
        await api.close()


def median_of(results: list[dict[str, Any]]) -> dict[str, Any]:
    return {key: round(statistics.median(r[key] for r in results), 3) for key in results[0]}


def bench_sync(sizes: list[int], runs: int, idle: float) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    with EmulatorProcess(pod_cidr=str(POOL), nodes=3, kubelet_delay=0.05, log_level="warning") as emu:
        assert emu.process is not None
        pid, kubeconfig, have = emu.process.pid, emu.kubeconfig_path, 0
        for size in sizes:
            started = time.perf_counter()
            asyncio.run(seed(kubeconfig, have, size))
            seeded_s, have = time.perf_counter() - started, size
            time.sleep(2)  # let the kubelets finish (IPs, Running)
            row: dict[str, Any] = {"pods": size, "seed_s": round(seeded_s, 1)}
            row["informer"] = median_of([run_child(kubeconfig, "informer", idle, pid) for _ in range(runs)])
            row["raw_list"] = median_of([run_child(kubeconfig, "raw-list", 0, pid) for _ in range(runs)])
            if size == sizes[0]:
                row["generated_models"] = median_of([run_child(kubeconfig, "models", 0, pid)])
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    return rows


# -- report ----------------------------------------------------------------------------------------


def table(report: dict[str, Any]) -> str:
    out = []
    dec = report["decoders"]
    out.append(f"decoders (pod of {dec['pod_json_bytes']} bytes), median us per pod:")
    for label, value in dec["us_per_pod"].items():
        out.append(f"  {label:<30} {value:>8.1f}")
    w = report["watch"]
    out.append(
        f"watch: informer {w['informer_events_per_s_cpu']:,} events/s per CPU-s "
        f"({w['informer_events_per_s_wall']:,}/s wall); baseline json+dict "
        f"{w['baseline_json_dict_events_per_s_cpu']:,}/s"
    )
    out.append("initial sync (median):")
    out.append(
        f"  {'pods':>6} {'sync s':>7} {'cpu s':>6} {'rss MB':>7} {'idle %':>6} {'emu cpu s':>9} "
        f"{'bare LIST s':>11} {'models s':>8}"
    )
    for row in report["sync"]:
        i, raw = row["informer"], row["raw_list"]
        models = row.get("generated_models", {}).get("sync_s")
        out.append(
            f"  {row['pods']:>6} {i['sync_s']:>7.2f} {i['cpu_s']:>6.2f} {i['rss_mb']:>7.1f} "
            f"{i['idle_cpu_percent']:>6.2f} {i['emulator_cpu_s']:>9.2f} {raw['sync_s']:>11.2f} "
            f"{'' if models is None else f'{models:.2f}':>8}"
        )
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="5000,10000,20000")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--idle", type=float, default=10.0, help="seconds of idle CPU measurement")
    parser.add_argument("--json", dest="json_out")
    parser.add_argument("--child", choices=["informer", "raw-list", "models"], help=argparse.SUPPRESS)
    parser.add_argument("--kubeconfig", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(asyncio.run(child_sync(args.kubeconfig, args.child, args.idle))))
        return
    report = {
        "decoders": bench_decoders(max(args.runs, 5)),
        "watch": bench_watch(args.events, args.runs),
        "sync": bench_sync([int(s) for s in args.sizes.split(",")], args.runs, args.idle),
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.json_out:
        Path(args.json_out).write_text(text + "\n")
    print(table(report))


if __name__ == "__main__":
    main()
