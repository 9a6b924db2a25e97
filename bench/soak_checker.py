"""The soak's independent checker: judges what the cluster showed, not what the operator says.

It never imports ``capo_operator``: it re-derives the product's documented semantics (README,
docs/architecture.md) from the objects a user can see, so a bug in the operator cannot hide itself
by being shared with its judge. Input is a list of `Observation`s recorded from watches of pods,
Calico IPReservations, ReservedIP records and Events (the emulator stamps every object with one
global resourceVersion, so sorting by it gives the true order of writes across object kinds), plus
what the soak driver knows it did (manual record deletions, deletion outcomes) and the final state.
The categories are defined in docs/soak.md; every counted violation carries its evidence.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

CATEGORIES = ("lost", "early", "double", "blocked", "invalid", "drift")
NAMESPACE_LABEL = "ip-reserve"
NAMESPACE_VALUES = frozenset({"enabled", "enable"})
RESERVE_ANNOTATION = "capo.io/reserve"
RESERVE_TIME_ANNOTATION = "capo.io/reserve-time"
RELEASING_ANNOTATION = "capo.io/releasing"
DELETION_REQUESTED = "deletion-requested"  # a record with deletionTimestamp (kept by a finalizer)
# The product's default selector (Capo semantics: any requirement matches).
DEFAULT_SELECTOR_KEYS = ("statefulset.kubernetes.io/pod-name", "brokerId")
_RELEASED = re.compile(r"^Released (?P<ip>\S+?)(?: of pod (?P<pod>\S+/\S+))? \((?P<reason>[a-z-]+)\)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"([0-9]*(?:\.[0-9]*)?)(ns|us|µs|μs|ms|s|m|h)")


class DurationError(ValueError):
    pass


def parse_go_duration(text: str) -> float:
    """Seconds of a Go duration ("90s", "1h30m", "1.5m", "-2s", "0"), as time.ParseDuration reads it."""
    s = text.strip()
    if not s:
        raise DurationError("empty duration")
    sign = 1.0
    if s[0] in "+-":
        sign = -1.0 if s[0] == "-" else 1.0
        s = s[1:]
    if s == "0":
        return 0.0
    pos, total = 0, 0.0
    while pos < len(s):
        m = _PART.match(s, pos)
        if m is None or m.group(1) in ("", "."):
            raise DurationError(f"invalid duration {text!r}")
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if pos == 0:
        raise DurationError(f"invalid duration {text!r}")
    return sign * total


def parse_time(text: object) -> float | None:
    """RFC 3339 (as records hold them) to epoch seconds; None for null or garbage."""
    if not isinstance(text, str) or not text:
        return None
    try:
        return datetime.fromisoformat(text.upper().replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def canonical_host_cidr(entry: object) -> str | None:
    """The IP of a canonical host CIDR entry ("10.0.0.1/32", "fd00::1/128"); None if not canonical."""
    if not isinstance(entry, str):
        return None
    try:
        net = ipaddress.ip_network(entry, strict=True)
    except ValueError:
        return None
    if net.prefixlen != net.max_prefixlen or str(net) != entry:
        return None
    return str(net.network_address)


def entry_ip(entry: object) -> str | None:
    """The host address an entry covers (canonical or not), for tracking holds; None for junk or ranges."""
    if not isinstance(entry, str):
        return None
    try:
        net = ipaddress.ip_network(entry.strip(), strict=False)
    except ValueError:
        return None
    return str(net.network_address) if net.prefixlen == net.max_prefixlen else None


@dataclass(frozen=True)
class Policy:
    """The soak's product configuration, as the checker needs it."""

    reserve_time: float  # ipReserveTime, seconds
    max_reserve_time: float  # maxIPReserveTime, seconds
    selector_keys: tuple[str, ...] = DEFAULT_SELECTOR_KEYS
    grace: float = 10.0  # documented: a pod alive this long after its reservation stops the clock
    tolerance: float = 2.0  # second-granular timestamps plus watch delivery delays
    # reserveAhead: the leader puts running selected pods' IPs into the IPReservation before any
    # deletion (docs/soak.md, "Reserve ahead").
    reserve_ahead: bool = False

    def hold_for(self, annotations: Mapping[str, str]) -> tuple[float, str]:
        """Hold length the README promises for a pod with these annotations, and why."""
        raw = annotations.get(RESERVE_TIME_ANNOTATION)
        if raw is None:
            return self.reserve_time, "ipReserveTime"
        try:
            length = parse_go_duration(raw)
        except DurationError:
            return self.reserve_time, f"invalid {RESERVE_TIME_ANNOTATION}={raw!r}: ipReserveTime"
        if length <= 0:
            return self.reserve_time, f"non-positive {RESERVE_TIME_ANNOTATION}={raw!r}: ipReserveTime"
        if length > self.max_reserve_time:
            return self.max_reserve_time, f"{RESERVE_TIME_ANNOTATION}={raw} clamped to maxIPReserveTime"
        return length, f"{RESERVE_TIME_ANNOTATION}={raw}"

    def selected(self, labels: Mapping[str, str], annotations: Mapping[str, str]) -> bool:
        choice = (annotations.get(RESERVE_ANNOTATION) or "").strip().lower()
        if choice in ("true", "false"):
            return choice == "true"
        return any(key in labels for key in self.selector_keys)


