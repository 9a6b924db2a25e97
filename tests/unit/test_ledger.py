"""The ledger's pure parts: reconciliation after downtime, and the ConfigMap encodings."""

from __future__ import annotations

import ipaddress
import json
import uuid
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from capo_operator.kube import ledger as L
from capo_operator.kube.ledger import (
    MAX_DATA_BYTES,
    CorruptShard,
    LedgerEntry,
    LedgerError,
    choose_shard_count,
    decode_shard,
    encode_shard,
    legacy_decode,
    legacy_encode,
    merge,
    reconcile,
    shard_of,
    split,
)

IPS = [f"10.0.0.{i}" for i in range(1, 9)]
UIDS = [f"uid-{i}" for i in range(6)]


def entry(ip: str, uid: str, **kw: str) -> LedgerEntry:
    return LedgerEntry(ip=ip, namespace="ns", name=f"pod-{uid}", uid=uid, node="n1", **kw)


def test_vanished_pod_with_free_ip_is_reserved_and_reused_ip_is_lost() -> None:
    ledger = {
        "10.0.0.1": entry("10.0.0.1", "gone-free"),
        "10.0.0.2": entry("10.0.0.2", "gone-reused"),
        "10.0.0.3": entry("10.0.0.3", "alive"),
        "10.0.0.4": entry("10.0.0.4", "gone-recorded"),
    }
    result = reconcile(
        ledger,
        live_uids={"alive", "other"},
        ip_holders={"10.0.0.2": "other", "10.0.0.3": "alive", "10.0.0.4": "other"},
        recorded_ips={"10.0.0.4"},
    )
    assert [e.uid for e in result.to_reserve] == ["gone-free"]
    assert [e.uid for e in result.lost] == ["gone-reused"]


def test_ip_still_held_by_the_same_pod_is_neither() -> None:
    result = reconcile(
        {"10.0.0.1": entry("10.0.0.1", "u")}, live_uids=(), ip_holders={"10.0.0.1": "u"}, recorded_ips=()
    )
    assert result.to_reserve == () and result.lost == ()


def test_non_canonical_spellings_are_compared_canonically() -> None:
    result = reconcile(
        {"fd00::1": entry("fd00::1", "u")}, live_uids=(), ip_holders={}, recorded_ips={"FD00:0::1"}
    )
    assert result.to_reserve == ()


ledgers = st.dictionaries(st.sampled_from(IPS), st.sampled_from(UIDS)).map(
    lambda d: {ip: entry(ip, uid) for ip, uid in d.items()}
)


@given(
    ledger=ledgers,
    live=st.sets(st.sampled_from(UIDS)),
    holders=st.dictionaries(st.sampled_from(IPS), st.sampled_from(UIDS)),
    recorded=st.sets(st.sampled_from(IPS)),
)
def test_reconcile_properties(
    ledger: dict[str, LedgerEntry], live: set[str], holders: dict[str, str], recorded: set[str]
) -> None:
    result = reconcile(ledger, live_uids=live, ip_holders=holders, recorded_ips=recorded)
    reserved = {e.ip for e in result.to_reserve}
    lost = {e.ip for e in result.lost}
    assert not reserved & lost
    returned = result.to_reserve + result.lost
    assert all(e.uid not in live for e in returned)
    assert not {e.ip for e in returned} & recorded
    assert all(e in ledger.values() for e in returned)
    assert all(e.ip not in holders for e in result.to_reserve)
    assert all(holders[e.ip] != e.uid for e in result.lost)
    # Completeness: every vanished, unrecorded entry whose IP is not held by itself is accounted for.
    expected = {
        e.ip
        for e in ledger.values()
        if e.uid not in live and e.ip not in recorded and holders.get(e.ip) != e.uid
    }
    assert reserved | lost == expected


def test_format1_encoding_is_compact_and_round_trips() -> None:
    entries = {
        "10.0.0.1": entry("10.0.0.1", "u1", owner_kind="StatefulSet", owner_name="redis", owner_uid="o1"),
        "fd00::1": LedgerEntry(ip="fd00::1", namespace="ns", name="p", uid="u2", node=None),
    }
    text = legacy_encode(entries)
    assert " " not in text and "\n" not in text
    assert json.loads(text)["fd00::1"] == {"ns": "ns", "pod": "p", "uid": "u2"}
    assert legacy_decode(text) == entries
    assert legacy_encode(legacy_decode(text)) == text


