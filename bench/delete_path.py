"""Pod-delete latency through the API emulator: no webhook, a zero-work webhook, the real operator.

Method (docs/performance.md, "Delete path"). One emulator process (`python -m kube_emulator`) with a
per-write commit latency set at run time (`POST /_emulator/write-latency`; writes to one object
serialized, as etcd's optimistic concurrency makes them). For each write latency, in the same run:
1. `none`: no webhook configured;
2. `zero-work`: an HTTPS webhook in its own process that allows everything at once, registered with
   the shipped ValidatingWebhookConfiguration (same rules, namespaceSelector, timeouts);
3. `operator`: the real operator process (`python -m capo_operator run`) behind the same configuration;
4. `operator-ahead`: the same with `reserveAhead: true`. Its pods are deleted once the IPReservation
   holds every one of their IPs (the steady state of pods that have run for more than a second); the
   time from a pod seen running to its IP held is reported.
Each configuration deletes fresh selected pods (gracePeriodSeconds 0, as measured on the real
kube-apiserver): `sequential` (one client, one pod after another) and `burst` (16 concurrent
clients, as a node drain). The benchmark watches the IPReservation and compares resourceVersions
(one global sequence in the emulator, etcd's revision on a real server): an IP counts as reserved
before its delete returned when the IPReservation version holding it precedes the pod's deletion
version. It also counts the IPReservation writes between two marker writes around the burst.
Prints JSON (also to --json) and a table; figures are medians over --runs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from capo_testkit.certs import ServingCert, make_serving_cert  # noqa: E402
from capo_testkit.cluster import Cluster, pod_ips  # noqa: E402
from capo_testkit.kube import Kube, path_for, pods_path  # noqa: E402
from capo_testkit.operator import OperatorProcess, free_port  # noqa: E402
from kube_emulator.testing import EmulatorProcess  # noqa: E402

CONFIGS = ("none", "zero-work", "operator", "operator-ahead")
OPERATORS = ("operator", "operator-ahead")
MARKER = "bench-marker"
AHEAD_WAIT = 60.0  # seconds the operator-ahead phase waits for its pods' IPs to be held


# -- the zero-work webhook (its own process) ----------------------------------------------------------


def serve_zero_webhook(port: int, cert: str, key: str) -> None:
    import ssl

    from aiohttp import web

    async def review(request: web.Request) -> web.Response:
        body = await request.json()
        uid = (body.get("request") or {}).get("uid", "")
        return web.json_response(
            {
                "apiVersion": "admission.k8s.io/v1",
                "kind": "AdmissionReview",
                "response": {"uid": uid, "allowed": True},
            }
        )

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    app = web.Application()
    app.router.add_post("/{tail:.*}", review)
    web.run_app(app, host="127.0.0.1", port=port, ssl_context=context, print=None, access_log=None)


@contextlib.contextmanager
def zero_webhook(cert: ServingCert) -> Any:
    port = free_port()
    argv = [sys.executable, __file__, "zero-webhook", str(port), str(cert.cert_file), str(cert.key_file)]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    try:
        yield port, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- measuring ------------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class ReservationWatch:
    """Every version of the IPReservation: (resourceVersion, IPs held), and when each arrived."""

    def __init__(self, kube: Kube, group: tuple[str, str], name: str) -> None:
        self.kube = kube
        self.path = path_for(group[0], group[1], "ipreservations")
        self.name = name
        self.versions: list[tuple[int, frozenset[str]]] = []
        self.arrived: list[float] = []  # time.monotonic() at which each of `versions` was received
        self.changed = asyncio.Event()  # set on every version
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        body = (await self.kube.call("GET", self.path)).body
        for item in body.get("items") or []:
            self._add(item)
        self._task = asyncio.create_task(self._run(body["metadata"]["resourceVersion"]))

    def _add(self, obj: dict[str, Any]) -> None:
        if obj["metadata"]["name"] != self.name:
            return
        entries = (obj.get("spec") or {}).get("reservedCIDRs") or []
        ips = frozenset(e.split("/")[0] for e in entries)
        self.versions.append((int(obj["metadata"]["resourceVersion"]), ips))
        self.arrived.append(time.monotonic())
        self.changed.set()

    async def _run(self, rv: str) -> None:
        async for event in self.kube.watch(self.path, resource_version=rv, within=3600):
            if event.get("type") in ("ADDED", "MODIFIED"):
                self._add(event["object"])

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    def reserved_at(self, ip: str) -> int | None:
        """The first version holding `ip`."""
        for rv, ips in self.versions:
            if ip in ips:
                return rv
        return None

    def held_since(self, ip: str, first: int) -> float | None:
        """When the first of versions[first:] holding `ip` was received."""
        for (_rv, ips), at in zip(self.versions[first:], self.arrived[first:], strict=True):
            if ip in ips:
                return at
        return None

    async def wait_held(self, pods: list[tuple[float, dict[str, Any]]], first: int, within: float) -> float:
        """Wait until every IP of `pods` ((seen running at, pod)) is held by one of versions[first:]
        (those received since the pods were created: an IP in use was free when it was assigned);
        the longest time from a pod seen running to its IPs held, in seconds."""
        deadline = time.monotonic() + within
        while True:
            self.changed.clear()
            lags = [
                None if (held := self.held_since(ip, first)) is None else held - running
                for running, pod in pods
                for ip in pod_ips(pod)
            ]
            if all(lag is not None for lag in lags):
                return max((lag for lag in lags if lag is not None), default=0.0)
            left = deadline - time.monotonic()
            if left <= 0:
                missing = sum(lag is None for lag in lags)
                raise TimeoutError(f"{missing} of {len(lags)} IPs not reserved ahead within {within:g} s")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), left)

    def writes_between(self, low: int, high: int) -> tuple[int, int]:
        """(writes, writes that added IPs) with low < resourceVersion < high."""
        writes = appends = 0
        previous: frozenset[str] = frozenset()
        for rv, ips in self.versions:
            if low < rv < high:
                writes += 1
                appends += bool(ips - previous)
            previous = ips
        return writes, appends


async def mark(kube: Kube, namespace: str) -> int:
    """A write of our own: its resourceVersion splits the global sequence."""
    path = f"/api/v1/namespaces/{namespace}/configmaps"
    body = {"metadata": {"name": MARKER}, "data": {"t": str(time.monotonic())}}
    resp = await kube.call("PUT", f"{path}/{MARKER}", body, ok=(404,))
    if resp.status == 404:
        resp = await kube.call("POST", path, body)
    return int(resp.body["metadata"]["resourceVersion"])


async def handler_time(op: OperatorProcess | None) -> tuple[float, float]:
    if op is None:
        return 0.0, 0.0
    metrics = await op.metrics()
    name = "capo_webhook_duration_seconds"
    return metrics.value(f"{name}_sum", operation="delete"), metrics.value(
        f"{name}_count", operation="delete"
    )


async def review_outcomes(op: OperatorProcess | None) -> dict[str, float]:
    """The operator's review outcomes so far (reserved, skipped:<reason>, error, ...)."""
    if op is None:
        return {}
    metrics = await op.metrics()
    out = dict(metrics.by_label("capo_webhook_requests_total", "outcome"))
    for reason, value in metrics.by_label("capo_webhook_skips_total", "reason").items():
        out[f"skipped:{reason}"] = value
    return out


