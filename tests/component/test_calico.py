"""CalicoStore against every IPReservation CRD flavour the emulator preloads, and the v3 group."""

from __future__ import annotations

import asyncio
import contextlib
import random
from typing import Any, cast

import pytest
from component_support import Cluster, eventually

from capo_operator.kube.calico import CalicoError, CalicoGroup, CalicoStore, detect_group

NAME = "capo-reserved-ips"

FLAVOURS = [
    pytest.param(({"calico": "crd", "calico_variant": "latest"}, CalicoGroup.CRD), id="crd-latest"),
    pytest.param(({"calico": "crd", "calico_variant": "v3.32.1"}, CalicoGroup.CRD), id="crd-v3.32.1"),
    pytest.param(({"calico": "crd", "calico_variant": "v3.31"}, CalicoGroup.CRD), id="crd-v3.31"),
    pytest.param(({"calico": "v3", "calico_variant": "latest"}, CalicoGroup.V3), id="v3"),
]


@pytest.fixture(params=FLAVOURS)
def flavour(request: pytest.FixtureRequest) -> tuple[dict[str, Any], CalicoGroup]:
    param: tuple[dict[str, Any], CalicoGroup] = request.param
    return param


@pytest.fixture
def emulator_options(flavour: tuple[dict[str, Any], CalicoGroup]) -> dict[str, Any]:
    return flavour[0]


@pytest.fixture
def group(flavour: tuple[dict[str, Any], CalicoGroup]) -> CalicoGroup:
    return flavour[1]


async def raw_entries(cluster: Cluster, group: CalicoGroup) -> list[str] | None:
    obj = cast(
        dict[str, Any],
        await cluster.custom.get_cluster_custom_object(group.value, group.version, "ipreservations", NAME),
    )
    entries: list[str] | None = (obj.get("spec") or {}).get("reservedCIDRs")
    return entries


async def put_raw(cluster: Cluster, group: CalicoGroup, spec: dict[str, Any]) -> None:
    await cluster.custom.create_cluster_custom_object(
        group.value,
        group.version,
        "ipreservations",
        {
            "apiVersion": f"{group.value}/{group.version}",
            "kind": "IPReservation",
            "metadata": {"name": NAME},
            "spec": spec,
        },
    )


async def test_detects_the_served_group(cluster: Cluster, group: CalicoGroup) -> None:
    assert await detect_group(cluster.api) is group
    assert await detect_group(cluster.api, forced="projectcalico.org") is CalicoGroup.V3
    with pytest.raises(CalicoError):
        await detect_group(cluster.api, forced="calico.example.org")


async def test_append_creates_the_object_and_writes_host_cidrs(cluster: Cluster, group: CalicoGroup) -> None:
    store = CalicoStore(cluster.api, name=NAME, group=group)
    await store.append(["10.0.0.1", "FD00::0001", "10.0.0.1"])
    assert await raw_entries(cluster, group) == ["10.0.0.1/32", "fd00::1/128"]
    snap = await store.read()
    assert snap.ips == {"10.0.0.1", "fd00::1"} and snap.malformed == () and snap.resource_version


async def test_append_is_one_patch_without_a_read(cluster: Cluster, group: CalicoGroup) -> None:
    store = CalicoStore(cluster.api, name=NAME, group=group)
    await store.ensure()
    await store.ensure()  # idempotent
    assert await raw_entries(cluster, group) in ([], None)
    cluster.calls.clear()
    await store.append(["10.0.0.1", "10.0.0.2/32"])
    assert [(m, s) for m, _, s in cluster.calls.log] == [("PATCH", 200)]
    assert await raw_entries(cluster, group) == ["10.0.0.1/32", "10.0.0.2/32"]


async def test_appending_a_present_entry_succeeds_without_duplicates_where_rejected(
    cluster: Cluster, group: CalicoGroup, emulator_options: dict[str, Any]
) -> None:
    store = CalicoStore(cluster.api, name=NAME, group=group)
    await store.append(["10.0.0.1", "10.0.0.2"])
    await store.append(["10.0.0.2", "10.0.0.3"])  # one present, one new
    entries = await raw_entries(cluster, group)
    assert entries is not None
    assert set(entries) == {"10.0.0.1/32", "10.0.0.2/32", "10.0.0.3/32"}
    if emulator_options["calico_variant"] != "v3.31" or group is CalicoGroup.V3:
        assert len(entries) == 3  # list-type set: the 422 path added only the missing one
    assert (await store.read()).ips == {"10.0.0.1", "10.0.0.2", "10.0.0.3"}