def test_format1_decode_skips_what_it_cannot_read() -> None:
    good = {"ns": "ns", "pod": "p", "uid": "u"}
    text = json.dumps(
        {
            "10.0.0.1": good,
            "garbage": good,
            "10.0.0.2": {"ns": "ns"},
            "10.0.0.3": [1],
            "10.0.0.4": {**good, "node": 5},
        }
    )
    assert list(legacy_decode(text)) == ["10.0.0.1"]
    assert legacy_decode("{not json") == {}
    assert legacy_decode("[]") == {}


def test_format1_held_4000_realistic_pods_in_one_configmap() -> None:
    entries = {}
    for i in range(4000):
        ip = f"10.{i // 65536}.{i // 256 % 256}.{i % 256}"
        entries[ip] = LedgerEntry(
            ip=ip,
            namespace="tenant-production-eu",
            name=f"kafka-cluster-broker-{i}",
            uid="3f2b8c1e-9a47-4d2f-b6e1-0c5d7a9e8f21",
            node="worker-node-pool-a-0042",
            owner_kind="StatefulSet",
            owner_name="kafka-cluster-broker",
            owner_uid="7c1d2e3f-4a5b-6c7d-8e9f-0a1b2c3d4e5f",
        )
    assert len(legacy_encode(entries).encode()) < MAX_DATA_BYTES


# -- format 2 ---------------------------------------------------------------------------------

names = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=12)
optional = st.none() | names
ipv4 = st.integers(0, 2**32 - 1).map(lambda n: str(ipaddress.IPv4Address(n)))
ipv6 = st.integers(0, 2**128 - 1).map(lambda n: str(ipaddress.IPv6Address(n)))


@st.composite
def ledgers_of_pods(draw: st.DrawFn) -> dict[str, LedgerEntry]:
    """Pods with one or two IPs each (dual stack), any field text, owners present or not."""
    out: dict[str, LedgerEntry] = {}
    for _ in range(draw(st.integers(0, 12))):
        pod = {
            "namespace": draw(names),
            "name": draw(names),
            "uid": draw(names),
            "node": draw(optional),
            "owner_kind": draw(optional),
            "owner_name": draw(optional),
            "owner_uid": draw(optional),
            "reserve_time": draw(optional),
        }
        for ip in draw(st.lists(ipv4 | ipv6, min_size=1, max_size=2, unique=True)):
            out[ip] = LedgerEntry(ip=ip, **pod)
    return out


# Generating many-field pods is slow on a loaded machine; the examples themselves are small.
slow_data = settings(suppress_health_check=[HealthCheck.too_slow])


@slow_data
@given(entries=ledgers_of_pods(), shards=st.sampled_from([1, 2, 4, 8, 16]), generation=st.integers(0, 10**9))
def test_any_ledger_round_trips_through_its_shards(
    entries: dict[str, LedgerEntry], shards: int, generation: int
) -> None:
    decoded = []
    for i, part in enumerate(split(entries, shards)):
        encoded = encode_shard(part, shard=i, shards=shards, generation=generation)
        shard = decode_shard(encoded.meta, encoded.payload)
        assert (shard.shard, shard.shards, shard.generation) == (i, shards, generation)
        assert shard.entries == part
        assert all(shard_of(e.uid, shards) == i for e in part.values())
        decoded.append(shard)
    assert merge(decoded) == entries


@slow_data
@given(entries=ledgers_of_pods())
def test_a_pods_ips_stay_in_one_shard_at_every_count(entries: dict[str, LedgerEntry]) -> None:
    for shards in (1, 2, 4, 8, 16):
        parts = split(entries, shards)
        assert sum(map(len, parts)) == len(entries)
        homes = {}
        for i, part in enumerate(parts):
            for e in part.values():
                assert homes.setdefault(e.uid, i) == i


@slow_data
@given(entries=ledgers_of_pods())
def test_equal_entries_encode_to_equal_bytes(entries: dict[str, LedgerEntry]) -> None:
    reordered = dict(reversed(list(entries.items())))
    assert L.shard_content(entries) == L.shard_content(reordered)


def test_shard_counts_are_stable_across_processes() -> None:
    # crc32, not Python's per-process salted hash: a restarted leader must find the same layout.
    assert (
        shard_of("3f2b8c1e-9a47-4d2f-b6e1-0c5d7a9e8f21", 16)
        == zlib.crc32(b"3f2b8c1e-9a47-4d2f-b6e1-0c5d7a9e8f21") % 16
    )


