"""The one Calico IPReservation the operator owns: what Calico IPAM obeys.

Appends are one JSON patch with no read (the hot path of the webhook); removals are
read-modify-write with the resourceVersion, retried on conflict, so a concurrent append is never lost.
An append may carry, in the same patch, one `pending.capo.io/<name>` annotation per IP: what its
ReservedIP record will say, until the record exists (see pending.py). `GroupCommit` coalesces the
appends that arrive while a write is in flight into the next single patch.

Entries as Calico's Go code parses them (`ParseCIDROrIP`): a CIDR or a bare IP. We only ever write
host CIDRs; bare IPs (written by Capo) are read as valid and rewritten as host CIDRs on the next
rewrite; anything unparsable is "malformed": it crashes Calico IPAM's auto-assignment, so every
rewrite drops it.
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

import msgspec
from kubernetes.aio import client as k8s

from capo_operator.decisions import pending
from capo_operator.decisions.addresses import AddressError, host_cidr, ip_of, parse_calico_entry
from capo_operator.decisions.record import Record
from capo_operator.kube.informer import Informer
from capo_operator.kube.models import Kind, ObjectMeta
from capo_operator.kube.transport import ApiError, KubeTransport, Transport, send_json

logger = logging.getLogger(__name__)

PLURAL = "ipreservations"
KIND = "IPReservation"
JSON_PATCH = "application/json-patch+json"
MERGE_PATCH = "application/merge-patch+json"
MAX_ATTEMPTS = 12  # read-modify-write attempts before giving up on conflicts
# Kept on the object so that /metadata/annotations always exists: a JSON patch can then add a
# pending annotation without a read (adding below a missing map fails the whole patch).
MANAGED_BY = "capo.io/managed-by"
MANAGED_BY_VALUE = "capo-operator"
MAX_BATCH = 256  # IPs in one group-commit patch (a drain of a large node writes a few patches)


class _AnnotationsOnly(msgspec.Struct):
    annotations: dict[str, str] = {}


class _WrittenObject(msgspec.Struct):
    """What an append reads back from the object the server returns: its annotations only (the
    decoder skips the rest, `spec.reservedCIDRs` included, without building Python objects)."""

    metadata: _AnnotationsOnly = msgspec.field(default_factory=_AnnotationsOnly)


_WRITTEN = msgspec.json.Decoder(_WrittenObject)


class CalicoGroup(enum.StrEnum):
    CRD = "crd.projectcalico.org"  # version v1: the Kubernetes datastore's CRDs
    V3 = "projectcalico.org"  # version v3: calico-apiserver, or Calico >= 3.32 "v3 CRD mode"

    @property
    def version(self) -> str:
        return "v1" if self is CalicoGroup.CRD else "v3"

    @property
    def api_version(self) -> str:
        return f"{self.value}/{self.version}"


class CalicoError(Exception):
    """A Calico write or read failed; `status` is the HTTP status when there was one."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Snapshot:
    ips: frozenset[str]  # canonical IPs of the valid host-CIDR entries
    malformed: tuple[str, ...]  # entries that are not host CIDRs or bare IPs (never written by us)
    resource_version: str | None
    # Valid CIDRs wider than one host (only a person can have put them there): Calico obeys them and
    # they do not break IPAM, so rewrites keep them verbatim. They are not in `ips` nor in `malformed`.
    networks: tuple[str, ...] = ()
    # Canonical IPs written as bare IPs (Capo's format; the operator always writes host CIDRs).
    bare: frozenset[str] = frozenset()
    # Records that appends announced and that may not exist yet, by IP (pending.py), and the pending
    # annotations that could not be read (key -> reason): those entries are adopted as "recovered".
    pending: Mapping[str, Record] = field(default_factory=dict)
    pending_invalid: Mapping[str, str] = field(default_factory=dict)

    @property
    def pending_keys(self) -> tuple[str, ...]:
        """The annotation keys of the readable pending records."""
        return tuple(pending.key(ip) for ip in self.pending)


def _status_message(exc: k8s.ApiException) -> str:
    try:
        body = json.loads(exc.body) if exc.body else {}
        message = body.get("message") if isinstance(body, dict) else None
    except (TypeError, ValueError):
        message = None
    return str(message or exc.body or exc.reason or exc)


