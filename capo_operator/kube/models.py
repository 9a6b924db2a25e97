"""Decoding of the few fields the operator reads, straight from the API's JSON bytes.

msgspec decodes into typed Structs that declare only those fields; every other field of the
object (managedFields, containers, conditions, big annotations' neighbours...) is skipped by
the parser without building Python objects. Each `Kind` then turns its Struct into the value the
operator's policy code already uses: `PodFacts`, `NamespaceFacts`, `Record`.
docs/performance.md has the comparison with json/orjson + dicts that chose msgspec.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import msgspec

from capo_operator.decisions.policy import (
    NAMESPACE_LABEL,
    NAMESPACE_LABEL_VALUES,
    NamespaceFacts,
    Owner,
    PodFacts,
    canonical_ips,
)
from capo_operator.decisions.record import GROUP, PLURAL, VERSION, Record, RecordError, belongs_to

T = TypeVar("T")
S = TypeVar("S")

# Annotations the policy reads; others (last-applied configurations can be huge) are dropped.
KEPT_ANNOTATION_PREFIX = "capo.io/"


class DecodeError(ValueError):
    """An object (or a whole response) that cannot be read as the expected kind."""


class Foreign(ValueError):
    """A readable object that is not ours to cache (another installation's record): the informer
    leaves it out quietly, and drops it if it was cached."""


# -- wire shapes (only what is read; unknown fields are skipped by the decoder) ---------------


class OwnerReference(msgspec.Struct, frozen=True):
    apiVersion: str = ""
    kind: str = ""
    name: str = ""
    uid: str = ""
    controller: bool | None = None


class ObjectMeta(msgspec.Struct, frozen=True):
    name: str = ""
    namespace: str = ""
    uid: str = ""
    resourceVersion: str = ""
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None
    ownerReferences: list[OwnerReference] | None = None
    deletionTimestamp: str | None = None
    finalizers: list[str] | None = None


class PodIP(msgspec.Struct, frozen=True):
    ip: str = ""


class PodSpec(msgspec.Struct, frozen=True):
    nodeName: str | None = None
    hostNetwork: bool | None = None


class PodStatus(msgspec.Struct, frozen=True):
    phase: str | None = None
    reason: str | None = None
    podIP: str | None = None
    podIPs: list[PodIP] | None = None


class PodItem(msgspec.Struct, frozen=True):
    metadata: ObjectMeta = ObjectMeta()
    spec: PodSpec = PodSpec()
    status: PodStatus = PodStatus()


class NamespaceStatus(msgspec.Struct, frozen=True):
    phase: str | None = None


class NamespaceItem(msgspec.Struct, frozen=True):
    metadata: ObjectMeta = ObjectMeta()
    status: NamespaceStatus = NamespaceStatus()


class RecordItem(msgspec.Struct, frozen=True):
    metadata: ObjectMeta = ObjectMeta()
    # Record.from_body validates the spec itself, with messages that name the field.
    spec: Any = None


class ListMeta(msgspec.Struct, frozen=True):
    resourceVersion: str = ""
    # `continue` is a Python keyword.
    continue_: str = msgspec.field(default="", name="continue")
    remainingItemCount: int | None = None


class ItemList(msgspec.Struct, Generic[S], frozen=True):
    metadata: ListMeta = ListMeta()
    items: list[S] | None = None


class RawEvent(msgspec.Struct, frozen=True):
    type: str
    object: msgspec.Raw = msgspec.Raw(b"{}")


class StatusDetails(msgspec.Struct, frozen=True):
    retryAfterSeconds: int | None = None


class Status(msgspec.Struct, frozen=True):
    """A `Status` (in an ERROR watch event or an error answer)."""

    code: int = 0
    reason: str = ""
    message: str = ""
    metadata: ListMeta = ListMeta()
    details: StatusDetails | None = None


class IdentityMeta(msgspec.Struct, frozen=True):
    name: str = ""
    namespace: str = ""
    resourceVersion: str = ""


class IdentityItem(msgspec.Struct, frozen=True):
    """Just who an object is (for bookmarks, and objects whose other fields cannot be read)."""

    metadata: IdentityMeta = IdentityMeta()


# -- conversions to the operator's values ------------------------------------------------------


_intern = sys.intern


# The same few thousand IP strings come back in every event of their pods: parse each once.
def _canonical_ips(status: PodStatus) -> tuple[str, ...]:
    # policy.canonical_ips parses through addresses.ip_of, which caches what it parsed.
    return canonical_ips([*(item.ip for item in status.podIPs or ()), status.podIP])


@functools.lru_cache(maxsize=4096)
def _owner(api_version: str, kind: str, name: str, uid: str) -> Owner:
    # The pods of a StatefulSet share one controller: one (immutable) Owner for all of them.
    return Owner(api_version=_intern(api_version), kind=_intern(kind), name=_intern(name), uid=_intern(uid))


def pod_facts(item: PodItem) -> PodFacts:
    """The pod as the policy reads it; only `capo.io/` annotations are kept."""
    meta, spec, status = item.metadata, item.spec, item.status
    owner = None
    for ref in meta.ownerReferences or ():
        if ref.controller is True:
            owner = _owner(ref.apiVersion, ref.kind, ref.name, ref.uid)
            break
    # The decoder makes a new string for every occurrence; pods share namespaces, nodes, owners,
    # reserve-time values and most label keys and values, so one copy each keeps the pod cache
    # small. A label holding the pod's own name (a StatefulSet's pod-name) shares the name.
    annotations = {
        _intern(k): _intern(v)
        for k, v in (meta.annotations or {}).items()
        if k.startswith(KEPT_ANNOTATION_PREFIX)
    }
    name = meta.name
    labels = (
        {_intern(k): name if v == name else _intern(v) for k, v in meta.labels.items()} if meta.labels else {}
    )
    return PodFacts(
        namespace=_intern(meta.namespace),
        name=name,
        uid=meta.uid,
        node=_intern(spec.nodeName) if spec.nodeName else None,
        labels=labels,
        annotations=annotations,
        ips=_canonical_ips(status),
        host_network=spec.hostNetwork is True,
        phase=_intern(status.phase) if status.phase else None,
        reason=status.reason,
        deleting=meta.deletionTimestamp is not None,
        owner=owner,
    )


def namespace_facts(item: NamespaceItem) -> NamespaceFacts:
    labels = item.metadata.labels or {}
    return NamespaceFacts(
        name=item.metadata.name,
        enabled=labels.get(NAMESPACE_LABEL) in NAMESPACE_LABEL_VALUES,
        terminating=item.metadata.deletionTimestamp is not None or item.status.phase == "Terminating",
    )


def record(item: RecordItem) -> Record:
    """A ReservedIP record; DecodeError (with Record's own message) when it is not a valid one."""
    meta = item.metadata
    body = {
        "metadata": {
            "name": meta.name,
            "uid": meta.uid or None,
            "annotations": meta.annotations or {},
            "resourceVersion": meta.resourceVersion or None,
            # The releaser acts on these: our finalizer, and a person's deletion of the record.
            "finalizers": meta.finalizers or [],
            "deletionTimestamp": meta.deletionTimestamp,
        },
        "spec": item.spec,
    }
    try:
        return Record.from_body(body)
    except RecordError as exc:
        raise DecodeError(str(exc)) from exc


# -- kinds ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Kind(Generic[T]):
    """What an informer watches and how it decodes one object of it.

    `item_type` is a Struct with a `metadata: ObjectMeta` field; `convert` turns a decoded item
    into the cached value and raises DecodeError (or ValueError) for an object to skip.
    """

    group: str
    version: str
    plural: str
    namespaced: bool
    item_type: type[Any]
    convert: Callable[[Any], T]

    @property
    def path(self) -> str:
        """The cluster-wide collection path (every namespace for a namespaced kind)."""
        if self.group:
            return f"/apis/{self.group}/{self.version}/{self.plural}"
        return f"/api/{self.version}/{self.plural}"

    @property
    def resource(self) -> str:
        return f"{self.plural}.{self.group}" if self.group else self.plural


PODS: Kind[PodFacts] = Kind("", "v1", "pods", True, PodItem, pod_facts)
NAMESPACES: Kind[NamespaceFacts] = Kind("", "v1", "namespaces", False, NamespaceItem, namespace_facts)
RECORDS: Kind[Record] = Kind(GROUP, VERSION, PLURAL, False, RecordItem, record)


def records_of(reservation: str) -> Kind[Record]:
    """The records of one installation (`records.belongs_to`): a label selector cannot say
    "label absent or equal to the default", so the others are left out at decoding."""

    def convert(item: RecordItem) -> Record:
        if not belongs_to(item.metadata.labels, reservation):
            raise Foreign(f"another installation's record (reservation {reservation!r} is ours)")
        return record(item)

    return dataclasses.replace(RECORDS, convert=convert)


class Codec(Generic[T]):
    """Decoders for one kind's list pages and watch lines (the decoders are built once)."""

    def __init__(self, kind: Kind[T]) -> None:
        self.kind = kind
        self._list = msgspec.json.Decoder(ItemList[kind.item_type])  # type: ignore[name-defined]
        self._raw_list = msgspec.json.Decoder(ItemList[msgspec.Raw])
        self._item = msgspec.json.Decoder(kind.item_type)
        self._event = msgspec.json.Decoder(RawEvent)
        self._identity = msgspec.json.Decoder(IdentityItem)
        self._status = msgspec.json.Decoder(Status)

    def decode_list(self, data: bytes) -> tuple[ListMeta, list[Any]]:
        """A list page: its metadata and its items (wire Structs). One malformed item does not
        spoil the page: the page is then decoded item by item and that item is skipped."""
        try:
            page = self._list.decode(data)
        except msgspec.ValidationError:
            raw = self._raw_list.decode(data)  # still a DecodeError if the page is not a list at all
            items = []
            for chunk in raw.items or ():
                try:
                    items.append(self._item.decode(chunk))
                except msgspec.ValidationError:
                    continue
            return raw.metadata, items
        except msgspec.DecodeError as exc:
            raise DecodeError(f"unreadable {self.kind.resource} list: {exc}") from exc
        return page.metadata, page.items or []

    def decode_event(self, line: bytes) -> tuple[str, msgspec.Raw]:
        try:
            event = self._event.decode(line)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise DecodeError(f"unreadable {self.kind.resource} watch event: {exc}") from exc
        return event.type, event.object

    def decode_item(self, raw: msgspec.Raw | bytes) -> Any:
        try:
            return self._item.decode(raw)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise DecodeError(f"unreadable {self.kind.resource}: {exc}") from exc

    def decode_identity(self, raw: msgspec.Raw | bytes) -> IdentityMeta:
        """namespace, name and resourceVersion only (a bookmark, or an object that failed
        `decode_item`)."""
        try:
            return self._identity.decode(raw).metadata
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise DecodeError(f"unreadable {self.kind.resource} metadata: {exc}") from exc

    def decode_status(self, raw: msgspec.Raw | bytes) -> Status:
        try:
            return self._status.decode(raw)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return Status(message=bytes(raw)[:200].decode(errors="replace"))