@dataclass(frozen=True)
class Observation:
    rv: int  # the object's resourceVersion (global in the emulator): the true order of writes
    t: float  # epoch seconds when the recorder received it
    kind: str  # "pod" | "calico" | "record" | "event" | "namespace"
    type: str  # "ADDED" | "MODIFIED" | "DELETED"
    obj: Mapping[str, Any]


@dataclass(frozen=True)
class ManualDeletion:
    ip: str
    t: float  # when the driver sent the DELETE of the record


@dataclass(frozen=True)
class Blocked:
    op: str  # "delete" | "eviction" | "drain"
    pod: str  # namespace/name
    t: float
    detail: str  # the refusal or "not gone after N s"


@dataclass(frozen=True)
class FinalState:
    calico_entries: tuple[str, ...]
    record_ips: tuple[str, ...]


@dataclass
class Violation:
    category: str
    ip: str
    pod: str
    detail: str
    evidence: dict[str, Any] = field(default_factory=dict)
    t: float = 0.0  # when it happened (epoch seconds), to line it up with the faults injected
    uid: str = ""  # the uid of the pod whose IP is concerned

    def to_dict(self) -> dict[str, Any]:
        return {
            "category": self.category,
            "ip": self.ip,
            "pod": self.pod,
            "detail": self.detail,
            "t": round(self.t, 3),
            "uid": self.uid,
            "evidence": self.evidence,
        }


@dataclass
class PodState:
    uid: str
    namespace: str
    name: str
    labels: dict[str, str]
    annotations: dict[str, str]
    ips: tuple[str, ...] = ()
    phase: str = ""
    deleting: bool = False
    gone_t: float | None = None  # deleted, or turned Failed/Succeeded (its IP was freed then)
    deleted: bool = False

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def alive(self) -> bool:
        """Running and not on its way out: the product's "alive" (its clock must not run)."""
        return not self.deleted and not self.deleting and self.phase not in ("Failed", "Succeeded")


@dataclass
class Hold:
    ip: str
    opened_rv: int
    opened_t: float
    pod_uid: str | None  # from the record, else the last pod seen with this IP
    pod_ref: str | None
    in_calico: bool = False
    record: str | None = None  # the record's name while it exists
    record_deleted: bool = False
    releasing: str | None = None  # the release reason the leader marked the record with
    trigger: str | None = None
    first_reserved_at: float | None = None
    expires_at: float | None = None
    closed_rv: int | None = None
    closed_t: float | None = None
    events: int = 0
    # reserveAhead: opened by a Calico entry while its pod ran selected (before any deletion).
    ahead: bool = False

    def summary(self) -> dict[str, Any]:
        return {
            "ip": self.ip,
            "pod": self.pod_ref,
            "pod_uid": self.pod_uid,
            "trigger": self.trigger,
            "opened_rv": self.opened_rv,
            "opened_at": _iso(self.opened_t),
            "reservedAt": _iso(self.first_reserved_at),
            "expiresAt": _iso(self.expires_at),
            "in_calico": self.in_calico,
            "record": self.record,
            "releasing": self.releasing,
            "closed_rv": self.closed_rv,
            "closed_at": _iso(self.closed_t),
            "ahead": self.ahead,
        }