def _error(action: str, exc: k8s.ApiException) -> CalicoError:
    return CalicoError(f"{action}: HTTP {exc.status}: {_status_message(exc)}", status=exc.status)


async def detect_group(api: k8s.ApiClient, forced: str = "auto") -> CalicoGroup:
    """Calico's own rule: crd.projectcalico.org/v1 if served, else projectcalico.org/v3.
    `forced` ("crd.projectcalico.org" / "projectcalico.org") skips discovery.
    CalicoError if neither is served. A group counts as served only if it lists the
    `ipreservations` resource (Calico < 3.21 has none)."""
    if forced != "auto":
        try:
            return CalicoGroup(forced)
        except ValueError:
            raise CalicoError(
                f"unknown Calico API group {forced!r}: expected auto, "
                f"{CalicoGroup.CRD.value} or {CalicoGroup.V3.value}"
            ) from None
    try:
        groups = await k8s.ApisApi(api).get_api_versions()
    except k8s.ApiException as exc:
        raise _error("API discovery failed", exc) from exc
    served = {g.name: {v.version for v in (g.versions or [])} for g in (groups.groups or [])}
    custom = k8s.CustomObjectsApi(api)
    for group in (CalicoGroup.CRD, CalicoGroup.V3):
        if group.version not in served.get(group.value, set()):
            continue
        try:
            resources = await custom.get_api_resources(group.value, group.version)
        except k8s.ApiException as exc:
            if exc.status == 404:
                continue
            raise _error(f"discovery of {group.api_version} failed", exc) from exc
        if any(r.name == PLURAL for r in (resources.resources or [])):
            return group
    raise CalicoError(
        f"no Calico IPReservation API is served (neither {CalicoGroup.CRD.api_version} "
        f"nor {CalicoGroup.V3.api_version}); is Calico >= 3.21 installed?"
    )


def _is_network(entry: str) -> bool:
    """A CIDR wider than one host that Go's ParseCIDR accepts (host bits may be set). Not one that
    only Python accepts, such as `10.0.0.0/255.0.0.0`: Calico's strict CRDs refuse those, so
    keeping one would make every rewrite of the object fail."""
    try:
        parse_calico_entry(entry)
    except AddressError:
        return False
    return "/" in entry


@dataclass(frozen=True)
class _Parsed:
    ips: list[str]  # canonical IPs, in order, deduplicated
    networks: list[str]
    malformed: list[str]
    normal: bool  # the entries are already exactly what a rewrite would write
    bare: frozenset[str] = frozenset()


class ParseMemo:
    """What one object's earlier versions already parsed: entry -> (canonical IP or None, whether
    the entry is the canonical host CIDR), and pending annotation -> (value, decoded record or the
    reason it is unreadable). A watched IPReservation changes by a few entries per write while it
    holds hundreds; parsing only the new ones keeps each watch event O(changes) in Python work
    (decoding every pending annotation of every version was 44 % of the operator's CPU during a
    delete burst). Pruned to the current version's keys, so bounded by the object."""

    def __init__(self) -> None:
        self.entries: dict[str, tuple[str | None, bool]] = {}
        self.pending: dict[str, tuple[Any, Record | str]] = {}

    def entry(self, entry: str) -> tuple[str | None, bool]:
        known = self.entries.get(entry)
        if known is None:
            try:
                ip = ip_of(entry)
                known = (ip, host_cidr(ip) == entry)
            except AddressError:
                known = (None, False)
            self.entries[entry] = known
        return known

    def read_pending(self, annotations: Any) -> tuple[dict[str, Record], dict[str, str]]:
        """`pending.read`, reusing what earlier versions decoded."""
        records: dict[str, Record] = {}
        bad: dict[str, str] = {}
        if not isinstance(annotations, Mapping):
            self.pending = {}
            return records, bad
        seen: dict[str, tuple[Any, Record | str]] = {}
        for annotation, value in annotations.items():
            if not isinstance(annotation, str) or not pending.is_key(annotation):
                continue
            known = self.pending.get(annotation)
            if known is None or known[0] != value:
                try:
                    known = (value, pending.decode(annotation, value))
                except pending.PendingError as exc:
                    known = (value, str(exc))
            seen[annotation] = known
            if isinstance(known[1], Record):
                records[known[1].ip] = known[1]
            else:
                bad[annotation] = known[1]
        self.pending = seen
        return records, bad

    def prune(self, raw: Any) -> None:
        if isinstance(raw, list) and len(self.entries) > 2 * len(raw) + 64:
            current = {e for e in raw if isinstance(e, str)}
            self.entries = {k: v for k, v in self.entries.items() if k in current}


