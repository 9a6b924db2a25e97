"""Replicas, leader failover, an unreachable webhook, a fully stopped operator, strict mode."""

from __future__ import annotations

import asyncio
import time

import pytest

from capo_testkit import Harness, eventually, pod_ip, stays


@pytest.mark.timeout(120)
async def test_three_replicas_one_leader_failover_without_double_or_lost_release(capo: Harness) -> None:
    c = capo.cluster
    ops = await capo.start_operators(3, reserve_time="8s")
    leader = await capo.wait_leader()
    statuses = {op.identity: (await op.metrics()).value("leader_election_master_status") for op in ops}
    assert sorted(statuses.values()) == [0, 0, 1], f"exactly one leader: {statuses}"
    assert await c.lease_holder() == leader.identity

    ns = await c.create_namespace("apps")
    ips = [pod_ip(await c.create_pod(ns, f"redis-{i}")) for i in range(4)]
    await c.delete_pod(ns, "redis-0")
    await c.delete_pod(ns, "redis-1")
    await capo.wait_reserved(ips[0], ips[1])
    before_kill = await leader.metrics()
    assert before_kill.value("capo_releases_total") == 0, "nothing has expired yet"

    await leader.kill()  # kill -9: the Lease is not released, it has to expire
    killed_at = time.monotonic()
    # Reservations keep working on the survivors (the "Service" skips the dead replica).
    await c.delete_pod(ns, "redis-2")
    await capo.wait_reserved(ips[2])
    new_leader = await capo.wait_leader(within=20)
    took = time.monotonic() - killed_at
    assert new_leader is not leader and took < 20, f"failover took {took:.1f}s"

    # While held, nothing is handed out again; then each IP is released exactly once, by the leader.
    fresh = pod_ip(await c.create_pod(ns, "redis-4"))
    assert fresh not in ips[:3]
    await capo.wait_released(*ips[:3], within=30)
    survivors = [op for op in ops if op.running]
    releases = {op.identity: (await op.metrics()).value("capo_releases_total") for op in survivors}
    assert releases[new_leader.identity] == 3 and sum(releases.values()) == 3, (
        f"only the leader releases, each IP once: {releases}\n{capo.logs()}"
    )

    async def released_events() -> dict[str, int]:
        # Events are posted in the background: poll until each record has one.
        counts: dict[str, int] = {}
        for e in await c.events(None, reason="IPReleased"):
            if e["involvedObject"]["kind"] == "ReservedIP":
                counts[e["involvedObject"]["name"]] = counts.get(e["involvedObject"]["name"], 0) + 1
        return counts

    per_record = await eventually(
        released_events, lambda counts: set(counts) == set(ips[:3]), within=10, what="IPReleased Events"
    )
    assert per_record == {ip: 1 for ip in ips[:3]}, f"one release Event per IP: {per_record}"


async def test_graceful_stop_hands_the_lease_over_at_once(capo: Harness) -> None:
    """SIGTERM (a rolling update): the leader releases the Lease before it exits, so a standby
    leads within a retry period instead of waiting for the lease to expire."""
    c = capo.cluster
    await capo.start_operators(2)
    leader = await capo.wait_leader()
    stopped_at = time.monotonic()
    assert await leader.stop(within=5) == 0, f"graceful exit with status 0\n{leader.log_tail()}"
    exit_took = time.monotonic() - stopped_at
    new_leader = await capo.wait_leader(within=5)
    took = time.monotonic() - stopped_at
    assert new_leader is not leader
    assert exit_took < 2 and took < 2, f"exit took {exit_took:.1f}s, takeover {took:.1f}s (lease is 3s)"
    assert await c.lease_holder() == new_leader.identity