async def create_pods(
    cluster: Cluster, namespace: str, prefix: str, count: int
) -> list[tuple[float, dict[str, Any]]]:
    """(when the pod was seen running with its IP, the pod) for each new pod."""
    gate = asyncio.Semaphore(16)

    async def one(i: int) -> tuple[float, dict[str, Any]]:
        async with gate:
            pod = await cluster.create_pod(namespace, f"{prefix}-{i}")
            return time.monotonic(), pod

    return list(await asyncio.gather(*(one(i) for i in range(count))))


async def delete_pods(
    kube: Kube, pods: list[dict[str, Any]], clients: int
) -> tuple[list[float], dict[str, int], list[str]]:
    """Delete with `clients` concurrent clients; latencies, the deletion version per pod, warnings."""
    queue = list(reversed(pods))
    latencies: list[float] = []
    versions: dict[str, int] = {}
    warnings: list[str] = []

    async def client() -> None:
        while queue:
            pod = queue.pop()
            meta = pod["metadata"]
            started = time.perf_counter()
            resp = await kube.call(
                "DELETE",
                pods_path(meta["namespace"], meta["name"]),
                {"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0},
            )
            latencies.append(time.perf_counter() - started)
            versions[meta["name"]] = int(resp.body["metadata"]["resourceVersion"])
            warnings.extend(resp.warnings)

    await asyncio.gather(*(client() for _ in range(clients)))
    return latencies, versions, warnings


async def phase(
    cluster: Cluster,
    watch: ReservationWatch,
    namespace: str,
    label: str,
    mode: str,
    count: int,
    clients: int,
    op: OperatorProcess | None,
    pids: dict[str, int],
    ahead: bool = False,
) -> dict[str, Any]:
    first = len(watch.versions)
    created = await create_pods(cluster, namespace, label, count)
    pods = [pod for _, pod in created]
    await asyncio.sleep(1.0)  # the operator's pod cache has seen them (as it has in a real cluster)
    held_after: float | None = None
    if ahead:
        # Pods that have run for a while: the leader has reserved their IPs ahead (and this
        # replica's webhook has seen that version, as the benchmark's own watch has).
        held_after = await watch.wait_held(created, first, AHEAD_WAIT)
    handler_before = await handler_time(op)
    outcomes_before = await review_outcomes(op)
    cluster.control.clear_admission_log()
    before = await mark(cluster.kube, namespace)
    cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    started = time.perf_counter()
    latencies, versions, warnings = await delete_pods(cluster.kube, pods, clients)
    elapsed = time.perf_counter() - started
    cpu_after = {name: cpu_seconds(pid) for name, pid in pids.items()}
    after = await mark(cluster.kube, namespace)
    handler_after = await handler_time(op)
    result: dict[str, Any] = {
        "mode": mode,
        "deletions": count,
        "clients": clients,
        "p50_ms": round(percentile(latencies, 0.50) * 1000, 2),
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 2),
        "max_ms": round(max(latencies) * 1000, 2),
        "deletions_per_s": round(count / elapsed, 1),
        "admission_warnings": len(warnings),
        # CPU the processes spent during the deletions, per deletion (steadier than wall time on a
        # loaded machine; the emulator stands for the API server, "webhook" for the webhook's process).
        "cpu_ms_per_deletion": {
            name: round((cpu_after[name] - cpu_before[name]) / count * 1000, 3) for name in pids
        },
    }
    # How the emulator's calls to the webhook ended ("ignored": failed, let through by failurePolicy).
    webhook_calls: dict[str, int] = {}
    for entry in cluster.control.admission_log():
        key = entry["outcome"] if entry["outcome"] != "ignored" else f"ignored: {entry['message'][:80]}"
        webhook_calls[key] = webhook_calls.get(key, 0) + 1
    result["webhook_calls"] = webhook_calls
    if op is not None:
        calls = handler_after[1] - handler_before[1]
        # Time inside the operator's review (decision + the awaited write), from its own histogram.
        result["handler_mean_ms"] = round((handler_after[0] - handler_before[0]) / max(calls, 1) * 1000, 2)
        await asyncio.sleep(0.3)  # the watch delivers the last versions
        late = []
        for pod in pods:
            rv = versions[pod["metadata"]["name"]]
            for ip in pod_ips(pod):
                at = watch.reserved_at(ip)
                if at is None or at > rv:
                    late.append(ip)
        writes, appends = watch.writes_between(before, after)
        outcomes = await review_outcomes(op)
        result.update(
            ips=sum(len(pod_ips(p)) for p in pods),
            reserved_before_answer=not late,
            not_reserved_before_answer=len(late),
            late_ips=late[:20],
            review_outcomes={k: v - outcomes_before.get(k, 0) for k, v in outcomes.items()},
            calico_writes=writes,
            calico_append_writes=appends,
        )
    if held_after is not None:
        # The slowest pod: from seen running (the benchmark polls every 50 ms) to the first
        # IPReservation version holding its IP received by the benchmark's watch.
        result["held_after_running_max_s"] = round(held_after, 3)
    return result