def _parse(raw: Any, memo: ParseMemo | None = None) -> _Parsed:
    ips: list[str] = []
    seen: set[str] = set()
    networks: list[str] = []
    malformed: list[str] = []
    normal = True
    bare: set[str] = set()
    if raw is None:
        raw = []
    if not isinstance(raw, list):
        return _Parsed([], [], [json.dumps(raw)], normal=False)
    for entry in raw:
        if not isinstance(entry, str):
            malformed.append(json.dumps(entry))
            normal = False
            continue
        if memo is not None:
            parsed_ip, canonical = memo.entry(entry)
        else:
            try:
                parsed_ip = ip_of(entry)
                canonical = host_cidr(parsed_ip) == entry
            except AddressError:
                parsed_ip, canonical = None, False
        if parsed_ip is None:
            if _is_network(entry) and entry not in networks:
                networks.append(entry)
            else:
                malformed.append(entry)
                normal = False
            continue
        ip = parsed_ip
        if ip in seen or not canonical:
            normal = False  # a duplicate (Calico < 3.32 accepts them) or a bare / non-canonical IP
        if "/" not in entry:
            bare.add(ip)
        if ip not in seen:
            seen.add(ip)
            ips.append(ip)
    if memo is not None:
        memo.prune(raw)
    return _Parsed(ips, networks, malformed, normal, frozenset(bare))


def _entries(obj: Mapping[str, Any]) -> Any:
    spec = obj.get("spec")
    return spec.get("reservedCIDRs") if isinstance(spec, Mapping) else None