async def test_webhook_unreachable_safety_net_reserves(capo: Harness) -> None:
    c = capo.cluster
    await capo.start_operators(1, reserve_time="60s")
    ns = await c.create_namespace("apps")
    ip = pod_ip(await c.create_pod(ns, "redis-0"))
    capo.proxy.block()  # the operator runs, its webhook cannot be reached
    started = time.monotonic()
    resp = await c.delete_pod(ns, "redis-0")
    assert resp.status == 200, "failurePolicy Ignore: the deletion goes on"
    record = (await capo.wait_reserved(ip, within=10))[ip]
    assert time.monotonic() - started < 10
    assert record["spec"]["trigger"] == "safety-net", record["spec"]
    await capo.wait_metric("capo_safety_net_catches_total", 1)
    assert (await capo.metrics()).value("capo_webhook_requests_total") == 0, "the webhook was never reached"
    assert pod_ip(await c.create_pod(ns, "redis-1")) != ip


@pytest.mark.timeout(120)
async def test_operator_fully_down_recovers_from_ledger(capo: Harness) -> None:
    """Deletions while every replica is down: found on restart; an IP reused meanwhile is reported."""
    c = capo.cluster
    ops = await capo.start_operators(2, reserve_time="60s")
    ns = await c.create_namespace("apps")
    reused_ip = pod_ip(await c.create_pod(ns, "redis-0"))
    missed_ip = pod_ip(await c.create_pod(ns, "redis-1"))
    alive_ip = pod_ip(await c.create_pod(ns, "redis-2"))
    await eventually(
        c.ledger,
        lambda text: all(ip in text for ip in (reused_ip, missed_ip, alive_ip)),
        within=15,
        what="the ledger ConfigMap to list the selected pods' IPs",
        diagnostics=capo.logs,
    )
    await capo.stop_all()
    assert not any(op.running for op in ops)

    for name in ("redis-0", "redis-1"):
        resp = await c.delete_pod(ns, name)
        assert resp.status == 200, "nothing answers the webhook: failurePolicy Ignore lets deletions through"
    taker = pod_ip(await c.create_pod(ns, "other-0", stateful=False))
    assert taker == reused_ip, "the lowest freed IP went to a new pod while capo was down"

    for op in ops:
        op.start()
    await asyncio.gather(*(op.wait_ready() for op in ops))
    record = (await capo.wait_reserved(missed_ip, within=20))[missed_ip]
    assert record["spec"]["pod"]["name"] == "redis-1", record["spec"]
    await capo.wait_metric("capo_reservations_lost_total", 1, within=10)
    lost = await eventually(
        lambda: c.events(ns, reason="IPLost"),
        lambda evs: len(evs) >= 1,
        within=10,
        what="an IPLost Event for the reused IP",
    )
    assert reused_ip in lost[0]["message"] and lost[0]["involvedObject"]["name"] == "redis-0", lost[0]
    await stays(
        c.reserved_ips,
        lambda r: r == {missed_ip},
        duration=1,
        what=f"only {missed_ip} reserved (never {reused_ip}, held by a live pod, nor {alive_ip})",
        diagnostics=capo.logs,
    )
    assert pod_ip(await c.create_pod(ns, "redis-3")) not in (missed_ip, reused_ip, alive_ip)


@pytest.mark.emulator_only
@pytest.mark.parametrize("strict", [False, True], ids=["default", "strict"])
async def test_calico_write_failure_default_allows_strict_denies(capo: Harness, strict: bool) -> None:
    c = capo.cluster
    await capo.start_operators(1, reserve_time="60s", extra={"strictMode": strict, "webhookDeadline": "1s"})
    ns = await c.create_namespace("apps")
    ip = pod_ip(await c.create_pod(ns, "redis-0"))
    fault = await c.control.add_fault("api", method="PATCH", path="ipreservations", status=500)
    try:
        resp = await c.kube.call("DELETE", f"/api/v1/namespaces/{ns}/pods/redis-0", ok=(400, 403, 500, 503))
    finally:
        await c.control.remove_fault(fault)
    if strict:
        assert resp.status >= 400, f"strict mode refuses the deletion: {resp.status} {resp.body}"
        pod = await c.get_pod(ns, "redis-0")
        assert pod is not None and not pod["metadata"].get("deletionTimestamp"), "the pod is untouched"
        await capo.wait_metric("capo_webhook_requests_total", 1, operation="delete", outcome="denied")
        await c.delete_pod(ns, "redis-0")  # with Calico healthy again it goes through
    else:
        assert resp.status == 200, resp.body
        assert any("could not reserve" in w for w in resp.warnings), f"a warning explains: {resp.warnings}"
        await c.wait_gone(ns, "redis-0")
    await capo.wait_reserved(ip, within=15)  # the background retry or the second deletion
    assert (await capo.metrics()).value("capo_calico_write_errors_total") >= 1