async def test_append_copes_with_an_omitted_list(cluster: Cluster, group: CalicoGroup) -> None:
    # calico-apiserver omits an empty reservedCIDRs: a JSON-patch "add .../-" then has no list to add to.
    await put_raw(cluster, group, {})
    store = CalicoStore(cluster.api, name=NAME, group=group)
    assert (await store.read()).ips == frozenset()
    await store.append(["10.0.0.9"])
    assert await raw_entries(cluster, group) == ["10.0.0.9/32"]


async def test_invalid_input_is_refused_before_anything_is_sent(cluster: Cluster, group: CalicoGroup) -> None:
    store = CalicoStore(cluster.api, name=NAME, group=group)
    for bad in (["10.0.0.1", "garbage"], ["10.0.0.0/24"], [""], ["fe80::1%eth0"]):
        with pytest.raises(CalicoError):
            await store.append(bad)
        with pytest.raises(CalicoError):
            await store.remove(bad)
    assert cluster.calls.log == []


async def test_remove_keeps_the_others_and_reports_what_it_removed(
    cluster: Cluster, group: CalicoGroup
) -> None:
    store = CalicoStore(cluster.api, name=NAME, group=group)
    assert await store.remove(["10.0.0.1"]) == frozenset()  # absent object: nothing to do
    await store.append(["10.0.0.1", "10.0.0.2", "fd00::3", "10.0.0.4"])
    removed = await store.remove(["10.0.0.2", "fd00:0::3/128", "10.0.0.99"])
    assert removed == {"10.0.0.2", "fd00::3"}
    assert await raw_entries(cluster, group) == ["10.0.0.1/32", "10.0.0.4/32"]
    cluster.calls.clear()
    assert await store.remove(["10.0.0.99"]) == frozenset()
    assert cluster.calls.count("PUT") == 0  # nothing to change: no write
    assert await store.remove(["10.0.0.1", "10.0.0.4"]) == {"10.0.0.1", "10.0.0.4"}
    assert await raw_entries(cluster, group) in ([], None)
    await store.append(["10.0.0.5"])  # appending after the list emptied (and possibly vanished) works
    assert (await store.read()).ips == {"10.0.0.5"}


async def test_server_errors_become_calico_errors(cluster: Cluster, group: CalicoGroup) -> None:
    store = CalicoStore(cluster.api, name=NAME, group=group)
    await store.ensure()
    await cluster.emu.control.add_fault(method="PATCH", path="ipreservations", status=500, times=1)
    with pytest.raises(CalicoError) as err:
        await store.append(["10.0.0.1"])
    assert err.value.status == 500
    await store.append(["10.0.0.1"])  # the fault was one-shot
    assert (await store.read()).ips == {"10.0.0.1"}


async def test_concurrent_appends_are_never_lost_during_removals(
    cluster: Cluster, group: CalicoGroup
) -> None:
    """Removals read, then PUT with the resourceVersion; appends landing in between make the PUT
    conflict, and the retry must keep them. Latency on the PUT (applied before the server looks at
    it) widens the window between read and write, so appends land there."""
    remover_api, remover_calls = await cluster.new_api()
    remover = CalicoStore(remover_api, name=NAME, group=group)
    appender = CalicoStore(cluster.api, name=NAME, group=group)
    initial = [f"10.1.0.{i}" for i in range(1, 41)]
    await appender.append(initial)
    await cluster.emu.control.add_fault(method="PUT", path="ipreservations", latency=0.03)

    new = [f"10.2.0.{i}" for i in range(1, 61)]
    rng = random.Random(7)

    async def append_all() -> None:
        for ip in new:
            await appender.append([ip])
            await asyncio.sleep(rng.uniform(0, 0.01))

    async def remove_all() -> set[str]:
        removed: set[str] = set()
        for i in range(0, len(initial), 4):
            removed |= await remover.remove(initial[i : i + 4])
        return removed

    results = await asyncio.gather(append_all(), append_all(), remove_all(), remove_all())
    snap = await appender.read()
    assert snap.ips == set(new)  # every append survived, every removal happened
    assert results[2] | results[3] == set(initial)
    assert not results[2] & results[3]  # each IP was reported removed by exactly one of the two removers
    assert remover_calls.count("PUT", status=409) > 0, "the test did not provoke any conflict"


