"""RecordStore against the emulator (with the project's ReservedIP CRD when it exists)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest
from component_support import Cluster

from capo_operator.decisions import record as record_module
from capo_operator.decisions.policy import Owner
from capo_operator.decisions.record import GROUP, PLURAL, RELEASING_ANNOTATION, VERSION, PodRef, Record
from capo_operator.kube import records as records_module
from capo_operator.kube.records import RecordStore
from capo_operator.kube.transport import ApiError

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def make(ip: str, **changes: object) -> Record:
    fields: dict[str, object] = dict(
        ip=ip,
        pod=PodRef("ns", "redis-0", "uid-1", "node-1"),
        owner=Owner("apps/v1", "StatefulSet", "redis", "uid-o"),
        trigger="delete",
        reserved_at=T0,
        expires_at=T0 + timedelta(minutes=40),
        hold=timedelta(minutes=40),
        policy="ipReserveTime=40m",
    )
    fields.update(changes)
    return Record(**fields)  # type: ignore[arg-type]


async def test_create_list_and_duplicate(cluster: Cluster) -> None:
    store = RecordStore(cluster.api)
    assert await store.list() == []
    assert await store.create(make("10.0.0.1"))
    assert await store.create(make("fd00::1", expires_at=None, owner=None))
    assert not await store.create(make("10.0.0.1", trigger="eviction"))  # exists: not an error
    listed = {r.name: r for r in await store.list()}
    assert set(listed) == {"10.0.0.1", "fd00--1"}
    assert listed["10.0.0.1"].trigger == "delete" and listed["10.0.0.1"].resource_version
    assert listed["fd00--1"].expires_at is None and listed["fd00--1"].owner is None
    # Labels are there for `kubectl get rip -l capo.io/namespace=ns`.
    selected = cast(
        dict[str, Any],
        await cluster.custom.list_cluster_custom_object(
            GROUP, VERSION, PLURAL, label_selector="capo.io/namespace=ns,capo.io/owner-name=redis"
        ),
    )
    assert [i["metadata"]["name"] for i in selected["items"]] == ["10.0.0.1"]


async def test_a_failed_create_raises_with_the_status_and_creates_nothing(cluster: Cluster) -> None:
    store = RecordStore(cluster.api)
    await cluster.emu.control.add_fault(method="POST", path="reservedips", status=500, times=1)
    with pytest.raises(ApiError) as failed:
        await store.create(make("10.0.0.1"))
    assert failed.value.status == 500
    assert await store.list() == []
    assert await store.create(make("10.0.0.1"))  # the retry


async def test_a_recovered_record_without_a_pod(cluster: Cluster) -> None:
    # An adopted Calico entry (invariant 2): nobody knows which pod held it.
    store = RecordStore(cluster.api)
    assert await store.create(make("10.0.0.9", pod=None, owner=None, trigger="recovered"))
    [record] = await store.list()
    assert record.pod is None and record.trigger == "recovered"


async def test_mark_releasing_set_clock_delete(cluster: Cluster) -> None:
    store = RecordStore(cluster.api)
    await store.create(make("10.0.0.1", expires_at=None))
    later = T0 + timedelta(hours=1)
    await store.set_clock(
        "10.0.0.1", reserved_at=later, expires_at=later + timedelta(hours=2), hold=timedelta(hours=2)
    )
    [record] = await store.list()
    assert (record.reserved_at, record.expires_at, record.hold) == (
        later,
        later + timedelta(hours=2),
        timedelta(hours=2),
    )
    assert record.trigger == "delete" and record.pod == PodRef("ns", "redis-0", "uid-1", "node-1")
    await store.set_clock("10.0.0.1", reserved_at=later, expires_at=None, hold=timedelta(hours=2))
    assert (await store.list())[0].expires_at is None  # clock stopped again
    await store.mark_releasing("10.0.0.1", "cap")
    body = cast(
        dict[str, Any], await cluster.custom.get_cluster_custom_object(GROUP, VERSION, PLURAL, "10.0.0.1")
    )
    assert body["metadata"]["annotations"][RELEASING_ANNOTATION] == "cap"
    assert (await store.list())[0].releasing == "cap"
    assert await store.delete("10.0.0.1")
    assert not await store.delete("10.0.0.1")
    # A record that vanished meanwhile is not an error for the patches either.
    await store.mark_releasing("10.0.0.1", "cap")
    await store.set_clock("10.0.0.1", reserved_at=T0, expires_at=None, hold=timedelta(0))
    assert await store.list() == []


async def test_list_pages_and_skips_invalid_bodies(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    store = RecordStore(cluster.api)
    for i in range(5):
        await store.create(make(f"10.0.0.{i}"))
    body = make("10.0.0.77").to_body()
    body["metadata"]["name"] = "10.0.0.78"  # a name that does not match its IP
    await cluster.custom.create_cluster_custom_object(GROUP, VERSION, PLURAL, body)
    monkeypatch.setattr(records_module, "LIST_PAGE", 2)
    listed = await store.list()
    assert sorted(r.ip for r in listed) == [f"10.0.0.{i}" for i in range(5)]
    assert "10.0.0.78" in caplog.text


async def test_installations_with_different_reservations_see_only_their_own_records(cluster: Cluster) -> None:
    """Two installations (or a test run on a production cluster) share the ReservedIP kind: each
    lists and labels only the records of its own IPReservation; unlabelled ones are the default's."""
    default, other = RecordStore(cluster.api), RecordStore(cluster.api, reservation="tenant-b")
    assert await default.create(make("10.0.0.1"))
    assert await other.create(make("10.0.0.2"))
    await cluster.custom.create_cluster_custom_object(  # as written before the label existed
        GROUP, VERSION, PLURAL, {**make("10.0.0.3").to_body(), "metadata": {"name": "10.0.0.3"}}
    )
    assert {r.ip for r in await default.list()} == {"10.0.0.1", "10.0.0.3"}
    assert {r.ip for r in await other.list()} == {"10.0.0.2"}
    labelled = cast(
        dict[str, Any],
        await cluster.custom.list_cluster_custom_object(
            GROUP, VERSION, PLURAL, label_selector="capo.io/reservation=tenant-b"
        ),
    )
    assert [i["metadata"]["name"] for i in labelled["items"]] == ["10.0.0.2"]


