"""The operator's pod informer across a watch gap the API server cannot replay (410 Gone): what
changed meanwhile is found by listing again and diffing, and handled like the watch events."""

from __future__ import annotations

import asyncio

import pytest

from capo_testkit import Harness, pod_ip

# The operator's pod watches (its list has no `watch` parameter; the test's own reads are GETs).
POD_WATCHES = r"^/api/v1/pods\?.*watch=true"


@pytest.mark.emulator_only
@pytest.mark.timeout(150)
async def test_deletions_in_a_watch_gap_are_reserved_and_leave_no_ghost(capo: Harness) -> None:
    c = capo.cluster
    await capo.start_operators(1, reserve_time="60s")
    ns = await c.create_namespace("apps")
    reused_ip = pod_ip(await c.create_pod(ns, "redis-0"))
    missed_ip = pod_ip(await c.create_pod(ns, "redis-1"))

    # The gap: every pod watch the operator opens fails, and its webhook cannot be reached
    # (failurePolicy Ignore lets the deletions through unreserved).
    watch_down = await c.control.add_fault(path=POD_WATCHES, method="GET", status=500)
    webhook_down = await c.control.add_fault("webhook", status=500)
    await c.control.add_fault(path=r"^/api/v1/pods(\?|$)", drop_watch=True, times=1)
    for name in ("redis-0", "redis-1"):
        assert (await c.delete_pod(ns, name)).status == 200
        await c.wait_gone(ns, name)
    assert pod_ip(await c.create_pod(ns, "web-0")) == reused_ip, "IPAM handed the freed IP out again"
    await c.control.remove_fault(webhook_down)
    # The watch comes back, but the server no longer has the history: 410, list, diff.
    await c.control.add_fault(path=POD_WATCHES, method="GET", status=410, times=1)
    await c.control.remove_fault(watch_down)

    record = (await capo.wait_reserved(missed_ip, within=45))[missed_ip]
    assert (record["spec"]["trigger"], record["spec"]["pod"]["name"]) == ("safety-net", "redis-1")
    await capo.wait_metric("capo_informer_relists_total", 1, resource="pods", within=10)
    await capo.wait_metric("capo_reservations_lost_total", 1, within=10)  # redis-0's IP is web-0's now
    assert reused_ip not in await c.reserved_ips()

    # The vanished redis-0 is no ghost holding its old IP: deleting web-0 reserves it.
    await c.delete_pod(ns, "web-0")
    record = (await capo.wait_reserved(reused_ip, within=15))[reused_ip]
    assert (record["spec"]["trigger"], record["spec"]["pod"]["name"]) == ("delete", "web-0")


@pytest.mark.emulator_only
async def test_kopf_opens_no_watch_only_the_informers_do(capo: Harness) -> None:
    """The three caches, and the leader's watch on its one IPReservation (by name)."""
    c = capo.cluster
    [op] = await capo.start_operators(1)
    await asyncio.sleep(1)  # Kopf's tasks have all started by now
    paths = sorted(w.path.split("?")[0] for w in c.emulator.cluster.http.watchers)
    assert paths == [
        "/api/v1/namespaces",
        "/api/v1/pods",
        "/apis/capo.io/v1/reservedips",
        "/apis/crd.projectcalico.org/v1/ipreservations",
    ], paths
    [calico] = [w.path for w in c.emulator.cluster.http.watchers if "ipreservations" in w.path]
    assert "fieldSelector=metadata.name%3Dcapo-reserved-ips" in calico or (
        "fieldSelector=metadata.name=capo-reserved-ips" in calico
    ), calico
    assert "Not enough permissions" not in op.log_text()
