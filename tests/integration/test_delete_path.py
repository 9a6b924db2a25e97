"""The delete path: one write before the answer, the record after it, and nothing lost in between."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from capo_testkit import Harness, eventually, pod_ip

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
