"""Scale benchmark: `/metrics` from the record store, the per-record-event cost, and the ledger.

Old and new side by side in one run (same machine, same load):
- metrics: the old way (every record's info series, rebuilt on each record event) is reproduced
  here as the baseline; the new way is `capo_operator.metrics` (computed at scrape time, per-IP
  info bounded to `metrics.ipInfoLimit`, default 1000). A scrape is `generate_latest` of the
  operator's whole registry, what the `/metrics` handler returns.
- per record event: the record informer's handler, plus (old) the rebuild of every record's series.
- ledger: format 1 (one JSON ConfigMap) against format 2 (sharded, compressed), for dual-stack
  StatefulSet pods with random uids: encode, decode, stored bytes, shards, and the bytes written
  when one pod is replaced.

    python bench/scale_metrics.py [--runs 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import uuid
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from prometheus_client import generate_latest
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from capo_operator.decisions.policy import Owner
from capo_operator.decisions.record import PodRef, Record
from capo_operator.flows.watchers import Watchers
from capo_operator.kube import ledger as L
from capo_operator.kube.ledger import LedgerEntry
from capo_operator.metrics import Metrics

RECORD_COUNTS = (5_000, 10_000, 20_000)
LEDGER_PODS = (5_000, 10_000, 20_000, 50_000)


def median_ms(fn: Callable[[], Any], runs: int) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


# -- metrics ---------------------------------------------------------------------------------


def make_records(n: int) -> list[Record]:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    out = []
    for i in range(n):
        sts = f"kafka-{i // 10 % 500}"
        out.append(
            Record(
                ip=f"10.{i // 65536}.{i // 256 % 256}.{i % 256}",
                pod=PodRef(
                    f"tenant-{i % 50:03d}", f"{sts}-{i % 10}", str(uuid.uuid4()), f"worker-{i % 400:04d}"
                ),
                owner=Owner("apps/v1", "StatefulSet", sts, str(uuid.uuid4())),
                trigger=("delete", "eviction", "kubelet-eviction")[i % 3],
                reserved_at=now - timedelta(seconds=i),
                expires_at=now + timedelta(minutes=40),
                hold=timedelta(minutes=40),
                policy="ipReserveTime=40m",
            )
        )
    return out


@dataclass(frozen=True)
class IPInfo:
    """A row of the removed implementation."""

    ip: str
    namespace: str
    pod: str
    node: str
    trigger: str
    reserved_at: float


def info_of(r: Record) -> IPInfo:
    pod = r.pod
    return IPInfo(
        ip=r.ip,
        namespace=pod.namespace if pod else "",
        pod=pod.name if pod else "",
        node=(pod.node or "") if pod else "",
        trigger=r.trigger,
        reserved_at=r.reserved_at.timestamp(),
    )


class OldIPInfo(Collector):
    """The removed implementation: every record's info series, rows replaced per record event."""

    def __init__(self) -> None:
        self.rows: tuple[IPInfo, ...] = ()

    def collect(self) -> Iterator[Metric]:
        metric = Metric("capo_reserved_ip_info", "per IP", "gauge")
        for row in self.rows:
            labels = {"ip": row.ip, "namespace": row.namespace, "pod": row.pod, "node": row.node}
            metric.add_sample("capo_reserved_ip_info", {**labels, "trigger": row.trigger}, row.reserved_at)
        yield metric


class OldCount(Collector):
    def __init__(self) -> None:
        self.value = 0.0

    def collect(self) -> Iterator[Metric]:
        metric = Metric("ip_reserve_count", "Number of IPs reserved now", "gauge")
        metric.add_sample("ip_reserve_count", {}, self.value)
        yield metric


def old_refresh(records: Callable[[], list[Record]], count: OldCount, info: OldIPInfo) -> None:
    rows = records()
    count.value = len(rows)
    info.rows = tuple(info_of(r) for r in rows)


