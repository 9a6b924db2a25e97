"""Release-pass benchmark, in-process: the leader's `Releaser.pass_once` at 20,000 pods / 10,000
records on the unit tests' in-memory stores (no I/O: API calls are counted, not made).

Scenarios, each the median of several runs (CPU time of the process, `time.process_time`):
- nothing due: a steady leader (first passes done) runs passes with no change and no expiry;
- one record changed: a record is added (the webhook reserved an IP): the plan runs in full;
- unrelated pod churn: 1,000 pods that no record refers to change between two passes;
- 1,000 expiries: 1,000 records are due at once (marks, one Calico write, deletes).

The IPReservation watch is the real `ReservationCache` (its informer store filled directly).

    python bench/release_pass.py [--runs 7] [--json out.json]

Method and figures: docs/performance.md ("Release pass").
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "unit"))  # the in-memory fakes

from fakes import (  # type: ignore[import-not-found]  # noqa: E402
    NOW,
    FakeLedger,
    Harness,
    make_harness,
    make_ns,
    make_pod,
    make_record,
)

from capo_operator.config import Config  # noqa: E402
from capo_operator.decisions.addresses import record_name  # noqa: E402
from capo_operator.decisions.record import PodRef  # noqa: E402
from capo_operator.flows.releaser import Releaser  # noqa: E402
from capo_operator.kube.calico import CalicoGroup, ReservationCache  # noqa: E402

NAMESPACES = 20
ENABLED = 5
PERIOD_S = 5.0  # ipReleasePeriod


def pod_ip(i: int) -> str:
    return f"10.{64 + i // 65536}.{(i // 256) % 256}.{i % 256}"


def record_ip(i: int) -> str:
    return f"10.200.{i // 256}.{i % 256}"


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> Any:
        return self.now


class JournaledLedger(FakeLedger):  # type: ignore[misc]
    """A ledger save is (at least) one ConfigMap write: counted with the other calls."""

    def __init__(self, h: Harness) -> None:
        super().__init__()
        self.h = h

    async def save(self, entries: Any) -> None:
        self.h.journal.append(("ledger.save", len(entries)))
        await super().save(entries)


def build(pods: int, records: int, expired: int) -> tuple[Harness, Releaser, Clock]:
    h = make_harness(Config(ip_reserve_max_count=1_000_000), leading=True)
    for n in range(NAMESPACES):
        h.add_ns(make_ns(f"ns-{n}", enabled=n < ENABLED))
    for i in range(pods):
        h.add_pod(make_pod(f"redis-{i}", f"ns-{i % NAMESPACES}", uid=f"u{i}", ips=(pod_ip(i),)))
    for i in range(records):
        gone = PodRef("ns-0", f"gone-{i}", f"gone-uid-{i}", "n1")
        expires = timedelta(minutes=-1) if i < expired else timedelta(minutes=30)
        h.add_record(make_record(record_ip(i), pod=gone, expires_in=expires))
    clock = Clock()
    releaser = h.releaser(JournaledLedger(h), clock=clock)
    cache = ReservationCache(None, CalicoGroup.CRD, h.calico.name)  # type: ignore[arg-type]
    cache.informer.store._put(h.calico.name, "1", "uid", h.calico.snapshot())
    cache.informer.synced.set()
    releaser._cache = cache
    return h, releaser, clock


def watched(h: Harness, r: Releaser) -> None:
    """What the IPReservation watch would deliver after a change of the object."""
    assert r._cache is not None
    r._cache.informer.store._put(h.calico.name, "2", "uid", h.calico.snapshot())


def cpu(coro: Any) -> float:
    t0 = time.process_time()
    asyncio.run(coro)
    return time.process_time() - t0


async def steady(h: Harness, r: Releaser) -> None:
    for _ in range(3):
        await r.pass_once()
    h.journal.clear()


def nothing_due(pods: int, records: int, passes: int = 200) -> dict[str, Any]:
    h, r, _ = build(pods, records, 0)
    asyncio.run(steady(h, r))
    per_pass: list[float] = []

    async def run() -> None:
        for _ in range(passes):
            t0 = time.process_time()
            await r.pass_once()
            per_pass.append(time.process_time() - t0)

    asyncio.run(run())
    return {"cpu_ms": statistics.median(per_pass) * 1000, "api_calls": len(h.journal), "passes": passes}


def one_record_changed(pods: int, records: int) -> dict[str, Any]:
    h, r, _ = build(pods, records, 0)
    asyncio.run(steady(h, r))
    # The webhook reserved an IP: its Calico entry (seen by the watch), then its record.
    h.add_record(make_record("10.250.0.1", pod=PodRef("ns-0", "new", "new-uid", "n1")))
    watched(h, r)
    seconds = cpu(r.pass_once())
    return {"cpu_ms": seconds * 1000, "api_calls": len(h.journal)}


def unrelated_churn(pods: int, records: int, churn: int = 1_000) -> dict[str, Any]:
    """`churn` pods that no record refers to change (an annotation) between two passes. Also the
    releaser's share of each pod event (its pod-cache listener), from the same changes applied
    with and without it."""
    h, r, _ = build(pods, records, 0)
    asyncio.run(steady(h, r))

    def change(tag: str) -> float:
        t0 = time.process_time()
        for i in range(churn):
            pod = h.op.views.pod(f"ns-{i % NAMESPACES}", f"redis-{i}")
            assert pod is not None
            h.add_pod(dataclasses.replace(pod, annotations={"bench": tag}))
        return time.process_time() - t0

    with_listener = change("1")
    seconds = cpu(r.pass_once())
    calls = sorted(set(h.journal.ops()))
    listeners, h.pods._listeners = h.pods._listeners, []
    without = change("2")
    h.pods._listeners = listeners
    return {
        "cpu_ms": seconds * 1000,
        "api_calls": len(h.journal),
        "ops": calls,
        "listener_us_per_event": max(0.0, (with_listener - without) / churn * 1e6),
    }


def expiries(pods: int, records: int, due: int) -> dict[str, Any]:
    h, r, _ = build(pods, records, 0)
    asyncio.run(steady(h, r))
    # `due` records expire now: moved by hand in the store and the cache, as a watch would show.
    for i in range(due):
        name = record_name(record_ip(i))
        h.records.put(
            make_record(
                record_ip(i),
                pod=PodRef("ns-0", f"gone-{i}", f"gone-uid-{i}", "n1"),
                expires_in=timedelta(minutes=-1),
            )
        )
        assert name in h.records.items
    t0, c0 = time.perf_counter(), time.process_time()
    asyncio.run(r.pass_once())
    wall, cpu_s = time.perf_counter() - t0, time.process_time() - c0
    released = due - sum(1 for i in range(due) if record_name(record_ip(i)) in h.records.items)
    return {"wall_ms": wall * 1000, "cpu_ms": cpu_s * 1000, "released": released, "api_calls": len(h.journal)}


def measure(pods: int = 20_000, records: int = 10_000, due: int = 1_000, runs: int = 7) -> dict[str, Any]:
    idle = [nothing_due(pods, records) for _ in range(runs)]
    changed = [one_record_changed(pods, records) for _ in range(runs)]
    churn = [unrelated_churn(pods, records) for _ in range(runs)]
    busy = [expiries(pods, records, due) for _ in range(max(3, runs // 2))]
    nothing_ms = statistics.median(x["cpu_ms"] for x in idle)
    return {
        "pods": pods,
        "records": records,
        "runs": runs,
        "nothing_due_cpu_ms": round(nothing_ms, 4),
        "nothing_due_api_calls": max(x["api_calls"] for x in idle),
        "nothing_due_passes_per_run": idle[0]["passes"],
        "leader_idle_cpu_pct_from_passes": round(100 * nothing_ms / 1000 / PERIOD_S, 5),
        "one_record_changed_cpu_ms": round(statistics.median(x["cpu_ms"] for x in changed), 1),
        "one_record_changed_api_calls": changed[0]["api_calls"],
        "unrelated_churn_pods": 1_000,
        "unrelated_churn_cpu_ms": round(statistics.median(x["cpu_ms"] for x in churn), 1),
        "unrelated_churn_calls": churn[0]["ops"],
        "listener_us_per_pod_event": round(statistics.median(x["listener_us_per_event"] for x in churn), 2),
        "expiries": due,
        "expiries_released": min(x["released"] for x in busy),
        "expiries_wall_ms": round(statistics.median(x["wall_ms"] for x in busy), 1),
        "expiries_cpu_ms": round(statistics.median(x["cpu_ms"] for x in busy), 1),
        "expiries_api_calls": busy[0]["api_calls"],
    }


def table(report: dict[str, Any]) -> str:
    r = report
    rows = [
        ("nothing due", f"{r['nothing_due_cpu_ms']} ms CPU", f"{r['nothing_due_api_calls']} calls"),
        (
            "one record changed (full plan)",
            f"{r['one_record_changed_cpu_ms']} ms CPU",
            f"{r['one_record_changed_api_calls']} calls",
        ),
        (
            f"{r['unrelated_churn_pods']} unrelated pod changes",
            f"{r['unrelated_churn_cpu_ms']} ms CPU",
            ", ".join(r["unrelated_churn_calls"]) or "no calls",
        ),
        (
            f"{r['expiries']} expiries",
            f"{r['expiries_wall_ms']} ms wall, {r['expiries_cpu_ms']} ms CPU",
            f"{r['expiries_api_calls']} calls, {r['expiries_released']} released",
        ),
    ]
    lines = [
        f"release pass at {r['pods']} pods / {r['records']} records (median of {r['runs']} runs)",
        "pass | cost | API calls",
        "--- | --- | ---",
    ]
    lines += [" | ".join(row) for row in rows]
    lines.append(
        f"leader idle CPU from passes every {PERIOD_S:g} s: {r['leader_idle_cpu_pct_from_passes']} %"
    )
    lines.append(f"the releaser's share of one pod event (its listener): {r['listener_us_per_pod_event']} us")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    report = measure(runs=args.runs)
    print(json.dumps(report, indent=2))
    print(table(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