class CalicoStore:
    def __init__(self, api: k8s.ApiClient, *, name: str, group: CalicoGroup) -> None:
        self.api = api
        self.name = name
        self.group = group
        self._custom = k8s.CustomObjectsApi(api)
        self._path = f"/apis/{group.value}/{group.version}/{PLURAL}/{name}"
        # Bytes of pending annotations on the object as our last write or read saw it: bounds what
        # the next append adds (the object's annotations may hold 256 KiB in all).
        self.pending_bytes = 0

    def _saw(self, obj: Any) -> None:
        if isinstance(obj, Mapping):
            self._saw_annotations((obj.get("metadata") or {}).get("annotations") or {})

    def _saw_annotations(self, annotations: Mapping[Any, Any]) -> None:
        self.pending_bytes = pending.total_size(annotations)

    async def _json_patch(self, patch: list[dict[str, Any]]) -> None:
        """The append's PATCH, without the generated method (`send_json`); only the annotations are
        decoded from the answer (the IPReservation it returns holds every entry; parsing all of it
        was most of the client's share of the write). ApiError for an answer other than 2xx."""
        data = await send_json(self.api, "PATCH", self._path, patch, content_type=JSON_PATCH)
        try:
            self._saw_annotations(_WRITTEN.decode(data).metadata.annotations)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            # The write happened; only the size estimate for the next append is stale.
            logger.warning("could not read the IPReservation the server returned: %s", exc)

    # -- low-level calls -------------------------------------------------------------------------

    def _body(self, cidrs: list[str]) -> dict[str, Any]:
        return {
            "apiVersion": self.group.api_version,
            "kind": KIND,
            "metadata": {"name": self.name, "annotations": {MANAGED_BY: MANAGED_BY_VALUE}},
            "spec": {"reservedCIDRs": cidrs},
        }

    async def _get(self) -> dict[str, Any] | None:
        try:
            obj = cast(
                dict[str, Any],
                await self._custom.get_cluster_custom_object(
                    self.group.value, self.group.version, PLURAL, self.name
                ),
            )
        except k8s.ApiException as exc:
            if exc.status == 404:
                return None
            raise _error(f"reading IPReservation {self.name}", exc) from exc
        self._saw(obj)
        return obj

    async def _create(self, cidrs: list[str], details: Mapping[str, str] | None = None) -> bool:
        """False when the object already exists."""
        body = self._body(cidrs)
        body["metadata"]["annotations"].update(self._annotations(cidrs, details, self.pending_bytes))
        try:
            self._saw(
                await self._custom.create_cluster_custom_object(
                    self.group.value, self.group.version, PLURAL, body
                )
            )
        except k8s.ApiException as exc:
            if exc.status == 409:
                return False
            raise _error(f"creating IPReservation {self.name}", exc) from exc
        logger.info("created IPReservation %s (%s)", self.name, self.group.api_version)
        return True

    async def _replace(
        self, obj: dict[str, Any], cidrs: list[str], annotations: dict[str, str] | None = None
    ) -> bool:
        """resourceVersion-checked update of the entries (and, if given, of the whole annotation
        map); False on a conflict (or a vanished object)."""
        body = dict(obj)
        body["spec"] = {**(obj.get("spec") or {}), "reservedCIDRs": cidrs}
        if annotations is not None:
            body["metadata"] = {**(obj.get("metadata") or {}), "annotations": annotations}
        try:
            self._saw(
                await self._custom.replace_cluster_custom_object(
                    self.group.value, self.group.version, PLURAL, self.name, body
                )
            )
        except k8s.ApiException as exc:
            if exc.status in (404, 409):
                return False
            raise _error(f"updating IPReservation {self.name}", exc) from exc
        return True

    @staticmethod
    async def _backoff(attempt: int) -> None:
        # Jittered, so that competing writers (every replica's webhook, the leader) spread out.
        await asyncio.sleep(random.uniform(0, min(0.5, 0.01 * 2**attempt)))

    # -- the contract --------------------------------------------------------------------------------

    def _annotations(self, cidrs: list[str], details: Mapping[str, str] | None, used: int) -> dict[str, str]:
        """Pending annotations for the IPs of `cidrs` that have details, within the byte budget (the
        rest is reserved without them: adopted as "recovered" if its record never comes)."""
        out: dict[str, str] = {}
        if not details:
            return out
        for cidr in cidrs:
            ip = ip_of(cidr)
            value = details.get(ip)
            if value is None:
                continue
            name = pending.key(ip)
            cost = pending.size(name, value)
            if used + cost > pending.BUDGET_BYTES:
                logger.warning(
                    "pending record annotations of IPReservation %s are full: %s reserved without its "
                    "details (its record still follows)",
                    self.name,
                    ip,
                )
                continue
            used += cost
            out[name] = value
        return out

    async def ensure(self) -> None:
        """Create the object with `reservedCIDRs: []` if absent (AlreadyExists is success), and make
        sure it carries the `capo.io/managed-by` annotation (so appends can add annotations blindly)."""
        obj = await self._get()
        if obj is None and await self._create([]):
            return
        obj = obj or await self._get()
        annotations = ((obj or {}).get("metadata") or {}).get("annotations") or {}
        if obj is not None and annotations.get(MANAGED_BY) != MANAGED_BY_VALUE:
            await self._merge({"metadata": {"annotations": {MANAGED_BY: MANAGED_BY_VALUE}}}, "marking")

    async def _merge(self, patch: dict[str, Any], action: str) -> None:
        try:
            self._saw(
                await self._custom.patch_cluster_custom_object(
                    self.group.value, self.group.version, PLURAL, self.name, patch, _content_type=MERGE_PATCH
                )
            )
        except k8s.ApiException as exc:
            if exc.status == 404:
                return
            raise _error(f"{action} IPReservation {self.name}", exc) from exc

    async def clear_pending(self, keys: Iterable[str]) -> None:
        """Remove these pending annotations in one merge patch (an absent one is no error). Only for
        entries whose record exists, or whose IP is no longer reserved. Raises CalicoError."""
        wanted = sorted({k for k in keys if pending.is_key(k)})
        if wanted:
            await self._merge(
                {"metadata": {"annotations": dict.fromkeys(wanted)}}, "clearing pending records of"
            )

    async def append(self, ips: Iterable[str], details: Mapping[str, str] | None = None) -> None:
        """Add host CIDRs for `ips` (validated with addresses.host_cidr before anything is sent).
        One JSON patch of `add /spec/reservedCIDRs/-` ops, plus one `add` of a pending annotation per
        IP in `details` (canonical IP -> pending.encode(record)); an entry already present is success
        (Calico 3.32 rejects duplicates with 422: then read, add only the missing ones with a
        resourceVersion-checked update). Creates the object if absent; copes with a missing
        `spec.reservedCIDRs` (calico-apiserver omits empty lists). Raises CalicoError."""
        cidrs = host_cidrs(ips)
        if not cidrs:
            return
        patch: list[dict[str, Any]] = [
            {"op": "add", "path": "/spec/reservedCIDRs/-", "value": c} for c in cidrs
        ]
        for name, value in self._annotations(cidrs, details, self.pending_bytes).items():
            patch.append({"op": "add", "path": "/metadata/annotations/" + _pointer(name), "value": value})
        try:
            await self._json_patch(patch)
            return
        except ApiError as exc:
            if exc.status == 404:
                if await self._create(cidrs, details):
                    return
                # Someone created it between our patch and our create: fall through to the checked path.
            elif exc.status not in (400, 409, 422):
                raise CalicoError(
                    f"appending to IPReservation {self.name}: HTTP {exc.status}: {exc.message or exc.reason}",
                    status=exc.status,
                ) from exc
            # 422: a duplicate under list-type set, a missing list or annotation map ("path not
            # found"), a legacy bare IP that a strict CRD no longer accepts, or annotations over the
            # size limit; 400 is how some servers report the missing path.
            logger.debug("JSON-patch append failed (HTTP %s), using a checked update", exc.status)
        await self._append_checked(cidrs, details)

    async def _append_checked(self, cidrs: list[str], details: Mapping[str, str] | None = None) -> None:
        for attempt in range(MAX_ATTEMPTS):
            obj = await self._get()
            if obj is None:
                if await self._create(cidrs, details):
                    return
                continue
            parsed = _parse(_entries(obj))
            present = set(parsed.ips)
            missing = [c for c in cidrs if ip_of(c) not in present]
            current = dict((obj.get("metadata") or {}).get("annotations") or {})
            wanted = {
                k: v
                for k, v in self._annotations(cidrs, details, self.pending_bytes).items()
                if k not in current  # the first reservation's details stand
            }
            marked = current.get(MANAGED_BY) == MANAGED_BY_VALUE
            if not missing and not wanted and marked and parsed.normal and isinstance(_entries(obj), list):
                return
            if parsed.malformed:
                logger.warning("dropping malformed IPReservation entries %s", parsed.malformed)
            new = [host_cidr(ip) for ip in parsed.ips] + parsed.networks + missing
            annotations = {**current, **wanted, MANAGED_BY: MANAGED_BY_VALUE}
            if await self._replace(obj, new, annotations):
                return
            await self._backoff(attempt)
        raise CalicoError(
            f"appending to IPReservation {self.name}: still conflicting after {MAX_ATTEMPTS} attempts",
            status=409,
        )

    async def remove(self, ips: Iterable[str]) -> frozenset[str]:
        """Remove the entries of `ips` in one resourceVersion-checked update (retried on 409 with a
        fresh read), keeping every other entry; bare-IP entries are rewritten as host CIDRs and
        malformed entries are dropped in the same write (they break Calico IPAM). Returns the IPs
        that were present and are now removed. Raises CalicoError."""
        targets: set[str] = set()
        for ip in ips:
            try:
                targets.add(ip_of(ip))
            except AddressError as exc:
                raise CalicoError(f"cannot release {ip!r}: {exc}") from exc
        for attempt in range(MAX_ATTEMPTS):
            obj = await self._get()
            if obj is None:
                return frozenset()
            parsed = _parse(_entries(obj))
            removed = frozenset(ip for ip in parsed.ips if ip in targets)
            if not removed and parsed.normal:
                return frozenset()
            if parsed.malformed:
                logger.warning("dropping malformed IPReservation entries %s", parsed.malformed)
            keep = [host_cidr(ip) for ip in parsed.ips if ip not in targets] + parsed.networks
            # The pending details of a released IP go in the same write (they would outlive it).
            kept_keys = {pending.key(ip) for ip in parsed.ips if ip not in targets}
            annotations = {
                k: v
                for k, v in ((obj.get("metadata") or {}).get("annotations") or {}).items()
                if not pending.is_key(k) or k in kept_keys
            }
            if await self._replace(obj, keep, annotations):
                return removed
            await self._backoff(attempt)
        raise CalicoError(
            f"removing from IPReservation {self.name}: still conflicting after {MAX_ATTEMPTS} attempts",
            status=409,
        )

    async def read(self) -> Snapshot:
        """The object's entries; an absent object reads as empty."""
        obj = await self._get()
        if obj is None:
            return EMPTY
        metadata = obj.get("metadata") or {}
        return snapshot_of(_entries(obj), metadata.get("annotations"), metadata.get("resourceVersion"))

    def cache(self, **options: Any) -> ReservationCache:
        """A watch on this one object (see ReservationCache); `run()` it while it is needed."""
        return ReservationCache(KubeTransport(self.api), self.group, self.name, **options)