def sample_shard() -> L.EncodedShard:
    entries = {
        "10.0.0.1": LedgerEntry("10.0.0.1", "db", "db-0", "u0", "n1", "StatefulSet", "db", "o"),
        "fd00::1": LedgerEntry("fd00::1", "db", "db-0", "u0", "n1", "StatefulSet", "db", "o"),
    }
    return encode_shard(entries, shard=0, shards=1, generation=3)


@given(position=st.integers(min_value=0), bit=st.integers(0, 7))
def test_any_flipped_payload_bit_is_detected(position: int, bit: int) -> None:
    shard = sample_shard()
    payload = bytearray(shard.payload)
    payload[position % len(payload)] ^= 1 << bit
    with pytest.raises(CorruptShard):
        decode_shard(shard.meta, bytes(payload))


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda m: {**m, "generation": m["generation"] + 1}, "checksum"),
        (lambda m: {**m, "shard": 1}, "checksum"),
        (lambda m: {k: v for k, v in m.items() if k != "sha256"}, "checksum"),
        (lambda m: {**m, "format": 1}, "unknown format"),
    ],
)
def test_edited_metadata_is_detected(change: object, reason: str) -> None:
    shard = sample_shard()
    meta = change(json.loads(shard.meta))  # type: ignore[operator]
    with pytest.raises(CorruptShard, match=reason):
        decode_shard(json.dumps(meta), shard.payload)


def test_truncated_payload_and_broken_meta_are_detected() -> None:
    shard = sample_shard()
    with pytest.raises(CorruptShard):
        decode_shard(shard.meta, shard.payload[:-5])
    with pytest.raises(CorruptShard, match="not JSON"):
        decode_shard(shard.meta[:-1], shard.payload)


def resealed(content: object, *, shard: int = 0, shards: int = 1, ips: int = 1) -> tuple[str, bytes]:
    """A shard with a valid checksum around the given content: what a buggy writer would produce."""
    payload = zlib.compress(json.dumps(content).encode())
    meta: dict[str, object] = {"format": 2, "shard": shard, "shards": shards, "generation": 1, "ips": ips}
    meta["sha256"] = L._meta_digest(meta, payload)
    return json.dumps(meta), payload


def row(**kw: object) -> dict[str, list[object]]:
    base: dict[str, list[object]] = {"ns": ["db"], "pod": ["db-0"], "uid": ["u0"], "ips": [["10.0.0.1"]]}
    base.update({column: [None] for column in ("node", "ok", "on", "ou")})
    return {**base, **kw}


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (row(ips=[["10.0.0.1", "not-an-ip"]]), "not-an-ip"),  # one bad IP rejects the whole shard
        (row(ns=[""]), "'ns'"),
        (row(uid=[]), "wrong length"),
        (row(ips=[[]]), "no IPs"),
        ([1, 2], "not an object"),
    ],
)
def test_a_verified_shard_with_a_bad_row_is_rejected_whole(content: object, reason: str) -> None:
    with pytest.raises(CorruptShard, match=reason):
        decode_shard(*resealed(content, ips=2))


def test_a_row_in_the_wrong_shard_or_a_wrong_count_is_rejected() -> None:
    home = shard_of("u0", 4)
    with pytest.raises(CorruptShard, match="another shard"):
        decode_shard(*resealed(row(), shard=(home + 1) % 4, shards=4))
    with pytest.raises(CorruptShard, match="says 3"):
        decode_shard(*resealed(row(), ips=3))
    assert decode_shard(*resealed(row(), shard=home, shards=4)).entries.keys() == {"10.0.0.1"}


def test_a_newer_format_is_not_corruption() -> None:
    shard = sample_shard()
    meta = {**json.loads(shard.meta), "format": 3}
    with pytest.raises(LedgerError, match="format 3 is newer"):
        decode_shard(json.dumps(meta), shard.payload)


def test_merge_prefers_the_newer_generation() -> None:
    old = LedgerEntry("10.0.0.1", "db", "db-0", "old-uid", None)
    new = LedgerEntry("10.0.0.1", "db", "db-0", "new-uid", None)
    a = L.DecodedShard(0, 4, 7, {"10.0.0.1": new}, b"", 0)
    b = L.DecodedShard(1, 2, 6, {"10.0.0.1": old, "10.0.0.2": old}, b"", 0)
    assert merge([a, b]) == {"10.0.0.1": new, "10.0.0.2": old}


