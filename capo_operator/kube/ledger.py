"""The ledger: a persisted map of the selected live pods' IPs (sharded ConfigMaps, leader-written).

A fresh pod list cannot show pods deleted while every replica was down; the ledger can. On
start the leader compares it with the live pods and reserves the IPs of pods that vanished.

Format (version 2; docs/architecture.md "The ledger" has the size math):
- `capo-ledger` holds the index, data key `index.json`: `{"format": 2, "shards": N}`.
- `capo-ledger-<i>` (i < N, N a power of two <= MAX_SHARDS) holds the pods whose uid hashes to i
  (`crc32(uid) % N`), all IPs of a pod together: data key `meta.json` (format, shard, shards,
  generation, counts, sha256 of the payload) and binaryData `entries.json.zz`, zlib-compressed
  column-oriented JSON (one list per field, so repeated namespaces, owners and nodes compress).
- Only shards whose content changed are written. A shard is written whole in one PUT; one whose
  checksum, format or fields do not verify is ignored whole (never half-applied) and logged.
- Resharding never loses an entry to a crash half-way: when N grows the index is written first
  (a reader then reads every old shard and whatever new ones exist), when it shrinks the new shards
  are written first and the index after; entries found twice are taken from the newer generation.
- A read that fails (an API error, a newer format) makes `save` write nothing until the next
  successful `load`, that is for the rest of the leadership term: the first pass must not
  overwrite what the next leader still needs.
- Format 1 (one data key `ledger.json` in `capo-ledger`) is read, and replaced by format 2 at the
  first save, the old data removed only once every shard is written.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import logging
import math
import zlib
from collections import defaultdict
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from kubernetes.aio import client as k8s

from capo_operator.decisions.addresses import AddressError, ip_of
from capo_operator.kube.slim import CoreV1

logger = logging.getLogger(__name__)

NAME = "capo-ledger"
DATA_KEY = "ledger.json"  # format 1
INDEX_KEY = "index.json"
META_KEY = "meta.json"
PAYLOAD_KEY = "entries.json.zz"
FORMAT = 2
MAX_SHARDS = 16  # the shipped Roles name capo-ledger-0 .. capo-ledger-15
READ_CONCURRENCY = 4
# A shard's compressed payload: grow the shard count above the target (smaller writes per change);
# refuse above the hard limit (the 1 MiB ConfigMap limit, less room for meta.json and metadata).
TARGET_SHARD_BYTES = 256 * 1024
MAX_SHARD_BYTES = 1024 * 1024 - 64 * 1024
MAX_DATA_BYTES = 1024 * 1024 - 4096  # format 1: the whole ledger in one data key
COMPRESSION_LEVEL = 6  # level 9 costs ~3x the CPU for ~2 % less


class LedgerError(Exception):
    """The ledger cannot be read or written as asked (too large, an unknown format)."""


class CorruptShard(ValueError):
    """A shard that does not verify; it is ignored whole."""


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
    # The pod's capo.io/reserve-time annotation as written (None: none): a pod that vanishes while
    # no replica watches gets the hold the webhook would have given it.
    reserve_time: str | None = None

    def to_json(self) -> dict[str, str]:
        fields = {
            "ns": self.namespace,
            "pod": self.name,
            "uid": self.uid,
            "node": self.node,
            "ok": self.owner_kind,
            "on": self.owner_name,
            "ou": self.owner_uid,
            "rt": self.reserve_time,
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
            reserve_time=text("rt"),
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


# -- format 1: one JSON object in one data key (read for migration) -----------------------------


def legacy_encode(entries: Mapping[str, LedgerEntry]) -> str:
    """Format 1 text (kept for the migration tests and the benchmark's baseline)."""
    data = {entry.ip: entry.to_json() for entry in entries.values()}
    return json.dumps(data, separators=(",", ":"), sort_keys=True, ensure_ascii=False)


def legacy_decode(text: str) -> dict[str, LedgerEntry]:
    """Entries of a format 1 text; unreadable entries are skipped (logged); unreadable JSON is empty."""
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


# -- format 2: shards ------------------------------------------------------------------------

_COLUMNS = ("ns", "pod", "uid", "node", "ok", "on", "ou")
# Columns added later: written only when a row has a value (so a shard without any is byte-equal to
# what older versions wrote), read as all-None when absent; older versions ignore them.
_OPTIONAL_COLUMNS = ("rt",)
_REQUIRED = frozenset({"ns", "pod", "uid"})


def shard_of(uid: str, shards: int) -> int:
    """Stable across processes and versions (Python's own hash of a str is salted per process)."""
    return zlib.crc32(uid.encode()) % shards


def split(entries: Mapping[str, LedgerEntry], shards: int) -> list[dict[str, LedgerEntry]]:
    out: list[dict[str, LedgerEntry]] = [{} for _ in range(shards)]
    for entry in entries.values():
        out[shard_of(entry.uid, shards)][entry.ip] = entry
    return out


def shard_content(entries: Mapping[str, LedgerEntry]) -> bytes:
    """Canonical, uncompressed payload: one row per pod (its IPs together), one list per field,
    rows sorted, so equal entries give equal bytes."""
    pods: dict[tuple[str | None, ...], list[str]] = defaultdict(list)
    for e in entries.values():
        key = (e.namespace, e.name, e.uid, e.node, e.owner_kind, e.owner_name, e.owner_uid, e.reserve_time)
        pods[key].append(e.ip)
    rows = sorted(pods.items(), key=lambda item: tuple(v or "" for v in item[0]))
    columns = _COLUMNS + tuple(
        c for i, c in enumerate(_OPTIONAL_COLUMNS, len(_COLUMNS)) if any(key[i] for key, _ in rows)
    )
    every = _COLUMNS + _OPTIONAL_COLUMNS
    doc: dict[str, list[Any]] = {column: [key[every.index(column)] for key, _ in rows] for column in columns}
    doc["ips"] = [sorted(ips) for _, ips in rows]
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


def _meta_digest(meta: Mapping[str, Any], payload: bytes) -> str:
    head = json.dumps({k: v for k, v in meta.items() if k != "sha256"}, sort_keys=True).encode()
    return hashlib.sha256(head + b"\n" + payload).hexdigest()


@dataclass(frozen=True)
class EncodedShard:
    shard: int
    shards: int
    content: bytes  # canonical, uncompressed (compared to find the changed shards)
    payload: bytes  # compressed
    meta: str

    @property
    def size(self) -> int:
        return len(self.payload) + len(self.meta)


def encode_shard(
    entries: Mapping[str, LedgerEntry],
    *,
    shard: int,
    shards: int,
    generation: int,
    content: bytes | None = None,
) -> EncodedShard:
    content = shard_content(entries) if content is None else content
    payload = zlib.compress(content, COMPRESSION_LEVEL)
    meta: dict[str, Any] = {
        "format": FORMAT,
        "shard": shard,
        "shards": shards,
        "generation": generation,
        "ips": len(entries),
    }
    meta["sha256"] = _meta_digest(meta, payload)
    return EncodedShard(shard, shards, content, payload, json.dumps(meta, sort_keys=True))


@dataclass(frozen=True)
class DecodedShard:
    shard: int
    shards: int
    generation: int
    entries: dict[str, LedgerEntry]
    content: bytes
    size: int  # of the compressed payload


def _column(doc: Mapping[str, Any], name: str, rows: int) -> list[Any]:
    column = doc.get(name)
    if not isinstance(column, list) or len(column) != rows:
        raise CorruptShard(f"column {name!r} is missing or has the wrong length")
    return column


def decode_shard(meta_text: str, payload: bytes) -> DecodedShard:
    """A verified shard, or CorruptShard (nothing of it is used). LedgerError for a newer format:
    that is not damage, it is data this version cannot read and must not overwrite."""
    try:
        meta = json.loads(meta_text)
    except ValueError as exc:
        raise CorruptShard(f"{META_KEY} is not JSON: {exc}") from None
    if not isinstance(meta, dict):
        raise CorruptShard(f"{META_KEY} is not an object")
    version = meta.get("format")
    if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT:
        raise LedgerError(f"ledger format {version} is newer than this version reads ({FORMAT})")
    if version != FORMAT:
        raise CorruptShard(f"unknown format {version!r}")
    if meta.get("sha256") != _meta_digest(meta, payload):
        raise CorruptShard("checksum mismatch")
    numbers = [meta.get(k) for k in ("shard", "shards", "generation", "ips")]
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in numbers):
        raise CorruptShard("shard, shards, generation or ips is not a count")
    shard, shards, generation, count = (int(n) for n in numbers)  # type: ignore[arg-type]
    try:
        content = zlib.decompress(payload)
        doc = json.loads(content)
    except (zlib.error, ValueError) as exc:
        raise CorruptShard(f"payload does not decode: {exc}") from None
    if not isinstance(doc, dict):
        raise CorruptShard("payload is not an object")
    ips = doc.get("ips")
    if not isinstance(ips, list):
        raise CorruptShard("column 'ips' is missing")
    columns = {name: _column(doc, name, len(ips)) for name in _COLUMNS}
    for name in _OPTIONAL_COLUMNS:
        columns[name] = _column(doc, name, len(ips)) if name in doc else [None] * len(ips)
    entries: dict[str, LedgerEntry] = {}
    try:
        for row, row_ips in enumerate(ips):
            fields = {name: column[row] for name, column in columns.items()}
            if not isinstance(row_ips, list) or not row_ips:
                raise ValueError(f"row {row} has no IPs")
            if shards and shard_of(str(fields["uid"]), shards) != shard:
                raise ValueError(f"row {row} belongs to another shard")
            for ip in row_ips:
                if not isinstance(ip, str):
                    raise ValueError(f"row {row}: IP {ip!r} is not a string")
                entry = LedgerEntry.from_json(ip, {k: v for k, v in fields.items() if v is not None})
                entries[entry.ip] = entry
    except (ValueError, TypeError) as exc:
        raise CorruptShard(str(exc)) from None
    if len(entries) != count:
        raise CorruptShard(f"{len(entries)} IPs where {META_KEY} says {count}")
    return DecodedShard(shard, shards, generation, entries, content, len(payload))


