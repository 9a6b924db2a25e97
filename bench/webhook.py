"""Webhook benchmark: AdmissionReview requests over HTTPS to the running operator's webhook.

The real operator (Kopf webhook server, handlers, policy, indices, Events) runs in this process
against the project's API emulator; the Calico and record stores are in-memory fakes, so the
figures are the handler path without the Calico write. The load comes from a separate process
(keep-alive HTTPS connections), so the client does not steal the operator's event loop.

    python bench/webhook.py [--requests 5000] [--concurrency 8] [--runs 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import multiprocessing
import os
import socket
import ssl
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from capo_operator.app import Options
from capo_operator.config import parse_config
from capo_operator.decisions.addresses import host_cidr, ip_of
from capo_operator.decisions.record import Record
from capo_operator.kube.calico import CalicoGroup, Snapshot
from capo_testkit.certs import make_serving_cert
from kube_emulator.testing import EmulatorProcess

ROOT = Path(__file__).resolve().parent.parent
NAMESPACE = "bench"


class MemoryCalico:
    """Stands in for CalicoStore: same interface, no API call."""

    group = CalicoGroup.CRD
    name = "capo-reserved-ips"

    def __init__(self) -> None:
        self.entries: set[str] = set()

    async def ensure(self) -> None:
        return None

    async def append(self, ips: Iterable[str], details: Mapping[str, str] | None = None) -> None:
        self.entries.update(host_cidr(ip) for ip in ips)

    async def remove(self, ips: Iterable[str]) -> frozenset[str]:
        gone = {host_cidr(ip) for ip in ips} & self.entries
        self.entries -= gone
        return frozenset(ip_of(e) for e in gone)

    async def read(self) -> Snapshot:
        # The leader's reconcile pass is not what this benchmark measures, and the in-memory records
        # are invisible to the operator's watch: report nothing, so that pass stays idle.
        return Snapshot(ips=frozenset(), malformed=(), resource_version="1")


class MemoryRecords:
    """Stands in for RecordStore."""

    def __init__(self) -> None:
        self.records: dict[str, Record] = {}
        self.reservation = "capo-reserved-ips"

    async def create(self, record: Record) -> bool:
        if record.name in self.records:
            return False
        self.records[record.name] = record
        return True

    async def mark_releasing(self, name: str, reason: str, **_: Any) -> None:
        return None

    async def set_clock(self, name: str, **_: Any) -> None:
        return None

    async def delete(self, name: str) -> bool:
        return self.records.pop(name, None) is not None

    async def list(self) -> list[Record]:
        return list(self.records.values())


def free_port() -> int:
    with contextlib.closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def review(i: int) -> dict[str, Any]:
    """A DELETE review of a distinct selected pod, as kube-apiserver sends it."""
    uid = str(uuid.uuid4())
    ip = str(ipaddress.ip_address("10.200.0.0") + i)
    name = f"redis-{i}"
    pod: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"redis-{i}",
            "namespace": NAMESPACE,
            "uid": uid,
            "labels": {"statefulset.kubernetes.io/pod-name": f"redis-{i}", "app": "redis"},
            "ownerReferences": [
                {
                    "apiVersion": "apps/v1",
                    "kind": "StatefulSet",
                    "name": "redis",
                    "uid": "sts-uid",
                    "controller": True,
                }
            ],
        },
        "spec": {"nodeName": "node-1", "containers": [{"name": "redis", "image": "redis"}]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]},
    }
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": str(uuid.uuid4()),
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "name": name,
            "namespace": NAMESPACE,
            "operation": "DELETE",
            "userInfo": {"username": "bench"},
            "object": None,
            "oldObject": pod,
            "dryRun": False,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "DeleteOptions"},
        },
    }


async def _load(url: str, cafile: str, total: int, concurrency: int, offset: int) -> dict[str, Any]:
    context = ssl.create_default_context(cafile=cafile)
    bodies = [json.dumps(review(offset + i)).encode() for i in range(total)]
    latencies: list[float] = []
    failures = 0
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    connector = aiohttp.TCPConnector(ssl=context, limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            nonlocal failures
            while not queue.empty():
                body = queue.get_nowait()
                started = time.perf_counter()
                async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as resp:
                    answer = await resp.json()
                latencies.append(time.perf_counter() - started)
                if resp.status != 200 or not answer["response"]["allowed"]:
                    failures += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return {"latencies": latencies, "elapsed": elapsed, "failures": failures}


def _client(url: str, cafile: str, total: int, concurrency: int, offset: int, out: Any) -> None:
    out.put(asyncio.run(_load(url, cafile, total, concurrency, offset)))


def run_client(url: str, cafile: str, total: int, concurrency: int, offset: int) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_client, args=(url, cafile, total, concurrency, offset, queue))
    proc.start()
    result: dict[str, Any] = queue.get(timeout=600)
    proc.join()
    return result


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def start_operator(emu: Any, workdir: Path) -> tuple[asyncio.Task[int], str, str, MemoryCalico]:
    from kubernetes.aio import client, config

    from capo_operator import app

    cfg = client.Configuration()
    await config.load_kube_config(config_file=emu.kubeconfig_path, client_configuration=cfg)
    async with client.ApiClient(cfg) as api:
        namespace = client.V1Namespace(
            metadata=client.V1ObjectMeta(name=NAMESPACE, labels={"ip-reserve": "enabled"})
        )
        await client.CoreV1Api(api).create_namespace(namespace)
        import yaml

        crd = yaml.safe_load((ROOT / "manifests/crd/capo.io_reservedips.yaml").read_text())
        await client.ApiextensionsV1Api(api).create_custom_resource_definition(crd)

    serving = make_serving_cert(workdir, hosts=("127.0.0.1",))
    cert, key = serving.cert_file, serving.key_file
    webhook, metrics, probes = free_port(), free_port(), free_port()
    text = (
        "apiVersion: config.capo.io/v1\nkind: CapoConfig\n"
        f'health:\n  healthProbeBindAddress: "127.0.0.1:{probes}"\n'
        f'metrics:\n  bindAddress: "127.0.0.1:{metrics}"\n'
        f"webhook:\n  port: {webhook}\n"
        "ipReserveMaxCount: 1000000\nipReserveTime: 40m\n"
    )
    config_path = workdir / "capo_config.yaml"
    config_path.write_text(text)
    options = Options(
        config_path=config_path,
        namespace="default",
        identity="bench",
        tls_cert_file=cert,
        tls_key_file=key,
        certs="files",
        webhook_config_name="capo-operator",
        webhook_service="capo-webhook",
        kubeconfig=str(emu.kubeconfig_path),
        log_format="text",
        log_level="warning",
    )
    calico = MemoryCalico()
    task = asyncio.create_task(
        app.run(options, parse_config(text), calico=calico, records=MemoryRecords())  # type: ignore[arg-type]
    )
    async with aiohttp.ClientSession() as session:
        for _ in range(300):
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(f"http://127.0.0.1:{probes}/readyz") as resp:
                    if resp.status == 200:
                        break
            if task.done():
                raise RuntimeError(f"the operator exited: {task.result()}")
            await asyncio.sleep(0.1)
        else:
            raise RuntimeError("the operator did not become ready within 30 s")
    return task, f"https://127.0.0.1:{webhook}/reserve-on-delete", str(workdir / "ca.crt"), calico


async def bench(requests: int, concurrency: int, runs: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp, EmulatorProcess() as emu:
        task, url, cafile, calico = await start_operator(emu, Path(tmp))
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, run_client, url, cafile, 200, concurrency, 10_000_000)  # warm-up
        results = []
        for n in range(runs):
            res = await loop.run_in_executor(
                None, run_client, url, cafile, requests, concurrency, n * requests
            )
            lat = res["latencies"]
            results.append(
                {
                    "requests": len(lat),
                    "failures": res["failures"],
                    "reviews_per_second": len(lat) / res["elapsed"],
                    "p50_ms": percentile(lat, 0.50) * 1000,
                    "p99_ms": percentile(lat, 0.99) * 1000,
                    "max_ms": max(lat) * 1000,
                }
            )
        reserved = len(calico.entries)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
    return {
        "benchmark": "webhook DELETE review, handler path (in-memory Calico store)",
        "concurrency": concurrency,
        "runs": results,
        "median": {
            key: statistics.median(r[key] for r in results)
            for key in ("reviews_per_second", "p50_ms", "p99_ms", "max_ms")
        },
        "reserved_ips": reserved,
        "targets": {"reviews_per_second": ">= 500", "p99_ms": "<= 20"},
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
    }


def table(result: dict[str, Any]) -> str:
    lines = [f"{'run':>4} {'reviews/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'failed':>6}"]
    for i, r in enumerate(result["runs"], 1):
        lines.append(
            f"{i:>4} {r['reviews_per_second']:>10.0f} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} "
            f"{r['max_ms']:>8.2f} {r['failures']:>6}"
        )
    m = result["median"]
    lines.append(
        f"{'med':>4} {m['reviews_per_second']:>10.0f} {m['p50_ms']:>8.2f} {m['p99_ms']:>8.2f} "
        f"{m['max_ms']:>8.2f}"
    )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the JSON result to this file")
    args = parser.parse_args()
    result = asyncio.run(bench(args.requests, args.concurrency, args.runs))
    text = json.dumps(result, indent=2)
    print(text)
    print()
    print(table(result))
    if args.json:
        args.json.write_text(text + "\n")
    failed = sum(r["failures"] for r in result["runs"])
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
