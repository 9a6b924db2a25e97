"""Scale benchmark: the real operator process against the emulator process with many pods.

For each size N (pods in 20 namespaces, 5 of them enabled: 1/4 of the pods selected; at the
largest size also 10,000 ReservedIP records), it starts `python -m capo_operator run` and reports:
time to /readyz 200, CPU used until then, RSS once ready, idle CPU over a quiet interval, pod
watch events processed (20,000 pod writes made inside the emulator, `/_emulator/pods/touch`; the
operator's own `capo_informer_events_total{resource="pods"}` tells when it has applied them all):
wall events/s and events per second of the operator's CPU, and the median time of a /metrics
scrape. The emulator is measured alone first: a paginated LIST of every pod, and the events/s it
makes and delivers to one raw watch. The release pass is measured in-process with fakes (the
planning work at 20,000 pods / 10,000 records: nothing due, then 1,000 expiries).

    python bench/scale.py [--sizes 5000,10000,20000] [--idle 30] [--json out.json]

Method and figures: docs/performance.md.
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
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests" / "unit"))  # the in-memory fakes for the release pass

from informer import NAMESPACES, POOL, pod_manifest, proc_cpu  # noqa: E402

from capo_testkit import Kube, OperatorProcess, free_port, make_serving_cert  # noqa: E402
from capo_testkit.cluster import RECORD_CRD  # noqa: E402
from kube_emulator.testing import EmulatorProcess  # noqa: E402

ENABLED = 5  # of NAMESPACES: a quarter of the pods are selected
RECORDS_AT = 20_000  # the size that also gets records
RECORDS = 10_000
OPERATOR_NS = "capo-system"
CLIENTS = 16
# The malloc setting of the Dockerfile (docs/performance.md): the operator runs as it would there.
IMAGE_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072"}


def record_ip(i: int) -> str:
    # Beyond the pods' addresses, so a record's IP is never a live pod's.
    return str(POOL.network_address + 200_000 + i)


def record_body(i: int) -> dict[str, Any]:
    ip = record_ip(i)
    return {
        "apiVersion": "capo.io/v1",
        "kind": "ReservedIP",
        "metadata": {"name": ip.replace(":", "-"), "finalizers": ["capo.io/release"]},
        "spec": {
            "ip": ip,
            "pod": {"namespace": "ns-0", "name": f"gone-{i}", "uid": f"gone-uid-{i}", "node": "node-1"},
            "trigger": "delete",
            "reservedAt": "2026-01-01T00:00:00Z",
            "expiresAt": "2099-01-01T00:00:00Z",
            "holdSeconds": 2400,
            "policy": "capo.io/reserve-time=2h",
        },
    }


async def _parallel(items: list[Any], fn: Any) -> None:
    queue = iter(items)

    async def worker() -> None:
        for item in queue:
            await fn(item)

    await asyncio.gather(*(worker() for _ in range(CLIENTS)))


async def prepare(kube: Kube) -> None:
    await kube.call("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", _crd(), ok=(409,))
    await kube.call("POST", "/api/v1/namespaces", {"metadata": {"name": OPERATOR_NS}}, ok=(409,))
    for n in range(NAMESPACES):
        labels = {"ip-reserve": "enabled"} if n < ENABLED else {}
        await kube.call("POST", "/api/v1/namespaces", {"metadata": {"name": f"ns-{n}", "labels": labels}})


def _crd() -> dict[str, Any]:
    import yaml

    crd: dict[str, Any] = yaml.safe_load(RECORD_CRD.read_text())
    return crd


async def seed_pods(kube: Kube, start: int, stop: int) -> None:
    async def create(i: int) -> None:
        await kube.call("POST", f"/api/v1/namespaces/ns-{i % NAMESPACES}/pods", pod_manifest(i))

    await _parallel(list(range(start, stop)), create)


async def seed_records(kube: Kube) -> None:
    async def create(i: int) -> None:
        await kube.call("POST", "/apis/capo.io/v1/reservedips", record_body(i), ok=(409,))

    await _parallel(list(range(RECORDS)), create)


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.read()
    except OSError:
        return 0, b""


def pod_events(op: OperatorProcess) -> float:
    _, body = _get(f"http://127.0.0.1:{op.metrics_port}/metrics")
    for line in body.decode().splitlines():
        if line.startswith('capo_informer_events_total{resource="pods"}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def measure_operator(
    kube: Kube, kubeconfig: Path, work: Path, pods: int, idle: float
) -> dict[str, Any]:
    cert = make_serving_cert(work / "certs", hosts=("127.0.0.1",))
    op = OperatorProcess(
        workdir=work / "operator",
        identity="capo-0",
        kubeconfig=kubeconfig,
        namespace=OPERATOR_NS,
        cert_file=cert.cert_file,
        key_file=cert.key_file,
        webhook_port=free_port(),
        # Nothing is due during the run: no release writes disturb the measurement.
        reserve_time="40m",
        release_period="5s",
        max_count=1_000_000,
    )
    os.environ.update(IMAGE_ENV)  # inherited by the operator process, as the image sets it
    started = time.perf_counter()
    op.start()
    assert op.proc is not None
    pid = op.proc.pid
    try:
        while _get(f"http://127.0.0.1:{op.health_port}/readyz")[0] != 200:
            assert op.proc.poll() is None, f"the operator exited: {op.log_text()[-2000:]}"
            assert time.perf_counter() - started < 600, "not ready after 600 s"
            await asyncio.sleep(0.05)
        ready_s = time.perf_counter() - started
        cpu_ready = proc_cpu(pid)
        rss_ready = rss_mb(pid)
        await asyncio.sleep(5)  # the leader's first pass, the ledger's first save
        before = proc_cpu(pid)
        await asyncio.sleep(idle)
        idle_pct = 100 * (proc_cpu(pid) - before) / idle

        scrapes = []
        for _ in range(5):
            t0 = time.perf_counter()
            _get(f"http://127.0.0.1:{op.metrics_port}/metrics")
            scrapes.append(time.perf_counter() - t0)

        events = await operator_events(kube, op, pid, EVENTS)
        return {
            "pods": pods,
            "records": RECORDS if pods >= RECORDS_AT else 0,
            "ready_s": round(ready_s, 2),
            "cpu_to_ready_s": round(cpu_ready, 2),
            "rss_mb": round(rss_ready, 1),
            "rss_after_events_mb": round(rss_mb(pid), 1),
            "idle_cpu_pct": round(idle_pct, 2),
            "metrics_ms": round(statistics.median(scrapes) * 1000, 1),
            **events,
        }
    finally:
        await op.stop(within=20)


# -- pod watch events: what the emulator serves, what the operator processes --------------------


EVENTS = 20_000  # pod watch events per measurement


async def touch_pods(kube: Kube, count: int) -> float:
    """`count` MODIFIED pod events made in the emulator's process, as fast as it can (the emulator
    over HTTP could not make them fast enough); returns its own time to make them."""
    result = await kube.call("POST", "/_emulator/pods/touch", {"count": count})
    return float(result.body["seconds"])


async def emulator_events(kube: Kube, emulator_pid: int, count: int) -> dict[str, Any]:
    """The emulator alone: one raw watch of every pod (lines counted, not parsed) while `count`
    pods are touched: events/s made and events/s delivered, and the emulator's CPU per event."""
    rv = (await kube.call("GET", "/api/v1/pods", params={"limit": "1"})).body["metadata"]["resourceVersion"]
    received = 0
    done = asyncio.Event()

    async def watch() -> None:
        nonlocal received
        async for _ in kube.watch_lines("/api/v1/pods", resource_version=rv, within=120):
            received += 1
            if received >= count:
                done.set()
                return

    task = asyncio.create_task(watch())
    await asyncio.sleep(0.5)  # the watch is registered
    cpu0, t0 = proc_cpu(emulator_pid), time.perf_counter()
    made_s = await touch_pods(kube, count)
    await asyncio.wait_for(done.wait(), 120)
    wall = time.perf_counter() - t0
    cpu = proc_cpu(emulator_pid) - cpu0
    task.cancel()
    return {
        "events": count,
        "made_per_s": round(count / made_s),
        "delivered_per_s": round(count / wall),
        "emulator_cpu_us_per_event": round(cpu / count * 1e6, 1),
    }


