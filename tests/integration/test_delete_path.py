"""The delete path: one write before the answer, the record after it, and nothing lost in between."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest

from capo_testkit import Harness, eventually, pod_ip
from capo_testkit.kube import path_for

PENDING = "pending.capo.io/"


@pytest.mark.emulator_only
async def test_a_crash_before_the_record_is_adopted_with_the_pods_details(capo: Harness) -> None:
    c = capo.cluster
    [first] = await capo.start_operators(1, reserve_time="10m")
    ns = await c.create_namespace("apps")
    pod = await c.create_pod(ns, "redis-0")
    ip, uid, node = pod_ip(pod), pod["metadata"]["uid"], pod["spec"]["nodeName"]
    # Records cannot be written: the deletion is still answered after the one Calico write.
    fault = await c.control.add_fault("api", method="POST", path="reservedips", status=500)
    before = datetime.now(UTC).replace(microsecond=0)
    resp = await c.delete_pod(ns, "redis-0")
    after = datetime.now(UTC)
    assert resp.status == 200 and resp.warnings == [], resp.warnings
    assert ip in await c.reserved_ips(), "the IP is in Calico when the deletion is answered"
    annotations = ((await c.reservation()) or {})["metadata"].get("annotations") or {}
    assert f"{PENDING}{ip}" in annotations, annotations

    await first.kill()  # the process dies before its record exists
    await c.control.remove_fault(fault)
    assert ip not in await c.records()

    await capo.start_operators(1, reserve_time="10m")  # the next leader
    record = (await capo.wait_reserved(ip, within=30))[ip]
    spec = record["spec"]
    assert spec["trigger"] == "delete", spec  # not "recovered", not a new "safety-net" reservation
    assert spec["pod"] == {"namespace": ns, "name": "redis-0", "uid": uid, "node": node}, spec
    reserved_at = datetime.fromisoformat(spec["reservedAt"].replace("Z", "+00:00"))
    # The real reservation time, not the adoption's (the restart alone takes seconds).
    assert before <= reserved_at <= after, (spec, before, after)
    assert spec["holdSeconds"] == 600, spec

    async def pending() -> list[str]:
        obj = await c.reservation()
        annotations = ((obj or {}).get("metadata") or {}).get("annotations") or {}
        return [k for k in annotations if k.startswith(PENDING)]

    await eventually(pending, lambda keys: keys == [], within=20, what="the pending details to be cleared")
    assert ip in await c.reserved_ips()


@pytest.mark.emulator_only
@pytest.mark.parametrize(
    "cluster_options",
    [{"calico_variant": v} for v in ("latest", "v3.32.1", "v3.31")],
    ids=["latest", "v3.32.1", "v3.31"],
)
async def test_a_drain_burst_shares_calico_writes_and_reserves_before_each_answer(
    capo: Harness, cluster_options: dict[str, Any]
) -> None:
    c = capo.cluster
    await capo.start_operators(1, reserve_time="10m")
    ns = await c.create_namespace("apps")
    pods = [await c.create_pod(ns, f"redis-{i}") for i in range(32)]
    await c.control.set_write_latency(0.005)
    group, version = c.calico_group
    writes: list[int] = []

    async def count_writes() -> None:
        path = path_for(group, version, "ipreservations")
        rv = (await c.kube.call("GET", path)).body["metadata"]["resourceVersion"]
        async for event in c.kube.watch(path, resource_version=rv):
            if event["object"]["metadata"]["name"] == c.reservation_name:
                writes.append(int(event["object"]["metadata"]["resourceVersion"]))

    watcher = asyncio.create_task(count_writes())
    missing: list[str] = []
    queue = list(pods)

    async def client() -> None:
        while queue:
            pod = queue.pop()
            name = pod["metadata"]["name"]
            resp = await c.kube.delete(f"/api/v1/namespaces/{ns}/pods/{name}", grace_period=0)
            assert resp.status == 200 and resp.warnings == [], (name, resp.warnings)
            if pod_ip(pod) not in await c.reserved_ips():  # read right after the answer
                missing.append(pod_ip(pod))

    try:
        await asyncio.gather(*(client() for _ in range(16)))
        await asyncio.sleep(0.3)
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
    assert missing == [], f"not in the IPReservation when their deletion was answered: {missing}"
    assert 0 < len(writes) <= 16, f"{len(writes)} IPReservation writes for 32 concurrent reservations"
    records = await capo.wait_reserved(*(pod_ip(p) for p in pods), within=20)
    assert {r["spec"]["trigger"] for r in records.values()} == {"delete"}
    await capo.wait_metric("capo_webhook_requests_total", 32, operation="delete", outcome="reserved")
