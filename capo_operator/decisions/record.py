"""The ReservedIP record (`capo.io/v1`) as a value: one cluster-scoped object per reserved IP, what
people read, and its encoding as an API body. Pure: the API calls are in `kube.records.RecordStore`.

Timestamps are written as RFC 3339 UTC with a `Z`, to the second (as Kubernetes writes its own);
`from_body` also accepts fractional seconds and offsets, since people edit `expiresAt` by hand.
So `from_body(r.to_body())` equals `r` with its times truncated to whole seconds.
"""

from __future__ import annotations

import functools
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from capo_operator.decisions.addresses import AddressError, ip_of, record_name
from capo_operator.decisions.planner import RecordView
from capo_operator.decisions.policy import Owner
from capo_operator.decisions.sticky import Claim, Held, Identity, ReleasePolicy, identity_of, ordinal

GROUP = "capo.io"
VERSION = "v1"
PLURAL = "reservedips"
KIND = "ReservedIP"
RELEASING_ANNOTATION = "capo.io/releasing"  # set (to the reason) before the IP leaves Calico
# Keeps a record deleted by a person until the leader has taken its IP out of Calico: the deletion
# is then a durable request, seen by whichever replica leads next (no DELETED event to miss).
FINALIZER = "capo.io/release"

TRIGGERS = ("delete", "eviction", "kubelet-eviction", "terminated", "safety-net", "recovered", "imported")

LABEL_NAMESPACE = "capo.io/namespace"
LABEL_OWNER_KIND = "capo.io/owner-kind"
LABEL_OWNER_NAME = "capo.io/owner-name"
LABEL_TRIGGER = "capo.io/trigger"
# The IPReservation a record belongs to: installations with different `ipReservationName`s share a
# cluster without touching each other's records. Records without it belong to the default name.
LABEL_RESERVATION = "capo.io/reservation"
DEFAULT_RESERVATION = "capo-reserved-ips"


def belongs_to(labels: Mapping[str, str] | None, reservation: str) -> bool:
    return (labels or {}).get(LABEL_RESERVATION, DEFAULT_RESERVATION) == reservation


DEFAULT_POLICY_PREFIX = "ipReserveTime="  # the policy text when the hold came from the config

_LABEL_VALUE_INVALID = re.compile(r"[^A-Za-z0-9._-]")
_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")


class RecordError(ValueError):
    """A ReservedIP body that cannot be read (wrong or missing fields)."""


def label_value(text: str) -> str:
    """A valid label value for `text`: invalid characters become '-', cut to 63 characters, and
    trimmed so it starts and ends with an alphanumeric (possibly empty)."""
    value = _LABEL_VALUE_INVALID.sub("-", text)[:63]
    return value.strip("-_.")


def format_time(moment: datetime) -> str:
    """RFC 3339, UTC, whole seconds, with `Z`. A naive datetime is taken as UTC."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: Any, field: str) -> datetime:
    if not isinstance(text, str) or not _TIME.match(text):
        raise RecordError(f"{field}: {text!r} is not an RFC 3339 timestamp")
    try:
        moment = datetime.fromisoformat(text.upper().replace("Z", "+00:00"))
    except ValueError as exc:
        raise RecordError(f"{field}: {text!r} is not an RFC 3339 timestamp") from exc
    return moment.astimezone(UTC)


def _truncate(moment: datetime) -> datetime:
    """The moment as written and read back (`format_time`: UTC, whole seconds)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).replace(microsecond=0)


@dataclass(frozen=True, slots=True)
class PodRef:
    namespace: str
    name: str
    uid: str
    node: str | None