async def emulator_list(kube: Kube, emulator_pid: int) -> dict[str, Any]:
    """A paginated LIST of every pod (500 a page, as the informer asks), bodies read but not
    parsed beyond the continue token: the emulator's serving time and CPU."""
    cpu0, t0 = proc_cpu(emulator_pid), time.perf_counter()
    items, token = 0, ""
    while True:
        params = {"limit": "500", **({"continue": token} if token else {})}
        page = (await kube.call("GET", "/api/v1/pods", params=params)).body
        items += len(page["items"])
        token = page["metadata"].get("continue") or ""
        if not token:
            break
    return {
        "pods": items,
        "list_s": round(time.perf_counter() - t0, 2),
        "emulator_cpu_s": round(proc_cpu(emulator_pid) - cpu0, 2),
    }


async def operator_events(kube: Kube, op: OperatorProcess, pid: int, count: int) -> dict[str, Any]:
    """Pod watch events processed by the operator: its own `capo_informer_events_total` counts
    them; wall events/s until it has counted all, and events per second of its CPU. The counter
    is read only once the emulator has made every event (a scrape costs the operator CPU too)."""
    seen = pod_events(op)
    cpu0, t0 = proc_cpu(pid), time.perf_counter()
    made_s = await touch_pods(kube, count)
    while pod_events(op) < seen + count:
        assert time.perf_counter() - t0 < 300, "the operator did not apply every event"
        await asyncio.sleep(0.05)
    wall = time.perf_counter() - t0
    cpu = proc_cpu(pid) - cpu0
    return {
        "events": count,
        "events_made_per_s": round(count / made_s),
        "events_applied_per_s": round(count / wall),
        "events_per_cpu_s": round(count / cpu) if cpu > 0 else None,
        "operator_cpu_us_per_event": round(cpu / count * 1e6, 1),
    }