def metrics_at(n: int, runs: int) -> dict[str, Any]:
    records = make_records(n)
    # New: the operator's registry reading the store at scrape time.
    new = Metrics()
    new.watch_records(lambda: records, lambda: 1000)
    new_body = generate_latest(new.registry)
    new_scrape = median_ms(lambda: generate_latest(new.registry), runs)
    # Old: the same registry with the held-IP collector swapped for the removed one.
    old = Metrics()
    old.registry.unregister(old.held)
    count, info = OldCount(), OldIPInfo()
    old.registry.register(count)
    old.registry.register(info)
    old_refresh(lambda: records, count, info)
    old_body = generate_latest(old.registry)
    old_scrape = median_ms(lambda: generate_latest(old.registry), runs)

    # The record informer's update handler, on a watchers object holding just the set it writes.
    watchers: Any = SimpleNamespace(reserved_uids=set())
    record = records[0]

    def new_event() -> None:
        Watchers.record_seen(watchers, record)

    def old_event() -> None:
        new_event()
        old_refresh(lambda: records, count, info)

    return {
        "records": n,
        "scrape_ms": {"old": round(old_scrape, 1), "new": round(new_scrape, 1)},
        "scrape_bytes": {"old": len(old_body), "new": len(new_body)},
        "event_ms": {
            "old": round(median_ms(old_event, runs), 3),
            "new": round(median_ms(new_event, 1000), 4),
        },
    }


# -- ledger ----------------------------------------------------------------------------------


def make_ledger(pods: int, start: int = 0) -> dict[str, LedgerEntry]:
    """Dual-stack StatefulSet pods with random uids (they do not compress), realistic names."""
    out = {}
    for i in range(start, start + pods):
        sts = f"kafka-cluster-{i // 10 % 500}-broker"
        uid, owner_uid = str(uuid.uuid4()), str(uuid.uuid5(uuid.NAMESPACE_DNS, sts))
        for ip in (f"10.{i // 65536}.{i // 256 % 256}.{i % 256}", f"fd00:10::1:{i:x}"):
            out[ip] = LedgerEntry(
                ip, f"tenant-{i % 50:03d}-production", f"{sts}-{i % 10}", uid, f"worker-pool-a-{i % 400:04d}",
                "StatefulSet", sts, owner_uid,
            )  # fmt: skip
    return out


def encode_all(entries: dict[str, LedgerEntry], current: int = 1) -> list[L.EncodedShard]:
    shards, contents = L.choose_shard_count(entries, current)
    parts = L.split(entries, shards)
    return [
        L.encode_shard(parts[i], shard=i, shards=shards, generation=1, content=contents[i])
        for i in range(shards)
    ]


def changed_bytes(before: list[L.EncodedShard], after: list[L.EncodedShard]) -> int:
    old = {s.shard: s.content for s in before}
    return sum(s.size for s in after if old.get(s.shard) != s.content)