@pytest.mark.parametrize("emulator_options", [{"calico": "crd", "calico_variant": "v3.31"}])
@pytest.mark.parametrize("group", [CalicoGroup.CRD])
async def test_legacy_capo_entries(cluster: Cluster, group: CalicoGroup) -> None:
    """Capo wrote bare IPs (and 1.1.1.1); Calico < 3.32 accepted garbage and duplicates."""
    await put_raw(
        cluster,
        group,
        {
            "reservedCIDRs": [
                "1.1.1.1",
                "10.0.0.5",
                "garbage",
                "10.0.0.6/32",
                "10.0.0.6/32",
                "10.9.0.0/16",
                "10.0.0.300",
                "",
            ]
        },
    )
    store = CalicoStore(cluster.api, name=NAME, group=group)
    snap = await store.read()
    assert snap.ips == {"1.1.1.1", "10.0.0.5", "10.0.0.6"}
    assert set(snap.malformed) == {"garbage", "10.0.0.300", ""}
    assert snap.networks == ("10.9.0.0/16",)
    assert await store.remove(["10.0.0.5"]) == {"10.0.0.5"}
    # Bare IPs rewritten as host CIDRs, duplicates and malformed entries gone, a network kept.
    assert await raw_entries(cluster, group) == ["1.1.1.1/32", "10.0.0.6/32", "10.9.0.0/16"]
    assert (await store.read()).malformed == ()


@pytest.mark.parametrize(
    "emulator_options",
    [{"calico": "both", "calico_variant": "latest"}, {"calico": "none", "calico_variant": "latest"}],
)
async def test_detection_prefers_crd_and_fails_without_calico(
    cluster: Cluster, emulator_options: dict[str, Any]
) -> None:
    if emulator_options["calico"] == "both":
        assert await detect_group(cluster.api) is CalicoGroup.CRD
    else:
        with pytest.raises(CalicoError, match="no Calico IPReservation API"):
            await detect_group(cluster.api)


@pytest.mark.parametrize("emulator_options", [{"calico": "crd", "calico_variant": "v3.31"}])
@pytest.mark.parametrize("group", [CalicoGroup.CRD])
async def test_forms_only_python_accepts_are_malformed_and_dropped(
    cluster: Cluster, group: CalicoGroup
) -> None:
    """Python's ipaddress reads a netmask or hostmask as a prefix; Go (Calico) refuses them, and a
    strict CRD then refuses every rewrite that keeps one: they are malformed, not networks."""
    await put_raw(
        cluster,
        group,
        {
            "reservedCIDRs": [
                "10.0.0.0/255.0.0.0",
                "10.0.0.0/0.255.255.255",
                "fe80::1%eth0/128",
                "10.1.0.0/16",
                "10.1.2.3/8",  # host bits set: Go accepts it (10.0.0.0/8)
                "10.0.0.7",
            ]
        },
    )
    store = CalicoStore(cluster.api, name=NAME, group=group)
    snap = await store.read()
    assert set(snap.malformed) == {"10.0.0.0/255.0.0.0", "10.0.0.0/0.255.255.255", "fe80::1%eth0/128"}
    assert snap.networks == ("10.1.0.0/16", "10.1.2.3/8")
    assert snap.ips == {"10.0.0.7"} and snap.bare == {"10.0.0.7"}

    assert await store.remove([]) == frozenset()  # a cleaning rewrite
    assert await raw_entries(cluster, group) == ["10.0.0.7/32", "10.1.0.0/16", "10.1.2.3/8"]
    assert (await store.read()).malformed == ()


# -- pending record details and group commit ---------------------------------------------------------


def details_for(ips: list[str], trigger: str = "delete") -> dict[str, str]:
    from datetime import UTC, datetime, timedelta

    from capo_operator.decisions import pending
    from capo_operator.decisions.record import PodRef, Record

    at = datetime(2026, 1, 1, tzinfo=UTC)
    return {
        ip: pending.encode(
            Record(
                ip=ip,
                pod=PodRef("db", f"db-{n}", f"uid-{n}", "node-1"),
                owner=None,
                trigger=trigger,
                reserved_at=at,
                expires_at=at + timedelta(minutes=40),
                hold=timedelta(minutes=40),
                policy="ipReserveTime=40m",
            )
        )
        for n, ip in enumerate(ips)
    }


