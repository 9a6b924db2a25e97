"""The reserve write, shared by the webhook and the safety net: Calico first, then the records.

The Calico append (group-committed: concurrent reservations share one patch) carries each record's
details as a pending annotation (pending.py). The webhook waits for that one write only; its records
and Events follow in the background (`RecordFollower`: bounded, retried, deduplicated). The safety
net and the ledger recovery are not answering anyone, so they create the records before returning.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from capo_operator.config import LiveConfig
from capo_operator.decisions import pending, sticky
from capo_operator.decisions.addresses import AddressError, ip_of
from capo_operator.decisions.policy import Hold, PodFacts
from capo_operator.decisions.record import KIND, PodRef, Record
from capo_operator.kube.calico import CalicoStore, GroupCommit, Snapshot
from capo_operator.kube.events import EventRecorder, ObjectRef
from capo_operator.kube.records import RecordStore
from capo_operator.metrics import Metrics

logger = logging.getLogger(__name__)

FOLLOW_LIMIT = 10_000  # records waiting to be written; beyond it the leader adopts from the annotation
FOLLOW_CONCURRENCY = 8
FOLLOW_ATTEMPTS = 8
FOLLOW_MAX_BACKOFF = 30.0
# During a burst of reviews (a drain) the records wait: the event loop answers reviews first. They
# are written once appends have been quiet this long, or when the oldest has waited FOLLOW_MAX_DELAY.
FOLLOW_QUIET = 0.1
FOLLOW_MAX_DELAY = 2.0


@dataclass(frozen=True)
class Reserved:
    ips: tuple[str, ...]  # in the Calico object now
    created: tuple[str, ...]  # IPs whose record this call created (others existed already or follow)
    wrote: bool = True  # False: reserved ahead (reserveAhead), the object held every IP already


def new_record(
    pod: PodFacts, ip: str, hold: Hold, trigger: str, now: datetime, choice: sticky.Choice | None = None
) -> Record:
    return Record(
        ip=ip,
        pod=PodRef(namespace=pod.namespace, name=pod.name, uid=pod.uid, node=pod.node),
        owner=pod.owner,
        trigger=trigger,
        reserved_at=now,
        expires_at=now + hold.length,
        hold=hold.length,
        policy=hold.policy,
        sticky=choice is not None and choice.sticky,
        release_policy=choice.policy if choice is not None else sticky.ReleasePolicy.TTL,
    )


@dataclass
class _Job:
    pod: PodFacts
    records: list[Record]
    attempts: int = 0
    queued_at: float = 0.0


class Reserver:
    def __init__(
        self,
        *,
        calico: CalicoStore,
        records: RecordStore,
        events: EventRecorder,
        metrics: Metrics,
        config: LiveConfig,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        reservations: Callable[[], Snapshot | None] | None = None,
    ) -> None:
        self.calico = calico
        # The IPReservation as this replica's watch shows it (reserveAhead): an IP it holds already
        # needs no write. None: every reservation writes.
        self.reservations = reservations
        self.config = config  # the sticky default applies to what is reserved
        self.commit = GroupCommit(
            calico, on_error=lambda: metrics.calico_write_errors.labels(operation="append").inc()
        )
        self.records = records
        self.events = events
        self.metrics = metrics
        self.clock = clock
        self.follower = RecordFollower(self)

    async def reserve(
        self, pod: PodFacts, ips: tuple[str, ...], hold: Hold, trigger: str, *, records_later: bool = False
    ) -> Reserved:
        """Write the IPs to Calico (what IPAM obeys), with the records' details, before anything else;
        then one record per IP, now or (`records_later`) in the background. A record that already
        exists is left as it is: the first reservation's clock stands."""
        now = self.clock()
        # Reserved means selected: the config default for sticky applies.
        choice = sticky.choose(pod.annotations, self.config.current, selected=True)
        if choice.warning:
            self.events.post(
                ObjectRef("Pod", pod.name, pod.namespace, pod.uid),
                "InvalidStickyAnnotation",
                choice.warning,
                warning=True,
            )
        wanted = [new_record(pod, ip, hold, trigger, now, choice) for ip in ips]
        wrote = not self.held_already(ips)
        if wrote:
            # A failed write is counted once by the group commit, however many reservations it carried.
            await self.commit.append(ips, {r.ip: pending.encode(r) for r in wanted})
        else:
            # A review all the same: the records wait for a lull in reviews as after an append.
            self.commit.last_activity = asyncio.get_running_loop().time()
        if records_later:
            self.follower.submit(pod, wanted)
            return Reserved(ips=ips, created=(), wrote=wrote)
        created, failed = await self.create_records(pod, wanted)
        for record, exc in failed:
            # The IP is held by Calico already; the leader adopts the entry from its details.
            logger.warning("reserved %s in Calico but could not create its record: %s", record.ip, exc)
        return Reserved(ips=ips, created=created, wrote=wrote)

    def held_already(self, ips: tuple[str, ...]) -> bool:
        """reserveAhead: the IPReservation (as watched) holds every one of `ips`. The leader reserved
        them while the pod ran and removes none of a selected live pod's IPs, so the deletion needs
        no write. A watch that lags only makes this say no: then the IPs are written as usual."""
        if not ips or self.reservations is None or not self.config.current.reserve_ahead:
            return False
        snapshot = self.reservations()
        if snapshot is None:
            return False
        try:
            return all(ip_of(ip) in snapshot.ips for ip in ips)
        except AddressError:
            return False

    async def create_records(
        self, pod: PodFacts, wanted: list[Record]
    ) -> tuple[tuple[str, ...], list[tuple[Record, BaseException]]]:
        """Create the records (concurrently), count and announce the ones created. Returns the IPs
        created and the records that failed with their errors."""
        results = await asyncio.gather(*(self.records.create(r) for r in wanted), return_exceptions=True)
        created: list[Record] = []
        failed: list[tuple[Record, BaseException]] = []
        for record, result in zip(wanted, results, strict=True):
            if isinstance(result, BaseException):
                if not isinstance(result, Exception):
                    raise result
                failed.append((record, result))
            elif result:
                created.append(record)
        if created:
            self._announce(pod, created)
        return tuple(r.ip for r in created), failed

    def _announce(self, pod: PodFacts, created: list[Record]) -> None:
        trigger, policy = created[0].trigger, created[0].policy
        self.metrics.reservations.labels(trigger=trigger).inc(len(created))
        what = ", ".join(r.ip for r in created)
        message = f"Reserved {what} of pod {pod.namespace}/{pod.name} ({trigger}); hold {policy}"
        self.events.post(ObjectRef("Pod", pod.name, pod.namespace, pod.uid), "IPReserved", message)
        for rec in created:
            self.events.post(ObjectRef(KIND, rec.name, api_version="capo.io/v1"), "IPReserved", message)
        logger.info(
            "reserved %s of pod %s/%s",
            what,
            pod.namespace,
            pod.name,
            extra={"trigger": trigger, "pod_uid": pod.uid, "hold": policy},
        )


