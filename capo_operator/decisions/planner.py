"""What to release, and when a reservation's clock starts: pure functions of the records' state."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from capo_operator.decisions.addresses import AddressError, ip_of

# How long a record's pod may still hold its IP before the clock is stopped. Zero: any pass that
# sees the pod (terminating or not) stops the clock, and the pass after it is gone restarts it, so
# the hold always runs from the moment the pod is gone. A grace would let a hold start at the
# DELETE for pods that terminate within it (one patch fewer, but up to `grace` early).
DEFAULT_GRACE = timedelta(0)


@dataclass(frozen=True, slots=True)  # slots: one per cached record
class RecordView:
    name: str
    ip: str
    pod_uid: str | None
    namespace: str | None
    owner_uid: str | None
    reserved_at: datetime
    expires_at: datetime | None  # None: the clock has not started (the pod is still alive)
    hold: timedelta
    default_policy: bool  # the hold came from ipReserveTime (not an annotation or a manual edit)
    release_policy: str = "ttl"  # "ttl" | "immutable" | "never" (sticky holds; decisions/sticky.py)
    ordinal: int | None = None  # a StatefulSet pod's ordinal (for "immutable": scaled below it)

    @property
    def kept(self) -> bool:
        """An immutable or never hold: no TTL, not under ipReserveMaxCount (its own cap)."""
        return self.release_policy in ("immutable", "never")


@dataclass(frozen=True)
class Release:
    name: str
    ip: str
    # "expired" | "cap" | "owner-deleted" | "namespace-deleted" | "reclaimed" | "scaled-down" | "kept-cap"
    reason: str
    held: timedelta  # now - reserved_at


@dataclass(frozen=True)
class ClockChange:
    name: str
    reserved_at: datetime
    expires_at: datetime | None
    hold: timedelta
    policy: str | None = None  # new policy text, when the change comes from a changed ipReserveTime


@dataclass(frozen=True)
class Plan:
    releases: tuple[Release, ...]
    clock_changes: tuple[ClockChange, ...]
    # The earliest moment at which the same inputs give another plan (a running clock expires, a
    # pod's grace ends); None: never, until an input changes. Until then a pass has nothing to do.
    next_deadline: datetime | None = None


def plan(
    records: Collection[RecordView],
    *,
    now: datetime,
    max_count: int,
    alive_pod_uids: Collection[str],
    gone_namespaces: Collection[str] = (),
    gone_owner_uids: Collection[str] = (),
    grace: timedelta = DEFAULT_GRACE,
    reclaimed: Collection[str] = (),
    owner_replicas: Mapping[str, int] | None = None,
    kept_max_count: int | None = None,
) -> Plan:
    """One release pass.

    `alive_pod_uids` are the pods still using their IP: present with that uid and not Failed/Succeeded.
    A terminating pod belongs here (DESIGN invariant 4: the clock starts when the pod is really gone;
    one stuck Terminating on a partitioned node still uses its IP).

    - A record whose pod (by uid) is in `alive_pod_uids` and
      which is older than `grace` has its clock stopped (ClockChange with expires_at=None) and is
      never released for expiry, owner or namespace deletion.
    - A record with expires_at None whose pod is no longer alive starts its clock now
      (reserved_at=now, expires_at=now+hold).
    - Records of a gone namespace / gone owner (pod not alive) are released with that reason.
    - Records with expires_at <= now are released ("expired").
    - Then, while more than `max_count` records remain, the oldest by reserved_at (ties by name)
      are released ("cap"). Every record counts toward the cap, stopped clocks included.
    A record appears at most once in releases; released records get no clock change.

    Cap order uses the reserved_at in force after this pass (a clock started now counts as the
    newest); `held` is measured from the record's original reserved_at (how long its IP was held).
    Releases come in record order (reserved_at, name), cap releases last; clock changes by name.
    `next_deadline`: the earliest expiry among the records kept with a running clock (or the end
    of a live pod's grace), so that the caller plans again only then or when an input changed.

    Sticky holds (decisions/sticky.py):
    - records named in `reclaimed` (their claiming pod runs with the IP) are released ("reclaimed");
    - `kept` holds (release policy immutable or never) never expire and do not count toward
      `max_count`; above `kept_max_count` the oldest of them are released ("kept-cap");
    - a `never` hold ignores namespace and owner deletion: only deleting its record ends it;
    - an `immutable` hold of a StatefulSet pod whose ordinal is at or above its owner's replicas
      (`owner_replicas`: owner uid -> spec.replicas) is released ("scaled-down").
    """
    reclaimed_names = set(reclaimed)
    replicas = owner_replicas or {}
    alive = set(alive_pod_uids)
    gone_ns = set(gone_namespaces)
    gone_owners = set(gone_owner_uids)
    ordered = sorted(records, key=lambda r: (r.reserved_at, r.name))

    releases: list[Release] = []
    changes: dict[str, ClockChange] = {}
    kept: list[tuple[datetime, str, RecordView]] = []  # (effective reserved_at, name, record)
    deadlines: dict[str, datetime] = {}  # of the kept records, by name
    kept_sticky: list[RecordView] = []  # immutable/never holds: their own cap
    for record in ordered:
        if record.name in reclaimed_names:
            releases.append(Release(record.name, record.ip, "reclaimed", now - record.reserved_at))
            continue
        if record.kept:
            reason = _kept_reason(record, gone_ns, gone_owners, replicas)
            if reason is not None:
                releases.append(Release(record.name, record.ip, reason, now - record.reserved_at))
            else:
                kept_sticky.append(record)
            continue
        pod_alive = record.pod_uid is not None and record.pod_uid in alive
        if pod_alive and now - record.reserved_at > grace:
            # The pod survived (refused eviction or delete): its IP is in use, the hold has not begun.
            if record.expires_at is not None:
                changes[record.name] = ClockChange(record.name, record.reserved_at, None, record.hold)
            kept.append((record.reserved_at, record.name, record))
            continue
        if pod_alive:  # within grace: the next pass after it ends stops the clock
            deadlines[record.name] = record.reserved_at + grace + _TICK
        reserved_at, expires_at = record.reserved_at, record.expires_at
        if expires_at is None and not pod_alive:
            reserved_at, expires_at = now, now + record.hold
            changes[record.name] = ClockChange(record.name, reserved_at, expires_at, record.hold)
        reason = None
        # A pod that is still alive (within grace) has not been deleted along with its owner yet.
        if not pod_alive and record.namespace is not None and record.namespace in gone_ns:
            reason = "namespace-deleted"
        elif not pod_alive and record.owner_uid is not None and record.owner_uid in gone_owners:
            reason = "owner-deleted"
        elif not pod_alive and expires_at is not None and expires_at <= now:
            # A pod within grace still uses its IP: never expire it, the next pass stops its clock.
            reason = "expired"
        if reason is not None:
            releases.append(Release(record.name, record.ip, reason, now - record.reserved_at))
            changes.pop(record.name, None)
        else:
            kept.append((reserved_at, record.name, record))
            if expires_at is not None and not pod_alive:
                deadlines[record.name] = min(expires_at, deadlines.get(record.name, expires_at))

    excess = len(kept) - max(max_count, 0)
    if excess > 0:
        kept.sort(key=lambda item: (item[0], item[1]))
        for _, name, record in kept[:excess]:
            releases.append(Release(name, record.ip, "cap", now - record.reserved_at))
            changes.pop(name, None)
            deadlines.pop(name, None)
    if kept_max_count is not None and len(kept_sticky) > max(kept_max_count, 0):
        for record in kept_sticky[: len(kept_sticky) - max(kept_max_count, 0)]:  # oldest first
            releases.append(Release(record.name, record.ip, "kept-cap", now - record.reserved_at))
    return Plan(
        tuple(releases),
        tuple(changes[name] for name in sorted(changes)),
        min(deadlines.values(), default=None),
    )


# "Strictly after": a pod's grace ends once `now - reserved_at > grace`.
_TICK = timedelta(microseconds=1)


def _kept_reason(
    record: RecordView, gone_ns: Collection[str], gone_owners: Collection[str], replicas: Mapping[str, int]
) -> str | None:
    if record.release_policy != "immutable":
        return None  # "never": only a deleted record ends it
    if record.namespace is not None and record.namespace in gone_ns:
        return "namespace-deleted"
    if record.owner_uid is not None and record.owner_uid in gone_owners:
        return "owner-deleted"
    wanted = replicas.get(record.owner_uid or "")
    if wanted is not None and record.ordinal is not None and record.ordinal >= wanted:
        return "scaled-down"
    return None


def retime(records: Collection[RecordView], *, new: timedelta, policy: str) -> tuple[ClockChange, ...]:
    """Apply ipReserveTime `new` to the records whose hold came from ipReserveTime (default_policy)
    and differs from it: hold=new and policy text `policy`; a running clock also gets
    expires_at=reserved_at+new, a stopped one stays stopped (and will run for the new hold).
    Others (annotation holds, hand-edited expiries) are untouched.

    Stateless on purpose: the records say which hold they got, so a value changed while another
    replica led, or while none did, still reaches them after a failover or a restart."""
    changes = [
        ClockChange(r.name, r.reserved_at, None if r.expires_at is None else r.reserved_at + new, new, policy)
        for r in records
        if r.default_policy and r.hold != new
    ]
    return tuple(sorted(changes, key=lambda c: c.name))


@dataclass(frozen=True)
class Drift:
    missing_in_calico: frozenset[str]  # IPs of records absent from the Calico object: re-add (invariant 1)
    without_record: frozenset[str]  # Calico entries without a record: adopt as "recovered" (invariant 2)
    # Calico entries that are not a host IP/CIDR: never adopt or rewrite them, report them.
    invalid_in_calico: frozenset[str] = field(default_factory=frozenset)


def drift(
    calico_ips: Collection[str],
    record_ips: Collection[str],
    releasing: Collection[str] = (),
    *,
    canonical: bool = False,
) -> Drift:
    """Compare the Calico object with the records. IPs in `releasing` (a release in flight: removed from
    Calico, record not yet deleted) are not "missing": the release will finish (invariant 3).
    Nor are they "without record" (a manual release deletes the record first): they are in flight.
    Entries may be bare IPs or host CIDRs; the result holds canonical bare IPs. With `canonical`,
    every input is a canonical bare IP already (a Snapshot's `ips`, records' `ip`): compared as is."""
    if canonical:
        calico_set, records_set, flight = set(calico_ips), set(record_ips), set(releasing)
        return Drift(
            missing_in_calico=frozenset(records_set - calico_set - flight),
            without_record=frozenset(calico_set - records_set - flight),
        )
    calico: set[str] = set()
    invalid: set[str] = set()
    for entry in calico_ips:
        try:
            calico.add(ip_of(entry))
        except AddressError:
            invalid.add(entry)
    records = {_canonical_or_same(ip) for ip in record_ips}
    in_flight = {_canonical_or_same(ip) for ip in releasing}
    return Drift(
        missing_in_calico=frozenset(records - calico - in_flight),
        without_record=frozenset(calico - records - in_flight),
        invalid_in_calico=frozenset(invalid),
    )


def _canonical_or_same(ip: str) -> str:
    try:
        return ip_of(ip)
    except AddressError:
        return ip