EMPTY = Snapshot(ips=frozenset(), malformed=(), resource_version=None)


def snapshot_of(
    entries: Any, annotations: Any, resource_version: str | None, memo: ParseMemo | None = None
) -> Snapshot:
    """What the object says: its `spec.reservedCIDRs` as read, its annotations (pending records).
    With `memo` (a watch's successive versions of the object), only what changed is parsed."""
    parsed = _parse(entries, memo)
    mapping = annotations if isinstance(annotations, Mapping) else None
    records, invalid = memo.read_pending(mapping) if memo is not None else pending.read(mapping)
    return Snapshot(
        ips=frozenset(parsed.ips),
        malformed=tuple(parsed.malformed),
        resource_version=resource_version or None,
        networks=tuple(parsed.networks),
        bare=parsed.bare,
        pending=records,
        pending_invalid=invalid,
    )


class ReservationItem(msgspec.Struct, frozen=True):
    metadata: ObjectMeta = ObjectMeta()
    spec: Any = None  # read as `_parse` reads a GET's body: anything unexpected is malformed


def reservation_kind(group: CalicoGroup) -> Kind[Snapshot]:
    """The IPReservation as an informer kind: each version of the object becomes a Snapshot. The
    watch is narrowed to one object, so one memo serves all its versions."""
    memo = ParseMemo()

    def convert(item: ReservationItem) -> Snapshot:
        entries = item.spec.get("reservedCIDRs") if isinstance(item.spec, dict) else None
        return snapshot_of(entries, item.metadata.annotations, item.metadata.resourceVersion, memo)

    return Kind(group.value, group.version, PLURAL, False, ReservationItem, convert)