@contextlib.asynccontextmanager
async def emulator(workdir: Path) -> AsyncIterator[tuple[Cluster, Any]]:
    with EmulatorProcess(
        pod_cidr="10.244.0.0/18",
        nodes=3,
        kubelet_delay=0.05,
        log_level="warning",
        log_file=str(workdir / "emulator.log"),
    ) as emu:
        kube = await Kube.from_kubeconfig(emu.kubeconfig_path)
        try:
            cluster = Cluster(kube, Path(emu.kubeconfig_path), emulator=emu, run_id="bench")
            await cluster._prepare()
            yield cluster, emu
        finally:
            await kube.close()


async def one_run(
    run: int,
    latencies: list[float],
    sequential: int,
    burst: int,
    workdir: Path,
    configs: tuple[str, ...] = CONFIGS,
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    cert = make_serving_cert(workdir / "certs", hosts=("127.0.0.1",))
    async with emulator(workdir) as (cluster, emu):
        namespace = await cluster.create_namespace(f"bench-{run}")
        watch = ReservationWatch(cluster.kube, cluster.calico_group, cluster.reservation_name)
        await watch.start()
        with zero_webhook(cert) as (zero_port, zero_pid):
            for latency in latencies:
                emu.control.set_write_latency(latency)
                for config in configs:
                    op: OperatorProcess | None = None
                    assert emu.process is not None
                    pids = {"emulator": emu.process.pid}
                    if config == "none":
                        await cluster.remove_webhook()
                    elif config == "zero-work":
                        await cluster.install_webhook(f"https://127.0.0.1:{zero_port}", cert.ca_bundle)
                        pids["webhook"] = zero_pid
                    else:
                        op = OperatorProcess(
                            workdir=workdir / "operator",
                            identity=f"bench-{run}-{int(latency * 1000)}",
                            kubeconfig=cluster.kubeconfig,
                            namespace=cluster.operator_namespace,
                            cert_file=cert.cert_file,
                            key_file=cert.key_file,
                            webhook_port=free_port(),
                            reserve_time="40m",
                            release_period="5s",
                            max_count=100_000,
                            args=("--log-level", "warning"),
                            extra={"reserveAhead": True} if config == "operator-ahead" else None,
                        )
                        op.start()
                        await op.wait_ready(60)
                        assert op.proc is not None
                        pids["webhook"] = op.proc.pid
                        await cluster.install_webhook(f"https://127.0.0.1:{op.webhook_port}", cert.ca_bundle)
                    try:
                        short = "ahea" if config == "operator-ahead" else config[:4]
                        tag = f"{short}-{int(latency * 1000)}ms"
                        for mode, count, clients in (("sequential", sequential, 1), ("burst", burst, 16)):
                            row = await phase(
                                cluster,
                                watch,
                                namespace,
                                f"{tag}-{mode[:3]}",
                                mode,
                                count,
                                clients,
                                op,
                                pids,
                                ahead=config == "operator-ahead",
                            )
                            row.update(run=run, write_latency_ms=latency * 1000, config=config)
                            rows.append(row)
                            print(json.dumps(row), file=sys.stderr, flush=True)
                    finally:
                        if op is not None:
                            await cluster.remove_webhook()
                            await op.stop()
        await watch.stop()
    return rows


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Medians over runs per (write latency, config, mode), with the ratio to zero-work's p50/p99."""
    groups: dict[tuple[float, str, str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["write_latency_ms"], row["config"], row["mode"]), []).append(row)
    out: list[dict[str, Any]] = []
    for (latency, config, mode), runs in sorted(
        groups.items(), key=lambda kv: (kv[0][0], kv[0][2], CONFIGS.index(kv[0][1]))
    ):
        summary: dict[str, Any] = {
            "write_latency_ms": latency,
            "mode": mode,
            "config": config,
            "runs": len(runs),
        }
        for key in ("p50_ms", "p99_ms", "max_ms", "deletions_per_s"):
            summary[key] = round(statistics.median(r[key] for r in runs), 2)
        summary["cpu_ms_per_deletion"] = {
            name: round(statistics.median(r["cpu_ms_per_deletion"][name] for r in runs), 3)
            for name in runs[0].get("cpu_ms_per_deletion", {})
        }
        if config in OPERATORS:
            summary["calico_writes"] = statistics.median(r["calico_writes"] for r in runs)
            summary["calico_append_writes"] = statistics.median(r["calico_append_writes"] for r in runs)
            summary["ips"] = runs[0]["ips"]
            summary["all_reserved_before_answer"] = all(r["reserved_before_answer"] for r in runs)
            summary["admission_warnings"] = sum(r["admission_warnings"] for r in runs)
            summary["handler_mean_ms"] = statistics.median(r["handler_mean_ms"] for r in runs)
            outcomes: dict[str, float] = {}
            for r in runs:
                for outcome, value in r["review_outcomes"].items():
                    outcomes[outcome] = outcomes.get(outcome, 0) + value
            summary["review_outcomes"] = {k: v for k, v in sorted(outcomes.items()) if v}  # summed over runs
        if config == "operator-ahead":
            summary["held_after_running_max_s"] = max(r["held_after_running_max_s"] for r in runs)
        out.append(summary)
    for summary in out:
        base = next(
            (s for s in out if s["config"] == "zero-work" and s["mode"] == summary["mode"]
             and s["write_latency_ms"] == summary["write_latency_ms"]),
            None,
        )  # fmt: skip
        if base is not None:
            summary["p50_vs_zero_work"] = round(summary["p50_ms"] / base["p50_ms"], 2)
            summary["p99_vs_zero_work"] = round(summary["p99_ms"] / base["p99_ms"], 2)
    return out


def table(summary: list[dict[str, Any]]) -> str:
    head = (
        f"{'write':>6} {'mode':<10} {'config':<14} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} "
        f"{'x0 p50':>6} {'x0 p99':>6} {'writes':>11} {'reserved':>9} {'ahead':>9} {'held s':>6} "
        f"{'cpu emu':>8} {'cpu hook':>8}"
    )
    lines = [head, "-" * len(head)]
    for s in summary:
        writes = f"{s['calico_append_writes']:g}/{s['ips']}" if "ips" in s else ""
        reserved = ("yes" if s["all_reserved_before_answer"] else "NO") if "ips" in s else ""
        outcomes = s.get("review_outcomes", {})
        # Reviews answered without a write / reviews that reserved (reserved-ahead + reserved).
        answered = outcomes.get("reserved-ahead", 0) + outcomes.get("reserved", 0)
        ahead = ""
        if s["config"] == "operator-ahead":
            ahead = f"{outcomes.get('reserved-ahead', 0):g}/{answered:g}"
        held = f"{s['held_after_running_max_s']:.2f}" if "held_after_running_max_s" in s else ""
        cpu = s.get("cpu_ms_per_deletion", {})
        hook = f"{cpu['webhook']:.2f}" if "webhook" in cpu else ""
        x50 = f"{s['p50_vs_zero_work']:.2f}" if "p50_vs_zero_work" in s else ""
        x99 = f"{s['p99_vs_zero_work']:.2f}" if "p99_vs_zero_work" in s else ""
        lines.append(
            f"{s['write_latency_ms']:>4g}ms {s['mode']:<10} {s['config']:<14} {s['p50_ms']:>7.1f} "
            f"{s['p99_ms']:>7.1f} {s['max_ms']:>7.1f} {x50:>6} {x99:>6} {writes:>11} {reserved:>9} "
            f"{ahead:>9} {held:>6} {cpu.get('emulator', 0):>8.2f} {hook:>8}"
        )
    lines.append("writes: IPReservation writes that added IPs / IPs deleted (operators)")
    lines.append("ahead: reviews answered reserved-ahead (no write) / reviews that reserved (operator-ahead)")
    lines.append("held s: longest time from a pod seen running to its IP held (operator-ahead)")
    lines.append("cpu emu / cpu hook: CPU ms per deletion of the emulator / of the webhook's process")
    return "\n".join(lines)


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="capo-bench-delete-") as tmp:
        for run in range(args.runs):
            workdir = (args.workdir or Path(tmp)) / f"run-{run}"
            workdir.mkdir(parents=True, exist_ok=True)
            rows.extend(
                await one_run(
                    run, args.write_latency, args.sequential, args.burst, workdir, tuple(args.configs)
                )
            )
    return {
        "benchmark": "pod DELETE latency through the emulator: no webhook, zero-work webhook, capo-operator"
        " (reserveAhead off and on)",
        "configs": list(args.configs),
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "runs": args.runs,
        "sequential": args.sequential,
        "burst": args.burst,
        "burst_clients": 16,
        "summary": summarize(rows),
        "results": rows,
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["zero-webhook"]:
        serve_zero_webhook(int(argv[1]), argv[2], argv[3])
        return 0
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--sequential", type=int, default=200, help="pods deleted one after another")
    p.add_argument("--burst", type=int, default=100, help="pods deleted by 16 concurrent clients")
    p.add_argument("--write-latency", type=float, nargs="+", default=[0.002, 0.005], help="seconds per write")
    p.add_argument(
        "--configs",
        nargs="+",
        choices=CONFIGS,
        default=list(CONFIGS),
        help="configurations to measure, in this order (ratios need zero-work)",
    )
    p.add_argument("--json", type=Path, default=None, help="also write the JSON here")
    p.add_argument("--workdir", type=Path, default=None, help="keep logs here (default: a temporary dir)")
    args = p.parse_args(argv)
    result = asyncio.run(main_async(args))
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    print(table(result["summary"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
