"""Chaos soak: the real operator (3 replicas) under a contended workload and injected faults,
judged by an independent checker (bench/soak_checker.py). Prints JSON and a table.

    python bench/soak.py --duration 600 --ops 2000      # make soak
    python bench/soak.py --duration 100 --ops 300       # make soak-ci

Workload: StatefulSet-like pods in namespaces labelled ip-reserve=enabled, each recreated under its
old name as soon as it is gone, on a small pod CIDR whose allocator hands out the lowest free IP
that no IPReservation holds (so a released IP is reused at once). Operations: pod deletions, API
evictions, drain bursts, kubelet evictions. Faults: API 5xx and timeouts on the Calico
IPReservation and on ReservedIP records, 409 storms, dropped watches and 410s, webhook outages,
kill -9 of the leader (then restart), good and bad config reloads, manual record deletions.
Method, definitions and figures: docs/soak.md. Exit status 1 when the checker counted anything.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import random
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from soak_checker import (  # noqa: E402
    CATEGORIES,
    Blocked,
    Checker,
    FinalState,
    ManualDeletion,
    Observation,
    Policy,
)

from capo_testkit import ApiError, Harness, Kube, OperatorProcess  # noqa: E402
from capo_testkit.kube import path_for, pods_path  # noqa: E402

RESERVE_TIME = 20.0  # ipReserveTime (s): short, so holds end and IPs are reused within the run
MAX_RESERVE_TIME = 40.0  # maxIPReserveTime (s): the per-pod annotation is clamped to it
MAX_COUNT = 1000  # ipReserveMaxCount above the pool size (253): the cap can never force a release
RECORDS = ("capo.io", "v1", "reservedips")
GONE_WITHIN = 30.0  # a deletion not finished by then is "blocked"

# (namespace, set name, replicas, pod annotations, StatefulSet-labelled)
WORKLOAD: list[tuple[str, str, int, dict[str, str], bool]] = [
    ("soak-a", "redis", 8, {}, True),
    ("soak-a", "kafka", 6, {"capo.io/reserve-time": "8s"}, True),
    ("soak-a", "zk", 4, {"capo.io/reserve-time": "90s"}, True),  # clamped to maxIPReserveTime
    ("soak-b", "mongo", 6, {"capo.io/reserve-time": "soon"}, True),  # invalid: ipReserveTime
    ("soak-b", "cache", 4, {"capo.io/reserve": "false"}, True),  # opted out: never reserved
    ("soak-b", "web", 4, {"capo.io/reserve": "true"}, False),  # opted in without the selector
]
BAD_CONFIGS: list[dict[str, Any] | str] = [
    {"ipReserveTime": "soon"},
    {"ipReleasePeriod": "0s"},
    {"ipReserveMaxCount": -1},
    {"ipReserveTimes": "1s"},  # a typo of a known key
    "apiVersion: config.capo.io/v1\nkind: CapoConfig\nipReserveTime: [\n",  # not YAML
]


def slim(kind: str, obj: dict[str, Any]) -> dict[str, Any]:
    """Only the fields the checker reads (a 10-minute soak records ~100k objects)."""
    meta = obj.get("metadata") or {}
    m = {
        k: meta[k]
        for k in ("name", "namespace", "uid", "labels", "annotations", "deletionTimestamp")
        if k in meta
    }
    if kind == "pod":
        status = obj.get("status") or {}
        keep = {k: status[k] for k in ("phase", "podIP", "podIPs", "reason") if k in status}
        node = (obj.get("spec") or {}).get("nodeName")  # what a drain selects by
        return {"metadata": m, "spec": {"nodeName": node} if node else {}, "status": keep}
    if kind in ("calico", "record"):
        return {"metadata": m, "spec": obj.get("spec") or {}}
    if kind == "event":
        return {"metadata": m, **{k: obj.get(k) for k in ("reason", "message", "involvedObject", "count")}}
    return {"metadata": m}


class Recorder:
    """List+watch streams of the objects the checker judges, resumed from the last resourceVersion
    after a dropped watch and relisted (with DELETED synthesized for what vanished) after a 410."""

    def __init__(self, kube: Kube, paths: dict[str, str]) -> None:
        self.kube = kube
        self.paths = paths
        self.observations: list[Observation] = []
        self.live: dict[str, dict[str, dict[str, Any]]] = {kind: {} for kind in paths}  # kind -> uid -> obj
        self.pods_by_name: dict[tuple[str, str], dict[str, Any]] = {}
        self.synced: dict[str, asyncio.Event] = {kind: asyncio.Event() for kind in paths}
        self.restarts: Counter[str] = Counter()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        self._tasks = [asyncio.create_task(self._stream(k, p)) for k, p in self.paths.items()]
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in self.synced.values())), 60)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _emit(self, kind: str, etype: str, obj: dict[str, Any], rv: int) -> None:
        if kind == "event" and not str(obj.get("reason") or "").startswith(("IP", "Config")):
            return
        small = slim(kind, obj)
        self.observations.append(Observation(rv, time.time(), kind, etype, small))
        meta = small["metadata"]
        uid = str(meta.get("uid") or meta.get("name"))
        if etype == "DELETED":
            self.live[kind].pop(uid, None)
        else:
            self.live[kind][uid] = small
        if kind == "pod":
            key = (str(meta.get("namespace")), str(meta.get("name")))
            if etype != "DELETED":
                self.pods_by_name[key] = small
            elif (self.pods_by_name.get(key) or {}).get("metadata", {}).get("uid") == meta.get("uid"):
                del self.pods_by_name[key]

    async def _relist(self, kind: str) -> int:
        body = (await self.kube.call("GET", self.paths[kind])).body
        rv = int(body["metadata"]["resourceVersion"])
        current = {str(i["metadata"].get("uid") or i["metadata"]["name"]): i for i in body.get("items") or []}
        for uid in list(self.live[kind]):
            if uid not in current:
                self._emit(kind, "DELETED", dict(self.live[kind][uid]), rv)
        for item in current.values():
            self._emit(kind, "ADDED", item, int(item["metadata"].get("resourceVersion") or rv))
        return rv

    async def _stream(self, kind: str, path: str) -> None:
        rv: int | None = None
        while True:
            try:
                if rv is None:
                    rv = await self._relist(kind)
                    self.synced[kind].set()
                async for event in self.kube.watch(path, resource_version=str(rv), within=60):
                    obj = event.get("object") or {}
                    if event.get("type") == "ERROR":
                        rv = None if obj.get("code") == 410 else rv
                        break
                    orv = int((obj.get("metadata") or {}).get("resourceVersion") or rv)
                    if event.get("type") != "BOOKMARK":
                        self._emit(kind, str(event.get("type")), obj, orv)
                    rv = orv
            except ApiError as exc:
                if exc.status == 410:
                    rv = None
                await asyncio.sleep(0.1)
            except (aiohttp.ClientError, TimeoutError, ValueError, KeyError):
                await asyncio.sleep(0.1)
            self.restarts[kind] += 1


@dataclass
class Slot:
    namespace: str
    name: str
    annotations: dict[str, str]
    stateful: bool
    busy: bool = False


class Soak:
    def __init__(self, harness: Harness, args: argparse.Namespace) -> None:
        self.h = harness
        self.c = harness.cluster
        self.kube = harness.cluster.kube
        self.args = args
        self.rng = random.Random(args.seed)
        self.ops: Counter[str] = Counter()
        self.faults: Counter[str] = Counter()
        self.blocked: list[Blocked] = []
        self.manual: list[ManualDeletion] = []
        self.slots: list[Slot] = []
        self.operators: list[OperatorProcess] = []
        self.inflight: set[asyncio.Task[None]] = set()
        self.config_lock = asyncio.Lock()
        self.good_period = "250ms"
        self.problems: list[str] = []  # soak-side trouble (not product violations)
        self.recorder: Recorder | None = None
        self.samples: list[dict[str, int]] = []
        self.timeline: list[tuple[float, str]] = []  # (epoch, what) of faults and kills
        self.op_of: dict[str, str] = {}  # pod uid -> the operation that removed it
        self.killing: set[str] = set()  # replicas the soak stopped on purpose
        self.crashes: list[dict[str, Any]] = []  # replicas that exited on their own

    # -- set-up --------------------------------------------------------------------------------

    async def setup(self) -> None:
        self.operators = await self.h.start_operators(
            3,
            reserve_time=f"{RESERVE_TIME:g}s",
            release_period=self.good_period,
            max_count=MAX_COUNT,
            extra={
                "maxIPReserveTime": f"{MAX_RESERVE_TIME:g}s",
                **({"reserveAhead": True} if self.args.reserve_ahead else {}),
            },
        )
        group, version = self.c.calico_group
        self.recorder = Recorder(
            self.kube,
            {
                "namespace": "/api/v1/namespaces",
                "pod": "/api/v1/pods",
                "calico": path_for(group, version, "ipreservations"),
                "record": path_for(*RECORDS),
                "event": "/api/v1/events",
            },
        )
        await self.recorder.start()
        for ns in sorted({w[0] for w in WORKLOAD}):
            await self.c.create_namespace(ns)
        for ns, name, replicas, extra, stateful in WORKLOAD:
            for i in range(replicas):
                self.slots.append(Slot(ns, f"{name}-{i}", extra, stateful))
        await asyncio.gather(*(self._create(s) for s in self.slots))

    async def _create(self, slot: Slot) -> None:
        manifest = self.c.pod_manifest(
            slot.namespace, slot.name, annotations=slot.annotations or None, stateful=slot.stateful
        )
        deadline = time.monotonic() + 60
        while True:
            resp = await self.kube.call("POST", pods_path(slot.namespace), manifest, ok=(409, 500, 503))
            if resp.status == 201 or resp.status == 200:
                break
            if time.monotonic() > deadline:
                self.problems.append(f"could not recreate {slot.namespace}/{slot.name}: {resp.body}")
                return
            await asyncio.sleep(0.2)
        await self._wait(lambda: self._running(slot) is not None, 60, f"{slot.name} running")

    # -- pod state from the recorder (no polling of the API) -----------------------------------

    def _pod(self, slot: Slot) -> dict[str, Any] | None:
        assert self.recorder is not None
        return self.recorder.pods_by_name.get((slot.namespace, slot.name))

    def _running(self, slot: Slot) -> dict[str, Any] | None:
        pod = self._pod(slot)
        if pod is None or pod["metadata"].get("deletionTimestamp"):
            return None
        status = pod.get("status") or {}
        return pod if status.get("phase") == "Running" and status.get("podIPs") else None

    async def _wait(self, ready: Callable[[], bool], within: float, what: str) -> bool:
        deadline = time.monotonic() + within
        while not ready():
            if time.monotonic() > deadline:
                self.problems.append(f"timed out waiting for {what}")
                return False
            await asyncio.sleep(0.05)
        return True

    async def _gone(self, slot: Slot, uid: str) -> bool:
        def gone() -> bool:
            pod = self._pod(slot)
            return pod is None or pod["metadata"].get("uid") != uid

        deadline = time.monotonic() + GONE_WITHIN
        while not gone():
            if time.monotonic() > deadline:
                # The recorder may lag behind a dropped watch: ask the API before calling it blocked.
                pod = await self.kube.get_or_none(pods_path(slot.namespace, slot.name))
                return pod is None or pod["metadata"].get("uid") != uid
            await asyncio.sleep(0.05)
        return True

    # -- operations ----------------------------------------------------------------------------

    def idle_slots(self) -> list[Slot]:
        return [s for s in self.slots if not s.busy and self._running(s) is not None]

    def start_op(self, slot: Slot, kind: str) -> None:
        slot.busy = True
        task = asyncio.create_task(self._op(slot, kind))
        self.inflight.add(task)
        task.add_done_callback(self.inflight.discard)

    async def _op(self, slot: Slot, kind: str) -> None:
        try:
            pod = self._running(slot)
            if pod is None:
                return
            uid = str(pod["metadata"]["uid"])
            self.ops[kind] += 1
            self.op_of[uid] = kind
            ref = f"{slot.namespace}/{slot.name}"
            t0 = time.time()
            if kind == "kubelet-eviction":
                await self.c.control.kubelet_evict(slot.namespace, slot.name)
                await asyncio.sleep(0.5)  # the StatefulSet controller notices the Failed pod
                kind = "delete-failed"
            if kind in ("delete", "delete-failed"):
                options = {"apiVersion": "v1", "kind": "DeleteOptions", "preconditions": {"uid": uid}}
                resp = await self.kube.call(
                    "DELETE",
                    pods_path(slot.namespace, slot.name),
                    options,
                    ok=(400, 403, 409, 422, 429, 500, 503, 504, 404),
                )
            else:
                eviction = {
                    "apiVersion": "policy/v1",
                    "kind": "Eviction",
                    "metadata": {"name": slot.name, "namespace": slot.namespace},
                }
                resp = await self.kube.call(
                    "POST",
                    pods_path(slot.namespace, slot.name, "eviction"),
                    eviction,
                    ok=(400, 403, 409, 422, 429, 500, 503, 504, 404),
                )
            if resp.status >= 400 and resp.status != 404:
                message = resp.body.get("message") if isinstance(resp.body, dict) else resp.body
                self.blocked.append(Blocked(kind, ref, t0, f"HTTP {resp.status}: {message}"))
                return
            if not await self._gone(slot, uid):
                self.blocked.append(Blocked(kind, ref, t0, f"not gone after {GONE_WITHIN:g}s"))
                return
            await self._create(slot)
        except (ApiError, aiohttp.ClientError, TimeoutError) as exc:
            self.problems.append(f"{kind} of {slot.namespace}/{slot.name}: {exc!r}")
        finally:
            slot.busy = False

    async def drain(self) -> None:
        """`kubectl drain`: evict every pod of one node at once."""
        # By spec.nodeName, as kubectl drain selects (the soak's nodes have no addresses: no hostIP).
        nodes = sorted(
            {(self._running(s) or {}).get("spec", {}).get("nodeName", "") for s in self.slots} - {""}
        )
        idle = self.idle_slots()
        if not idle:
            return
        node = self.rng.choice(nodes) if nodes else ""
        victims = [s for s in idle if (self._running(s) or {}).get("spec", {}).get("nodeName") == node]
        self.faults["drain-burst"] += 1
        self.timeline.append((time.time(), f"drain-burst {node} ({len(victims)} pods)"))
        for slot in victims:
            self.start_op(slot, "drain-eviction")

    async def workload(self, until: float, ops_target: int) -> None:
        interval = self.args.duration / max(ops_target, 1)
        next_at = time.monotonic()
        weights = {"delete": 45, "eviction": 35, "kubelet-eviction": 20}
        while time.monotonic() < until or sum(self.ops.values()) < ops_target:
            if time.monotonic() > until + self.args.duration:  # cannot reach the target: stop anyway
                self.problems.append(f"operation target {ops_target} not reached")
                break
            now = time.monotonic()
            if now < next_at:
                await asyncio.sleep(next_at - now)
            next_at = max(next_at + interval, time.monotonic() - 1)
            idle = self.idle_slots()
            if not idle or len(self.inflight) >= 16:
                continue
            kind = self.rng.choices(list(weights), weights=list(weights.values()))[0]
            self.start_op(self.rng.choice(idle), kind)
        if self.inflight:
            await asyncio.wait(set(self.inflight))

    # -- faults -------------------------------------------------------------------------------

    async def fault(self, kind: str) -> None:
        ctl = self.c.control
        t0 = time.time()
        calico = r"/ipreservations/"
        if kind == "calico-5xx":
            await ctl.add_fault(method="PATCH", path=calico, status=self.rng.choice([500, 503]), times=3)
        elif kind == "calico-timeout":
            await ctl.add_fault(method="PATCH", path=calico, status=504, latency=4.0, times=2)
        elif kind == "record-5xx":
            for method in ("POST", "DELETE", "PATCH"):
                await ctl.add_fault(method=method, path=r"/reservedips", status=500, times=2)
        elif kind == "record-timeout":
            await ctl.add_fault(method="POST", path=r"/reservedips", status=504, latency=4.0, times=2)
        elif kind == "conflict-storm":
            for method in ("PATCH", "PUT"):
                await ctl.add_fault(
                    method=method, path=r"/(ipreservations|reservedips)/", status=409, times=10
                )
        elif kind == "watch-drop":
            await ctl.add_fault(drop_watch=True, path=r"/(pods|reservedips|ipreservations)", times=1)
        elif kind == "watch-410":
            # As kube-apiserver says it: 200 and one ERROR event with code 410 (resourceVersion expired).
            await ctl.add_fault(
                method="GET",
                path=r"(pods|reservedips|ipreservations).*watch=",
                status=410,
                times=3,
                watch_event=True,
            )
        elif kind == "webhook-outage":
            fid = await ctl.add_fault("webhook", status=0)
            await asyncio.sleep(4)
            await ctl.remove_fault(fid)
        elif kind == "webhook-slow":
            fid = await ctl.add_fault("webhook", latency=6.0)  # beyond timeoutSeconds: 5
            await asyncio.sleep(6)
            await ctl.remove_fault(fid)
        elif kind == "config-good":
            self.good_period = "500ms" if self.good_period == "250ms" else "250ms"
            for op in self.operators:
                op.update_config(ipReleasePeriod=self.good_period)
        elif kind == "config-bad":
            async with self.config_lock:
                good = [dict(op.config) for op in self.operators]
                bad = self.rng.choice(BAD_CONFIGS)
                for op in self.operators:
                    op.write_config(bad if isinstance(bad, str) else {**op.config, **bad})
                await asyncio.sleep(5)
                for op, cfg in zip(self.operators, good, strict=True):
                    op.write_config(cfg)
        elif kind == "manual-release":
            await self.manual_release()
        self.faults[kind] += 1
        self.timeline.append((t0, kind))

    async def manual_release(self) -> None:
        assert self.recorder is not None
        records = [
            r
            for r in self.recorder.live["record"].values()
            if "capo.io/releasing" not in (r["metadata"].get("annotations") or {})
        ]
        if not records:
            return
        record = self.rng.choice(records)
        sent = time.time()
        # Counted as manual only once the API accepted it (an injected 5xx may refuse it).
        await self.kube.delete(path_for(*RECORDS, name=record["metadata"]["name"]), missing_ok=True)
        self.manual.append(ManualDeletion(str(record["spec"].get("ip")), sent))

    async def chaos(self, until: float) -> None:
        kinds = [
            "calico-5xx",
            "calico-timeout",
            "record-5xx",
            "record-timeout",
            "conflict-storm",
            "watch-drop",
            "watch-410",
            "webhook-outage",
            "webhook-slow",
            "config-good",
            "config-bad",
            "manual-release",
            "manual-release",
            "drain",
        ]
        deck: list[str] = []
        while time.monotonic() < until:
            await asyncio.sleep(self.rng.uniform(0.5, 1.5) * self.args.chaos_every)
            if not deck:
                deck = kinds[:]
                self.rng.shuffle(deck)
            kind = deck.pop()
            try:
                await (self.drain() if kind == "drain" else self.fault(kind))
            except Exception as exc:  # soak trouble, not the product's: note it and go on
                self.problems.append(f"fault {kind}: {exc!r}")

    async def leader_kills(self, until: float) -> None:
        while True:
            await asyncio.sleep(self.args.kill_every)
            if time.monotonic() >= until:
                return
            holder = await self.c.lease_holder()
            victim = next((op for op in self.operators if op.running and op.identity == holder), None)
            if victim is None:
                continue
            self.killing.add(victim.identity)
            await victim.kill()
            self.faults["leader-kill-9"] += 1
            self.timeline.append((time.time(), f"leader-kill-9 {victim.identity}"))
            await asyncio.sleep(5)
            async with self.config_lock:  # never start a replica on a bad config file
                victim.start()
            self.killing.discard(victim.identity)
            try:
                await victim.wait_ready(within=60)
            except AssertionError as exc:
                self.problems.append(f"{victim.identity} did not come back: {str(exc)[:300]}")

    async def supervise(self) -> None:
        """Restart a replica that exited on its own, as the kubelet restarts a crashed container."""
        while True:
            await asyncio.sleep(1.0)
            for op in self.operators:
                if op.running or op.identity in self.killing or op.proc is None:
                    continue
                errors = [line for line in op.log_text().splitlines() if " ERROR " in line]
                self.crashes.append(
                    {
                        "replica": op.identity,
                        "exit_code": op.proc.returncode,
                        "at": time.strftime("%H:%M:%S"),
                        "last_errors": [e[:300] for e in errors[-3:]],
                    }
                )
                self.timeline.append((time.time(), f"crash {op.identity} (exit {op.proc.returncode})"))
                async with self.config_lock:
                    if not op.running:  # the end of the run may have restarted it meanwhile
                        op.start()

    async def sample(self, until: float) -> None:
        """The allocator's view (control API): how contended the pool is."""
        while time.monotonic() < until:
            with contextlib.suppress(Exception):
                snap = await self.c.control.allocator()
                self.samples.append(
                    {
                        "allocated": len(snap["allocated"]),
                        "reserved": len(snap["reserved"]),
                        "malformed": len(snap["malformed"]),
                    }
                )
            await asyncio.sleep(1.0)

    def context(self, item: dict[str, Any]) -> dict[str, Any]:
        """What the soak did around a finding: the operation that removed the pod, recent faults."""
        t = float(item.get("t") or 0)
        recent = [f"{what} ({t - at:.1f}s before)" for at, what in self.timeline if t - 12 <= at <= t]
        return {"operation": self.op_of.get(str(item.get("uid") or ""), "?"), "faults_before": recent}

    # -- the run ------------------------------------------------------------------------------

    async def run(self) -> dict[str, Any]:
        started = time.monotonic()
        await self.setup()
        setup_s = time.monotonic() - started
        t0 = time.monotonic()
        until = t0 + self.args.duration
        background = [
            asyncio.create_task(self.chaos(until)),
            asyncio.create_task(self.leader_kills(until)),
            asyncio.create_task(self.sample(until + self.args.settle)),
            asyncio.create_task(self.supervise()),
        ]
        await self.workload(until, self.args.ops)
        ran_s = time.monotonic() - t0
        for task in background[:2]:
            task.cancel()
        for task in background[:2]:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        # Faults stop: clear them, restore a good config, bring every replica back, then settle.
        await self.c.control.clear_faults()
        for op in self.operators:
            op.update_config(ipReleasePeriod=self.good_period)
            if not op.running:
                op.start()
        await asyncio.gather(*(op.wait_ready(within=60) for op in self.operators))
        await asyncio.sleep(self.args.settle)
        for task in background[2:]:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        reservation = await self.c.reservation()
        final = FinalState(
            tuple(((reservation or {}).get("spec") or {}).get("reservedCIDRs") or []),
            tuple(await self.c.records()),
        )
        assert self.recorder is not None
        await self.recorder.stop()
        policy = Policy(
            reserve_time=RESERVE_TIME,
            max_reserve_time=MAX_RESERVE_TIME,
            reserve_ahead=self.args.reserve_ahead,
        )
        checker = Checker(
            policy, manual=self.manual, blocked=self.blocked, operator_namespace=self.c.operator_namespace
        )
        verdict = checker.run(self.recorder.observations, final)
        for item in [*verdict["violations"], *verdict["noted"]]:
            item["context"] = self.context(item)
        peak = max(self.samples, key=lambda s: s["allocated"] + s["reserved"], default={})
        return {
            "benchmark": "chaos soak: 3 replicas, contended IPs, injected faults, independent checker",
            "seed": self.args.seed,
            "duration_s": round(ran_s, 1),
            "setup_s": round(setup_s, 1),
            "settle_s": self.args.settle,
            "operations": dict(sorted(self.ops.items())),
            "operations_total": sum(self.ops.values()),
            "faults": dict(sorted(self.faults.items())),
            "faults_total": sum(self.faults.values()),
            "checker": verdict["counts"],
            "seen": verdict["stats"],
            "pool": {"cidr": "10.244.0.0/24", "pods": len(self.slots), "peak_allocated_plus_reserved": peak},
            "observations": len(self.recorder.observations),
            "recorder_restarts": dict(self.recorder.restarts),
            "config": {
                "ipReserveTime": f"{RESERVE_TIME:g}s",
                "maxIPReserveTime": f"{MAX_RESERVE_TIME:g}s",
                "ipReserveMaxCount": MAX_COUNT,
                "reserveAhead": self.args.reserve_ahead,
                "replicas": 3,
            },
            "violations": verdict["violations"],
            "noted": verdict["noted"][:50],
            "noted_total": len(verdict["noted"]),
            "noted_by_operation": dict(
                Counter(f"{n['category']} after {n['context']['operation']}" for n in verdict["noted"])
            ),
            "replica_crashes": self.crashes,
            "soak_problems": self.problems[:50],
            "timeline": [(time.strftime("%H:%M:%S", time.localtime(at)), what) for at, what in self.timeline],
            "logs": str(self.h.workdir / "operators"),
        }


