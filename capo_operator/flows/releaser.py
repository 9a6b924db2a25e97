"""The leader's loop: release by age, cap, owner/namespace deletion and manual request; keep the
Calico object and the records in agreement (DESIGN invariants 1-4); keep the ledger current."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TypeVar

from kubernetes.aio import client as k8s

from capo_operator.config import Config, LiveConfig
from capo_operator.decisions import ahead, pending, planner, policy, sticky
from capo_operator.decisions.addresses import record_name
from capo_operator.decisions.durations import format_duration
from capo_operator.decisions.policy import Owner, PodFacts
from capo_operator.decisions.record import DEFAULT_POLICY_PREFIX, FINALIZER, KIND, Record
from capo_operator.decisions.schedule import Gate
from capo_operator.flows.reserver import Reserver
from capo_operator.flows.sticky import StickyIPs
from capo_operator.kube.caches import Views
from capo_operator.kube.calico import CalicoStore, ReservationCache, Snapshot
from capo_operator.kube.events import EventRecorder, ObjectRef
from capo_operator.kube.ledger import Ledger, LedgerEntry, reconcile
from capo_operator.kube.records import RecordStore
from capo_operator.kube.slim import AppsV1
from capo_operator.metrics import Metrics

logger = logging.getLogger(__name__)

OWNER_CHECK_PERIOD = 30.0
# The watched copy of the IPReservation is trusted this long; then the object is read once more
# (a cheap guard against a watch that silently stopped delivering).
CALICO_REREAD_PERIOD = timedelta(minutes=5)
# An owner must be missing in two checks this far apart: a delete-and-recreate (helm, kubectl
# replace) is not a deliberate deletion of the cluster.
OWNER_GONE_CONFIRM = timedelta(seconds=60)
ORPHAN_CONFIRM_PASSES = 2
AHEAD_BATCH_DELAY = 0.2  # reserveAhead: newly selected pods gathered into one append
LEFT_AT_PRUNE = 4096
# An IP appended ahead is taken as present this long even if the watched copy does not show it yet
# (the watch lags behind our own writes): no second append of it meanwhile.
AHEAD_SENT_TTL = 10.0
MAX_CONCURRENT_WRITES = 16  # record writes in flight at once in one pass

T = TypeVar("T")
U = TypeVar("U")


def alive_uids(pods: Iterable[PodFacts]) -> set[str]:
    """Pods alive and not being deleted: a ledger entry of any other pod is a deletion to catch."""
    return {pod.uid for pod in pods if not pod.deleting and not pod.terminal}


def holding_uids(pods: Iterable[PodFacts]) -> set[str]:
    """Pods still using their IP: present and not Failed/Succeeded. A terminating pod still runs
    (long grace period, partitioned node), so its hold has not begun (DESIGN invariant 4)."""
    return {pod.uid for pod in pods if not pod.terminal}


@dataclass(frozen=True)
class _Planned:
    """What one plan-and-release step saw and did, for the reconciliation after it."""

    records: dict[str, Record]
    releasing: dict[str, str]  # name -> reason: marked records, their release in flight
    deleted: dict[str, Record]  # deleted by a person, not finished yet
    manual: set[str]  # IPs whose records were deleted while this replica led
    removed: frozenset[str]  # IPs taken out of Calico by this pass
    next_deadline: datetime | None


def _name(item: object) -> str:
    name = getattr(item, "name", item)
    return str(name)


@dataclass(frozen=True)
class _OwnerKey:
    namespace: str
    kind: str
    name: str
    uid: str


class OwnerChecker:
    """Finds top-level owners (StatefulSet, Deployment, DaemonSet) deleted on purpose.

    Records keep the pod's direct controller. For a ReplicaSet that is the Deployment's, named
    `<deployment>-<pod-template-hash>`: it counts as gone only when that Deployment is gone as
    well, since rollouts prune old ReplicaSets while the workload lives on."""

    _READERS = {
        "StatefulSet": "read_namespaced_stateful_set",
        "Deployment": "read_namespaced_deployment",
        "DaemonSet": "read_namespaced_daemon_set",
        "ReplicaSet": "read_namespaced_replica_set",
    }

    def __init__(self, api: k8s.ApiClient, clock: Callable[[], datetime]) -> None:
        self.apps = AppsV1(api)
        self.clock = clock
        self._missing_since: dict[_OwnerKey, datetime] = {}
        self._last_check = 0.0
        self._gone: frozenset[str] = frozenset()

    def due(self) -> bool:
        """A check is due (every OWNER_CHECK_PERIOD)."""
        return time.monotonic() - self._last_check >= OWNER_CHECK_PERIOD

    async def gone_owner_uids(self, records: Iterable[Record]) -> frozenset[str]:
        if time.monotonic() - self._last_check < OWNER_CHECK_PERIOD:
            return self._gone
        self._last_check = time.monotonic()
        keys = {
            _OwnerKey(r.pod.namespace, r.owner.kind, r.owner.name, r.owner.uid)
            for r in records
            if r.pod is not None and r.owner is not None and r.owner.uid and r.owner.kind in self._READERS
        }
        now = self.clock()
        gone: set[str] = set()
        for key in keys:
            if await self._exists(key):
                self._missing_since.pop(key, None)
                continue
            first = self._missing_since.setdefault(key, now)
            if now - first >= OWNER_GONE_CONFIRM:
                gone.add(key.uid)
        self._missing_since = {k: v for k, v in self._missing_since.items() if k in keys}
        self._gone = frozenset(gone)
        return self._gone

    async def _exists(self, key: _OwnerKey) -> bool:
        if await self._present(key.kind, key.name, key.namespace):
            return True
        if key.kind == "ReplicaSet" and "-" in key.name:
            return await self._present("Deployment", key.name.rsplit("-", 1)[0], key.namespace)
        return False

    async def _present(self, kind: str, name: str, namespace: str) -> bool:
        """Only a 404 counts as gone; any other answer or error keeps the reservations (never
        release early). A recreated owner (same name, new uid) is present: the cluster lives on."""
        try:
            await getattr(self.apps, self._READERS[kind])(name, namespace)
        except k8s.ApiException as exc:
            return bool(exc.status != 404)
        except Exception as exc:  # a network error must not stop this pass's other releases
            logger.warning("could not read %s %s/%s (kept as present): %s", kind, namespace, name, exc)
        return True


class Releaser:
    def __init__(
        self,
        *,
        api: k8s.ApiClient,
        views: Views,
        calico: CalicoStore,
        records: RecordStore,
        reserver: Reserver,
        sticky: StickyIPs,
        events: EventRecorder,
        metrics: Metrics,
        config: LiveConfig,
        manual_releases: set[str],
        ledger: Ledger,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ):
        self.views = views
        self.calico = calico
        self.records = records
        self.reserver = reserver
        self.sticky = sticky
        self.events = events
        self.metrics = metrics
        self.config = config
        # IPs whose records a person deleted, queued by the record handlers on the leader.
        self.manual_releases = manual_releases
        self.ledger = ledger
        self.clock = clock
        self.owners = OwnerChecker(api, clock)
        self._orphan_passes: dict[str, int] = {}
        self._failures = 0
        self._reported_malformed: set[str] = set()
        self._ledger_saved: dict[str, LedgerEntry] | None = None
        self._ledger_pending: dict[str, LedgerEntry] = {}
        # The ledger's entries (the selected live pods' IPs): rebuilt from every pod only when the
        # pod cache, the namespaces or the config changed; otherwise kept in step pod by pod.
        self._selected_key: tuple[object, ...] | None = None
        self._selected: dict[str, LedgerEntry] = {}
        # reserveAhead: when each IP left the selected set (its pod went, turned terminal or was
        # deselected); an orphan entry waits for its record with the pod's details (ahead.ADOPT_GRACE).
        self._left_at: dict[str, datetime] = {}
        self._ahead_gate = Gate()
        self._ahead_waiting: frozenset[str] = frozenset()  # orphans waiting for their record
        self._stale_passes: dict[str, int] = {}
        self._ahead_sent: dict[str, float] = {}  # IP -> monotonic time of its append
        self._wake = asyncio.Event()  # a newly selected pod: reserve its IP ahead without waiting a period
        # Work proportional to change (decisions/schedule.py): each step remembers what it saw.
        self._plan_gate = Gate()
        self._reconcile_gate = Gate()
        self._reread_gate = Gate()  # a read of the object now and then, whatever the watch says
        self._ledger_gate = Gate()
        self._record_pods = 0  # bumped by every change of a pod that a record refers to
        views.on_pod_change(self._pod_changed)
        self._gone: frozenset[str] = frozenset()
        self._finished: dict[str, str | None] = {}  # record name -> uid this leader released
        self._cache: ReservationCache | None = None  # the watched IPReservation, while leading
        self._claims_pending = False  # a claimed record exists: a claim lapses with time
        self._immutable = False  # an immutable sticky hold exists: a scale-down ends it

    async def lead(self) -> None:
        """Runs while this process leads; cancelled at once when leadership is lost."""
        await self.views.synced.wait()
        for gate in (
            self._plan_gate,
            self._reconcile_gate,
            self._reread_gate,
            self._ledger_gate,
            self._ahead_gate,
        ):
            gate.reset()  # another leader may have changed anything meanwhile
        self._cache = self.calico.cache()
        watch = asyncio.create_task(self._cache.run(), name="ipreservation-watch")
        try:
            await self._lead()
        finally:
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await watch
            self._cache = None
            self.metrics.reserved_ahead.set(0)  # the next leader counts them

    async def _lead(self) -> None:
        try:
            await self.recover_from_ledger()
        except Exception:
            logger.exception("could not compare the ledger with the live pods; will retry next term")
        while True:
            started = time.monotonic()
            # Cleared before the pass, not after: a pod selected while the pass runs (it may wait
            # for writes) wakes the next one instead of waiting a whole period.
            self._wake.clear()
            try:
                failures = await self.pass_once()
            except Exception:
                logger.exception("release pass failed; retrying next period")
            else:
                if failures:
                    logger.warning(
                        "release pass finished with %d failed step(s); retrying next period", failures
                    )
            period = self.config.current.ip_release_period.total_seconds()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(0.0, period - (time.monotonic() - started)))
                # Pods start in bursts (a StatefulSet rolling, a deployment scaling): one append for them.
                await asyncio.sleep(AHEAD_BATCH_DELAY)

    # -- the ledger -------------------------------------------------------------------------

    def _selected_entries(self) -> dict[str, LedgerEntry]:
        out: dict[str, LedgerEntry] = {}
        for pod in self.views.pods():
            self._select(pod, out)
        return out

    def _select(self, pod: PodFacts, into: dict[str, LedgerEntry]) -> None:
        """Put a selected live pod's IPs into the ledger's entries `into`."""
        if pod.terminal or pod.host_network or not pod.ips or not policy.selected(pod, self.config.current):
            return
        ns = self.views.namespace(pod.namespace)
        if ns is None or not ns.enabled:
            return
        for ip in pod.ips:
            into[ip] = LedgerEntry(
                ip=ip,
                namespace=pod.namespace,
                name=pod.name,
                uid=pod.uid,
                node=pod.node,
                owner_kind=pod.owner.kind if pod.owner else None,
                owner_name=pod.owner.name if pod.owner else None,
                owner_uid=pod.owner.uid if pod.owner else None,
                reserve_time=_reserve_time(pod),
            )

    def _reselect(self, old: PodFacts | None, new: PodFacts | None) -> None:
        """Keep the ledger's entries in step with one pod's change (a full rebuild is O(pods)):
        valid until the namespaces or the config change, which rebuild them (`_save_ledger`)."""
        if self._selected_key is None:
            return
        # IPs of this pod selected already (a status change, the deletion starting): no wake-up.
        known: list[str] = []
        if new is not None:
            known = [ip for ip in new.ips if (e := self._selected.get(ip)) is not None and e.uid == new.uid]
        if old is not None:
            for ip in old.ips:
                entry = self._selected.get(ip)
                if entry is not None and entry.uid == old.uid:
                    del self._selected[ip]
        if new is not None:
            self._select(new, self._selected)
        if self.config.current.reserve_ahead:
            now = self.clock()
            for ip in old.ips if old is not None else ():
                if ip not in self._selected:
                    self._left_at[ip] = now
            if len(self._left_at) > LEFT_AT_PRUNE:  # a standby never reconciles, which prunes it
                self._left_at = {ip: at for ip, at in self._left_at.items() if now - at < ahead.ADOPT_GRACE}
            if new is not None and any(ip in self._selected and ip not in known for ip in new.ips):
                self._wake.set()  # a newly selected IP: reserve it ahead soon

    async def recover_from_ledger(self) -> None:
        """Reserve the IPs of selected pods that vanished while no replica was watching."""
        saved = await self.ledger.load()
        views = self.views
        pods = list(views.pods())
        result = reconcile(
            saved,
            live_uids=alive_uids(pods),
            ip_holders=views.all_ip_holders(),
            recorded_ips={r.ip for r in views.records()},
        )
        by_uid = {pod.uid: pod for pod in pods}
        pending_records: dict[str, Record] = {}
        if result.to_reserve:
            try:
                snapshot = await self.calico.read()
                pending_records = {ip: r for ip, r in snapshot.pending.items() if ip in snapshot.ips}
            except Exception as exc:  # then the vanished pods are reserved anew, as before
                logger.warning("could not read the IPReservation for pending records: %s", exc)
        for entry in result.lost:
            self.metrics.reservations_lost.inc()
            message = (
                f"IP {entry.ip} of pod {entry.namespace}/{entry.name} could not be reserved: the pod "
                "vanished while capo-operator was down and another pod holds the IP now"
            )
            logger.warning(message)
            self.events.post(
                ObjectRef("Pod", entry.name, entry.namespace, entry.uid), "IPLost", message, warning=True
            )
        for entry in result.to_reserve:
            adopted = pending_records.get(entry.ip)
            if adopted is not None:
                # The webhook reserved it and the process died before its record: its details win
                # over a new reservation (trigger, hold and the real reservation time).
                try:
                    if await self.records.create(adopted):
                        self.metrics.reservations.labels(trigger=adopted.trigger).inc()
                        logger.info("adopted Calico entry %s from its pending details", entry.ip)
                    continue
                except Exception as exc:
                    logger.warning("could not adopt %s from its pending details: %s", entry.ip, exc)
            known = by_uid.get(entry.uid)
            trigger = policy.terminal_trigger(known) if known is not None and known.terminal else "safety-net"
            facts = known or _facts_from_entry(entry)
            hold = policy.hold_for(facts, self.config.current)  # a known pod's annotation still counts
            try:
                done = await self.reserver.reserve(facts, (entry.ip,), hold, trigger)
            except Exception as exc:
                logger.warning(
                    "could not reserve %s of vanished pod %s/%s: %s",
                    entry.ip,
                    entry.namespace,
                    entry.name,
                    exc,
                )
                self._ledger_pending[entry.ip] = entry
                continue
            if done.created:
                self.metrics.safety_net_catches.labels(trigger=trigger).inc(len(done.created))
        self._ledger_saved = dict(saved)

    def _holding_uids(self, records: Iterable[Record]) -> set[str]:
        """Of the pods that records refer to, those still using their IP (by uid: O(records), not
        O(pods))."""
        views = self.views
        return holding_uids(
            pod for r in records if r.pod is not None and r.pod.uid for pod in views.pods_with_uid(r.pod.uid)
        )

    def _refresh_selected(self) -> dict[str, LedgerEntry]:
        """The selected live pods' IPs: rebuilt when the pod cache, the namespaces or the config
        changed, else as kept in step by `_reselect`."""
        views = self.views
        key = (views.pod_cache_id(), views.namespaces_generation(), self.config.current)
        if key != self._selected_key:
            before = self._selected
            self._selected, self._selected_key = self._selected_entries(), key
            if self.config.current.reserve_ahead:
                now = self.clock()
                for ip in before.keys() - self._selected.keys():
                    self._left_at[ip] = now
        return self._selected

    def _ahead_ips(self) -> dict[str, LedgerEntry]:
        """reserveAhead: the IPs whose entries stay whatever the records say; empty when it is off."""
        return self._refresh_selected() if self.config.current.reserve_ahead else {}

    async def _save_ledger(self) -> None:
        entries = dict(self._refresh_selected())
        recorded = {r.ip for r in self.views.records()} if self._ledger_pending else set()
        for ip, entry in list(self._ledger_pending.items()):
            if ip in recorded or ip in entries:
                del self._ledger_pending[ip]
            else:
                entries.setdefault(ip, entry)
        if entries != self._ledger_saved:
            await self.ledger.save(entries)
            self._ledger_saved = entries

    # -- one pass ---------------------------------------------------------------------------

    async def pass_once(self) -> int:
        """One pass; returns how many steps failed. Each step runs only when it is due (see
        decisions/schedule.py): the plan when the records, the namespaces, the pods that records
        refer to, the config or the owners found gone changed, or its next expiry has come; the
        Calico reconciliation when the IPReservation or the records changed; the ledger when the
        pods changed. So a pass with nothing due makes no API call and costs a few comparisons.
        Every record's work is isolated: a failed write is logged and counted, the record is
        retried next pass, and the others go on (concurrently, at most MAX_CONCURRENT_WRITES)."""
        cfg, now, views = self.config.current, self.clock(), self.views
        self._failures = 0
        gone_owners = await self._gone_owners(cfg.release_on_owner_deletion)
        records_gen = views.records_generation()
        # Sticky claims lapse with no record or pod change: while any exist, the plan also runs every
        # OWNER_CHECK_PERIOD. Immutable holds end when their StatefulSet is scaled below them: while
        # any exist, their owners' replicas are read each pass (one GET per owner) and are an input.
        tick = int(now.timestamp() // OWNER_CHECK_PERIOD) if self._claims_pending else None
        replicas: dict[str, int] = {}
        if self._immutable:
            replicas = await self._step(
                "read StatefulSet replicas", self.sticky.statefulset_replicas(self._fresh_records()), {}
            )
        plan_inputs = (
            records_gen,
            views.namespaces_generation(),
            self._record_pods,
            cfg,
            gone_owners,
            tick,
            frozenset(replicas.items()),
        )
        planned: _Planned | None = None
        if self.manual_releases or self._plan_gate.due(plan_inputs, now):
            failures = self._failures
            planned = await self._plan_and_release(now, gone_owners, replicas)
            self._plan_gate.ran(plan_inputs, ok=self._failures == failures, deadline=planned.next_deadline)

        cache = self._cache
        cache_version = cache.version if cache is not None and cache.synced.is_set() else None
        reconcile_inputs = (cache_version, records_gen)
        # reserveAhead: a pod that left the selection ADOPT_GRACE ago without a record since: its
        # entry is adopted now, though neither the object nor the records changed.
        grace_ended = cfg.reserve_ahead and self._grace_ended(now)
        # Without a synced watch (not yet, or not allowed by RBAC) the object is read every pass.
        if (
            planned is not None
            or cache_version is None
            or self._orphan_passes
            or self._ahead_waiting
            or self._stale_passes  # a stale entry is removed once seen in a second pass
            or grace_ended
            or self._reread_gate.due(None, now)
            or self._reconcile_gate.due(reconcile_inputs, now)
        ):
            failures = self._failures
            await self._reconcile(now, planned or self._current(), reread=self._reread_gate.due(None, now))
            self._reconcile_gate.ran(reconcile_inputs, ok=self._failures == failures)

        if cfg.reserve_ahead:
            ahead_inputs = (views.generation(), cfg, cache_version)
            if self._ahead_gate.due(ahead_inputs, now):
                failures = self._failures
                await self._step("reserve ahead", self._reserve_ahead(), None)
                self._ahead_gate.ran(ahead_inputs, ok=self._failures == failures)
        else:
            self._left_at.clear()
            self.metrics.reserved_ahead.set(0)

        ledger_inputs = (views.generation(), cfg, records_gen)
        if self._ledger_pending or self._ledger_gate.due(ledger_inputs, now):
            failures = self._failures
            await self._step("save the ledger", self._save_ledger(), None)
            self._ledger_gate.ran(ledger_inputs, ok=self._failures == failures)
        return self._failures

    async def _reserve_ahead(self) -> None:
        """Add the selected live pods' IPs that the IPReservation lacks, a MAX_BATCH at a time,
        through the webhook's group commit (so reviews on this replica share the writes)."""
        wanted = self._ahead_ips()
        cache = self._cache
        snapshot = cache.snapshot() if cache is not None else None
        if snapshot is None:
            snapshot = await self.calico.read()
        missing = ahead.missing(wanted, snapshot.ips)
        clock = time.monotonic()
        self._ahead_sent = {ip: at for ip, at in self._ahead_sent.items() if clock - at < AHEAD_SENT_TTL}
        todo = [ip for ip in missing if ip not in self._ahead_sent]
        # Sent a moment ago and not shown by the watch yet: held all the same.
        self.metrics.reserved_ahead.set(len(wanted) - len(todo))
        commit = self.reserver.commit
        for start in range(0, len(todo), commit.max_batch):
            chunk = todo[start : start + commit.max_batch]
            # One chunk at a time: a review arriving meanwhile rides in the next write, not after all.
            await self._count_calico_error("append", commit.append(chunk))
            self._ahead_sent.update(dict.fromkeys(chunk, time.monotonic()))
            self.metrics.reserved_ahead.inc(len(chunk))
        if todo:
            logger.info("reserved %d IP(s) of running selected pods ahead of their deletion", len(todo))

    def _pod_changed(self, old: PodFacts | None, new: PodFacts | None) -> None:
        """Every change of the pod cache (synchronous, in the informer's task): only a pod that a
        record refers to can change a plan (its record's clock stops or starts); the ledger's
        entries follow the pod."""
        pod = new if new is not None else old
        if pod is not None and (
            self.views.has_record_for(pod.uid) or sticky.CLAIM_ANNOTATION in pod.annotations
        ):
            # A record's pod, or a pod given a held IP (its start hands the hold over).
            self._record_pods += 1
        self._reselect(old, new)

    async def _gone_owners(self, enabled: bool) -> frozenset[str]:
        """The owners found deleted, checked only every OWNER_CHECK_PERIOD and only for the records
        whose pod is gone: the only ones an owner's deletion releases (one GET per distinct owner
        of those; none when there are none)."""
        if not enabled:
            self._gone = frozenset()
        elif self.owners.due():
            records = [r for r in self.views.records() if r.pod is not None and r.owner is not None]
            holding = self._holding_uids(records)
            candidates = [r for r in records if r.pod is not None and r.pod.uid not in holding]
            self._gone = await self._step("owner check", self.owners.gone_owner_uids(candidates), self._gone)
        return self._gone

    def _current(self) -> _Planned:
        """What the reconciliation needs when no plan ran this pass: the records as cached."""
        records = self._fresh_records()
        releasing = {n: r.releasing for n, r in records.items() if r.releasing is not None}
        deleted = {n: r for n, r in records.items() if r.deleting and r.releasing is None}
        return _Planned(records, releasing, deleted, set(self.manual_releases), frozenset(), None)

    async def _plan_and_release(
        self, now: datetime, gone_owners: frozenset[str], replicas: dict[str, int]
    ) -> _Planned:
        cfg = self.config.current
        records = self._fresh_records()
        records, unsettled = await self._retime(records, cfg.ip_reserve_time)
        await self._add_finalizers(records.values())

        gone_namespaces = {
            ns
            for ns in {r.pod.namespace for r in records.values() if r.pod is not None}
            if _namespace_gone(self.views, cfg, ns)
        }
        holding = self._holding_uids(records.values())
        self._claims_pending = any(r.claim is not None for r in records.values())
        self._immutable = any(
            r.sticky and r.release_policy is sticky.ReleasePolicy.IMMUTABLE for r in records.values()
        )
        # Records deleted by a person (our finalizer keeps them until their IP has left Calico).
        deleted = {n: r for n, r in records.items() if r.deleting and r.releasing is None}
        # Sticky IPs: claims whose pod runs with the IP end here (reason reclaimed).
        reclaimed = await self._step(
            "settle sticky claims", self.sticky.settle_claims(records, now), frozenset()
        )
        the_plan = planner.plan(
            [
                r.view()
                for r in records.values()
                if r.releasing is None and not r.deleting and r.name not in unsettled
            ],
            now=now,
            max_count=cfg.ip_reserve_max_count,
            alive_pod_uids=holding,
            gone_namespaces=gone_namespaces,
            gone_owner_uids=gone_owners,
            reclaimed=reclaimed,
            owner_replicas=replicas,
            kept_max_count=cfg.sticky.max_kept_holds,
        )
        await self._each(
            the_plan.clock_changes,
            lambda c: self.records.set_clock(
                c.name, reserved_at=c.reserved_at, expires_at=c.expires_at, hold=c.hold
            ),
            "set the clock of",
        )

        releasing = {r.name: r.releasing for r in records.values() if r.releasing is not None}
        marked = await self._each(
            the_plan.releases,
            # With the uid: a decision about this record never marks another of the same name.
            lambda rel: self.records.mark_releasing(
                rel.name,
                rel.reason,
                finalizers=records[rel.name].without_finalizer(),
                uid=records[rel.name].uid,
            ),
            "mark for release",
        )
        # Only a marked record's IP may leave Calico: an unmarked one would be re-added.
        releasing.update((rel.name, rel.reason) for rel in marked)
        manual = set(self.manual_releases)
        # A record of the IP made since its deletion (a late write of the same pod's reservation,
        # or a new one) stands: the person's release was of the deleted record, not of this hold.
        reserved_again = {
            ip
            for ip in manual
            if (r := records.get(record_name(ip))) is not None and not r.deleting and r.releasing is None
        }
        for ip in reserved_again:
            self.manual_releases.discard(ip)
            logger.info("not releasing %s: its record was deleted, but it is reserved again", ip)
        manual -= reserved_again
        removed = await self._release(records, releasing, deleted, manual, now)
        return _Planned(records, releasing, deleted, manual, removed, the_plan.next_deadline)

    def _fresh_records(self) -> dict[str, Record]:
        """The cached records, less those this leader has finished releasing while the cache still
        shows them (its watch lags behind our own deletions): acting on one again would take the IP
        of a fresh record of the same name out of Calico."""
        if not self._finished:
            return {record.name: record for record in self.views.records()}
        records: dict[str, Record] = {}
        still_shown: dict[str, str | None] = {}
        for record in self.views.records():
            if record.uid is not None and self._finished.get(record.name) == record.uid:
                still_shown[record.name] = record.uid
                continue
            records[record.name] = record
        self._finished = still_shown  # bounded: only what the cache still shows
        return records

    async def _reconcile(self, now: datetime, p: _Planned, *, reread: bool) -> None:
        """Invariants 1 and 2 between the IPReservation and the records: re-add missing entries,
        adopt entries without a record, clear pending details, remove malformed entries. From the
        watched copy of the object when there is one (no read); a decision to write because of it
        is confirmed with a read first, since the copy lags behind the writes."""
        cache = self._cache
        snapshot: Snapshot | None = None
        cached = cache.snapshot() if cache is not None and not reread else None
        if cached is None:
            snapshot = await self._step("read the IPReservation", self.calico.read(), None)
            if snapshot is not None:
                self._reread_gate.ran(None, ok=True, deadline=now + CALICO_REREAD_PERIOD)
        records, releasing, deleted = p.records, p.releasing, p.deleted
        live_ips = {r.ip for name, r in records.items() if name not in releasing and name not in deleted}
        in_flight = p.manual | {records[n].ip for n in releasing} | {r.ip for r in deleted.values()}
        if cached is not None:
            drift = planner.drift(cached.ips, live_ips, releasing=in_flight, canonical=True)
            orphans = drift.without_record - p.removed
            if drift.missing_in_calico or orphans - self._not_orphans(orphans, now):
                snapshot = await self._step("read the IPReservation", self.calico.read(), None)
            else:
                snapshot = cached
        if snapshot is None:
            return
        drift = planner.drift(snapshot.ips, live_ips, releasing=in_flight, canonical=True)
        if drift.missing_in_calico:
            logger.warning(
                "re-adding %s to Calico: their records exist but the entries were missing",
                ",".join(sorted(drift.missing_in_calico)),
            )
            await self._step(
                "re-add to the IPReservation",
                self._count_calico_error("append", self.calico.append(sorted(drift.missing_in_calico))),
                None,
            )
        orphans = drift.without_record - p.removed
        kept = self._not_orphans(orphans, now)
        # Waiting orphans keep the pass reconciling until their grace ends (reserveAhead only).
        self._ahead_waiting = (
            kept - self._ahead_ips().keys() if self.config.current.reserve_ahead else frozenset()
        )
        orphans -= kept
        if self.config.current.reserve_ahead:
            orphans = await self._remove_stale(orphans, snapshot)
        await self._adopt(orphans, now, snapshot)
        await self._step("clear pending record details", self._clear_pending(snapshot, records), None)
        # After adoption: the cleaning rewrite also turns bare IPs into host CIDRs.
        await self._step("remove malformed entries", self._clean(snapshot.malformed), None)

    async def _step(self, what: str, coro: Awaitable[T], fallback: T) -> T:
        """One step of the pass whose failure must not stop the others."""
        try:
            return await coro
        except Exception as exc:
            self._failures += 1
            logger.warning("release pass: could not %s (retrying next pass): %s", what, exc)
            return fallback

    async def _count_calico_error(self, operation: str, coro: Awaitable[T]) -> T:
        try:
            return await coro
        except Exception:
            self.metrics.calico_write_errors.labels(operation=operation).inc()
            raise

    async def _each(self, items: Iterable[U], action: Callable[[U], Awaitable[object]], what: str) -> list[U]:
        """Run `action` on every item, at most MAX_CONCURRENT_WRITES at once; returns the items whose
        action succeeded. A failure is logged and counted; it never stops the others."""
        items = list(items)
        if not items:
            return []
        limit = asyncio.Semaphore(MAX_CONCURRENT_WRITES)

        async def one(item: U) -> object:
            async with limit:
                return await action(item)

        results = await asyncio.gather(*(one(item) for item in items), return_exceptions=True)
        done = []
        for item, result in zip(items, results, strict=True):
            if isinstance(result, Exception):
                self._failures += 1
                logger.warning(
                    "release pass: could not %s %s (retrying next pass): %s", what, _name(item), result
                )
            elif isinstance(result, BaseException):
                raise result
            else:
                done.append(item)
        return done

    async def _retime(
        self, records: dict[str, Record], reserve_time: timedelta
    ) -> tuple[dict[str, Record], frozenset[str]]:
        """Give default holds the configured ipReserveTime (whoever leads: the records themselves
        say which hold they got). Returns the records as they are after the changes, and the names
        whose change failed: those sit this pass's plan out, so a lengthened hold never expires
        early."""
        policy_text = f"{DEFAULT_POLICY_PREFIX}{format_duration(reserve_time)}"
        changes = planner.retime(
            [r.view() for r in records.values() if r.releasing is None and not r.deleting],
            new=reserve_time,
            policy=policy_text,
        )
        if not changes:
            return records, frozenset()
        done = await self._each(
            changes,
            lambda c: self.records.set_clock(
                c.name, reserved_at=c.reserved_at, expires_at=c.expires_at, hold=c.hold, policy=c.policy
            ),
            "apply the new ipReserveTime to",
        )
        out = dict(records)
        for change in done:
            out[change.name] = dataclasses.replace(
                records[change.name],
                expires_at=change.expires_at,
                hold=change.hold,
                policy=change.policy or records[change.name].policy,
            )
        logger.info("applied ipReserveTime=%s to %d record(s)", format_duration(reserve_time), len(done))
        return out, frozenset(c.name for c in changes) - {c.name for c in done}

    async def _add_finalizers(self, records: Iterable[Record]) -> None:
        """Records made before the finalizer existed get it, so that deleting one while no replica
        leads is still seen as a release request."""
        await self._each(
            [r for r in records if FINALIZER not in r.finalizers and not r.deleting and r.releasing is None],
            lambda r: self.records.add_finalizer(r.name, finalizers=r.finalizers),
            "add the finalizer to",
        )

    async def _release(
        self,
        records: dict[str, Record],
        releasing: dict[str, str],
        deleted: dict[str, Record],
        manual: set[str],
        now: datetime,
    ) -> frozenset[str]:
        """Calico first (one write), then the records. Returns the IPs taken out of Calico."""
        ips = {records[name].ip for name in releasing} | {r.ip for r in deleted.values()} | manual
        if not ips:
            return frozenset()
        # reserveAhead: a selected live pod uses the IP now (an older hold of it ends): the record
        # goes, the entry stays, reserved for this pod.
        ips -= self._ahead_ips().keys()
        try:
            # Calico first: a crash or a failure now leaves marked (or deleted) records for the next pass.
            if ips:
                await self._count_calico_error("remove", self.calico.remove(sorted(ips)))
        except Exception as exc:
            self._failures += 1
            logger.warning(
                "could not remove %s from Calico (retrying next pass): %s", ",".join(sorted(ips)), exc
            )
            return frozenset()

        async def finish(name: str) -> None:
            # The view may lag behind our own deletions: count only the deletion that happened.
            # The uid: a fresh record of the same name made since stays.
            record = records[name]
            if await self.records.delete(name, uid=record.uid):
                self._count_release(record, releasing[name], now)
            self._finished[name] = record.uid

        async def finish_manual(record: Record) -> None:
            if await self.records.finish_manual(
                record.name, finalizers=record.without_finalizer(), uid=record.uid
            ):
                self._count_release(record, "manual", now)

        await self._each(releasing, finish, "delete the released record")
        await self._each(deleted.values(), finish_manual, "complete the deletion of")
        for ip in manual:
            self.manual_releases.discard(ip)
            self.metrics.releases.labels(reason="manual").inc()
            logger.info("released %s (manual: its record was deleted)", ip)
        return frozenset(ips)

    def _count_release(self, record: Record, reason: str, now: datetime) -> None:
        held = max(0.0, (now - record.reserved_at).total_seconds())
        self.metrics.releases.labels(reason=reason).inc()
        self.metrics.hold_seconds.observe(held)
        if reason == "cap":
            self.metrics.evictions.inc()
        pod = record.pod
        who = f" of pod {pod.namespace}/{pod.name}" if pod else ""
        message = f"Released {record.ip}{who} ({reason}) after {timedelta(seconds=round(held))}"
        logger.info(message, extra={"reason": reason, "ip": record.ip})
        self.events.post(ObjectRef(KIND, record.name, api_version="capo.io/v1"), "IPReleased", message)
        if pod is not None:
            self.events.post(ObjectRef("Pod", pod.name, pod.namespace, pod.uid), "IPReleased", message)

    async def _clean(self, malformed: tuple[str, ...]) -> None:
        """Entries Calico cannot parse break its IP auto-assignment: report each once (Event on the
        IPReservation, metric), then rewrite the object without them."""
        if not malformed:
            self._reported_malformed = set()
            return
        calico = self.calico
        new = [entry for entry in malformed if entry not in self._reported_malformed]
        self._reported_malformed = set(malformed)  # bounded by the object's own entries
        if new:
            self.metrics.malformed_entries.inc(len(new))
            message = (
                f"IPReservation {calico.name} holds entries Calico cannot parse, which break its IP "
                f"auto-assignment: {', '.join(repr(e) for e in new)}; removing them"
            )
            logger.warning(message)
            self.events.post(
                ObjectRef("IPReservation", calico.name, api_version=calico.group.api_version),
                "MalformedEntries",
                message,
                warning=True,
            )
        await self._count_calico_error("remove", calico.remove(()))
        logger.info("removed malformed IPReservation entries %s", ", ".join(repr(e) for e in malformed))

    def _grace_ended(self, now: datetime) -> bool:
        """reserveAhead: forget the IPs whose pod left the selection ADOPT_GRACE ago or more; True
        when there were any (an entry of theirs still without a record is adopted now)."""
        ended = [ip for ip, at in self._left_at.items() if now - at >= ahead.ADOPT_GRACE]
        for ip in ended:
            del self._left_at[ip]
        return bool(ended)

    def _not_orphans(self, orphans: frozenset[str], now: datetime) -> frozenset[str]:
        """reserveAhead: entries without a record that are not orphans: those of selected live pods
        (reserved ahead) and those whose pod left the selection less than ahead.ADOPT_GRACE ago and
        no live pod uses (their record, with the pod's details, is on its way)."""
        if not orphans:
            return frozenset()
        if not self.config.current.reserve_ahead:
            # reserveAhead was on before (a reload or a restart turned it off): the entries of pods
            # that still run are left alone (the pod's deletion makes them holds, as an append
            # would). Adopted as "recovered", they would count toward ipReserveMaxCount and push
            # real holds out early.
            return self._used_by_running_pods(orphans)
        wanted = self._ahead_ips()
        self._left_at = {
            ip: at for ip, at in self._left_at.items() if now - at < ahead.ADOPT_GRACE and ip not in wanted
        }
        # A deselected pod that still runs left the selection too, but writes no record: not waiting.
        holders = self.views.ip_holders(tuple(sorted(ip for ip in orphans if ip in self._left_at)))
        waiting = ahead.waiting(orphans, self._left_at, now, holders.keys())
        return frozenset(ip for ip in orphans if ip in wanted) | waiting

    def _used_by_running_pods(self, ips: frozenset[str]) -> frozenset[str]:
        """The IPs that a live pod not being deleted uses (a pod being deleted gets its record)."""
        views = self.views
        return frozenset(
            ip
            for ip, uid in views.ip_holders(tuple(sorted(ips))).items()
            if any(not pod.deleting for pod in views.pods_with_uid(uid))
        )

    async def _remove_stale(self, orphans: frozenset[str], snapshot: Snapshot) -> frozenset[str]:
        """reserveAhead: of the orphans, remove those a live pod uses that is no longer selected,
        once seen in two passes (like adoption). Returns the orphans left to adopt."""
        holders = self.views.ip_holders(tuple(sorted(orphans)))
        stale = ahead.stale(orphans, holders, self._ahead_ips(), snapshot.pending)
        self._stale_passes = {ip: self._stale_passes.get(ip, 0) + 1 for ip in stale}
        confirmed = sorted(ip for ip, passes in self._stale_passes.items() if passes >= ORPHAN_CONFIRM_PASSES)
        if confirmed:
            removed = await self._step(
                "remove entries no longer reserved ahead",
                self._count_calico_error("remove", self.calico.remove(confirmed)),
                frozenset(),
            )
            if removed:
                logger.info(
                    "removed %s from Calico: reserved ahead, their pods are no longer selected",
                    ",".join(sorted(removed)),
                )
            for ip in confirmed:
                self._stale_passes.pop(ip, None)
        return orphans - stale

    async def _adopt(self, orphans: frozenset[str], now: datetime, snapshot: Snapshot) -> None:
        """Invariant 2: a Calico entry without a record gets a record, never dropped. With the
        details its append carried (pending.py: the pod, owner, trigger, hold and the real reservation
        time) when they are there and readable; else as "recovered", its clock starting now. Only after
        it is seen in two passes: the record normally follows the Calico write within moments. An
        entry written as a bare IP (Capo's format; the operator always writes host CIDRs) was taken
        over from Capo: no webhook races it, it is adopted at once as `imported`."""
        self._orphan_passes = {ip: self._orphan_passes.get(ip, 0) + 1 for ip in orphans}
        hold = self.config.current.ip_reserve_time
        imported = snapshot.bare

        async def adopt(ip: str) -> None:
            record = snapshot.pending.get(ip)
            if record is None:
                unreadable = snapshot.pending_invalid.get(pending.key(ip))
                if unreadable:
                    logger.warning(
                        "pending details of %s are unreadable (%s): adopting it as recovered", ip, unreadable
                    )
                record = Record(
                    ip=ip,
                    pod=None,
                    owner=None,
                    trigger="imported" if ip in imported else "recovered",
                    reserved_at=now,
                    expires_at=now + hold,
                    hold=hold,
                    policy=f"ipReserveTime={format_duration(hold)}",
                )
            if await self.records.create(record):
                self.metrics.reservations.labels(trigger=record.trigger).inc()
                if record.pod is None:
                    logger.info("adopted Calico entry %s without a record (%s)", ip, record.trigger)
                else:
                    logger.info(
                        "adopted Calico entry %s of pod %s/%s (%s, reserved at %s) from its pending details",
                        ip,
                        record.pod.namespace,
                        record.pod.name,
                        record.trigger,
                        record.reserved_at.isoformat(),
                    )

        due = [
            ip
            for ip, passes in self._orphan_passes.items()
            if passes >= ORPHAN_CONFIRM_PASSES or ip in imported
        ]
        await self._each(due, adopt, "adopt the Calico entry")

    async def _clear_pending(self, snapshot: Snapshot, records: dict[str, Record]) -> None:
        """Remove, in one write, the pending annotations whose record exists (or whose IP is no
        longer reserved): they are only needed until then, and the object's annotations are bounded.
        Only housekeeping: a failure is retried next pass."""
        if not snapshot.pending and not snapshot.pending_invalid:
            return
        reserved = {record_name(ip) for ip in snapshot.ips}
        keys = [
            key
            for key in (*snapshot.pending_keys, *snapshot.pending_invalid)
            if key[len(pending.PREFIX) :] in records or key[len(pending.PREFIX) :] not in reserved
        ]
        if keys:
            await self.calico.clear_pending(keys)


