"""The demo: a StatefulSet-like workload loses pods in every way capo-operator handles.

Everything printed comes from watching the cluster (ReservedIP records, Events, pods) and the
operators' metrics; the demo itself only acts the way users, `kubectl` and the StatefulSet
controller would (the emulator has no controllers, so the demo recreates deleted pods).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from capo_testkit import ApiError, Harness, eventually, pod_ip
from capo_testkit.kube import Obj, path_for
from demo.timeline import Timeline

NS = "shop"
STS = "redis"
REPLICAS = 3
CAP = 3


class DemoError(Exception):
    pass


@dataclass
class Hold:
    ip: str
    pod: str
    trigger: str
    reserved_at: float
    released_at: float | None = None
    reason: str | None = None


class Demo:
    def __init__(self, harness: Harness, timeline: Timeline, reserve_seconds: int) -> None:
        self.h = harness
        self.c = harness.cluster
        self.t = timeline
        self.reserve_seconds = reserve_seconds
        self.holds: list[Hold] = []
        self.releasing: dict[str, str] = {}  # record name -> reason, from the releasing annotation
        self.seen_pods: set[str] = set()  # pod uids already announced with their IP
        self.last_ip: dict[str, str] = {}  # pod name -> IP of its previous incarnation
        self.reused_while_held: list[str] = []
        self.skips: list[tuple[str, str]] = []
        self.sts_uid = ""

    # -- watchers (what the timeline is built from) -------------------------------------------

    def held_now(self) -> set[str]:
        return {h.ip for h in self.holds if h.released_at is None}

    async def watch_records(self) -> None:
        async for event in self.c.kube.list_and_watch(path_for("capo.io", "v1", "reservedips")):
            obj: Obj = event["object"]
            spec = obj.get("spec") or {}
            name = obj["metadata"]["name"]
            reason = (obj["metadata"].get("annotations") or {}).get("capo.io/releasing")
            if reason:
                self.releasing[name] = reason
            if event["type"] == "ADDED":
                pod = spec.get("pod") or {}
                who = f"{pod.get('namespace')}/{pod.get('name')}"
                self.holds.append(Hold(spec["ip"], who, spec.get("trigger", "?"), self.t.elapsed()))
                hold = spec.get("holdSeconds")
                self.t.emit(
                    "RESERVED",
                    f"{spec['ip']:<12} of {who:<14} trigger={spec.get('trigger')}  hold={hold}s  "
                    f"(ReservedIP {name} + IPReservation entry)",
                )
            elif event["type"] == "DELETED":
                why = self.releasing.pop(name, None) or "manual"
                for hold_ in self.holds:
                    if hold_.ip == spec.get("ip") and hold_.released_at is None:
                        hold_.released_at, hold_.reason = self.t.elapsed(), why
                        held = hold_.released_at - hold_.reserved_at
                        self.t.emit(
                            "RELEASED", f"{hold_.ip:<12} of {hold_.pod:<14} reason={why}  held {held:.1f}s"
                        )

    async def watch_pods(self) -> None:
        async for event in self.c.kube.list_and_watch(f"/api/v1/namespaces/{NS}/pods"):
            pod: Obj = event["object"]
            meta, status = pod["metadata"], pod.get("status") or {}
            name = meta["name"]
            if event["type"] == "DELETED" or meta["uid"] in self.seen_pods or not status.get("podIP"):
                continue
            self.seen_pods.add(meta["uid"])
            ip = status["podIP"]
            note = ""
            before = self.last_ip.get(name)
            claimed = bool((meta.get("annotations") or {}).get("capo.io/sticky-claim"))
            if claimed and before == ip:
                # Its own held IP, given back by the sticky webhook: not a reuse by another pod.
                note = "  (its own IP, given back: sticky)"
            elif before:
                note = f"  (was {before}: {'kept reserved' if before in self.held_now() else 'released'})"
            elif any(h.ip == ip and h.released_at is not None for h in self.holds):
                note = "  (a released IP: allocatable again)"
            if ip in self.held_now() and not (claimed and before == ip):
                self.reused_while_held.append(ip)
                note += "  !! this IP is reserved"
            self.last_ip[name] = ip
            self.t.emit("NEW POD", f"{NS}/{name:<10} got {ip}{note}")

    async def watch_events(self) -> None:
        async for event in self.c.kube.list_and_watch("/api/v1/events"):
            obj: Obj = event["object"]
            if event["type"] != "ADDED":
                continue
            reason, involved = obj.get("reason"), obj.get("involvedObject") or {}
            who = f"{involved.get('namespace')}/{involved.get('name')}"
            if reason == "IPNotReserved":
                self.skips.append((who, "event"))
                self.t.emit("SKIPPED", f"{who}: {obj.get('message')}")
            elif reason == "IPLost":
                self.t.emit("LOST", f"{who}: {obj.get('message')}")

    # -- acting like users and controllers ---------------------------------------------------

    async def skip_total(self, reason: str) -> float:
        return await self.h.total("capo_webhook_skips_total", reason=reason)

    async def expect_skip(self, reason: str, who: str, action: Callable[[], Awaitable[Any]]) -> None:
        """Run `action` and wait until an operator counts a skip with `reason` for it."""
        base = await self.skip_total(reason)
        await action()
        await eventually(
            lambda: self.skip_total(reason),
            lambda v: v > base,
            within=10,
            what=f"a '{reason}' skip for {who}",
            diagnostics=self.h.logs,
        )
        self.skips.append((who, reason))
        self.t.emit("SKIPPED", f"{who:<20} reason={reason}  (nothing reserved)")

    async def wait_held(self, ip: str) -> None:
        await eventually(
            lambda: asyncio.sleep(0, self.held_now()),
            lambda held: ip in held,
            within=10,
            what=f"{ip} reserved",
            diagnostics=self.h.logs,
        )

    async def stateful_pod(self, index: int, annotations: dict[str, str] | None = None) -> Obj:
        owner = {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": STS, "uid": self.sts_uid,
                 "controller": True, "blockOwnerDeletion": True}  # fmt: skip
        return await self.c.create_pod(
            NS, f"{STS}-{index}", owner=owner, labels={"app": STS}, annotations=annotations
        )

    async def recreate(self, index: int, annotations: dict[str, str] | None = None) -> str:
        """What the StatefulSet controller does: the same name comes back (with a new IP, unless
        it is sticky)."""
        await self.c.wait_gone(NS, f"{STS}-{index}")
        pod = await self.stateful_pod(index, annotations)
        return pod_ip(pod)

    # -- the story ------------------------------------------------------------------------------

    async def setup(self) -> None:
        await self.c.create_namespace(NS)
        sts = await self.c.kube.create(
            path_for("apps", "v1", "statefulsets", NS),
            {
                "apiVersion": "apps/v1",
                "kind": "StatefulSet",
                "metadata": {"name": STS, "namespace": NS},
                "spec": {
                    "replicas": REPLICAS,
                    "serviceName": STS,
                    "selector": {"matchLabels": {"app": STS}},
                    "template": {
                        "metadata": {"labels": {"app": STS}},
                        "spec": {"containers": [{"name": "redis", "image": "redis:7"}]},
                    },
                },
            },
        )
        self.sts_uid = sts["metadata"]["uid"]
        self.t.emit("ACTION", f"namespace {NS} (label ip-reserve=enabled), StatefulSet {STS} x{REPLICAS}, "
                    "an unselected pod web-0 and an opted-out pod cache-0")  # fmt: skip
        for i in range(REPLICAS):
            await self.stateful_pod(i)
        await self.c.create_pod(NS, "web-0", stateful=False, labels={"app": "web"})
        await self.c.create_pod(NS, "cache-0", annotations={"capo.io/reserve": "false"})

    async def story(self) -> None:
        ips = {i: pod_ip(await self.c.get_pod(NS, f"{STS}-{i}") or {}) for i in range(REPLICAS)}

        self.t.heading("1. kubectl delete pod: the IP is reserved before it is freed")
        self.t.emit("ACTION", f"kubectl delete pod {STS}-0")
        await self.c.delete_pod(NS, f"{STS}-0")
        await self.wait_held(ips[0])
        await self.recreate(0)

        self.t.heading("2. kubectl drain: an eviction")
        self.t.emit("ACTION", f"evict {STS}-1 (POST pods/{STS}-1/eviction)")
        await self.c.evict_pod(NS, f"{STS}-1")
        await self.wait_held(ips[1])
        ips[1] = await self.recreate(1)

        self.t.heading("3. node pressure: the kubelet evicts without any API delete (safety net)")
        self.t.emit("ACTION", f"kubelet marks {STS}-2 Failed/Evicted")
        await self.c.kubelet_evict(NS, f"{STS}-2")
        await self.wait_held(ips[2])
        self.t.emit("ACTION", f"the StatefulSet controller deletes the failed {STS}-2 and recreates it")
        await self.c.delete_pod(NS, f"{STS}-2")
        await self.recreate(2)

        self.t.heading("4. what is not reserved")
        self.t.emit("ACTION", f"kubectl delete pod {STS}-0 --dry-run=server")
        await self.expect_skip(
            "dry-run", f"{NS}/{STS}-0", lambda: self.c.delete_pod(NS, f"{STS}-0", dry_run=True)
        )
        self.t.emit("ACTION", "kubectl delete pod cache-0 (annotated capo.io/reserve=false)")
        await self.expect_skip("opted-out", f"{NS}/cache-0", lambda: self.c.delete_pod(NS, "cache-0"))
        self.t.emit("ACTION", "kubectl delete pod web-0 (no StatefulSet label: not selected)")
        await self.expect_skip("selector-mismatch", f"{NS}/web-0", lambda: self.c.delete_pod(NS, "web-0"))

        self.t.heading(f"5. over the cap (ipReserveMaxCount={CAP}): the oldest hold goes")
        self.t.emit("ACTION", f"kubectl delete pod {STS}-1 (a 4th reservation)")
        await self.c.delete_pod(NS, f"{STS}-1")
        await self.wait_held(ips[1])
        await eventually(
            lambda: asyncio.sleep(0, [h for h in self.holds if h.reason == "cap"]),
            bool,
            within=10,
            what="a release with reason cap",
            diagnostics=self.h.logs,
        )
        await self.recreate(1)

        self.t.heading(f"6. ipReserveTime={self.reserve_seconds}s passes: holds expire")
        await eventually(
            lambda: asyncio.sleep(0, self.held_now()),
            lambda held: not held,
            within=self.reserve_seconds + 20,
            interval=0.2,
            what="every hold to expire",
            diagnostics=self.h.logs,
        )
        released = {h.ip for h in self.holds}
        probe = pod_ip(await self.c.create_pod(NS, "probe-0", stateful=False, labels={"app": "probe"}))
        if probe not in released:
            raise DemoError(f"probe-0 got {probe}, expected one of the released IPs {sorted(released)}")

        self.t.heading("7. sticky IPs: redis-0 comes back with its own IP, nobody else gets it")
        sticky = {"capo.io/sticky": "true"}
        self.t.emit(
            "ACTION", f"the StatefulSet template and the running {STS}-0 are annotated capo.io/sticky=true"
        )
        template = {"spec": {"template": {"metadata": {"annotations": sticky}}}}
        await self.c.kube.patch(path_for("apps", "v1", "statefulsets", NS, STS), template)
        await self.c.kube.patch(
            f"/api/v1/namespaces/{NS}/pods/{STS}-0", {"metadata": {"annotations": sticky}}
        )
        own = pod_ip(await self.c.get_pod(NS, f"{STS}-0") or {})
        self.t.emit("ACTION", f"kubectl delete pod {STS}-0")
        await self.c.delete_pod(NS, f"{STS}-0")
        await self.wait_held(own)
        self.t.emit("ACTION", "a new pod probe-1 starts meanwhile")
        other = pod_ip(await self.c.create_pod(NS, "probe-1", stateful=False, labels={"app": "probe"}))
        if other == own:
            raise DemoError(f"probe-1 got the held sticky IP {own}")
        self.t.emit("ACTION", f"the StatefulSet controller recreates {STS}-0")
        back = await self.recreate(0, sticky)
        if back != own:
            raise DemoError(f"{STS}-0 came back with {back}, not its own {own}")
        await eventually(
            lambda: asyncio.sleep(0, [h for h in self.holds if h.ip == own and h.reason == "reclaimed"]),
            bool,
            within=10,
            what=f"the hold of {own} handed over (reason reclaimed)",
            diagnostics=self.h.logs,
        )

    def summary(self) -> str:
        t = self.t
        t.heading("Summary")
        rows = [("IP", "POD", "TRIGGER", "RESERVED", "RELEASED", "REASON")]
        for h in self.holds:
            released = f"{h.released_at:.1f}s" if h.released_at is not None else "-"
            rows.append((h.ip, h.pod, h.trigger, f"{h.reserved_at:.1f}s", released, h.reason or "held"))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        for row in rows:
            t.out.write("  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) + "\n")
        reasons: dict[str, int] = {}
        for h in self.holds:
            if h.reason:
                reasons[h.reason] = reasons.get(h.reason, 0) + 1
        skipped = sorted({r for _, r in self.skips if r != "event"})
        line = (
            f"reserved {len(self.holds)}, skipped {len([s for s in self.skips if s[1] != 'event'])} "
            f"({', '.join(skipped)}), released {sum(reasons.values())} "
            f"({', '.join(f'{k} {v}' for k, v in sorted(reasons.items()))}), "
            f"reserved IPs handed to new pods while held: {len(self.reused_while_held)}"
        )
        t.out.write(f"\n  {line}\n")
        t.out.flush()
        return line


async def run(args: argparse.Namespace) -> int:
    timeline = Timeline(colour=sys.stdout.isatty() and not args.no_colour)
    reserve = 6 if args.fast else 15
    workdir = Path(tempfile.mkdtemp(prefix="capo-demo-"))
    timeline.heading("capo-operator demo: API emulator + 2 operator replicas + a StatefulSet")  # fmt: skip
    async with Harness.open(workdir, force_emulator=True, nodes=3, kubelet_delay=0.3) as h:
        timeline.emit("INFO", f"emulator at {h.cluster.kube.host}; operator logs in {workdir}/operators")
        config = {"reserve_time": f"{reserve}s", "release_period": "500ms", "max_count": CAP}
        await h.install_sticky_webhook()
        await h.start_operators(2, **config)
        leader = await h.wait_leader()
        timeline.emit("LEADER", f"{leader.identity} holds Lease {h.cluster.operator_namespace}/capo "
                      "(releases run there; both replicas answer the webhook)")  # fmt: skip
        demo = Demo(h, timeline, reserve)
        watchers = [
            asyncio.create_task(demo.watch_records()),
            asyncio.create_task(demo.watch_pods()),
            asyncio.create_task(demo.watch_events()),
        ]
        try:
            await demo.setup()
            await demo.story()
            await asyncio.sleep(0.5)  # let the last watch events print before the summary
        except (DemoError, AssertionError, ApiError) as exc:
            timeline.emit("FAIL", str(exc).splitlines()[0])
            sys.stderr.write(f"{exc}\n{h.logs(30)}\n")
            return 1
        finally:
            for task in watchers:
                task.cancel()
            await asyncio.gather(*watchers, return_exceptions=True)
        line = demo.summary()
        if demo.reused_while_held:
            timeline.emit("FAIL", f"reserved IPs were handed out: {demo.reused_while_held}")
            return 1
        print(f"\ndemo ok: {line}")
        return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m demo", description=__doc__)
    parser.add_argument("--fast", action="store_true", help="shorter hold time (for tests)")
    parser.add_argument("--no-colour", action="store_true", help="plain output even on a terminal")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)  # the emulator runs in this process: keep it quiet

    async def guarded() -> int:
        # Ctrl-C and SIGTERM cancel the run, whose cleanup stops the operators and the emulator
        # (also when SIGINT was ignored by the parent, as in a background job of a script).
        task = asyncio.current_task()
        assert task is not None
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                asyncio.get_running_loop().add_signal_handler(sig, task.cancel)
        return await run(args)

    try:
        return asyncio.run(guarded())
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("\ninterrupted: operators and emulator stopped", file=sys.stderr)
        return 130
