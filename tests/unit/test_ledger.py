"""The ledger's pure parts: reconciliation after downtime, and the ConfigMap encoding."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from capo_operator.ledger import MAX_DATA_BYTES, LedgerEntry, decode, encode, reconcile

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


def test_encoding_is_compact_and_round_trips() -> None:
    entries = {
        "10.0.0.1": entry("10.0.0.1", "u1", owner_kind="StatefulSet", owner_name="redis", owner_uid="o1"),
        "fd00::1": LedgerEntry(ip="fd00::1", namespace="ns", name="p", uid="u2", node=None),
    }
    text = encode(entries)
    assert " " not in text and "\n" not in text
    assert json.loads(text)["fd00::1"] == {"ns": "ns", "pod": "p", "uid": "u2"}
    assert decode(text) == entries
    assert encode(decode(text)) == text


def test_decode_skips_what_it_cannot_read() -> None:
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
    assert list(decode(text)) == ["10.0.0.1"]
    assert decode("{not json") == {}
    assert decode("[]") == {}


def test_a_realistic_ledger_of_4000_pods_fits_a_configmap() -> None:
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
    assert len(encode(entries).encode()) < MAX_DATA_BYTES