def table(result: dict[str, Any]) -> str:
    lines = [
        f"soak: {result['duration_s']}s, {result['operations_total']} operations, "
        f"{result['faults_total']} faults"
    ]
    lines.append(f"{'checker':<24} {'count':>6}")
    lines += [f"  {name:<22} {result['checker'][name]:>6}" for name in CATEGORIES]
    lines.append(f"{'operations':<24}")
    lines += [f"  {k:<22} {v:>6}" for k, v in result["operations"].items()]
    lines.append(f"{'faults':<24}")
    lines += [f"  {k:<22} {v:>6}" for k, v in result["faults"].items()]
    lines.append(f"{'noted (not counted)':<24}")
    lines += [f"  {k:<32} {v:>6}" for k, v in result["noted_by_operation"].items()]
    lines.append(f"{'replica crashes':<24} {len(result['replica_crashes']):>6}")
    lines.append(f"{'seen':<24}")
    lines += [f"  {k:<22} {v:>6}" for k, v in result["seen"].items()]
    return "\n".join(lines)


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="capo-soak-"))
    workdir.mkdir(parents=True, exist_ok=True)
    # The emulator runs in this process: its log (failed-open webhook calls...) goes to a file.
    logging.basicConfig(
        filename=workdir / "emulator.log",
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    async with Harness.open(workdir, nodes=3, kubelet_delay=0.2, force_emulator=True) as harness:
        return await Soak(harness, args).run()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=600, help="seconds of operations (default 600)")
    parser.add_argument("--ops", type=int, default=2000, help="at least this many operations (default 2000)")
    parser.add_argument(
        "--settle", type=float, default=20, help="seconds without faults before the drift check"
    )
    parser.add_argument("--kill-every", type=float, default=60, help="kill -9 the leader this often (s)")
    parser.add_argument("--chaos-every", type=float, default=4, help="mean seconds between faults")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--reserve-ahead",
        action="store_true",
        help="replicas run with reserveAhead: true (the checker judges reserved-ahead entries)",
    )
    parser.add_argument("--workdir", help="operator logs and configs (default: a new temp directory)")
    parser.add_argument("--json", type=Path, help="also write the JSON result to this file")
    args = parser.parse_args(argv)
    result = asyncio.run(main_async(args))
    text = json.dumps(result, indent=2)
    print(text)
    print()
    for v in result["violations"]:
        print(f"[{v['category']}] {v['detail']}")
    print(table(result))
    if args.json:
        args.json.write_text(text + "\n")
    # A finding of the checker, or a replica that exited on its own (nothing in the operator exits
    # by design), fails the run: CI runs it (`make soak-ci` in .ci/run).
    return 1 if any(result["checker"].values()) or result["replica_crashes"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
