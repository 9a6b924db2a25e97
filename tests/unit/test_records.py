"""ReservedIP record bodies: the shape docs/architecture.md promises, and parsing what is served."""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from ipaddress import IPv4Address, IPv6Address
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from capo_operator.decisions.addresses import record_name
from capo_operator.decisions.policy import Owner
from capo_operator.decisions.record import (
    RELEASING_ANNOTATION,
    TRIGGERS,
    PodRef,
    Record,
    RecordError,
    label_value,
)

LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def make(**changes: Any) -> Record:
    fields: dict[str, Any] = dict(
        ip="10.244.1.7",
        pod=PodRef(namespace="ns", name="redis-0", uid="uid-1", node="node-1"),
        owner=Owner(api_version="apps/v1", kind="StatefulSet", name="redis", uid="uid-o"),
        trigger="delete",
        reserved_at=T0,
        expires_at=T0 + timedelta(minutes=40),
        hold=timedelta(minutes=40),
        policy="ipReserveTime=40m",
    )
    fields.update(changes)
    return Record(**fields)


def test_body_matches_the_documented_shape() -> None:
    assert make().to_body() == {
        "apiVersion": "capo.io/v1",
        "kind": "ReservedIP",
        "metadata": {
            "name": "10.244.1.7",
            "labels": {
                "capo.io/namespace": "ns",
                "capo.io/owner-kind": "StatefulSet",
                "capo.io/owner-name": "redis",
                "capo.io/trigger": "delete",
            },
            "finalizers": ["capo.io/release"],
        },
        "spec": {
            "ip": "10.244.1.7",
            "pod": {"namespace": "ns", "name": "redis-0", "uid": "uid-1", "node": "node-1"},
            "owner": {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "redis", "uid": "uid-o"},
            "trigger": "delete",
            "reservedAt": "2026-01-01T00:00:00Z",
            "expiresAt": "2026-01-01T00:40:00Z",
            "holdSeconds": 2400,
            "policy": "ipReserveTime=40m",
        },
    }


def test_clock_not_started_is_an_explicit_null() -> None:
    body = make(expires_at=None).to_body()
    assert "expiresAt" in body["spec"] and body["spec"]["expiresAt"] is None
    assert Record.from_body(body).expires_at is None


def test_no_owner_no_pod() -> None:
    body = make(owner=None, pod=None, trigger="recovered").to_body()
    assert "owner" not in body["spec"] and "pod" not in body["spec"]
    assert body["metadata"]["labels"] == {"capo.io/trigger": "recovered"}
    parsed = Record.from_body(body)
    assert parsed.pod is None and parsed.owner is None
    view = parsed.view()
    assert view.pod_uid is None and view.namespace is None and view.owner_uid is None


def test_ipv6_name_and_times_in_utc_with_z() -> None:
    plus2 = timezone(timedelta(hours=2))
    record = make(ip="fd00::7", reserved_at=datetime(2026, 1, 1, 2, 0, 0, 999_999, tzinfo=plus2))
    body = record.to_body()
    assert body["metadata"]["name"] == "fd00--7"
    assert body["spec"]["reservedAt"] == "2026-01-01T00:00:00Z"


def test_owner_name_label_is_cut_and_valid() -> None:
    long = "a" * 62 + ".b" + "c" * 100
    labels = make(owner=Owner("apps/v1", "StatefulSet", long, "u")).to_body()["metadata"]["labels"]
    assert len(labels["capo.io/owner-name"]) <= 63
    assert LABEL_VALUE.match(labels["capo.io/owner-name"])
    assert labels["capo.io/owner-name"] == "a" * 62  # the dot that would end the value is trimmed


@given(st.text(max_size=300))
def test_label_value_is_always_valid(text: str) -> None:
    value = label_value(text)
    assert len(value) <= 63 and LABEL_VALUE.match(value)


def test_releasing_annotation_round_trips() -> None:
    record = make(releasing="cap", resource_version="42")
    body = record.to_body()
    assert body["metadata"]["annotations"] == {RELEASING_ANNOTATION: "cap"}
    assert Record.from_body(body) == record


times = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)
).map(lambda d: d.replace(microsecond=0))


def canonical(address: IPv4Address | IPv6Address) -> str:
    mapped = address.ipv4_mapped if isinstance(address, IPv6Address) else None
    return (mapped or address).compressed


ips = st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)).map(canonical)
names = st.from_regex(r"[a-z0-9]([-a-z0-9]{0,20}[a-z0-9])?", fullmatch=True)


@given(
    ip=ips,
    pod=st.none() | st.builds(PodRef, names, names, st.just("") | names, st.none() | names),
    owner=st.none()
    | st.builds(Owner, st.just("apps/v1"), st.sampled_from(["StatefulSet", "ReplicaSet"]), names, names),
    trigger=st.sampled_from(TRIGGERS),
    reserved_at=times,
    expires_at=st.none() | times,
    hold=st.integers(0, 10**7).map(lambda s: timedelta(seconds=s)),
    policy=st.text(max_size=40),
)
def test_round_trip(
    ip: str,
    pod: PodRef | None,
    owner: Owner | None,
    trigger: str,
    reserved_at: datetime,
    expires_at: datetime | None,
    hold: timedelta,
    policy: str,
) -> None:
    record = Record(
        ip=ip,
        pod=pod,
        owner=owner,
        trigger=trigger,
        reserved_at=reserved_at,
        expires_at=expires_at,
        hold=hold,
        policy=policy,
    )
    body = record.to_body()
    assert body["metadata"]["name"] == record_name(ip) == record.name
    assert Record.from_body(body) == record
    for value in body["metadata"]["labels"].values():
        assert LABEL_VALUE.match(value) and len(value) <= 63