def _iso(t: float | None) -> str | None:
    if t is None:
        return None
    return datetime.fromtimestamp(t).astimezone().strftime("%H:%M:%S.%f")[:-3]


def _str_map(value: object) -> dict[str, str]:
    if not isinstance(value, Mapping):
        return {}
    return {str(k): str(v) for k, v in value.items() if isinstance(v, str)}


def pod_ips(pod: Mapping[str, Any]) -> tuple[str, ...]:
    status = pod.get("status") or {}
    ips = [p.get("ip") for p in status.get("podIPs") or [] if isinstance(p, Mapping)]
    if not ips and status.get("podIP"):
        ips = [status["podIP"]]
    out: list[str] = []
    for ip in ips:
        try:
            text = str(ipaddress.ip_address(str(ip)))
        except ValueError:
            continue
        if text not in out:
            out.append(text)
    return tuple(out)


class Checker:
    """Feed observations in resourceVersion order (`run` sorts them), then `finish`."""

    def __init__(
        self,
        policy: Policy,
        *,
        manual: Iterable[ManualDeletion] = (),
        blocked: Iterable[Blocked] = (),
        operator_namespace: str = "capo-system",
    ) -> None:
        self.policy = policy
        self.manual = sorted(manual, key=lambda m: m.t)
        self.blocked = list(blocked)
        self.operator_namespace = operator_namespace
        self.violations: list[Violation] = []
        self.pods: dict[str, PodState] = {}
        self.namespaces: dict[str, dict[str, str]] = {}  # name -> labels
        self.ip_user: dict[str, str] = {}  # ip -> uid of the last pod that was given it
        self.calico: dict[str, set[str]] = {}  # IPReservation name -> covered IPs
        self.holds: dict[str, Hold] = {}  # ip -> the live hold
        self.closed: list[Hold] = []
        self.record_ip: dict[str, str] = {}  # record name -> ip
        self.invalid_seen: set[tuple[str, str]] = set()
        self.event_counts: dict[str, int] = {}  # Event uid -> count seen
        self.uids_held: set[str] = set()
        self.stats: dict[str, int] = {
            "reservations": 0,
            "releases": 0,
            "manual_releases": 0,
            "release_events": 0,
            "unprotected": 0,
            "assignments": 0,
            "entry_dropped_while_held": 0,
            "reserved_ahead": 0,
            "ahead_withdrawn": 0,
        }
        self.info: list[Violation] = []  # noted, not counted (see docs/soak.md)

    # -- driving ----------------------------------------------------------------------------

    def run(self, observations: Iterable[Observation], final: FinalState | None) -> dict[str, Any]:
        for obs in sorted(observations, key=lambda o: (o.rv, o.t)):
            self.feed(obs)
        return self.finish(final)

    def feed(self, obs: Observation) -> None:
        handler = {
            "pod": self._pod,
            "calico": self._calico,
            "record": self._record,
            "event": self._event,
            "namespace": self._namespace,
        }.get(obs.kind)
        if handler is not None:
            handler(obs)

    def finish(self, final: FinalState | None) -> dict[str, Any]:
        for b in self.blocked:
            self._count(
                "blocked",
                "",
                b.pod,
                f"{b.op} of {b.pod} refused or not finished: {b.detail}",
                {"op": b.op, "at": _iso(b.t)},
                b.t,
            )
        if final is not None:
            calico = {ip for ip in (entry_ip(e) for e in final.calico_entries) if ip}
            records = set(final.record_ips)
            # reserveAhead: the IPs of the pods running selected at the end are held without a
            # record (no deletion yet), and every one of them must be held.
            ahead = self._running_selected() if self.policy.reserve_ahead else {}
            for ip in sorted(ahead.keys() - calico, key=_ip_key):
                self._count(
                    "drift",
                    ip,
                    ahead[ip].ref,
                    f"{ip} of running selected pod {ahead[ip].ref} has no Calico entry after the settle "
                    "period (reserveAhead)",
                    {"calico": sorted(calico, key=_ip_key), "hold": self._hold_summary(ip)},
                    uid=ahead[ip].uid,
                )
            for ip in sorted(records - calico, key=_ip_key):
                self._count(
                    "drift",
                    ip,
                    "",
                    f"record {ip} has no Calico entry after the settle period",
                    {"calico": sorted(calico, key=_ip_key), "hold": self._hold_summary(ip)},
                )
            for ip in sorted(calico - records - ahead.keys(), key=_ip_key):
                self._count(
                    "drift",
                    ip,
                    "",
                    f"Calico entry {ip} has no record after the settle period",
                    {"records": sorted(records, key=_ip_key), "hold": self._hold_summary(ip)},
                )
        counts = dict.fromkeys(CATEGORIES, 0)
        for v in self.violations:
            counts[v.category] += 1
        return {
            "counts": counts,
            "stats": dict(self.stats, live_holds_at_end=len(self.holds)),
            "violations": [v.to_dict() for v in self.violations],
            "noted": [v.to_dict() for v in self.info],
        }

    # -- helpers ------------------------------------------------------------------------------

    def _count(
        self,
        category: str,
        ip: str,
        pod: str,
        detail: str,
        evidence: dict[str, Any],
        t: float = 0.0,
        uid: str | None = None,
    ) -> None:
        self.violations.append(Violation(category, ip, pod, detail, evidence, t, uid or ""))

    def _hold_summary(self, ip: str) -> dict[str, Any] | None:
        hold = self.holds.get(ip)
        if hold is None:
            hold = next((h for h in reversed(self.closed) if h.ip == ip), None)
        return hold.summary() if hold else None

    def _namespace_enabled(self, namespace: str) -> bool:
        return self.namespaces.get(namespace, {}).get(NAMESPACE_LABEL) in NAMESPACE_VALUES

    def _selected(self, pod: PodState) -> bool:
        """The product would reserve this pod's IPs: enabled namespace, selected by labels or opt-in."""
        return self._namespace_enabled(pod.namespace) and self.policy.selected(pod.labels, pod.annotations)

    def _running_selected(self) -> dict[str, PodState]:
        """IP -> the alive selected pod using it now (the IPs reserveAhead holds before a deletion)."""
        return {ip: pod for pod in self.pods.values() if pod.alive and self._selected(pod) for ip in pod.ips}

    # -- namespaces ---------------------------------------------------------------------------

    def _namespace(self, obs: Observation) -> None:
        meta = obs.obj.get("metadata") or {}
        if obs.type == "DELETED":
            self.namespaces.pop(str(meta.get("name")), None)
        else:
            self.namespaces[str(meta.get("name"))] = _str_map(meta.get("labels"))

    # -- pods ---------------------------------------------------------------------------------

    def _pod(self, obs: Observation) -> None:
        meta = obs.obj.get("metadata") or {}
        uid = str(meta.get("uid") or "")
        if not uid:
            return
        pod = self.pods.get(uid)
        if pod is None:
            pod = self.pods[uid] = PodState(uid, str(meta.get("namespace")), str(meta.get("name")), {}, {})
        pod.labels = _str_map(meta.get("labels"))
        pod.annotations = _str_map(meta.get("annotations"))
        pod.deleting = meta.get("deletionTimestamp") is not None
        pod.phase = str((obs.obj.get("status") or {}).get("phase") or "")
        ips = pod_ips(obs.obj)
        terminal = pod.phase in ("Failed", "Succeeded")
        if obs.type == "DELETED":
            pod.deleted = True
        if (obs.type == "DELETED" or terminal) and pod.gone_t is None:
            pod.gone_t = obs.t
        if ips and not pod.ips and not terminal and obs.type != "DELETED":
            for ip in ips:
                self._assigned(ip, pod, obs)
        if ips:
            pod.ips = ips

    def _assigned(self, ip: str, pod: PodState, obs: Observation) -> None:
        """`pod` was just given `ip`: is that IP under a live hold of another pod?"""
        self.stats["assignments"] += 1
        previous = self.pods.get(self.ip_user.get(ip, ""))
        self.ip_user[ip] = pod.uid
        hold = self.holds.get(ip)
        if hold is not None and hold.pod_uid != pod.uid:
            self._count(
                "lost",
                ip,
                pod.ref,
                f"{ip} handed to {pod.ref} while held for {hold.pod_ref} "
                f"(entry in Calico: {hold.in_calico}, record: {hold.record or 'none'})",
                {
                    "assigned_rv": obs.rv,
                    "assigned_at": _iso(obs.t),
                    "new_pod_uid": pod.uid,
                    "hold": hold.summary(),
                    "calico_now": sorted(self._calico_ips(), key=_ip_key)[:50],
                },
                obs.t,
                hold.pod_uid,
            )
            return
        if hold is None and previous is not None and previous.uid != pod.uid:
            self._maybe_unprotected(ip, pod, previous, obs)

    def _maybe_unprotected(self, ip: str, pod: PodState, previous: PodState, obs: Observation) -> None:
        if previous.uid in self.uids_held or previous.gone_t is None:
            return
        if not (
            self._namespace_enabled(previous.namespace)
            and self.policy.selected(previous.labels, previous.annotations)
        ):
            return
        hold, _ = self.policy.hold_for(previous.annotations)
        if obs.t - previous.gone_t < hold:
            self.stats["unprotected"] += 1
            self.info.append(
                Violation(
                    "unprotected",
                    ip,
                    pod.ref,
                    f"{ip} of {previous.ref} (gone at {_iso(previous.gone_t)}) went to {pod.ref} before "
                    "any reservation",
                    {
                        "assigned_rv": obs.rv,
                        "assigned_at": _iso(obs.t),
                        "previous_uid": previous.uid,
                        "previous_phase": previous.phase,
                        "previous_deleted": previous.deleted,
                    },
                    obs.t,
                    previous.uid,
                )
            )

    # -- Calico -------------------------------------------------------------------------------

    def _calico_ips(self) -> set[str]:
        out: set[str] = set()
        for ips in self.calico.values():
            out |= ips
        return out

    def _calico(self, obs: Observation) -> None:
        name = str((obs.obj.get("metadata") or {}).get("name"))
        entries = (
            [] if obs.type == "DELETED" else list((obs.obj.get("spec") or {}).get("reservedCIDRs") or [])
        )
        for entry in entries:
            if canonical_host_cidr(entry) is None and (name, str(entry)) not in self.invalid_seen:
                self.invalid_seen.add((name, str(entry)))
                self._count(
                    "invalid",
                    str(entry),
                    "",
                    f"IPReservation {name} holds non-canonical entry {entry!r}",
                    {"rv": obs.rv, "at": _iso(obs.t), "entries": entries[:50]},
                    obs.t,
                )
        before = self._calico_ips()
        self.calico[name] = {ip for ip in (entry_ip(e) for e in entries) if ip}
        after = self._calico_ips()
        for ip in after - before:
            (self.holds.get(ip) or self._open(ip, obs, entry=True)).in_calico = True
        for ip in before - after:
            hold = self.holds.get(ip)
            if hold is None:
                continue
            hold.in_calico = False
            if hold.record is not None and hold.releasing is None:
                # Not a release: the record still holds the IP (invariant 1 will re-add it).
                self.stats["entry_dropped_while_held"] += 1
            self._maybe_close(hold, obs)

    def _open(self, ip: str, obs: Observation, *, entry: bool = False) -> Hold:
        user = self.pods.get(self.ip_user.get(ip, ""))
        hold = Hold(ip, obs.rv, obs.t, user.uid if user else None, user.ref if user else None)
        # reserveAhead: an entry for the IP of a pod that runs selected, with no deletion seen yet
        # (a deletion's own write comes before its deletionTimestamp, so it may look the same: the
        # rules for ahead holds are right for it too).
        hold.ahead = (
            self.policy.reserve_ahead
            and entry
            and user is not None
            and user.alive
            and ip in user.ips
            and self._selected(user)
        )
        self.holds[ip] = hold
        self.stats["reservations"] += 1
        if hold.ahead:
            self.stats["reserved_ahead"] += 1
        elif user is not None:
            # An ahead hold says nothing of the pod's deletion yet: if it ends while the pod runs
            # (withdrawn), a later reuse before any reservation is still noted as unprotected.
            self.uids_held.add(user.uid)
        return hold

    # -- records ------------------------------------------------------------------------------

    def _record(self, obs: Observation) -> None:
        meta = obs.obj.get("metadata") or {}
        spec = obs.obj.get("spec") or {}
        name = str(meta.get("name"))
        ip = entry_ip(str(spec.get("ip") or "")) or self.record_ip.get(name)
        if ip is None:
            return
        self.record_ip[name] = ip
        hold = self.holds.get(ip)
        if obs.type == "DELETED":
            if hold is not None and hold.record == name:
                hold.record = None
                hold.record_deleted = True
                self._maybe_close(hold, obs)
            return
        if hold is None:
            hold = self._open(ip, obs)
        hold.record = name
        pod = spec.get("pod") or {}
        if pod.get("uid"):
            hold.pod_uid = str(pod["uid"])
            hold.pod_ref = f"{pod.get('namespace')}/{pod.get('name')}"
            self.uids_held.add(hold.pod_uid)
        hold.trigger = str(spec.get("trigger") or "") or hold.trigger
        reserved_at = parse_time(spec.get("reservedAt"))
        if hold.first_reserved_at is None and reserved_at is not None:
            hold.first_reserved_at = reserved_at
        releasing = _str_map(meta.get("annotations")).get(RELEASING_ANNOTATION)
        if releasing:
            hold.releasing = hold.releasing or releasing
        elif meta.get("deletionTimestamp"):
            # Deleted by someone while the finalizer waits for the leader: a release is requested
            # now, and the entry may leave Calico before the record's final DELETED event.
            hold.releasing = hold.releasing or DELETION_REQUESTED
        else:
            hold.expires_at = parse_time(spec.get("expiresAt"))

    # -- closing a hold ------------------------------------------------------------------------

    def _maybe_close(self, hold: Hold, obs: Observation) -> None:
        """A hold ends when its IP left Calico and its record is gone or marked for release."""
        if hold.in_calico or (hold.record is not None and hold.releasing is None):
            return
        hold.closed_rv, hold.closed_t = obs.rv, obs.t
        del self.holds[hold.ip]
        self.closed.append(hold)
        self.stats["releases"] += 1
        manual = self._manual_during(hold)
        if manual is not None and hold.releasing in (None, DELETION_REQUESTED):
            self.stats["manual_releases"] += 1
            return
        self._judge_release(hold)

    def _manual_during(self, hold: Hold) -> ManualDeletion | None:
        assert hold.closed_t is not None
        for m in self.manual:
            if m.ip == hold.ip and hold.opened_t - 1.0 <= m.t <= hold.closed_t + 1.0:
                return m
        return None

    def _judge_release(self, hold: Hold) -> None:
        assert hold.closed_t is not None
        pod = self.pods.get(hold.pod_uid or "")
        evidence: dict[str, Any] = {"hold": hold.summary()}
        if pod is not None and pod.alive:
            if hold.ahead and hold.trigger is None and not self._selected(pod):
                # reserveAhead withdraws the entry of a running pod that is no longer selected
                # (namespace unlabelled, opted out); no deletion was ever reserved for it.
                self.stats["ahead_withdrawn"] += 1
                return
            self._count(
                "early",
                hold.ip,
                pod.ref,
                f"{hold.ip} released while its pod {pod.ref} still ran",
                evidence,
                hold.closed_t,
                pod.uid,
            )
            return
        annotations = pod.annotations if pod is not None else {}
        length, why = self.policy.hold_for(annotations)
        pod_gone = pod.gone_t if pod is not None else None
        if hold.ahead:
            # Reserved ahead: what the hold protects is the pod's going; its reservation is the
            # deletion's (the record's reservedAt) or, with no review seen, the pod's going.
            candidates = (hold.first_reserved_at, pod_gone)
        else:
            candidates = (hold.opened_t, hold.first_reserved_at)
        start = min((t for t in candidates if t is not None), default=hold.opened_t)
        gone = pod_gone if pod_gone is not None else start
        # Documented clock: a pod gone within `grace` of its reservation is held from the
        # reservation; one that lived on is held from when it went.
        clock = start if gone <= start + self.policy.grace else gone
        due = clock + length
        if hold.expires_at is not None:
            due = max(due, hold.expires_at)
        if hold.closed_t < due - self.policy.tolerance:
            evidence.update(
                {
                    "hold_seconds_expected": length,
                    "policy": why,
                    "pod_gone_at": _iso(gone),
                    "due_at": _iso(due),
                    "early_by_s": round(due - hold.closed_t, 2),
                }
            )
            self._count(
                "early",
                hold.ip,
                hold.pod_ref or "",
                f"{hold.ip} of {hold.pod_ref} released {due - hold.closed_t:.1f}s before its time "
                f"({why}: {length:g}s; reason {hold.releasing or 'unmarked'})",
                evidence,
                hold.closed_t,
                hold.pod_uid,
            )

    # -- Events --------------------------------------------------------------------------------

    def _event(self, obs: Observation) -> None:
        obj = obs.obj
        if obj.get("reason") != "IPReleased" or obs.type == "DELETED":
            return
        involved = obj.get("involvedObject") or {}
        if involved.get("kind") != "ReservedIP":
            return  # the same release is also posted on the pod: count it once
        uid = str((obj.get("metadata") or {}).get("uid") or id(obj))
        count = int(obj.get("count") or 1)
        new = count - self.event_counts.get(uid, 0)
        self.event_counts[uid] = max(count, self.event_counts.get(uid, 0))
        m = _RELEASED.match(str(obj.get("message") or ""))
        ip = entry_ip(m.group("ip")) if m else self.record_ip.get(str(involved.get("name")))
        who = m.group("pod") if m else None
        for _ in range(max(new, 0)):
            self.stats["release_events"] += 1
            self._match_event(ip or str(involved.get("name")), who, obj, obs)

    def _match_event(self, ip: str, who: str | None, obj: Mapping[str, Any], obs: Observation) -> None:
        candidates = [
            h
            for h in self.closed
            if h.ip == ip
            and (who is None or h.pod_ref in (who, None))
            and h.closed_rv is not None
            and h.closed_rv < obs.rv
        ]
        evidence = {
            "event": {
                "message": obj.get("message"),
                "rv": obs.rv,
                "at": _iso(obs.t),
                "involved": (obj.get("involvedObject") or {}).get("name"),
            }
        }
        unmatched = [h for h in candidates if h.events == 0]
        if unmatched:
            unmatched[0].events += 1
            return
        if candidates:
            candidates[-1].events += 1
            evidence["hold"] = candidates[-1].summary()
            self._count(
                "double",
                ip,
                who or "",
                f"{ip} of {who} released twice (a second IPReleased Event for one hold)",
                evidence,
                obs.t,
            )
            return
        live = self.holds.get(ip)
        if live is not None:
            evidence["live_hold"] = live.summary()
        self._count(
            "double",
            ip,
            who or "",
            f"IPReleased Event for {ip} ({who}) without a hold that ended",
            evidence,
            obs.t,
        )


def _ip_key(ip: str) -> tuple[int, int]:
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return (9, 0)
    return (addr.version, int(addr))


def table(counts: Mapping[str, int]) -> str:
    return "\n".join(f"{name:<10} {counts.get(name, 0):>6}" for name in CATEGORIES)