async def raw_annotations(cluster: Cluster, group: CalicoGroup) -> dict[str, str]:
    obj = cast(
        dict[str, Any],
        await cluster.custom.get_cluster_custom_object(group.value, group.version, "ipreservations", NAME),
    )
    annotations: dict[str, str] = (obj.get("metadata") or {}).get("annotations") or {}
    return annotations


async def test_pending_details_travel_in_the_same_single_patch(cluster: Cluster, group: CalicoGroup) -> None:
    store = CalicoStore(cluster.api, name=NAME, group=group)
    await store.ensure()
    cluster.calls.clear()

    await store.append(["10.0.0.1", "fd00::1"], details_for(["10.0.0.1", "fd00::1"]))

    assert [(m, s) for m, _, s in cluster.calls.log] == [("PATCH", 200)]
    snap = await store.read()
    assert snap.ips == {"10.0.0.1", "fd00::1"}
    assert {ip: r.pod.name if r.pod else None for ip, r in snap.pending.items()} == {
        "10.0.0.1": "db-0",
        "fd00::1": "db-1",
    }
    annotations = await raw_annotations(cluster, group)
    assert annotations["capo.io/managed-by"] == "capo-operator"
    assert set(annotations) == {"capo.io/managed-by", "pending.capo.io/10.0.0.1", "pending.capo.io/fd00--1"}
    assert store.pending_bytes == sum(
        len(k) + len(v) for k, v in annotations.items() if k.startswith("pending")
    )


async def test_an_object_without_annotations_gets_them_on_the_checked_path(
    cluster: Cluster, group: CalicoGroup
) -> None:
    await put_raw(cluster, group, {"reservedCIDRs": ["10.0.0.5/32"]})  # written before this version
    store = CalicoStore(cluster.api, name=NAME, group=group)

    await store.append(["10.0.0.6"], details_for(["10.0.0.6"]))

    snap = await store.read()
    assert snap.ips == {"10.0.0.5", "10.0.0.6"} and set(snap.pending) == {"10.0.0.6"}
    cluster.calls.clear()
    await store.append(["10.0.0.7"], details_for(["10.0.0.7"]))
    assert [m for m, _, _ in cluster.calls.log] == ["PATCH"]  # the map exists now: one write again
    assert set((await store.read()).pending) == {"10.0.0.6", "10.0.0.7"}


async def test_ensure_marks_an_existing_object(cluster: Cluster, group: CalicoGroup) -> None:
    await put_raw(cluster, group, {"reservedCIDRs": ["10.0.0.5/32"]})
    store = CalicoStore(cluster.api, name=NAME, group=group)
    await store.ensure()
    assert (await raw_annotations(cluster, group)) == {"capo.io/managed-by": "capo-operator"}
    assert await raw_entries(cluster, group) == ["10.0.0.5/32"]


async def test_a_duplicate_keeps_the_details_of_the_new_entries(cluster: Cluster, group: CalicoGroup) -> None:
    store = CalicoStore(cluster.api, name=NAME, group=group)
    await store.append(["10.0.0.1"])
    await store.append(["10.0.0.1", "10.0.0.2"], details_for(["10.0.0.1", "10.0.0.2"]))
    snap = await store.read()
    assert snap.ips == {"10.0.0.1", "10.0.0.2"}
    assert "10.0.0.2" in snap.pending


async def test_remove_drops_the_details_of_what_it_removes(cluster: Cluster, group: CalicoGroup) -> None:
    store = CalicoStore(cluster.api, name=NAME, group=group)
    await store.append(["10.0.0.1", "10.0.0.2"], details_for(["10.0.0.1", "10.0.0.2"]))
    assert await store.remove(["10.0.0.1"]) == {"10.0.0.1"}
    snap = await store.read()
    assert set(snap.pending) == {"10.0.0.2"}
    assert "capo.io/managed-by" in await raw_annotations(cluster, group)