# -- the release pass, in-process ---------------------------------------------------------------


def release_pass(runs: int = 5) -> dict[str, Any]:
    """The release pass in-process (bench/release_pass.py): nothing due, 1,000 expiries."""
    import release_pass as bench_release_pass

    return bench_release_pass.measure(runs=runs)


# -- report ---------------------------------------------------------------------------------------


def table(report: dict[str, Any]) -> str:
    cols = (
        ("pods", "pods"),
        ("records", "records"),
        ("ready_s", "ready s"),
        ("cpu_to_ready_s", "CPU to ready s"),
        ("rss_mb", "RSS MB"),
        ("idle_cpu_pct", "idle CPU %"),
        ("events_applied_per_s", "events/s"),
        ("events_per_cpu_s", "events/CPU-s"),
        ("metrics_ms", "/metrics ms"),
    )
    lines = [" | ".join(title for _, title in cols), " | ".join("---" for _ in cols)]
    for row in report["operator"]:
        lines.append(" | ".join(str(row[key]) for key, _ in cols))
    lines.append("")
    lines.append("emulator alone: pods | LIST s | LIST CPU s | events made/s | delivered/s | CPU us/event")
    for row in report["operator"]:
        e = row["emulator"]
        lines.append(
            f"{e['pods']} | {e['list_s']} | {e['emulator_cpu_s']} | {e['made_per_s']} | "
            f"{e['delivered_per_s']} | {e['emulator_cpu_us_per_event']}"
        )
    lines.append("")
    lines.append(bench_release_pass_table(report["release_pass"]))
    return "\n".join(lines)


def bench_release_pass_table(rp: dict[str, Any]) -> str:
    import release_pass as bench_release_pass

    return bench_release_pass.table(rp)


async def run_sizes(sizes: list[int], idle: float, work: Path) -> list[dict[str, Any]]:
    rows = []
    with EmulatorProcess(pod_cidr=str(POOL), nodes=3, kubelet_delay=0.05, log_level="warning") as emu:
        kubeconfig = Path(emu.kubeconfig_path)
        kube = await Kube.from_kubeconfig(str(kubeconfig))
        try:
            await prepare(kube)
            have = 0
            for size in sizes:
                t0 = time.perf_counter()
                await seed_pods(kube, have, size)
                have = size
                if size >= RECORDS_AT:
                    await seed_records(kube)
                print(f"seeded {size} pods in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
                await asyncio.sleep(2)  # the emulated kubelets finish (IPs, Running)
                assert emu.process is not None
                emulator = {
                    **await emulator_list(kube, emu.process.pid),
                    **await emulator_events(kube, emu.process.pid, EVENTS),
                }
                row = await measure_operator(kube, kubeconfig, work / str(size), size, idle)
                row["emulator"] = emulator
                print(json.dumps(row), file=sys.stderr, flush=True)
                rows.append(row)
        finally:
            await kube.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="5000,10000,20000")
    parser.add_argument("--idle", type=float, default=30.0, help="seconds of idle CPU measurement")
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))
    with tempfile.TemporaryDirectory(prefix="capo-scale-") as tmp:
        rows = asyncio.run(run_sizes(sizes, args.idle, Path(tmp)))
    report = {"operator": rows, "release_pass": release_pass()}
    print(json.dumps(report, indent=2))
    print(table(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