class ReservationCache:
    """The one IPReservation as a watch sees it: an informer (paginated list, watch with
    bookmarks, relist on 410, resync) narrowed to the object by `fieldSelector=metadata.name=X`,
    which RBAC's `resourceNames` authorizes for list and watch. It lets the leader skip reading the
    object when nothing changed: `version` moves with every change seen.

    The view lags behind the writes of this process (and everyone else's) by a watch event, so a
    decision that would write because of what it shows (a missing entry, an entry without a
    record) is confirmed with a read first."""

    def __init__(self, transport: Transport, group: CalicoGroup, name: str, **options: Any) -> None:
        self.name = name
        self.informer: Informer[Snapshot] = Informer(
            transport, reservation_kind(group), field_selector=f"metadata.name={name}", **options
        )

    @property
    def synced(self) -> asyncio.Event:
        return self.informer.synced

    @property
    def version(self) -> int:
        """Moves whenever the cached object changed (or appeared, or went)."""
        return self.informer.store.version

    def snapshot(self) -> Snapshot | None:
        """The object as last seen (an absent object reads as empty); None before the first list."""
        if not self.informer.synced.is_set():
            return None
        return self.informer.store.get(self.name) or EMPTY

    async def run(self) -> None:
        await self.informer.run()


def host_cidrs(ips: Iterable[str]) -> list[str]:
    """Validated canonical host CIDRs of `ips`, deduplicated, order kept. CalicoError for a bad one."""
    cidrs: list[str] = []
    for ip in ips:
        try:
            cidr = host_cidr(ip)
        except AddressError as exc:
            raise CalicoError(f"refusing to reserve {ip!r}: {exc}") from exc
        if cidr not in cidrs:
            cidrs.append(cidr)
    return cidrs


