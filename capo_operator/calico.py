"""The one Calico IPReservation the operator owns: what Calico IPAM obeys.

Appends are one JSON patch with no read (the hot path of the webhook); removals are
read-modify-write with the resourceVersion, retried on conflict, so a concurrent append is never lost.

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
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, cast

from kubernetes.aio import client as k8s

from capo_operator.addresses import AddressError, host_cidr, ip_of, parse_calico_entry

logger = logging.getLogger(__name__)

PLURAL = "ipreservations"
KIND = "IPReservation"
JSON_PATCH = "application/json-patch+json"
MAX_ATTEMPTS = 12  # read-modify-write attempts before giving up on conflicts


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


def _parse(raw: Any) -> _Parsed:
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
        try:
            ip = ip_of(entry)
        except AddressError:
            if _is_network(entry) and entry not in networks:
                networks.append(entry)
            else:
                malformed.append(entry)
                normal = False
            continue
        if ip in seen or host_cidr(ip) != entry:
            normal = False  # a duplicate (Calico < 3.32 accepts them) or a bare / non-canonical IP
        if "/" not in entry:
            bare.add(ip)
        if ip not in seen:
            seen.add(ip)
            ips.append(ip)
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

    # -- low-level calls -------------------------------------------------------------------------

    def _body(self, cidrs: list[str]) -> dict[str, Any]:
        return {
            "apiVersion": self.group.api_version,
            "kind": KIND,
            "metadata": {"name": self.name},
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
        return obj

    async def _create(self, cidrs: list[str]) -> bool:
        """False when the object already exists."""
        try:
            await self._custom.create_cluster_custom_object(
                self.group.value, self.group.version, PLURAL, self._body(cidrs)
            )
        except k8s.ApiException as exc:
            if exc.status == 409:
                return False
            raise _error(f"creating IPReservation {self.name}", exc) from exc
        logger.info("created IPReservation %s (%s)", self.name, self.group.api_version)
        return True

    async def _replace(self, obj: dict[str, Any], cidrs: list[str]) -> bool:
        """resourceVersion-checked update of the entries; False on a conflict (or a vanished object)."""
        body = dict(obj)
        body["spec"] = {**(obj.get("spec") or {}), "reservedCIDRs": cidrs}
        try:
            await self._custom.replace_cluster_custom_object(
                self.group.value, self.group.version, PLURAL, self.name, body
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

    async def ensure(self) -> None:
        """Create the object with `reservedCIDRs: []` if absent (AlreadyExists is success)."""
        if await self._get() is None:
            await self._create([])

    async def append(self, ips: Iterable[str]) -> None:
        """Add host CIDRs for `ips` (validated with addresses.host_cidr before anything is sent).
        One JSON patch of `add /spec/reservedCIDRs/-` ops; an entry already present is success
        (Calico 3.32 rejects duplicates with 422: then read, add only the missing ones with a
        resourceVersion-checked update). Creates the object if absent; copes with a missing
        `spec.reservedCIDRs` (calico-apiserver omits empty lists). Raises CalicoError."""
        cidrs: list[str] = []
        for ip in ips:
            try:
                cidr = host_cidr(ip)
            except AddressError as exc:
                raise CalicoError(f"refusing to reserve {ip!r}: {exc}") from exc
            if cidr not in cidrs:
                cidrs.append(cidr)
        if not cidrs:
            return
        patch = [{"op": "add", "path": "/spec/reservedCIDRs/-", "value": c} for c in cidrs]
        try:
            await self._custom.patch_cluster_custom_object(
                self.group.value, self.group.version, PLURAL, self.name, patch, _content_type=JSON_PATCH
            )
            return
        except k8s.ApiException as exc:
            if exc.status == 404:
                if await self._create(cidrs):
                    return
                # Someone created it between our patch and our create: fall through to the checked path.
            elif exc.status not in (400, 409, 422):
                raise _error(f"appending to IPReservation {self.name}", exc) from exc
            # 422: a duplicate under list-type set, a missing list ("path not found"), or a legacy bare
            # IP that a strict CRD no longer accepts; 400 is how some servers report the missing path.
            logger.debug("JSON-patch append failed (HTTP %s), using a checked update", exc.status)
        await self._append_checked(cidrs)

    async def _append_checked(self, cidrs: list[str]) -> None:
        for attempt in range(MAX_ATTEMPTS):
            obj = await self._get()
            if obj is None:
                if await self._create(cidrs):
                    return
                continue
            parsed = _parse(_entries(obj))
            present = set(parsed.ips)
            missing = [c for c in cidrs if ip_of(c) not in present]
            if not missing and parsed.normal and isinstance(_entries(obj), list):
                return
            if parsed.malformed:
                logger.warning("dropping malformed IPReservation entries %s", parsed.malformed)
            new = [host_cidr(ip) for ip in parsed.ips] + parsed.networks + missing
            if await self._replace(obj, new):
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
            if await self._replace(obj, keep):
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
            return Snapshot(ips=frozenset(), malformed=(), resource_version=None)
        parsed = _parse(_entries(obj))
        return Snapshot(
            ips=frozenset(parsed.ips),
            malformed=tuple(parsed.malformed),
            resource_version=(obj.get("metadata") or {}).get("resourceVersion"),
            networks=tuple(parsed.networks),
            bare=parsed.bare,
        )