def _namespace_gone(views: Views, cfg: Config, namespace: str) -> bool:
    """Deleted or being deleted. Missing from the cache means deleted, unless `namespaceSelector`
    keeps namespaces out of the cache: then it may well exist, so only a namespace seen terminating
    counts (a hold then runs its time: the safe side)."""
    ns = views.namespace(namespace)
    if ns is None:
        return not cfg.namespace_selector.requirements
    return ns.terminating


# Longer values are not durations (policy.hold_for would refuse them and use ipReserveTime, as it
# does when none is kept): the ledger does not grow with a pathological annotation.
MAX_KEPT_RESERVE_TIME = 64


def _reserve_time(pod: PodFacts) -> str | None:
    value = pod.annotations.get(policy.RESERVE_TIME_ANNOTATION)
    return value if value is not None and len(value) <= MAX_KEPT_RESERVE_TIME else None


def _facts_from_entry(entry: LedgerEntry) -> PodFacts:
    owner = None
    if entry.owner_kind and entry.owner_name and entry.owner_uid:
        owner = Owner(api_version="", kind=entry.owner_kind, name=entry.owner_name, uid=entry.owner_uid)
    annotations = {} if entry.reserve_time is None else {policy.RESERVE_TIME_ANNOTATION: entry.reserve_time}
    return PodFacts(
        namespace=entry.namespace,
        name=entry.name,
        uid=entry.uid,
        node=entry.node,
        labels={},
        annotations=annotations,
        ips=(entry.ip,),
        host_network=False,
        phase=None,
        reason=None,
        deleting=True,
        owner=owner,
    )