def _pointer(name: str) -> str:
    """A JSON-pointer token (RFC 6901): '~' and '/' escaped."""
    return name.replace("~", "~0").replace("/", "~1")


class Appender(Protocol):
    async def append(self, ips: Iterable[str], details: Mapping[str, str] | None = None) -> None: ...


@dataclass
class _Waiter:
    cidrs: list[str]
    details: Mapping[str, str]
    done: asyncio.Future[None]


class GroupCommit:
    """Group commit in front of `CalicoStore.append`: the first append is written at once; appends
    that arrive while a write is in flight wait and go together in the next single patch (at most
    MAX_BATCH IPs each). Every waiter learns the outcome of the write that carried its IPs: success,
    or that write's error (a failed batch fails each of its waiters; none succeeds silently)."""

    def __init__(
        self, store: Appender, *, max_batch: int = MAX_BATCH, on_error: Callable[[], None] = lambda: None
    ) -> None:
        self.store = store
        self.max_batch = max_batch
        self.on_error = on_error  # once per failed write (not per waiter)
        self.last_activity = 0.0  # monotonic time of the last append call or finished write
        self._queue: list[_Waiter] = []
        self._writer: asyncio.Task[None] | None = None
        self.writes = 0  # patches sent (for metrics and tests)

    @property
    def waiting(self) -> int:
        return len(self._queue)

    @property
    def busy(self) -> bool:
        """A write is in flight or waiting."""
        return bool(self._queue) or (self._writer is not None and not self._writer.done())

    async def append(self, ips: Iterable[str], details: Mapping[str, str] | None = None) -> None:
        cidrs = host_cidrs(ips)  # a bad IP fails its own caller, never the batch it would join
        if not cidrs:
            return
        loop = asyncio.get_running_loop()
        self.last_activity = loop.time()
        done: asyncio.Future[None] = loop.create_future()
        # A caller that stops waiting (deadline, cancellation) must not leave an unread exception.
        done.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._queue.append(_Waiter(cidrs, dict(details or {}), done))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_all(), name="calico-group-commit")
        # shield: a cancelled caller leaves its IPs in the batch (they are reserved all the same).
        await asyncio.shield(done)

    def _take(self) -> list[_Waiter]:
        batch: list[_Waiter] = []
        count = 0
        while self._queue and (not batch or count + len(self._queue[0].cidrs) <= self.max_batch):
            waiter = self._queue.pop(0)
            batch.append(waiter)
            count += len(waiter.cidrs)
        return batch

    async def _write_all(self) -> None:
        while self._queue:
            batch = self._take()
            cidrs: list[str] = []
            details: dict[str, str] = {}
            for waiter in batch:
                cidrs.extend(c for c in waiter.cidrs if c not in cidrs)
                for ip, value in waiter.details.items():
                    details.setdefault(ip, value)  # the first reservation's details stand
            self.writes += 1
            try:
                await self.store.append([ip_of(c) for c in cidrs], details)
                self.last_activity = asyncio.get_running_loop().time()
            except BaseException as exc:
                if isinstance(exc, Exception):
                    self.on_error()
                for waiter in batch:
                    if not waiter.done.done():
                        waiter.done.set_exception(_batch_error(exc))
                if not isinstance(exc, Exception):
                    for waiter in self._queue:  # cancelled: the process is stopping
                        if not waiter.done.done():
                            waiter.done.set_exception(_batch_error(exc))
                    self._queue.clear()
                    raise
            else:
                for waiter in batch:
                    if not waiter.done.done():
                        waiter.done.set_result(None)


def _batch_error(exc: BaseException) -> BaseException:
    if isinstance(exc, CalicoError):
        return CalicoError(str(exc), status=exc.status)  # one instance per waiter
    if isinstance(exc, Exception):
        return CalicoError(f"appending to the IPReservation failed: {exc}")
    return CalicoError("the Calico write was cancelled (the operator is stopping)")