def choose_shard_count(entries: Mapping[str, LedgerEntry], current: int) -> tuple[int, list[bytes]]:
    """The shard count for `entries` and each shard's content: the current count while every
    shard stays under the target; doubled while one is over; halved when all would fit in half the
    target at half the count (the gap stops flapping). Sized on the compressed bytes."""
    shards = max(1, min(current, MAX_SHARDS))

    def contents(n: int) -> list[bytes]:
        return [shard_content(part) for part in split(entries, n)]

    def largest(parts: list[bytes]) -> int:
        # Compressed size of the largest uncompressed part: the ratio is alike across shards.
        return len(zlib.compress(max(parts, key=len), COMPRESSION_LEVEL)) if parts else 0

    parts = contents(shards)
    size = largest(parts)
    while shards < MAX_SHARDS and size > TARGET_SHARD_BYTES:
        # Straight to the count the sizes call for (a power of two): one pass, not one per doubling.
        shards = min(MAX_SHARDS, shards << math.ceil(math.log2(size / TARGET_SHARD_BYTES)))
        parts = contents(shards)
        size = largest(parts)
    # Halving about doubles a shard: only look when that would still be well under the target.
    while shards > 1 and size * 2 <= TARGET_SHARD_BYTES // 2:
        half = contents(shards // 2)
        half_size = largest(half)
        if half_size > TARGET_SHARD_BYTES // 2:
            break
        shards, parts, size = shards // 2, half, half_size
    return shards, parts


def merge(shards: list[DecodedShard]) -> dict[str, LedgerEntry]:
    """Union of verified shards; an IP found twice (a reshard interrupted half-way) is taken from
    the newer generation."""
    out: dict[str, LedgerEntry] = {}
    for decoded in sorted(shards, key=lambda d: d.generation):
        out.update(decoded.entries)
    return out


@dataclass(frozen=True)
class StoredShard:
    """What one shard on the server holds, as far as this process knows."""

    entries: dict[str, LedgerEntry]
    content: bytes
    size: int


def encode_changes(
    entries: Mapping[str, LedgerEntry], index: int | None, stored: Mapping[int, StoredShard], generation: int
) -> tuple[int, list[EncodedShard], list[dict[str, LedgerEntry]]]:
    """Pure: the shard count for `entries`, the shards whose content differs from `stored` (what
    the server holds in layout `index`), and every shard's entries."""
    current = index or 1
    if index and stored:
        # Steady state: the layout stands unless a shard outgrows the target or all shrank.
        # Only the shards whose entries changed are serialized and compressed.
        parts = split(entries, current)
        changed = [i for i in range(current) if i not in stored or stored[i].entries != parts[i]]
        encoded = [encode_shard(parts[i], shard=i, shards=current, generation=generation) for i in changed]
        sizes = {i: s.size for i, s in stored.items()}
        sizes.update((e.shard, len(e.payload)) for e in encoded)
        biggest = max(sizes.get(i, 0) for i in range(current))
        if biggest <= TARGET_SHARD_BYTES and not (current > 1 and biggest * 2 <= TARGET_SHARD_BYTES // 2):
            return current, encoded, parts
    shards, contents = choose_shard_count(entries, current)
    parts = split(entries, shards)
    same_layout = stored if shards == index else {}
    changed = [i for i in range(shards) if i not in same_layout or same_layout[i].content != contents[i]]
    encoded = [
        encode_shard(parts[i], shard=i, shards=shards, generation=generation, content=contents[i])
        for i in changed
    ]
    return shards, encoded, parts


def shard_name(base: str, shard: int) -> str:
    return f"{base}-{shard}"


class Ledger:
    def __init__(self, api: k8s.ApiClient, *, namespace: str, name: str = NAME) -> None:
        self.api = api
        self.namespace = namespace
        self.name = name
        self._core = CoreV1(api)
        self._exists: dict[str, bool] = {}  # learnt from load/save, so a write is one call
        # What this process knows is on the server: the index's shard count (None: no index;
        # 0: format 1), and each shard's canonical content (absent: unknown, so written).
        self._index: int | None = None
        self._stored: dict[int, StoredShard] = {}
        self._generation = 0
        self._readable = False  # a successful load in this term; False: save writes nothing
        self._warned = False

    # -- reading -----------------------------------------------------------------------------

    async def _read(self, name: str) -> k8s.V1ConfigMap | None:
        try:
            cm = await self._core.read_namespaced_config_map(name, self.namespace)
        except k8s.ApiException as exc:
            if exc.status == 404:
                self._exists[name] = False
                return None
            raise
        self._exists[name] = True
        return cm

    async def load(self) -> dict[str, LedgerEntry]:
        """IP -> entry. An absent ledger is empty; a corrupt shard is skipped whole (logged).
        Raises (an API error, LedgerError for a newer format) when it cannot tell what is stored;
        then `save` writes nothing until a later load succeeds."""
        self._readable = False
        self._warned = False
        index = await self._read(self.name)
        self._stored = {}
        shards: int | None = None  # None: no usable index, so every possible shard is looked at
        if index is not None:
            data = index.data or {}
            if INDEX_KEY not in data:
                self._index = 0
                self._readable = True
                text = data.get(DATA_KEY)
                return legacy_decode(text) if text else {}
            shards = self._parse_index(data[INDEX_KEY])
        self._index = shards
        # A few at a time: each concurrent request opens a TLS connection that stays pooled.
        bound = asyncio.Semaphore(READ_CONCURRENCY)

        async def read_one(i: int) -> k8s.V1ConfigMap | None:
            async with bound:
                return await self._read(shard_name(self.name, i))

        read = await asyncio.gather(*(read_one(i) for i in range(shards or MAX_SHARDS)))
        # CPU-bound (~1 s per 100,000 IPs, mostly validating them): off the event loop.
        results = await asyncio.to_thread(lambda: [self._decode(cm) if cm else None for cm in read])
        decoded: list[DecodedShard] = []
        for i, result in enumerate(results):
            name = shard_name(self.name, i)
            if result is None:
                if shards:
                    logger.warning(
                        "ledger shard %s is missing (deleted, or a resharding was interrupted)", name
                    )
            elif isinstance(result, CorruptShard):
                logger.warning("ignoring ledger shard %s: %s", name, result)
            else:
                decoded.append(result)
                if result.shard == i and result.shards == shards:
                    self._stored[i] = StoredShard(result.entries, result.content, result.size)
        self._generation = max((d.generation for d in decoded), default=0)
        entries = merge(decoded)
        if shards is None:
            self._stored = {}  # no trustworthy layout: the next save rewrites every shard, then the index
        self._readable = True
        return entries

    def _parse_index(self, text: str) -> int | None:
        """The index's shard count; None when the index is damaged (then every possible shard is read)."""
        try:
            doc = json.loads(text)
        except ValueError:
            doc = None
        version = doc.get("format") if isinstance(doc, dict) else None
        if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT:
            raise LedgerError(f"ledger format {version} is newer than this version reads ({FORMAT})")
        shards = doc.get("shards") if isinstance(doc, dict) else None
        if version == FORMAT and isinstance(shards, int) and 1 <= shards <= MAX_SHARDS:
            return shards
        logger.warning("the ledger index %s is damaged (%r): reading every shard", self.name, text[:200])
        return None

    @staticmethod
    def _decode(cm: k8s.V1ConfigMap) -> DecodedShard | CorruptShard:
        """The shard, or why it is corrupt; LedgerError (a newer format) is raised."""
        try:
            return Ledger._verify(cm)
        except CorruptShard as exc:
            return exc

    @staticmethod
    def _verify(cm: k8s.V1ConfigMap) -> DecodedShard:
        meta = (cm.data or {}).get(META_KEY)
        raw = (cm.binary_data or {}).get(PAYLOAD_KEY)
        if meta is None or raw is None:
            raise CorruptShard(f"{META_KEY} or {PAYLOAD_KEY} is missing")
        try:
            payload = base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise CorruptShard(f"{PAYLOAD_KEY} is not base64: {exc}") from None
        return decode_shard(meta, payload)

    # -- writing -----------------------------------------------------------------------------

    async def save(self, entries: Mapping[str, LedgerEntry]) -> bool:
        """Write what changed: the changed shards, and the index when the layout changed.
        Returns False, writing nothing, when this term's load failed (or none was made). The
        updates are unconditional (no resourceVersion): the leader is the only writer. LedgerError,
        with nothing written, when a shard would exceed the ConfigMap limit."""
        if not self._readable:
            if not self._warned:
                logger.warning(
                    "not writing the ledger: it could not be read in this leadership term, and "
                    "overwriting it would lose what a restarted leader needs"
                )
                self._warned = True
            return False
        old = self._index
        generation = self._generation + 1
        # CPU-bound (~0.2 s per changed pass at 50,000 pods): off the event loop, so webhooks wait less.
        shards, encoded, parts = await asyncio.to_thread(
            encode_changes, dict(entries), old, self._stored, generation
        )
        too_big = [e for e in encoded if e.size > MAX_SHARD_BYTES]
        if too_big:
            raise LedgerError(
                f"ledger of {len(entries)} entries needs shards of up to {max(e.size for e in too_big)} "
                f"bytes, over the {MAX_SHARD_BYTES}-byte budget at the most shards ({MAX_SHARDS})"
            )
        if old and shards > old:
            # Growing: readers must look at the new shards before any old one is rewritten.
            await self._write_index(shards)
        vanished = False
        for shard in sorted(encoded, key=lambda e: -e.shard):
            vanished |= await self._write(
                shard_name(self.name, shard.shard),
                data={META_KEY: shard.meta},
                binary={PAYLOAD_KEY: base64.b64encode(shard.payload).decode()},
            )
            self._stored[shard.shard] = StoredShard(parts[shard.shard], shard.content, len(shard.payload))
        if encoded:
            self._generation = generation
        if self._index != shards or vanished:
            # Format 1 or none, or shrinking: the index is switched once every shard is written.
            # A shard someone deleted: the index may be gone too (cheap to write, costly to lack).
            await self._write_index(shards)
            for i in range(shards, old or 0):
                await self._delete(shard_name(self.name, i))
                self._stored.pop(i, None)
        return True

    async def _write_index(self, shards: int) -> None:
        await self._write(self.name, data={INDEX_KEY: json.dumps({"format": FORMAT, "shards": shards})})
        self._index = shards

    async def _write(self, name: str, *, data: dict[str, str], binary: dict[str, Any] | None = None) -> bool:
        """Create or replace; True when it was believed present but had to be created."""
        body = k8s.V1ConfigMap(
            api_version="v1",
            kind="ConfigMap",
            metadata=k8s.V1ObjectMeta(
                name=name,
                namespace=self.namespace,
                labels={"app.kubernetes.io/name": "capo-operator", "app.kubernetes.io/component": "ledger"},
            ),
            data=data,
            binary_data=binary,
        )
        # One call in the steady state; the other verb only when our belief about existence was wrong.
        vanished = False
        for _ in range(3):
            exists = self._exists.get(name)
            try:
                if exists is False:
                    await self._core.create_namespaced_config_map(self.namespace, body)
                else:
                    await self._core.replace_namespaced_config_map(name, self.namespace, body)
            except k8s.ApiException as exc:
                if exists is not False and exc.status == 404:
                    self._exists[name] = False
                    vanished = exists is True
                    continue
                if exists is False and exc.status == 409:
                    self._exists[name] = True
                    continue
                raise
            self._exists[name] = True
            return vanished
        raise LedgerError(f"ConfigMap {self.namespace}/{name} kept appearing and disappearing")

    async def _delete(self, name: str) -> None:
        try:
            await self._core.delete_namespaced_config_map(name, self.namespace)
        except k8s.ApiException as exc:
            if exc.status != 404:
                raise
        self._exists[name] = False
