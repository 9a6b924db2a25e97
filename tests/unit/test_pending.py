"""The pending-record annotation: what a record will say, carried by the Calico write until it exists."""

from __future__ import annotations

import ipaddress
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fakes import NOW, STS
from hypothesis import given, settings
from hypothesis import strategies as st

from capo_operator.decisions import pending
from capo_operator.decisions.policy import Owner
from capo_operator.decisions.record import TRIGGERS, PodRef, Record


def record(ip: str = "10.0.0.1", **changes: object) -> Record:
    fields: dict[str, object] = {
        "ip": ip,
        "pod": PodRef(namespace="db", name="db-0", uid="u-1", node="node-1"),
        "owner": STS,
        "trigger": "delete",
        "reserved_at": NOW,
        "expires_at": NOW + timedelta(hours=2),
        "hold": timedelta(hours=2),
        "policy": "annotation capo.io/reserve-time=2h",
    }
    fields.update(changes)
    return Record(**fields)  # type: ignore[arg-type]


def test_key_is_the_record_name_under_the_pending_prefix() -> None:
    assert pending.key("10.0.0.1") == "pending.capo.io/10.0.0.1"
    assert pending.key("fd00::7/128") == "pending.capo.io/fd00--7"
    assert pending.is_key("pending.capo.io/10.0.0.1") and not pending.is_key("capo.io/managed-by")


def test_round_trip_keeps_every_field_a_record_needs() -> None:
    rec = record()
    assert pending.decode(pending.key(rec.ip), pending.encode(rec)) == rec


def test_a_worst_case_entry_stays_compact() -> None:
    # Longest names Kubernetes allows, an IPv6 address: still far below the per-object budget.
    rec = record(
        "fd00:1234:5678:9abc:def0:1234:5678:9abc",
        pod=PodRef("n" * 63, "p" * 253, "0" * 36, "node" * 63),
        owner=Owner("apps/v1", "StatefulSet", "o" * 253, "1" * 36),
        policy="annotation capo.io/reserve-time=1000h clamped to maxIPReserveTime=720h",
    )
    value = pending.encode(rec)
    assert pending.size(pending.key(rec.ip), value) < 1200
    assert pending.size(pending.key("10.0.0.1"), pending.encode(record())) < 260  # the usual case


names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-.", min_size=1, max_size=63)
ips = st.one_of(
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(str).filter(lambda t: ipaddress.ip_address(t).ipv4_mapped is None),
)


@settings(max_examples=200)
@given(
    ip=ips,
    namespace=names,
    name=names,
    uid=st.uuids().map(str),
    node=st.one_of(st.none(), names),
    owner=st.one_of(st.none(), st.tuples(names, names, st.uuids().map(str))),
    trigger=st.sampled_from(TRIGGERS),
    at=st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)),
    hold=st.integers(min_value=0, max_value=10 * 365 * 86400),
    policy=st.text(max_size=80),
)
def test_round_trip_property(
    ip: str,
    namespace: str,
    name: str,
    uid: str,
    node: str | None,
    owner: tuple[str, str, str] | None,
    trigger: str,
    at: datetime,
    hold: int,
    policy: str,
) -> None:
    at = at.replace(microsecond=0)
    rec = record(
        ip,
        pod=PodRef(namespace, name, uid, node),
        owner=None if owner is None else Owner("apps/v1", owner[0], owner[1], owner[2]),
        trigger=trigger,
        reserved_at=at,
        expires_at=at + timedelta(seconds=hold),
        hold=timedelta(seconds=hold),
        policy=policy,
    )
    canonical = pending.decode(pending.key(ip), pending.encode(rec))
    assert canonical.ip == ipaddress.ip_address(ip).compressed or canonical.name == rec.name
    assert canonical.pod == rec.pod
    assert canonical.owner == rec.owner
    assert (canonical.trigger, canonical.reserved_at, canonical.hold, canonical.policy) == (
        trigger,
        at,
        timedelta(seconds=hold),
        policy,
    )
    assert canonical.expires_at == at + timedelta(seconds=hold)


@settings(max_examples=300)
@given(value=st.one_of(st.text(max_size=300), st.recursive(st.none() | st.integers() | st.text(), st.lists)))
def test_anything_else_is_a_pending_error_never_a_crash(value: object) -> None:
    raw = value if isinstance(value, str) else json.dumps(value)
    try:
        rec = pending.decode("pending.capo.io/10.0.0.1", raw)
    except pending.PendingError:
        return
    assert rec.ip == "10.0.0.1"  # only a well-formed entry of this very IP decodes


def entry(
    ip: object = "10.0.0.1",
    ns: object = "db",
    name: object = "db-0",
    trigger: str = "delete",
    at: object = 0,
    hold: object = 1,
) -> str:
    return json.dumps([1, ip, ns, name, "u", "", "", "", "", "", trigger, at, hold, ""])


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("{", "not JSON"),
        ('{"ip": "10.0.0.1"}', "expected a list"),
        ("[2]", "expected a list of 14 fields in format 1"),
        (entry(ip="10.0.0.2"), "another key"),
        (entry(trigger="lost"), "spec.trigger"),
        (entry(at=-5), "reservedAt"),
        (entry(hold=True), "holdSeconds"),
        (entry(ns=7), "namespace"),
        (entry(name=""), "spec.pod.name"),
        (entry(at=10**12), "10.0.0.1"),
    ],
)
def test_a_bad_value_says_what_is_wrong(value: str, reason: str) -> None:
    with pytest.raises(pending.PendingError, match=reason) as err:
        pending.decode("pending.capo.io/10.0.0.1", value)
    assert str(err.value).startswith("pending.capo.io/10.0.0.1")


def test_read_separates_readable_and_unreadable_annotations() -> None:
    good = record("10.0.0.1")
    annotations = {
        "capo.io/managed-by": "capo-operator",
        pending.key("10.0.0.1"): pending.encode(good),
        pending.key("10.0.0.2"): "garbage",
        "pending.capo.io/not-an-ip": pending.encode(good),
    }
    records, bad = pending.read(annotations)
    assert records == {"10.0.0.1": good}
    assert set(bad) == {"pending.capo.io/10.0.0.2", "pending.capo.io/not-an-ip"}
    assert pending.read(None) == ({}, {})


@given(
    entries=st.dictionaries(
        st.one_of(st.text(max_size=20), st.text(max_size=20).map(lambda t: pending.PREFIX + t)),
        st.one_of(st.text(max_size=40), st.integers()),
        max_size=20,
    )
)
def test_total_size_is_the_size_of_every_pending_annotation(entries: dict[str, Any]) -> None:
    expected = sum(pending.size(k, v) for k, v in entries.items() if pending.is_key(k) and isinstance(v, str))
    assert pending.total_size(entries) == expected


def test_total_size_counts_utf8_bytes() -> None:
    key = pending.key("10.0.0.1")
    assert pending.total_size({key: "é", "other": "x" * 100}) == len(key) + 2
