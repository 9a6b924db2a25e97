"""A Calico-like IPAM: lowest free address of a pool, skipping IPs in use and IPReservations.

As in Calico: every auto-assignment reads all IPReservations (crd.projectcalico.org/v1 and
projectcalico.org/v3); entries may be CIDRs or bare IPs; one malformed entry makes auto-assignment
fail; explicitly requested IPs (annotation ``cni.projectcalico.org/ipAddrs``) ignore reservations.
The network address of an IPv4 pool is never handed out.
"""

from __future__ import annotations

import ipaddress
import json
from typing import TYPE_CHECKING, Any

from .ip import IPAddress, IPNetwork, parse_cidr_or_ip, parse_ip_sloppy

if TYPE_CHECKING:
    from .store import Store

RESERVATION_KEYS = (("crd.projectcalico.org", "ipreservations"), ("projectcalico.org", "ipreservations"))
IP_ADDRS_ANNOTATION = "cni.projectcalico.org/ipAddrs"
_EXPAND_LIMIT = 1024


class AllocationError(Exception):
    pass


class Allocator:
    def __init__(self, store: Store, cidrs: list[str]) -> None:
        self.store = store
        self.pools: list[IPNetwork] = [ipaddress.ip_network(c, strict=False) for c in cidrs]
        self.allocated: dict[str, str] = {}  # ip -> "ns/name"
        self.by_pod: dict[str, list[str]] = {}  # pod uid -> ips
        # Python's share of the work, not Calico's (Go parses these in microseconds): the in-use
        # set is kept as IPs come and go, and the reservation filter is rebuilt only when an
        # IPReservation changed (by resourceVersion), each entry parsed once.
        self._in_use: set[int] = set()
        self._filter_key: tuple[tuple[str, str], ...] | None = None
        self._filter: tuple[set[int], list[IPNetwork], list[str]] = (set(), [], [])
        self._parsed: dict[str, IPNetwork | None] = {}

    def reservations(self) -> tuple[list[str], list[IPNetwork], list[str]]:
        """(raw entries, parsed networks, malformed entries) of every stored IPReservation."""
        raw: list[str] = []
        nets: list[IPNetwork] = []
        bad: list[str] = []
        for key in RESERVATION_KEYS:
            if key not in self.store.buckets:
                continue
            for obj in self.store.list(key):
                for entry in (obj.get("spec") or {}).get("reservedCIDRs") or []:
                    text = str(entry)
                    raw.append(text)
                    if text in self._parsed:
                        net = self._parsed[text]
                    else:
                        net = self._parsed[text] = parse_cidr_or_ip(text)
                    if net is None:
                        bad.append(text)
                    else:
                        nets.append(net)
        if len(self._parsed) > 2 * len(raw) + 1024:
            self._parsed = {text: self._parsed[text] for text in raw if text in self._parsed}
        return raw, nets, bad

    def _reservation_filter(self) -> tuple[set[int], list[IPNetwork], list[str]]:
        """(reserved IPs as ints, networks too large to expand, malformed entries), as of now."""
        key = tuple(
            (
                str((obj.get("metadata") or {}).get("name")),
                str((obj.get("metadata") or {}).get("resourceVersion")),
            )
            for bucket in RESERVATION_KEYS
            if bucket in self.store.buckets
            for obj in self.store.list(bucket)
        )
        if key != self._filter_key:
            _raw, nets, bad = self.reservations()
            small: set[int] = set()
            large: list[IPNetwork] = []
            for net in nets:
                if net.num_addresses <= _EXPAND_LIMIT:
                    small.update(range(int(net.network_address), int(net.broadcast_address) + 1))
                else:
                    large.append(net)
            self._filter_key, self._filter = key, (small, large, bad)
        return self._filter

    def auto_assign(self, owner: str, uid: str) -> list[str]:
        small, large, bad = self._reservation_filter()
        if bad:
            raise AllocationError(
                f"failed to get IP reservations: invalid CIDR address in IPReservation: {bad[0]!r}"
            )
        in_use = self._in_use
        chosen: list[str] = []
        for pool in self.pools:
            ip = self._lowest_free(pool, in_use, small, large)
            if ip is None:
                raise AllocationError(f"no more free addresses in pool {pool} (in use or reserved)")
            chosen.append(str(ip))
        self._take(owner, uid, chosen)
        return chosen

    @staticmethod
    def _lowest_free(
        pool: IPNetwork, in_use: set[int], small: set[int], large: list[IPNetwork]
    ) -> IPAddress | None:
        start = int(pool.network_address) + (1 if pool.version == 4 else 0)
        end = int(pool.broadcast_address)
        for value in range(start, end + 1):
            if value in in_use or value in small:
                continue
            ip = ipaddress.ip_address(value)
            if any(ip in net for net in large):
                continue
            return ip
        return None

    def assign_explicit(self, owner: str, uid: str, requested: list[str]) -> list[str]:
        """Calico's AssignIP for ``ipAddrs``: exactly the requested IPs (one IPv4 and/or one IPv6),
        each inside a pool and not in use; IPReservations are not consulted."""
        if not requested:
            raise AllocationError(f'annotation "{IP_ADDRS_ANNOTATION}" specified but empty')
        chosen = []
        versions: set[int] = set()
        for text in requested:
            ip = parse_ip_sloppy(text)
            if ip is None:
                raise AllocationError(f"invalid IP format: {text}")
            if ip.version in versions:
                raise AllocationError(
                    f"cannot have more than one IPv{ip.version} address"
                    f' for "{IP_ADDRS_ANNOTATION}" annotation'
                )
            versions.add(ip.version)
            if not any(ip in pool for pool in self.pools if pool.version == ip.version):
                raise AllocationError(f"the requested IP address {ip} is not in any configured pool")
            holder = self.allocated.get(str(ip))
            if holder is not None and str(ip) not in self.by_pod.get(uid, []):
                raise AllocationError(f"requested IP address {ip} is already assigned to {holder}")
            chosen.append(str(ip))
        self._take(owner, uid, chosen)
        return chosen

    def _take(self, owner: str, uid: str, ips: list[str]) -> None:
        self.release(uid)
        for ip in ips:
            self.allocated[ip] = owner
            self._in_use.add(int(ipaddress.ip_address(ip)))
        self.by_pod[uid] = list(ips)

    def release(self, uid: str) -> list[str]:
        ips = self.by_pod.pop(uid, [])
        for ip in ips:
            if self.allocated.pop(ip, None) is not None:
                self._in_use.discard(int(ipaddress.ip_address(ip)))
        return ips

    def snapshot(self) -> dict[str, Any]:
        raw, _nets, bad = self.reservations()
        return {
            "pools": [str(p) for p in self.pools],
            "allocated": dict(
                sorted(
                    self.allocated.items(),
                    key=lambda kv: (ipaddress.ip_address(kv[0]).version, int(ipaddress.ip_address(kv[0]))),
                )
            ),
            "reserved": raw,
            "malformed": bad,
        }


def requested_ips(pod: dict[str, Any]) -> list[str] | None:
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    text = annotations.get(IP_ADDRS_ANNOTATION)
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise AllocationError(f"failed to parse {IP_ADDRS_ANNOTATION} annotation: {exc}") from exc
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise AllocationError(f"{IP_ADDRS_ANNOTATION} must be a JSON list of IP strings")
    return value
