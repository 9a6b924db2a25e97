"""The ledger: a small persisted map of the selected live pods' IPs (one ConfigMap, leader-written).

A fresh pod list cannot show pods deleted while every replica was down; the ledger can. On
start the leader compares it with the live pods and reserves the IPs of pods that vanished.

Format: ConfigMap `capo-ledger`, one data key `ledger.json`, compact JSON mapping each IP to an
object with short keys (`ns`, `pod`, `uid`, `node`, `ok`/`on`/`ou` for the owner's kind, name and
uid; absent keys are null). A ConfigMap's data may not exceed 1 MiB (1,048,576 bytes; etcd's own
request limit is ~1.5 MiB). A typical entry is ~150-250 bytes, so the ledger holds at least ~4,000
selected pod IPs; `save` refuses (LedgerError, nothing written) a ledger that would not fit
rather than have the API server reject it half-way.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from kubernetes.aio import client as k8s

from capo_operator.addresses import AddressError, ip_of

logger = logging.getLogger(__name__)

DATA_KEY = "ledger.json"
MAX_DATA_BYTES = 1024 * 1024 - 4096  # the 1 MiB ConfigMap limit, with room for the key and metadata


class LedgerError(Exception):
    """The ledger cannot be written (too large for a ConfigMap)."""


@dataclass(frozen=True)
class LedgerEntry:
    ip: str
    namespace: str
    name: str
    uid: str
    node: str | None
    owner_kind: str | None = None
    owner_name: str | None = None
    owner_uid: str | None = None

    def to_json(self) -> dict[str, str]:
        fields = {
            "ns": self.namespace,
            "pod": self.name,
            "uid": self.uid,
            "node": self.node,
            "ok": self.owner_kind,
            "on": self.owner_name,
            "ou": self.owner_uid,
        }
        return {k: v for k, v in fields.items() if v is not None}

    @classmethod
    def from_json(cls, ip: str, data: Any) -> LedgerEntry:
        """ValueError when `data` is not an entry."""
        if not isinstance(data, Mapping):
            raise ValueError(f"entry for {ip!r} is not an object")

        def text(key: str, required: bool = False) -> str | None:
            value = data.get(key)
            if value is None and not required:
                return None
            if not isinstance(value, str) or not value:
                raise ValueError(f"entry for {ip!r}: {key!r} is {value!r}")
            return value

        return cls(
            ip=ip_of(ip),
            namespace=str(text("ns", True)),
            name=str(text("pod", True)),
            uid=str(text("uid", True)),
            node=text("node"),
            owner_kind=text("ok"),
            owner_name=text("on"),
            owner_uid=text("ou"),
        )


@dataclass(frozen=True)
class Reconciliation:
    to_reserve: tuple[LedgerEntry, ...]  # pod gone, IP free, no record: reserve (trigger safety-net)
    lost: tuple[LedgerEntry, ...]  # pod gone but its IP is held by another live pod now: report


def _canonical(ip: str) -> str:
    try:
        return ip_of(ip)
    except AddressError:
        return ip


def reconcile(
    ledger: Mapping[str, LedgerEntry],
    *,
    live_uids: Collection[str],
    ip_holders: Mapping[str, str],
    recorded_ips: Collection[str],
) -> Reconciliation:
    """Pure: which ledger entries describe pods that vanished while no replica watched.
    `ip_holders` maps IP -> uid of the live pod holding it now.
    Entries of live pods and IPs that already have a record are left alone; an IP held by the
    entry's own pod is not "lost". Results are sorted by IP."""
    live = set(live_uids)
    recorded = {_canonical(ip) for ip in recorded_ips}
    holders = {_canonical(ip): uid for ip, uid in ip_holders.items()}
    to_reserve: list[LedgerEntry] = []
    lost: list[LedgerEntry] = []
    for entry in sorted(ledger.values(), key=lambda e: (_canonical(e.ip), e.uid)):
        ip = _canonical(entry.ip)
        if entry.uid in live or ip in recorded:
            continue
        holder = holders.get(ip)
        if holder is None:
            to_reserve.append(entry)
        elif holder != entry.uid:
            lost.append(entry)
        # holder == entry.uid: the pod holds it, so it is live whatever live_uids says
    return Reconciliation(to_reserve=tuple(to_reserve), lost=tuple(lost))


def encode(entries: Mapping[str, LedgerEntry]) -> str:
    """Compact, deterministic JSON (sorted keys: an unchanged ledger encodes to the same text)."""
    data = {entry.ip: entry.to_json() for entry in entries.values()}
    return json.dumps(data, separators=(",", ":"), sort_keys=True, ensure_ascii=False)


def decode(text: str) -> dict[str, LedgerEntry]:
    """Entries of a ledger text; unreadable entries are skipped (logged); unreadable JSON is empty."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        logger.warning("ledger is not JSON, ignoring it: %s", exc)
        return {}
    if not isinstance(data, dict):
        logger.warning("ledger is not a JSON object, ignoring it")
        return {}
    entries: dict[str, LedgerEntry] = {}
    for ip, value in data.items():
        try:
            entry = LedgerEntry.from_json(ip, value)
        except (ValueError, TypeError) as exc:
            logger.warning("skipping ledger entry %r: %s", ip, exc)
            continue
        entries[entry.ip] = entry
    return entries


LEDGER_NAME = "capo-ledger"


class Ledger:
    def __init__(self, api: k8s.ApiClient, *, namespace: str, name: str = LEDGER_NAME) -> None:
        self.api = api
        self.namespace = namespace
        self.name = name
        self._core = k8s.CoreV1Api(api)
        self._exists: bool | None = None  # learnt from load/save, so a save is one call

    async def load(self) -> dict[str, LedgerEntry]:
        """IP -> entry; an absent ConfigMap is an empty ledger; unreadable entries are skipped."""
        try:
            cm = await self._core.read_namespaced_config_map(self.name, self.namespace)
        except k8s.ApiException as exc:
            if exc.status == 404:
                self._exists = False
                return {}
            raise
        self._exists = True
        text = (cm.data or {}).get(DATA_KEY)
        return decode(text) if text else {}

    async def save(self, entries: Mapping[str, LedgerEntry]) -> None:
        """Write the whole ledger in one call (create if absent, else update). Compact JSON.
        The update is unconditional (no resourceVersion): the leader is the only writer and its
        view is the truth. LedgerError, with nothing written, when it exceeds the ConfigMap limit."""
        text = encode(entries)
        size = len(text.encode())
        if size > MAX_DATA_BYTES:
            raise LedgerError(
                f"ledger of {len(entries)} entries is {size} bytes, over the "
                f"{MAX_DATA_BYTES}-byte ConfigMap budget"
            )
        body = k8s.V1ConfigMap(
            api_version="v1",
            kind="ConfigMap",
            metadata=k8s.V1ObjectMeta(
                name=self.name, namespace=self.namespace, labels={"app.kubernetes.io/name": "capo-operator"}
            ),
            data={DATA_KEY: text},
        )
        # One call in the steady state; the other verb only when our belief about existence was wrong.
        for _ in range(3):
            try:
                if self._exists is False:
                    await self._core.create_namespaced_config_map(self.namespace, body)
                else:
                    await self._core.replace_namespaced_config_map(self.name, self.namespace, body)
            except k8s.ApiException as exc:
                if self._exists is not False and exc.status == 404:
                    self._exists = False
                    continue
                if self._exists is False and exc.status == 409:
                    self._exists = True
                    continue
                raise
            self._exists = True
            return
        raise LedgerError(f"ConfigMap {self.namespace}/{self.name} kept appearing and disappearing")