# slots: one per cached record (10,000 and more); the derived `name` and view are slots too, set
# once per record object (a changed record is a new object), and left out of equality.
@dataclass(frozen=True, slots=True)
class Record:
    ip: str
    pod: PodRef | None  # None for "recovered"/"imported" entries with no known pod
    owner: Owner | None
    trigger: str
    reserved_at: datetime
    expires_at: datetime | None
    hold: timedelta
    policy: str
    releasing: str | None = None  # the release reason, when a release is in flight
    resource_version: str | None = None
    finalizers: tuple[str, ...] = (FINALIZER,)  # records made before finalizers existed have none
    deleting: bool = False  # metadata.deletionTimestamp is set: release now (reason manual)
    # metadata.uid: which object of this name it is. Writes that act on a decision taken from a
    # cached view carry it as a precondition, so that a record deleted and made again under the
    # same name (the IP reserved anew) is never released by a decision about the old one.
    # Identity, not content: left out of equality (a record written and read back is equal).
    uid: str | None = field(default=None, compare=False)
    sticky: bool = False  # a new pod of the same identity may have this IP back (spec.sticky)
    release_policy: ReleasePolicy = ReleasePolicy.TTL  # spec.releasePolicy
    claim: Claim | None = None  # spec.claim: a new pod was given this IP and has not run with it yet
    name: str = field(init=False, repr=False, compare=False)
    _view: RecordView | None = field(init=False, repr=False, compare=False, default=None)

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", record_name(self.ip))

    @property
    def default_policy(self) -> bool:
        """The hold came from ipReserveTime and nobody moved expiresAt by hand."""
        if not self.policy.startswith(DEFAULT_POLICY_PREFIX):
            return False
        if self.expires_at is None:
            return True
        return _truncate(self.reserved_at + self.hold) == _truncate(self.expires_at)

    def labels(self) -> dict[str, str]:
        labels = {LABEL_TRIGGER: label_value(self.trigger)}
        if self.pod is not None:
            labels[LABEL_NAMESPACE] = label_value(self.pod.namespace)
        if self.owner is not None:
            labels[LABEL_OWNER_KIND] = label_value(self.owner.kind)
            labels[LABEL_OWNER_NAME] = label_value(self.owner.name)
        return {k: v for k, v in labels.items() if v}

    def to_body(self) -> dict[str, Any]:
        """The full object (apiVersion, kind, metadata with name and labels, spec)."""
        spec: dict[str, Any] = {"ip": self.ip}
        if self.pod is not None:
            pod = {
                "namespace": self.pod.namespace,
                "name": self.pod.name,
                "uid": self.pod.uid,
                "node": self.pod.node,
            }
            spec["pod"] = {k: v for k, v in pod.items() if v}  # uid/node may be unknown ("" / None)
        if self.owner is not None:
            owner = {
                "apiVersion": self.owner.api_version,
                "kind": self.owner.kind,
                "name": self.owner.name,
                "uid": self.owner.uid,
            }
            spec["owner"] = {k: v for k, v in owner.items() if v}
        spec.update(
            trigger=self.trigger,
            reservedAt=format_time(self.reserved_at),
            expiresAt=None if self.expires_at is None else format_time(self.expires_at),
            holdSeconds=int(self.hold.total_seconds()),
            policy=self.policy,
        )
        if self.sticky:
            spec.update(sticky=True, releasePolicy=str(self.release_policy))
        if self.claim is not None:
            spec["claim"] = claim_body(self.claim)
        metadata: dict[str, Any] = {"name": self.name, "labels": self.labels()}
        if self.finalizers:
            metadata["finalizers"] = list(self.finalizers)
        if self.releasing is not None:
            metadata["annotations"] = {RELEASING_ANNOTATION: self.releasing}
        if self.resource_version is not None:
            metadata["resourceVersion"] = self.resource_version
        return {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND, "metadata": metadata, "spec": spec}

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> Record:
        """Parse an object as served; RecordError when it is not a valid record."""
        metadata = _mapping(body.get("metadata"), "metadata")
        spec = _mapping(body.get("spec"), "spec")
        try:
            ip = ip_of(_string(spec.get("ip"), "spec.ip"))
        except AddressError as exc:
            raise RecordError(f"spec.ip: {exc}") from exc
        name = metadata.get("name")
        if name != record_name(ip):
            # Every store method addresses records by the name derived from the IP.
            raise RecordError(f"name {name!r} does not match spec.ip {ip!r} (expected {record_name(ip)!r})")
        pod: PodRef | None = None
        if spec.get("pod") is not None:
            p = _mapping(spec["pod"], "spec.pod")
            node = _optional(p.get("node"), "spec.pod.node")
            pod = PodRef(
                namespace=_intern(_string(p.get("namespace"), "spec.pod.namespace")),
                name=_string(p.get("name"), "spec.pod.name"),
                uid=_optional(p.get("uid"), "spec.pod.uid") or "",  # optional in the schema ("imported")
                node=None if node is None else _intern(node),
            )
        owner: Owner | None = None
        if spec.get("owner") is not None:
            o = _mapping(spec["owner"], "spec.owner")
            owner = Owner(
                api_version=_intern(_optional(o.get("apiVersion"), "spec.owner.apiVersion") or ""),
                kind=_intern(_string(o.get("kind"), "spec.owner.kind")),
                name=_intern(_string(o.get("name"), "spec.owner.name")),
                uid=_intern(_optional(o.get("uid"), "spec.owner.uid") or ""),
            )
        trigger = _string(spec.get("trigger"), "spec.trigger")
        if trigger not in TRIGGERS:
            raise RecordError(f"spec.trigger: {trigger!r} is not one of {', '.join(TRIGGERS)}")
        trigger = TRIGGERS[TRIGGERS.index(trigger)]  # one string object for every record
        reserved_at = parse_time(spec.get("reservedAt"), "spec.reservedAt")
        expires = spec.get("expiresAt")
        expires_at = None if expires is None else parse_time(expires, "spec.expiresAt")
        hold = spec.get("holdSeconds")
        if hold is None and expires_at is not None:
            # Optional in the schema: a hand-written record may say when, not for how long.
            hold = max(0, int((expires_at - reserved_at).total_seconds()))
        if isinstance(hold, bool) or not isinstance(hold, int | float) or hold < 0:
            raise RecordError(f"spec.holdSeconds: {hold!r} is not a non-negative number")
        annotations = metadata.get("annotations") or {}
        releasing = annotations.get(RELEASING_ANNOTATION) if isinstance(annotations, Mapping) else None
        finalizers = metadata.get("finalizers") or []
        if not isinstance(finalizers, list) or not all(isinstance(f, str) for f in finalizers):
            raise RecordError(f"metadata.finalizers: expected a list of strings, got {finalizers!r}")
        sticky = spec.get("sticky", False)
        if not isinstance(sticky, bool):
            raise RecordError(f"spec.sticky: expected a boolean, got {sticky!r}")
        raw_policy = spec.get("releasePolicy") or "ttl"
        try:
            release_policy = ReleasePolicy(raw_policy)
        except ValueError:
            known = ", ".join(p.value for p in ReleasePolicy)
            raise RecordError(f"spec.releasePolicy: {raw_policy!r} is not one of {known}") from None
        claim: Claim | None = None
        if spec.get("claim") is not None:
            c = _mapping(spec["claim"], "spec.claim")
            claim = Claim(
                token=_string(c.get("token"), "spec.claim.token"),
                at=parse_time(c.get("at"), "spec.claim.at"),
                pod=_optional(c.get("pod"), "spec.claim.pod") or "",
            )
        return cls(
            ip=ip,
            pod=pod,
            owner=owner,
            trigger=trigger,
            reserved_at=reserved_at,
            expires_at=expires_at,
            hold=_hold(hold),
            policy=_intern(str(spec.get("policy") or "")),
            releasing=releasing if isinstance(releasing, str) and releasing else None,
            resource_version=metadata.get("resourceVersion"),
            finalizers=tuple(finalizers),
            deleting=bool(metadata.get("deletionTimestamp")),
            uid=metadata.get("uid") or None,
            sticky=sticky,
            release_policy=release_policy,
            claim=claim,
        )

    @property
    def identity(self) -> Identity | None:
        """Who may have this IP back (sticky records with a known pod and controller)."""
        if not self.sticky or self.pod is None or self.owner is None:
            return None
        return identity_of(self.pod.namespace, self.pod.name, self.owner.kind, self.owner.name)

    def held(self) -> Held | None:
        """The hold as the sticky claim logic sees it; None when no pod may claim it."""
        identity = self.identity
        if identity is None or self.pod is None:
            return None
        return Held(
            name=self.name,
            ip=self.ip,
            identity=identity,
            pod_uid=self.pod.uid,
            node=self.pod.node,
            reserved_at=self.reserved_at,
            claim=self.claim,
        )

    def without_finalizer(self) -> list[str]:
        return [f for f in self.finalizers if f != FINALIZER]

    def view(self) -> RecordView:
        # Once per cached record (a changed record is a new object): every pass plans over all.
        view = self._view
        if view is None:
            view = self._make_view()
            object.__setattr__(self, "_view", view)
        return view

    def _make_view(self) -> RecordView:
        return RecordView(
            name=self.name,
            ip=self.ip,
            pod_uid=self.pod.uid if self.pod and self.pod.uid else None,
            namespace=self.pod.namespace if self.pod else None,
            owner_uid=self.owner.uid if self.owner and self.owner.uid else None,
            reserved_at=self.reserved_at,
            expires_at=self.expires_at,
            hold=self.hold,
            default_policy=self.default_policy,
            release_policy=str(self.release_policy) if self.sticky else "ttl",
            ordinal=ordinal(self.pod.name)
            if self.pod and self.owner and self.owner.kind == "StatefulSet"
            else None,
        )


def claim_body(claim: Claim) -> dict[str, Any]:
    body = {"token": claim.token, "at": format_time(claim.at)}
    if claim.pod:
        body["pod"] = claim.pod
    return body


# Records share namespaces, nodes, owners, policies and hold durations: one object each keeps the
# records cache small (the decoder makes a new string for every occurrence).
_intern = sys.intern


@functools.lru_cache(maxsize=256)
def _hold(seconds: int | float) -> timedelta:
    return timedelta(seconds=seconds)


def _mapping(value: Any, field: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise RecordError(f"{field}: expected an object, got {value!r}")
    return value


def _optional(value: Any, field: str) -> str | None:
    if value is None or value == "":
        return None
    return _string(value, field)


def _string(value: Any, field: str) -> str:
    if not isinstance(value, str) or not value:
        raise RecordError(f"{field}: expected a non-empty string, got {value!r}")
    return value