# Log lines that mark the phases of a start, in order; a stop request can arrive during any of them.
_START_PHASES = (
    "API credentials",  # credentials loaded, nothing else yet
    "writing reservations to",  # Calico detected, permission check under way
    "leadership",  # loops running, Kopf starting its watches
    "caches synced",  # fully started
)
_UNCLEAN = ("ERROR", "Traceback", "Task was destroyed", "was never retrieved", "didn't stop")


@pytest.mark.timeout(240)
async def test_sigterm_at_any_moment_of_start_up_exits_cleanly(capo: Harness) -> None:
    """The process exits 0 with no error or asyncio complaint in its log, whichever phase the
    signal interrupts (a slow pod listing widens the window in which Kopf's watches start)."""
    if capo.cluster.is_emulator:
        await capo.cluster.control.add_fault(path=r"^/api/v1/pods(\?|$)", method="GET", latency=1.0)
    op = capo.add_operator()
    for phase in _START_PHASES:
        logged_before = len(op.log_text())
        op.start()

        async def new_log(since: int = logged_before) -> str:
            return op.log_text()[since:]

        await eventually(
            new_log,
            lambda text, phase=phase: phase in text or not op.running,
            within=60,
            what=f"the start to reach '{phase}'",
        )
        code = await op.stop(within=20)
        text = op.log_text()[logged_before:]
        unclean = [line for line in text.splitlines() if any(mark in line for mark in _UNCLEAN)]
        assert code == 0 and not unclean, f"stopped during '{phase}': exit {code}\n" + "\n".join(unclean)


@pytest.mark.timeout(120)
async def test_a_record_deleted_during_a_failover_is_released_not_adopted(capo: Harness) -> None:
    """No replica leads while the record is deleted, so none sees the DELETED event: the record's
    finalizer keeps the request until the next leader has taken the IP out of Calico."""
    c = capo.cluster
    await capo.start_operators(2, reserve_time="60s")
    leader = await capo.wait_leader()
    ns = await c.create_namespace("apps")
    ip = pod_ip(await c.create_pod(ns, "redis-0"))
    await c.delete_pod(ns, "redis-0")
    await capo.wait_reserved(ip)

    await leader.kill()  # the Lease stays until it expires: nobody leads meanwhile
    await c.delete_record(ip)  # kubectl delete reservedip
    record = (await c.records())[ip]
    assert record["metadata"].get("deletionTimestamp"), "the finalizer keeps the deleted record"
    assert ip in await c.reserved_ips(), "still held until a leader releases it"

    new_leader = await capo.wait_leader(within=30)
    await capo.wait_released(ip, within=15)
    await capo.wait_metric("capo_releases_total", 1, reason="manual", op=new_leader)
    await stays(
        c.records,
        lambda r: ip not in r,
        duration=3,
        what="no re-adoption as recovered",
        diagnostics=capo.logs,
    )
    assert (await new_leader.metrics()).value("capo_reservations_total", trigger="recovered") == 0
    assert pod_ip(await c.create_pod(ns, "redis-1")) == ip, "the released IP is allocatable again"