def ledger_at(pods: int, runs: int) -> dict[str, Any]:
    entries = make_ledger(pods)
    reps = max(1, runs if pods <= 10_000 else runs // 2)
    legacy = L.legacy_encode(entries)
    legacy_encode_ms = median_ms(lambda: L.legacy_encode(entries), reps)
    legacy_decode_ms = median_ms(lambda: L.legacy_decode(legacy), reps)
    shards = encode_all(entries)
    layout = shards[0].shards
    encode_ms = median_ms(lambda: encode_all(entries, layout), reps)
    decode_ms = median_ms(lambda: [L.decode_shard(s.meta, s.payload) for s in shards], reps)
    assert L.merge([L.decode_shard(s.meta, s.payload) for s in shards]) == entries
    # One pod replaced by another (a StatefulSet pod recreated with a new uid).
    changed = dict(entries)
    del changed["10.0.0.7"], changed["fd00:10::1:7"]
    changed.update(make_ledger(1, start=7))
    after = encode_all(changed, layout)
    # What the leader's save does per changed pass in the steady state: only changed shards.
    parts = L.split(entries, layout)
    stored = {s.shard: L.StoredShard(parts[s.shard], s.content, len(s.payload)) for s in shards}
    steady_ms = median_ms(lambda: L.encode_changes(changed, layout, stored, 2), reps)
    legacy_bytes = len(legacy.encode())
    total = sum(s.size for s in shards)
    return {
        "pods": pods,
        "ips": len(entries),
        "format1": {
            "bytes": legacy_bytes,
            "fits": legacy_bytes <= L.MAX_DATA_BYTES,
            "encode_ms": round(legacy_encode_ms),
            "decode_ms": round(legacy_decode_ms),
        },
        "format2": {
            "bytes": total,
            "shards": layout,
            "largest_shard": max(s.size for s in shards),
            "bytes_per_pod": round(total / pods, 1),
            "encode_ms": round(encode_ms),
            "decode_ms": round(decode_ms),
            "one_pod_change_bytes": changed_bytes(shards, after),
            "one_pod_change_encode_ms": round(steady_ms),
        },
    }


def worst_case_capacity() -> dict[str, Any]:
    """Pods whose every name is 63 random characters (nothing repeats, little compresses): how
    many fit in MAX_SHARDS shards at the hard limit."""
    rng = uuid.uuid4
    sample = {}
    for i in range(2000):
        fields = [rng().hex + rng().hex[:31] for _ in range(5)]
        for ip in (f"10.{i // 65536}.{i // 256 % 256}.{i % 256}", f"fd00::1:{i:x}"):
            sample[ip] = LedgerEntry(
                ip, fields[0], fields[1], str(rng()), fields[2], "StatefulSet", fields[3], fields[4]
            )
    per_pod = len(zlib.compress(L.shard_content(sample), L.COMPRESSION_LEVEL)) / 2000
    return {"bytes_per_pod": round(per_pod, 1), "pods": int(L.MAX_SHARDS * L.MAX_SHARD_BYTES / per_pod)}


def table(result: dict[str, Any]) -> str:
    lines = ["records | scrape ms old/new | scrape KiB old/new | per-event ms old/new"]
    for r in result["metrics"]:
        lines.append(
            f"{r['records']:>7} | {r['scrape_ms']['old']:>7} / {r['scrape_ms']['new']:<6} | "
            f"{r['scrape_bytes']['old'] / 1024:>8.0f} / {r['scrape_bytes']['new'] / 1024:<6.0f} | "
            f"{r['event_ms']['old']:>8} / {r['event_ms']['new']}"
        )
    lines.append("")
    lines.append(
        "pods | IPs | format1 KiB (fits) enc/dec ms | format2 KiB shards largest enc/dec ms | 1 pod: KiB ms"
    )
    for r in result["ledger"]:
        f1, f2 = r["format1"], r["format2"]
        lines.append(
            f"{r['pods']:>6} | {r['ips']:>6} | {f1['bytes'] / 1024:>6.0f} ({'yes' if f1['fits'] else 'no'}) "
            f"{f1['encode_ms']}/{f1['decode_ms']} | {f2['bytes'] / 1024:>6.0f} {f2['shards']:>2} "
            f"{f2['largest_shard'] / 1024:>5.0f} {f2['encode_ms']}/{f2['decode_ms']} | "
            f"{f2['one_pod_change_bytes'] / 1024:.0f} {f2['one_pod_change_encode_ms']}"
        )
    worst = result["ledger_worst_case"]
    lines.append(
        f"worst case (random 63-char names): {worst['bytes_per_pod']} B/pod, capacity {worst['pods']} pods"
    )
    return "\n".join(lines)


def main(argv: Iterable[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=5, help="repetitions per figure (medians are quoted)")
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args(list(argv) if argv is not None else None)
    result = {
        "python": sys.version.split()[0],
        "runs": args.runs,
        "metrics": [metrics_at(n, args.runs) for n in RECORD_COUNTS],
        "ledger": [ledger_at(pods, args.runs) for pods in LEDGER_PODS],
        "ledger_worst_case": worst_case_capacity(),
    }
    print(json.dumps(result, indent=2))
    print(table(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