async def _get(cluster: Cluster, name: str) -> dict[str, Any] | None:
    items = cast(dict[str, Any], await cluster.custom.list_cluster_custom_object(GROUP, VERSION, PLURAL))
    return next((i for i in items["items"] if i["metadata"]["name"] == name), None)


async def test_a_deleted_record_waits_for_the_leader_then_goes(cluster: Cluster) -> None:
    store = RecordStore(cluster.api)
    await store.create(make("10.0.0.1"))
    await cluster.custom.delete_cluster_custom_object(GROUP, VERSION, PLURAL, "10.0.0.1")  # a person

    body = await _get(cluster, "10.0.0.1")
    assert body is not None, "the finalizer keeps it"
    record = Record.from_body(body)
    assert record.deleting and record.finalizers == (record_module.FINALIZER,)

    assert await store.finish_manual("10.0.0.1", finalizers=record.without_finalizer())
    assert await _get(cluster, "10.0.0.1") is None
    assert not await store.finish_manual("10.0.0.1")  # already gone


async def test_a_marked_record_is_deleted_at_once(cluster: Cluster) -> None:
    store = RecordStore(cluster.api)
    await store.create(make("10.0.0.2"))
    await store.mark_releasing("10.0.0.2", "expired")
    body = await _get(cluster, "10.0.0.2")
    assert body is not None and not body["metadata"].get("finalizers")
    assert body["metadata"]["annotations"][RELEASING_ANNOTATION] == "expired"

    assert await store.delete("10.0.0.2")
    assert await _get(cluster, "10.0.0.2") is None


async def test_delete_finishes_a_record_that_still_has_the_finalizer(cluster: Cluster) -> None:
    store = RecordStore(cluster.api)
    await store.create(make("10.0.0.3"))
    assert await store.delete("10.0.0.3")
    assert await _get(cluster, "10.0.0.3") is None
    assert not await store.delete("10.0.0.3")


async def test_a_record_made_before_finalizers_gets_one_keeping_others(cluster: Cluster) -> None:
    store = RecordStore(cluster.api)
    body = make("10.0.0.4", finalizers=("example.com/keep",)).to_body()
    await cluster.custom.create_cluster_custom_object(GROUP, VERSION, PLURAL, body)
    await store.add_finalizer("10.0.0.4", finalizers=("example.com/keep",))
    got = await _get(cluster, "10.0.0.4")
    assert got is not None
    assert got["metadata"]["finalizers"] == ["example.com/keep", record_module.FINALIZER]


async def test_set_clock_can_rewrite_the_policy(cluster: Cluster) -> None:
    store = RecordStore(cluster.api)
    await store.create(make("10.0.0.5"))
    await store.set_clock(
        "10.0.0.5",
        reserved_at=T0,
        expires_at=T0 + timedelta(minutes=15),
        hold=timedelta(minutes=15),
        policy="ipReserveTime=15m",
    )
    got = await _get(cluster, "10.0.0.5")
    assert got is not None and got["spec"]["policy"] == "ipReserveTime=15m"
    assert got["spec"]["holdSeconds"] == 900