class RecordFollower:
    """Creates the records of reservations already in Calico, off the webhook's answer path, in
    the lulls between appends (at most FOLLOW_MAX_DELAY later).

    Bounded (FOLLOW_LIMIT records waiting), deduplicated by record name (the first reservation
    stands), retried with jittered backoff (FOLLOW_ATTEMPTS), FOLLOW_CONCURRENCY at a time. What it
    cannot write (limit, attempts, a crash) is not lost: the pending annotation the Calico write
    carried lets the leader adopt the entry with these details."""

    def __init__(self, reserver: Reserver) -> None:
        self.reserver = reserver
        self._jobs: list[_Job] = []
        self._names: set[str] = set()  # records queued, in flight or waiting for a retry
        self._worker: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self._retries: set[asyncio.TimerHandle] = set()

    @property
    def waiting(self) -> int:
        return len(self._names)

    def submit(self, pod: PodFacts, records: list[Record]) -> None:
        fresh = [r for r in records if r.name not in self._names]
        room = FOLLOW_LIMIT - len(self._names)
        if len(fresh) > room:
            logger.warning(
                "%d records wait to be written: %s left to the leader's adoption",
                len(self._names),
                ", ".join(r.ip for r in fresh[room:]),
            )
            fresh = fresh[: max(0, room)]
        if not fresh:
            return
        self._names.update(r.name for r in fresh)
        self._queue(_Job(pod, fresh))

    def _queue(self, job: _Job) -> None:
        job.queued_at = asyncio.get_running_loop().time()
        self._jobs.append(job)
        self._idle.clear()
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._work(), name="record-follower")

    async def _wait_for_a_lull(self) -> None:
        """Reviews first: wait while appends keep coming, at most until the oldest job is due."""
        loop = asyncio.get_running_loop()
        commit = self.reserver.commit
        while self._jobs:
            now = loop.time()
            quiet_for = now - commit.last_activity
            overdue = now - self._jobs[0].queued_at >= FOLLOW_MAX_DELAY
            if overdue or (not commit.busy and quiet_for >= FOLLOW_QUIET):
                return
            wait = max(FOLLOW_QUIET - quiet_for, 0.01)
            await asyncio.sleep(min(wait, FOLLOW_MAX_DELAY - (now - self._jobs[0].queued_at)))

    async def _work(self) -> None:
        try:
            while self._jobs:
                await self._wait_for_a_lull()
                batch, self._jobs = self._jobs[:FOLLOW_CONCURRENCY], self._jobs[FOLLOW_CONCURRENCY:]
                await asyncio.gather(*(self._one(job) for job in batch))
        finally:
            if not self._jobs and not self._retries:
                self._idle.set()

    async def _one(self, job: _Job) -> None:
        try:
            _, failed = await self.reserver.create_records(job.pod, job.records)
        except Exception as exc:  # never lose the job to an unexpected error
            failed = [(r, exc) for r in job.records]
        done = {r.name for r in job.records} - {r.name for r, _ in failed}
        self._names -= done
        if not failed:
            return
        job = _Job(job.pod, [r for r, _ in failed], job.attempts + 1)
        reason = failed[0][1]
        if job.attempts >= FOLLOW_ATTEMPTS:
            self._names -= {r.name for r in job.records}
            logger.error(
                "giving up creating the records of %s (the leader adopts them from Calico): %s",
                ", ".join(r.ip for r in job.records),
                reason,
            )
            return
        delay = random.uniform(0.5, 1.0) * min(FOLLOW_MAX_BACKOFF, 0.5 * 2**job.attempts)
        logger.warning(
            "could not create the records of %s (retry in %.1fs): %s",
            ", ".join(r.ip for r in job.records),
            delay,
            reason,
        )
        loop = asyncio.get_running_loop()

        def again() -> None:
            self._retries.discard(handle)
            self._queue(job)

        handle = loop.call_later(delay, again)
        self._retries.add(handle)

    async def flush(self) -> None:
        """Wait until every submitted record is written or given up (tests, graceful shutdown)."""
        await self._idle.wait()

    def stop(self) -> None:
        """Drop the retries (shutdown): the leader adopts what is left from the pending annotations."""
        for handle in self._retries:
            handle.cancel()
        self._retries.clear()
