"""The reserve write, shared by the webhook and the safety net: Calico first, then the records."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from capo_operator.calico import CalicoStore
from capo_operator.config import Config
from capo_operator.events import EventRecorder, ObjectRef
from capo_operator.metrics import Metrics
from capo_operator.policy import Hold, PodFacts
from capo_operator.records import KIND, PodRef, Record, RecordStore

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Reserved:
    ips: tuple[str, ...]  # in the Calico object now
    created: tuple[str, ...]  # IPs whose record this call created (others existed already)


def new_record(pod: PodFacts, ip: str, hold: Hold, trigger: str, now: datetime) -> Record:
    return Record(
        ip=ip,
        pod=PodRef(namespace=pod.namespace, name=pod.name, uid=pod.uid, node=pod.node),
        owner=pod.owner,
        trigger=trigger,
        reserved_at=now,
        expires_at=now + hold.length,
        hold=hold.length,
        policy=hold.policy,
    )


class Reserver:
    def __init__(
        self,
        *,
        calico: CalicoStore,
        records: RecordStore,
        events: EventRecorder,
        metrics: Metrics,
        config: Callable[[], Config],
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.calico = calico
        self.records = records
        self.events = events
        self.metrics = metrics
        self.config = config
        self.clock = clock

    async def reserve(self, pod: PodFacts, ips: tuple[str, ...], hold: Hold, trigger: str) -> Reserved:
        """Write the IPs to Calico (what IPAM obeys) before anything else, then one record per IP.
        A record that already exists is left as it is: the first reservation's clock stands."""
        try:
            await self.calico.append(ips)
        except Exception:
            self.metrics.calico_write_errors.labels(operation="append").inc()
            raise
        now = self.clock()
        results = await asyncio.gather(
            *(self.records.create(new_record(pod, ip, hold, trigger, now)) for ip in ips),
            return_exceptions=True,
        )
        created = []
        for ip, result in zip(ips, results, strict=True):
            if isinstance(result, BaseException):
                # The IP is held by Calico already; the leader adopts an entry without a record.
                logger.warning("reserved %s in Calico but could not create its record: %s", ip, result)
            elif result:
                created.append(ip)
        if created:
            self.metrics.reservations.labels(trigger=trigger).inc(len(created))
            what = ", ".join(created)
            message = f"Reserved {what} of pod {pod.namespace}/{pod.name} ({trigger}); hold {hold.policy}"
            self.events.post(ObjectRef("Pod", pod.name, pod.namespace, pod.uid), "IPReserved", message)
            for ip in created:
                rec = new_record(pod, ip, hold, trigger, now)
                self.events.post(ObjectRef(KIND, rec.name, api_version="capo.io/v1"), "IPReserved", message)
            logger.info(
                "reserved %s of pod %s/%s",
                what,
                pod.namespace,
                pod.name,
                extra={"trigger": trigger, "pod_uid": pod.uid, "hold": hold.policy},
            )
        return Reserved(ips=ips, created=tuple(created))