def test_from_body_accepts_hand_edited_times() -> None:
    body = make().to_body()
    body["spec"]["expiresAt"] = "2026-01-01T03:00:00.5+02:00"
    assert Record.from_body(body).expires_at == datetime(2026, 1, 1, 1, 0, 0, 500_000, tzinfo=UTC)


def test_from_body_reads_server_fields() -> None:
    body = make().to_body()
    body["metadata"].update(resourceVersion="7", uid="x", creationTimestamp="2026-01-01T00:00:00Z")
    assert Record.from_body(body).resource_version == "7"


@pytest.mark.parametrize(
    "mutate",
    [
        lambda b: b.pop("spec"),
        lambda b: b["spec"].update(ip="not-an-ip"),
        lambda b: b["spec"].update(ip="10.0.0.0/24"),
        lambda b: b["metadata"].update(name="10.0.0.99"),
        lambda b: b["spec"].update(trigger="bogus"),
        lambda b: b["spec"].update(reservedAt="yesterday"),
        lambda b: b["spec"].update(expiresAt="2026-01-01"),
        lambda b: b["spec"].update(holdSeconds="40m"),
        lambda b: b["spec"].update(holdSeconds=-1),
        lambda b: b["spec"].update(holdSeconds=True),
        lambda b: b["spec"]["pod"].pop("name"),
        lambda b: b["spec"]["pod"].update(uid=7),
        lambda b: b["spec"].update(owner="StatefulSet/redis"),
    ],
)
def test_invalid_bodies_are_rejected(mutate: Any) -> None:
    body = make().to_body()
    mutate(body)
    with pytest.raises(RecordError):
        Record.from_body(body)


def test_optional_fields_of_the_schema() -> None:
    body = make().to_body()
    del body["spec"]["pod"]["uid"], body["spec"]["pod"]["node"], body["spec"]["owner"]["uid"]
    del body["spec"]["holdSeconds"]  # derived from the times when absent
    record = Record.from_body(body)
    assert record.pod == PodRef("ns", "redis-0", "", None) and record.hold == timedelta(minutes=40)
    assert record.view().pod_uid is None and record.view().owner_uid is None
    assert "uid" not in record.to_body()["spec"]["pod"]
    del body["spec"]["expiresAt"]
    with pytest.raises(RecordError):
        Record.from_body(body)  # neither a hold nor an expiry


def test_view_and_default_policy() -> None:
    view = make().view()
    assert (view.name, view.ip, view.pod_uid, view.namespace, view.owner_uid) == (
        "10.244.1.7",
        "10.244.1.7",
        "uid-1",
        "ns",
        "uid-o",
    )
    assert view.default_policy
    assert make(expires_at=None).view().default_policy
    # expiresAt moved by hand, or a hold from an annotation: not the config's default any more.
    assert not make(expires_at=T0 + timedelta(hours=5)).view().default_policy
    assert not make(policy="annotation capo.io/reserve-time=2h").view().default_policy


def test_a_deleted_record_reads_as_deleting_with_its_finalizers() -> None:
    body = make().to_body()
    body["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    body["metadata"]["finalizers"] = ["example.com/keep", "capo.io/release"]
    record = Record.from_body(body)
    assert record.deleting
    assert record.without_finalizer() == ["example.com/keep"]


def test_a_record_made_before_finalizers_reads_without_one() -> None:
    body = make().to_body()
    del body["metadata"]["finalizers"]
    record = Record.from_body(body)
    assert record.finalizers == () and not record.deleting


def test_bad_finalizers_are_a_clear_error() -> None:
    body = make().to_body()
    body["metadata"]["finalizers"] = "capo.io/release"
    with pytest.raises(RecordError, match=r"metadata\.finalizers"):
        Record.from_body(body)


def test_a_record_is_slotted_and_its_derived_values_stay_out_of_equality() -> None:
    record = make(ip="fd00::7")
    assert not hasattr(record, "__dict__")  # one per held IP: no per-object dict
    assert record.name == record_name("fd00::7") == "fd00--7"
    view = record.view()
    assert record.view() is view  # computed once per record object
    assert view.name == record.name and view.pod_uid == "uid-1" and view.owner_uid == "uid-o"
    assert make(ip="fd00::7") == record and hash(make(ip="fd00::7")) == hash(record)
    changed = replace(record, ip="fd00::8")
    assert changed.name == "fd00--8" and changed.view().ip == "fd00::8"
    with pytest.raises(AttributeError):
        record.ip = "10.0.0.1"  # type: ignore[misc]