async def test_clear_pending_is_one_write_and_ignores_absent_keys(
    cluster: Cluster, group: CalicoGroup
) -> None:
    store = CalicoStore(cluster.api, name=NAME, group=group)
    await store.append(["10.0.0.1", "10.0.0.2"], details_for(["10.0.0.1", "10.0.0.2"]))
    cluster.calls.clear()
    await store.clear_pending(["pending.capo.io/10.0.0.1", "pending.capo.io/10.0.0.77", "capo.io/managed-by"])
    assert [m for m, _, _ in cluster.calls.log] == ["PATCH"]
    assert set(await raw_annotations(cluster, group)) == {"capo.io/managed-by", "pending.capo.io/10.0.0.2"}
    assert (await store.read()).ips == {"10.0.0.1", "10.0.0.2"}  # entries untouched


async def test_details_beyond_the_budget_are_left_out_not_the_reservation(
    cluster: Cluster, group: CalicoGroup, monkeypatch: pytest.MonkeyPatch
) -> None:
    from capo_operator.decisions import pending

    ips = [f"10.0.0.{i}" for i in range(1, 6)]
    details = details_for(ips)
    one = len(pending.key(ips[0])) + len(details[ips[0]])
    monkeypatch.setattr(pending, "BUDGET_BYTES", 2 * one + 5)
    store = CalicoStore(cluster.api, name=NAME, group=group)
    await store.append(ips[:1], {ips[0]: details[ips[0]]})
    await store.append(ips[1:], {ip: details[ip] for ip in ips[1:]})
    snap = await store.read()
    assert snap.ips == set(ips)
    assert set(snap.pending) == {"10.0.0.1", "10.0.0.2"}


async def test_group_commit_under_write_latency_with_concurrent_removals(
    cluster: Cluster, group: CalicoGroup
) -> None:
    """16 clients append through one GroupCommit while another replica removes: every append survives
    with its details, every removal happens, and the appends need far fewer writes than callers."""
    from capo_operator.kube.calico import GroupCommit

    remover_api, remover_calls = await cluster.new_api()
    remover = CalicoStore(remover_api, name=NAME, group=group)
    store = CalicoStore(cluster.api, name=NAME, group=group)
    initial = [f"10.1.0.{i}" for i in range(1, 41)]
    await store.append(initial)
    await cluster.emu.control.set_write_latency(0.005)
    commit = GroupCommit(store)
    new = [f"10.2.{i // 200}.{i % 200 + 1}" for i in range(160)]
    details = details_for(new)

    async def client(k: int) -> None:
        for ip in new[k::16]:
            await commit.append([ip], {ip: details[ip]})

    async def remove_all() -> set[str]:
        removed: set[str] = set()
        for i in range(0, len(initial), 4):
            removed |= await remover.remove(initial[i : i + 4])
        return removed

    *_, removed = await asyncio.gather(*(client(k) for k in range(16)), remove_all())
    snap = await store.read()
    assert snap.ips == set(new)
    assert set(snap.pending) == set(new)
    assert removed == set(initial)
    assert commit.writes <= len(new) // 4, f"{commit.writes} writes for {len(new)} appends"
    assert remover_calls.count("PUT") >= len(initial) // 4


async def test_the_watched_copy_follows_the_object_and_only_it(cluster: Cluster, group: CalicoGroup) -> None:
    """ReservationCache: list+watch narrowed to the one object by `metadata.name`; every change
    (ours or someone else's) moves its version and shows in its snapshot; another object of the
    same kind is never seen."""
    store = CalicoStore(cluster.api, name=NAME, group=group)
    cache = store.cache(resync_period=None)
    task = asyncio.create_task(cache.run())
    try:
        await asyncio.wait_for(cache.synced.wait(), 5)
        absent = cache.snapshot()
        assert absent is not None and absent.ips == frozenset()  # no object yet: empty

        await store.append(["10.0.0.1", "10.0.0.2"])
        await eventually(lambda: (cache.snapshot() or absent).ips == {"10.0.0.1", "10.0.0.2"})
        version = cache.version

        other = CalicoStore(cluster.api, name="another-teams-reservation", group=group)
        await other.append(["10.9.9.9"])
        await store.remove(["10.0.0.1"])  # a write after theirs: once seen, theirs was delivered
        await eventually(lambda: (cache.snapshot() or absent).ips == {"10.0.0.2"})
        assert cache.version != version
        assert cache.informer.store.keys() == [NAME]
        assert (cache.snapshot() or absent).resource_version == (await store.read()).resource_version
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