def realistic(pods: int, *, seed: int = 0) -> dict[str, LedgerEntry]:
    """Dual-stack pods of StatefulSets, random uids (they do not compress)."""
    rng = uuid.UUID(int=seed)
    out = {}
    for i in range(pods):
        sts = f"kafka-cluster-{i // 10 % 500}-broker"
        uid = str(uuid.uuid5(rng, str(i)))
        for ip in (f"10.{i // 65536}.{i // 256 % 256}.{i % 256}", f"fd00:10::1:{i:x}"):
            out[ip] = LedgerEntry(
                ip, f"tenant-{i % 50:03d}-production", f"{sts}-{i % 10}", uid, f"worker-pool-a-{i % 400:04d}",
                "StatefulSet", sts, str(uuid.uuid5(rng, sts)),
            )  # fmt: skip
    return out


def test_shard_count_grows_with_the_ledger_and_shrinks_back() -> None:
    small = realistic(500)
    assert choose_shard_count(small, 1)[0] == 1
    assert choose_shard_count(small, 8)[0] == 1  # shrinks when it fits with room
    big = realistic(50_000)
    shards, contents = choose_shard_count(big, 1)
    assert 2 <= shards <= L.MAX_SHARDS
    sizes = [len(zlib.compress(c, L.COMPRESSION_LEVEL)) for c in contents]
    assert max(sizes) <= L.TARGET_SHARD_BYTES
    assert choose_shard_count(big, shards)[0] == shards  # stable: no flapping at the same size


@settings(max_examples=20, deadline=None)
@given(pods=st.integers(1, 3000), current=st.sampled_from([1, 2, 4, 8, 16]))
def test_chosen_count_is_a_power_of_two_and_every_shard_fits(pods: int, current: int) -> None:
    shards, contents = choose_shard_count(realistic(pods), current)
    assert shards & (shards - 1) == 0 and 1 <= shards <= L.MAX_SHARDS
    assert len(contents) == shards
    assert all(len(zlib.compress(c, L.COMPRESSION_LEVEL)) <= L.TARGET_SHARD_BYTES for c in contents)


def test_steady_state_encodes_only_the_changed_shards(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(L, "TARGET_SHARD_BYTES", 16 * 1024)
    entries = realistic(3000)
    shards, encoded, parts = L.encode_changes(entries, None, {}, 1)
    assert shards > 1 and [e.shard for e in encoded] == list(range(shards))
    stored = {e.shard: L.StoredShard(parts[e.shard], e.content, len(e.payload)) for e in encoded}

    assert L.encode_changes(entries, shards, stored, 2)[1] == []  # nothing changed, nothing encoded
    gone = next(iter(entries.values())).uid
    changed = {ip: e for ip, e in entries.items() if e.uid != gone}
    again, encoded, parts = L.encode_changes(changed, shards, stored, 2)

    assert again == shards and [e.shard for e in encoded] == [shard_of(gone, shards)]
    only = decode_shard(encoded[0].meta, encoded[0].payload)
    assert only.entries == parts[only.shard] and only.generation == 2
    # The same bytes as encoding everything from scratch.
    assert only.content == L.shard_content(split(changed, shards)[only.shard])


def test_steady_state_still_reshards_when_a_shard_outgrows_the_target(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(L, "TARGET_SHARD_BYTES", 16 * 1024)
    small = realistic(300)
    shards, encoded, parts = L.encode_changes(small, None, {}, 1)
    stored = {e.shard: L.StoredShard(parts[e.shard], e.content, len(e.payload)) for e in encoded}
    bigger, encoded, _ = L.encode_changes(realistic(3000), shards, stored, 2)
    assert bigger > shards and len(encoded) == bigger


def test_the_hold_annotation_is_kept_and_older_shards_without_it_still_read() -> None:
    with_hold = {"10.0.0.1": entry("10.0.0.1", "u1", reserve_time="2h")}
    without = {"10.0.0.2": entry("10.0.0.2", "u2")}
    shard = encode_shard(with_hold, shard=0, shards=1, generation=1)
    assert decode_shard(shard.meta, shard.payload).entries["10.0.0.1"].reserve_time == "2h"
    # No row has one: the column is left out, so the bytes are what the previous version wrote
    # (and read back as None); the previous version ignores a column it does not know.
    assert "rt" not in json.loads(L.shard_content(without))
    shard = encode_shard(without, shard=0, shards=1, generation=1)
    assert decode_shard(shard.meta, shard.payload).entries == without
    assert L.legacy_decode(L.legacy_encode(with_hold)) == with_hold
