"""The safety net: reserves what admission cannot see or could not write.

Fed by the pod watch (deletions without a record, pods turning terminal with no API call, such as
kubelet node-pressure evictions) and by the webhook when its own write failed. Every replica runs
it; the leader acts first and the others a little later, after checking the records again, so
one reservation is normally written once (and writing it twice is harmless anyway).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import time
from dataclasses import dataclass, field

from capo_operator.config import Config, LiveConfig
from capo_operator.decisions import policy
from capo_operator.decisions.addresses import record_name
from capo_operator.decisions.policy import Hold, PodFacts
from capo_operator.flows.reserver import Reserver
from capo_operator.flows.state import Leadership, RecentUIDs
from capo_operator.kube.caches import Views
from capo_operator.kube.events import ObjectRef
from capo_operator.metrics import Metrics

logger = logging.getLogger(__name__)

LEADER_DELAY = 1.0
STANDBY_DELAY = 4.0
MAX_ATTEMPTS = 20
MAX_BACKOFF = 30.0


@dataclass(order=True)
class _Item:
    due: float
    seq: int
    pod: PodFacts = field(compare=False)
    trigger: str = field(compare=False)
    ips: tuple[str, ...] | None = field(compare=False, default=None)  # None: decide when due
    hold: Hold | None = field(compare=False, default=None)
    terminal_transition: bool = field(compare=False, default=False)
    attempts: int = field(compare=False, default=0)


class SafetyNet:
    def __init__(
        self,
        *,
        views: Views,
        reserver: Reserver,
        metrics: Metrics,
        config: LiveConfig,
        leadership: Leadership,
        recent: RecentUIDs,
        reserved_uids: RecentUIDs,
    ) -> None:
        self.views = views
        self.reserver = reserver
        self.metrics = metrics
        self.config = config
        self.leadership = leadership
        # Pods this replica's webhook reserved (their records follow) and pods that had a record
        # (seen by the record handlers): neither is a miss, even once the hold was released.
        self.recent = recent
        self.reserved_uids = reserved_uids
        self._heap: list[_Item] = []
        self._seq = itertools.count()
        self._wakeup = asyncio.Event()
        self._pending_uids: set[str] = set()

    @property
    def pending(self) -> int:
        return len(self._heap)

    def _push(self, item: _Item) -> None:
        heapq.heappush(self._heap, item)
        self._pending_uids.add(item.pod.uid)
        self._wakeup.set()

    def _delay(self) -> float:
        return LEADER_DELAY if self.leadership.leading else STANDBY_DELAY

    def pod_gone(self, pod: PodFacts) -> None:
        """The pod was deleted; if no record holds its IPs, the webhook missed it."""
        if pod.terminal or pod.uid in self._pending_uids:
            return  # a terminal pod's IP was freed (and handled) when it turned terminal
        self._push(_Item(time.monotonic() + self._delay(), next(self._seq), pod, "safety-net"))

    def pod_terminated(self, pod: PodFacts) -> None:
        """The pod turned Failed/Succeeded with no API call: its IP is being freed now."""
        if pod.uid in self._pending_uids:
            return
        if pod.deleting:
            # A pod being deleted also turns terminal (recent kubelets): then it is a missed deletion,
            # which the webhook has most likely reserved already; give it time to show.
            due = time.monotonic() + self._delay()
            trigger = "safety-net"
        else:
            # Nothing races a kubelet eviction and IPAM may hand the IP out again at once: every
            # replica reserves now (repeated reserves are idempotent: the second finds the record).
            due = time.monotonic()
            trigger = policy.terminal_trigger(pod)
        self._push(_Item(due, next(self._seq), pod, trigger, terminal_transition=True))

    def retry(self, pod: PodFacts, ips: tuple[str, ...], hold: Hold, trigger: str) -> None:
        """The webhook decided to reserve but its write failed or ran out of time."""
        self._push(_Item(time.monotonic() + LEADER_DELAY, next(self._seq), pod, trigger, ips, hold))

    def reserved_before(self, uid: str) -> bool:
        return uid in self.reserved_uids or uid in self.recent

    async def run(self) -> None:
        while True:
            if not self._heap:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            wait = self._heap[0].due - time.monotonic()
            if wait > 0:
                self._wakeup.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), wait)
                continue
            item = heapq.heappop(self._heap)
            try:
                await self._handle(item, self.config.current)
            except Exception as exc:
                item.attempts += 1
                if item.attempts >= MAX_ATTEMPTS:
                    self._pending_uids.discard(item.pod.uid)
                    logger.error(
                        "giving up reserving IPs of pod %s/%s: %s", item.pod.namespace, item.pod.name, exc
                    )
                    continue
                backoff = min(MAX_BACKOFF, 2.0**item.attempts)
                logger.warning(
                    "safety net could not reserve pod %s/%s (retry in %.0fs): %s",
                    item.pod.namespace,
                    item.pod.name,
                    backoff,
                    exc,
                )
                item.due = time.monotonic() + backoff
                heapq.heappush(self._heap, item)
            else:
                if not any(i.pod.uid == item.pod.uid for i in self._heap):
                    self._pending_uids.discard(item.pod.uid)

    def _unrecorded(self, ips: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(ip for ip in ips if self.views.record(record_name(ip)) is None)

    async def _handle(self, item: _Item, config: Config) -> None:
        pod = item.pod
        if item.ips is None and self.reserved_before(pod.uid):
            return  # reserved once already (and maybe released since): not a miss, not a loss
        hold: Hold | None
        if item.ips is not None and item.hold is not None:
            # A webhook retry: IPAM may have handed the never-reserved IP to a new pod meanwhile.
            holders = self.views.ip_holders(item.ips, except_uid=pod.uid)
            reused = tuple(ip for ip in item.ips if ip in holders)
            ips, hold = tuple(ip for ip in item.ips if ip not in holders), item.hold
        else:
            namespace = self.views.namespace(pod.namespace)
            holders = self.views.ip_holders(pod.ips, except_uid=pod.uid)
            decision = policy.decide(
                pod, namespace, config, ip_holders=holders, terminal_transition=item.terminal_transition
            )
            reused, ips, hold = decision.reused, decision.ips, decision.hold
        if reused:
            self.metrics.reservations_lost.inc(len(reused))
            self.reserver.events.post(
                ObjectRef("Pod", pod.name, pod.namespace, pod.uid),
                "IPLost",
                f"IP {', '.join(reused)} of pod {pod.namespace}/{pod.name} was not reserved: "
                "another pod holds it already",
                warning=True,
            )
        if not ips or hold is None:
            return
        missing = self._unrecorded(ips)
        if not missing:
            return  # the webhook (or another replica) got there first
        result = await self.reserver.reserve(pod, missing, hold, item.trigger)
        if result.created:
            self.metrics.safety_net_catches.labels(trigger=item.trigger).inc(len(result.created))
            logger.info(
                "safety net reserved %s of pod %s/%s (%s)",
                ",".join(result.created),
                pod.namespace,
                pod.name,
                item.trigger,
            )
