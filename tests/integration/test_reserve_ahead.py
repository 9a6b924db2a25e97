"""reserveAhead: selected running pods' IPs are in the IPReservation before anything is deleted, so a
deletion is answered without a write; the entries follow the pods, and no hold is lost on the way."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from capo_operator.decisions.record import LABEL_RESERVATION, PodRef, Record
from capo_testkit import Harness, eventually, pod_ip, stays
from capo_testkit.cluster import Cluster, host_ip
from capo_testkit.kube import path_for

AHEAD = {"reserveAhead": True}
# The replicas' own watches of the IPReservation deliver a new version within milliseconds of the
# API object showing it; a review on a lagging replica writes as usual (which these tests would see).
WATCH_SETTLE = 0.5


async def start(capo: Harness, count: int = 1, reserve_time: str = "60s") -> None:
    await capo.start_operators(count, reserve_time=reserve_time, extra=AHEAD)


async def resource_version(c: Cluster) -> str:
    obj = await c.reservation()
    return str((obj or {}).get("metadata", {}).get("resourceVersion", ""))


async def reserved_ahead(capo: Harness, *ips: str, gauge: int | None = None) -> None:
    """Wait until every IP is in the IPReservation (no record: nothing was deleted) and the leader's
    capo_reserved_ahead_ips says `gauge` (default: how many IPs were given)."""
    await eventually(
        capo.cluster.reserved_ips,
        lambda r: set(ips) <= r,
        within=10,
        what=f"IPs {list(ips)} of running pods to be reserved ahead",
        diagnostics=capo.logs,
    )
    leader = await capo.wait_leader()
    await capo.wait_metric("capo_reserved_ahead_ips", len(ips) if gauge is None else gauge, op=leader)
    await asyncio.sleep(WATCH_SETTLE)


@dataclass
class Versions:
    """Every version of the IPReservation written after `open_versions` began: its IPs, in order."""

    seen: list[set[str]] = field(default_factory=list)


@contextlib.asynccontextmanager
async def open_versions(c: Cluster) -> AsyncIterator[Versions]:
    group, version = c.calico_group
    path = path_for(group, version, "ipreservations")
    rv = (await c.kube.call("GET", path)).body["metadata"]["resourceVersion"]
    out = Versions()

    async def follow() -> None:
        # From the listed version on: no write is missed, however soon it comes.
        async for event in c.kube.watch(path, resource_version=rv):
            obj = event.get("object") or {}
            if (obj.get("metadata") or {}).get("name") == c.reservation_name:
                entries = (obj.get("spec") or {}).get("reservedCIDRs") or []
                out.seen.append({host_ip(e) for e in entries})

    task = asyncio.create_task(follow())
    try:
        yield out
    finally:
        await asyncio.sleep(0.2)  # a write made just before the block ended is still reported
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_running_selected_pods_are_reserved_ahead_and_others_are_not(capo: Harness) -> None:
    c = capo.cluster
    await start(capo)
    apps = await c.create_namespace("apps")
    plain = await c.create_namespace("plain", enabled=False)

    ip = pod_ip(await c.create_pod(apps, "redis-0"))
    running = time.monotonic()
    await eventually(
        c.reserved_ips,
        lambda r: ip in r,
        within=10,
        interval=0.05,
        what=f"{ip} of a running pod to be in the IPReservation",
        diagnostics=capo.logs,
    )
    took = time.monotonic() - running
    assert took < 3, f"reserved ahead {took:.1f}s after the pod ran"
    assert await c.records() == {}, "nothing was deleted: no hold, no record"

    other = pod_ip(await c.create_pod(plain, "redis-0"))
    host = await c.create_pod(apps, "agent-0", host_network=True, stateful=False)
    await stays(
        c.reserved_ips,
        lambda r: r == {ip},
        duration=1.5,
        what=f"only {ip} reserved (not {other}: namespace not enabled; nor a hostNetwork pod's node IP)",
        diagnostics=capo.logs,
    )
    assert host["status"].get("podIP") not in await c.reserved_ips()
    leader = await capo.wait_leader()
    await capo.wait_metric("capo_reserved_ahead_ips", 1, op=leader)
    assert await c.records() == {}


async def test_delete_writes_nothing_then_holds_and_releases(capo: Harness) -> None:
    c = capo.cluster
    await start(capo, reserve_time="5s")
    apps = await c.create_namespace("apps")
    pod = await c.create_pod(apps, "redis-0")
    ip, uid, node = pod_ip(pod), pod["metadata"]["uid"], pod["spec"]["nodeName"]
    await reserved_ahead(capo, ip)

    before = await resource_version(c)
    resp = await c.delete_pod(apps, "redis-0")  # graceful, then the kubelet's final delete
    assert resp.status == 200 and resp.warnings == [], resp.warnings
    assert await resource_version(c) == before, "the deletion was answered after an IPReservation write"
    record = (await capo.wait_reserved(ip))[ip]
    assert await resource_version(c) == before, "the record followed with an IPReservation write"
    spec = record["spec"]
    assert spec["trigger"] == "delete", spec
    assert spec["pod"] == {"namespace": apps, "name": "redis-0", "uid": uid, "node": node}, spec
    assert spec["holdSeconds"] == 5, spec
    await capo.wait_metric("capo_webhook_requests_total", 1, operation="delete", outcome="reserved-ahead")
    m = await capo.metrics()
    assert m.value("capo_webhook_requests_total", operation="delete", outcome="reserved") == 0
    assert m.value("capo_reservations_total", trigger="delete") == 1

    # While held, the IP goes to no new pod; after the hold it leaves with its record.
    assert pod_ip(await c.create_pod(apps, "redis-1")) != ip
    await capo.wait_released(ip, within=20)
    await capo.wait_metric("capo_releases_total", 1, reason="expired")


async def test_unlabelling_a_namespace_removes_only_its_pods_entries(capo: Harness) -> None:
    c = capo.cluster
    await start(capo, reserve_time="60s")
    apps = await c.create_namespace("apps")
    db = await c.create_namespace("db")
    redis = pod_ip(await c.create_pod(apps, "redis-0"))
    gone = pod_ip(await c.create_pod(db, "pg-0"))
    kept = pod_ip(await c.create_pod(db, "pg-1"))
    await reserved_ahead(capo, redis, gone, kept)
    await c.delete_pod(db, "pg-0")
    await capo.wait_reserved(gone)

    await c.kube.patch(f"/api/v1/namespaces/{apps}", {"metadata": {"labels": {"ip-reserve": None}}})
    await eventually(
        c.reserved_ips,
        lambda r: redis not in r,
        within=10,
        what=f"{redis} (its namespace no longer enabled, the pod still runs) to leave the IPReservation",
        diagnostics=capo.logs,
    )
    await stays(
        c.reserved_ips,
        lambda r: r == {gone, kept},
        duration=1.5,
        what=f"the hold of deleted {gone} and the entry of running {kept} (other namespace) to stay",
        diagnostics=capo.logs,
    )
    assert set(await c.records()) == {gone}, "no record for the unlabelled namespace's pod"
    assert await c.get_pod(apps, "redis-0") is not None
    await capo.wait_metric("capo_reserved_ahead_ips", 1, op=await capo.wait_leader())


async def test_eviction_writes_nothing(capo: Harness) -> None:
    c = capo.cluster
    await start(capo)
    apps = await c.create_namespace("apps")
    ip = pod_ip(await c.create_pod(apps, "kafka-0", labels={"brokerId": "0"}, stateful=False))
    await reserved_ahead(capo, ip)

    before = await resource_version(c)
    resp = await c.evict_pod(apps, "kafka-0")
    assert resp.status == 201 and resp.warnings == [], (resp.status, resp.warnings)
    assert await resource_version(c) == before, "the eviction was answered after an IPReservation write"
    record = (await capo.wait_reserved(ip))[ip]
    assert record["spec"]["trigger"] == "eviction", record["spec"]
    assert record["spec"]["pod"]["name"] == "kafka-0", record["spec"]
    await capo.wait_metric("capo_webhook_requests_total", 1, operation="eviction", outcome="reserved-ahead")
    assert await resource_version(c) == before


async def test_an_older_hold_of_a_running_pods_ip_ends_without_dropping_its_entry(capo: Harness) -> None:
    """A hold of an earlier pod on the IP a running pod uses now (as a sticky reclaim leaves it):
    when that hold ends, its record goes and the entry stays, reserved for the running pod."""
    c = capo.cluster
    await start(capo)
    apps = await c.create_namespace("apps")
    pod = await c.create_pod(apps, "redis-0")
    ip, uid = pod_ip(pod), pod["metadata"]["uid"]
    await reserved_ahead(capo, ip)

    now = datetime.now(UTC)
    earlier = Record(
        ip=ip,
        pod=PodRef(namespace=apps, name="old-0", uid=str(uuid.uuid4()), node=None),
        owner=None,
        trigger="delete",
        reserved_at=now - timedelta(seconds=30),
        expires_at=now + timedelta(seconds=3),
        hold=timedelta(seconds=33),
        policy="annotation capo.io/reserve-time=33s",
    )
    body = earlier.to_body()
    body["metadata"]["labels"][LABEL_RESERVATION] = c.reservation_name  # this run's operators' record
    async with open_versions(c) as versions:
        await c.kube.create(path_for("capo.io", "v1", "reservedips"), body)
        await eventually(
            c.records,
            lambda r: ip not in r,
            within=20,
            what=f"the earlier hold of {ip} to expire and its record to go",
            diagnostics=capo.logs,
        )
        await capo.wait_metric("capo_releases_total", 1, reason="expired")
        await stays(
            c.reserved_ips,
            lambda r: ip in r,
            duration=1.5,
            what=f"{ip} of running redis-0 to stay reserved",
            diagnostics=capo.logs,
        )
    dropped = [v for v in versions.seen if ip not in v]
    assert dropped == [], f"{ip} left the IPReservation while its pod ran ({len(dropped)} version(s))"

    # It is still the running pod's: its deletion needs no write, its hold is its own.
    before = await resource_version(c)
    await c.delete_pod(apps, "redis-0")
    record = (await capo.wait_reserved(ip))[ip]
    assert record["spec"]["pod"]["uid"] == uid and record["spec"]["trigger"] == "delete", record["spec"]
    assert await resource_version(c) == before
    await capo.wait_metric("capo_webhook_requests_total", 1, operation="delete", outcome="reserved-ahead")


@pytest.mark.timeout(120)
async def test_a_deletion_while_every_replica_is_down_stays_held_and_is_recorded(capo: Harness) -> None:
    c = capo.cluster
    ops = await capo.start_operators(2, reserve_time="60s", extra=AHEAD)
    apps = await c.create_namespace("apps")
    pod = await c.create_pod(apps, "redis-0")
    ip, uid = pod_ip(pod), pod["metadata"]["uid"]
    alive = pod_ip(await c.create_pod(apps, "redis-1"))
    await reserved_ahead(capo, ip, alive)
    await eventually(
        c.ledger,
        lambda text: ip in text and alive in text,
        within=15,
        what="the ledger to list the running pods' IPs",
        diagnostics=capo.logs,
    )

    async with open_versions(c) as versions:
        await capo.stop_all()
        resp = await c.delete_pod(apps, "redis-0")
        assert resp.status == 200, "nothing answers the webhook: failurePolicy Ignore lets it through"
        newcomer = pod_ip(await c.create_pod(apps, "redis-2"))
        assert newcomer != ip, f"{ip} was handed out while no replica ran"

        for op in ops:
            op.start()
        await asyncio.gather(*(op.wait_ready() for op in ops))
        record = (await capo.wait_reserved(ip, within=30))[ip]
    spec = record["spec"]
    assert spec["pod"]["name"] == "redis-0" and spec["pod"]["uid"] == uid, spec
    assert spec["trigger"] != "recovered", spec
    dropped = [v for v in versions.seen if ip not in v]
    assert dropped == [], f"{ip} left the IPReservation meanwhile ({len(dropped)} version(s))"
    await eventually(
        c.reserved_ips,
        lambda r: {ip, alive, newcomer} <= r,
        within=10,
        what="the held IP and both running pods' IPs (the newcomer's reserved ahead) in the IPReservation",
        diagnostics=capo.logs,
    )


@pytest.mark.timeout(120)
async def test_a_burst_of_deletions_on_three_replicas_writes_nothing(capo: Harness) -> None:
    c = capo.cluster
    await start(capo, count=3, reserve_time="10m")
    apps = await c.create_namespace("apps")
    pods = await asyncio.gather(*(c.create_pod(apps, f"redis-{i}") for i in range(30)))
    ips = [pod_ip(p) for p in pods]
    await reserved_ahead(capo, *ips)

    queue = [p["metadata"]["name"] for p in pods]
    answers: list[Any] = []

    async def client() -> None:
        while queue:
            name = queue.pop()
            resp = await c.kube.delete(f"/api/v1/namespaces/{apps}/pods/{name}", grace_period=0)
            answers.append((name, resp.status, resp.warnings))

    async with open_versions(c) as versions:
        started = time.monotonic()
        await asyncio.gather(*(client() for _ in range(16)))
        took = time.monotonic() - started
        assert all(status == 200 and not warnings for _, status, warnings in answers), answers
        records = await capo.wait_reserved(*ips, within=30)
    assert versions.seen == [], f"{len(versions.seen)} IPReservation write(s) for 30 ahead-reserved deletions"
    assert {r["spec"]["trigger"] for r in records.values()} == {"delete"}
    assert {r["spec"]["pod"]["name"] for r in records.values()} == {p["metadata"]["name"] for p in pods}
    assert set(ips) <= await c.reserved_ips()
    await capo.wait_metric("capo_reservations_total", 30, trigger="delete")
    # Each deletion is reviewed more than once (another replica does not know the first answer).
    assert await capo.total("capo_webhook_requests_total", operation="delete", outcome="reserved-ahead") >= 30
    assert await capo.total("capo_webhook_requests_total", operation="delete", outcome="reserved") == 0
    assert took < 20, f"the burst took {took:.1f}s"
