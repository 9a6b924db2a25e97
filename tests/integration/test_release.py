"""Releasing: the cap, manual release, moved expiry, and the metrics that describe it."""

from __future__ import annotations

import asyncio
import time

import pytest

from capo_testkit import Harness, eventually, now_plus, pod_ip, stays


async def test_cap_releases_the_oldest(capo: Harness) -> None:
    """ipReserveMaxCount=N with N+k deletions: the k oldest go (reason cap), N stay."""
    c = capo.cluster
    n, k = 2, 2
    await capo.start_operators(1, reserve_time="60s", max_count=n)
    ns = await c.create_namespace("apps")
    ips = [pod_ip(await c.create_pod(ns, f"redis-{i}")) for i in range(n + k)]
    # One at a time, each reserved and its hold's clock running (the pod is gone) before the
    # next: the age order is the deletion order. (A pass that sees a pod still terminating stops
    # its record's clock and restarts it once the pod is gone, so without the wait a later
    # deletion's record could be older than an earlier one's.)
    for i, ip in enumerate(ips):
        await c.delete_pod(ns, f"redis-{i}")
        await capo.wait_reserved(ip)
        await eventually(
            c.records,
            lambda records, ip=ip: bool(((records.get(ip) or {}).get("spec") or {}).get("expiresAt")),
            within=15,
            what=f"the hold of {ip} to be running",
        )
        if i >= n:
            await capo.wait_released(ips[i - n])
    assert set(await c.records()) == set(ips[k:])
    assert await c.reserved_ips() == set(ips[k:])
    await capo.wait_metric("ip_reserve_count", n)
    m = await capo.metrics()
    assert m.value("ip_reserve_count_max") == n
    assert m.value("ip_reserve_evictions_count") == k
    assert m.value("capo_releases_total", reason="cap") == k
    assert m.value("capo_releases_total", reason="expired") == 0


async def test_deleting_a_record_releases_at_once(capo: Harness) -> None:
    c = capo.cluster
    await capo.start_operators(1, reserve_time="60s")
    ns = await c.create_namespace("apps")
    ip = pod_ip(await c.create_pod(ns, "redis-0"))
    await c.delete_pod(ns, "redis-0")
    await capo.wait_reserved(ip)

    await c.delete_record(ip)  # kubectl delete reservedip <ip>
    await capo.wait_released(ip, within=5)
    await capo.wait_metric("capo_releases_total", 1, reason="manual")
    assert pod_ip(await c.create_pod(ns, "redis-1")) == ip, "a manually released IP is allocatable at once"


async def clock_running(capo: Harness, ip: str) -> None:
    """The hold has begun (the pod is gone and the leader started the clock): expiresAt is set."""
    await eventually(
        capo.cluster.records,
        lambda r: ip in r and bool(r[ip]["spec"].get("expiresAt")),
        within=10,
        what=f"the clock of {ip} to run",
        diagnostics=capo.logs,
    )


async def test_editing_expires_at_moves_the_release(capo: Harness) -> None:
    c = capo.cluster
    await capo.start_operators(1, reserve_time="60s")
    ns = await c.create_namespace("apps")
    short_ip = pod_ip(await c.create_pod(ns, "redis-0"))
    # A 2 s hold from the pod's annotation, then extended by hand to a minute.
    long_ip = pod_ip(await c.create_pod(ns, "redis-1", annotations={"capo.io/reserve-time": "2s"}))
    await c.delete_pod(ns, "redis-1")
    record = (await capo.wait_reserved(long_ip))[long_ip]
    assert record["spec"]["holdSeconds"] == 2, record["spec"]
    await clock_running(capo, long_ip)
    await c.set_record_expiry(long_ip, now_plus(60))
    await c.delete_pod(ns, "redis-0")
    await capo.wait_reserved(short_ip)
    await clock_running(capo, short_ip)
    await c.set_record_expiry(short_ip, now_plus(2))

    await capo.wait_released(short_ip, within=10)  # well before its 60 s
    # By now the annotation's 2 s are long past: the extension holds.
    await stays(
        c.reserved_ips,
        lambda r: long_ip in r,
        duration=1,
        what=f"extended {long_ip} to stay reserved",
        diagnostics=capo.logs,
    )
    assert set(await c.records()) == {long_ip}
    await capo.wait_metric("capo_releases_total", 1, reason="expired")


async def test_metrics_match_what_happened(capo: Harness) -> None:
    c = capo.cluster
    (op,) = await capo.start_operators(1, reserve_time="3s", max_count=7)
    ns = await c.create_namespace("apps")
    ips = [pod_ip(await c.create_pod(ns, f"redis-{i}")) for i in range(4)]
    skipped_ip = pod_ip(await c.create_pod(ns, "web-0", stateful=False))
    del skipped_ip
    await c.delete_pod(ns, "redis-0")
    await c.evict_pod(ns, "redis-1")
    await c.kubelet_evict(ns, "redis-2")
    await c.delete_pod(ns, "web-0")
    await capo.wait_reserved(*ips[:3])

    m = await op.metrics()
    assert m.value("leader_election_master_status", name="capo") == 1
    assert m.value("ip_reserve_count_max") == 7
    by_trigger = {t: v for t, v in m.by_label("capo_reservations_total", "trigger").items() if v}
    assert by_trigger == {"delete": 1, "eviction": 1, "kubelet-eviction": 1}
    assert m.value("capo_webhook_skips_total", reason="selector-mismatch") >= 1
    assert m.value("capo_webhook_requests_total", operation="eviction", outcome="reserved") == 1
    assert m.value("capo_webhook_duration_seconds_count", operation="delete") >= 1
    await capo.wait_metric("ip_reserve_count", 3, op=op)
    info = {s.labels["ip"]: s.labels for s in (await op.metrics()).series("capo_reserved_ip_info")}
    assert set(info) == set(ips[:3]), info
    assert info[ips[1]]["pod"] == "redis-1" and info[ips[1]]["trigger"] == "eviction"

    await capo.wait_released(*ips[:3], within=15)
    await capo.wait_metric("ip_reserve_count", 0, op=op)
    m = await op.metrics()
    assert m.value("capo_releases_total", reason="expired") == 3
    assert m.value("capo_reservation_hold_seconds_count") == 3
    assert m.value("ip_reserve_evictions_count") == 0
    assert m.series("capo_reserved_ip_info") == []
    released = await eventually(
        lambda: c.events(None, reason="IPReleased"),
        lambda evs: (
            len({e["involvedObject"]["name"] for e in evs if e["involvedObject"]["kind"] == "ReservedIP"})
            == 3
        ),
        within=5,
        what="one IPReleased Event per ReservedIP",
    )
    assert released


async def test_a_cap_release_then_reuse_is_not_reported_as_a_loss(capo: Harness) -> None:
    """The safety net sees every deletion (a standby ~4 s later): an IP that was reserved, released by
    the cap and handed to a new pod meanwhile was never missed, so no replica may call it lost."""
    c = capo.cluster
    await capo.start_operators(2, reserve_time="60s", max_count=1)
    ns = await c.create_namespace("apps")
    first = pod_ip(await c.create_pod(ns, "redis-0"))
    second = pod_ip(await c.create_pod(ns, "redis-1"))
    await c.delete_pod(ns, "redis-0")
    await capo.wait_reserved(first)
    await c.delete_pod(ns, "redis-1")

    # The cap of 1 lets the older hold go: the first, unless a pass saw redis-0 still terminating
    # and its clock restarted when it was gone, after the second's began (DESIGN invariant 4).
    async def held() -> tuple[set[str], set[str]]:
        both = {first, second}
        return both & await c.reserved_ips(), both & set(await c.records())

    kept, _ = await eventually(
        held, lambda s: len(s[0]) == 1 and s[0] == s[1], within=15, what="one of the two IPs held"
    )
    released = ({first, second} - kept).pop()
    name = "redis-0" if released == first else "redis-1"
    assert pod_ip(await c.create_pod(ns, name)) == released, "the released IP is allocatable again"

    async def lost() -> tuple[float, int]:
        return await capo.total("capo_reservations_lost_total"), len(await c.events(ns, reason="IPLost"))

    # Longer than the standby's safety-net delay: both replicas have handled both deletions.
    await stays(lost, lambda v: v == (0, 0), duration=6, what="no IPLost Event and no lost reservation")


@pytest.mark.emulator_only
@pytest.mark.parametrize("cluster_options", [{"kubelet_delay": 8.0}], ids=["slow-kubelet"])
async def test_a_pod_slow_to_terminate_keeps_its_ip_until_gone_plus_the_hold(capo: Harness) -> None:
    """The clock starts when the pod is really gone: with a 2 s hold and a pod that stays
    Terminating for 8 s, the IP must stay reserved for the whole termination."""
    c = capo.cluster
    await capo.start_operators(1, reserve_time="2s")
    ns = await c.create_namespace("apps")
    ip = pod_ip(await c.create_pod(ns, "redis-0"))
    await c.delete_pod(ns, "redis-0", wait=False)  # graceful: the kubelet finishes it 8 s later
    await capo.wait_reserved(ip)

    await stays(
        c.reserved_ips,
        lambda r: ip in r,
        duration=5,
        what=f"{ip} to stay reserved while its pod terminates",
        diagnostics=capo.logs,
    )
    assert await c.get_pod(ns, "redis-0") is not None, "the pod is still terminating"
    await c.wait_gone(ns, "redis-0", within=15)
    gone_at = time.monotonic()
    await capo.wait_released(ip, within=15)
    # Records keep whole seconds, so the 2 s hold may end up to 1 s after the pass that saw it gone.
    assert time.monotonic() - gone_at >= 1.0, "the hold ran from the pod's disappearance"


@pytest.mark.emulator_only
async def test_a_quiet_leader_makes_no_api_call_and_repairs_a_hand_edit_promptly(capo: Harness) -> None:
    """Nothing due: the leader's passes (every 250 ms here) read and write nothing, although it
    holds reservations; an entry removed by hand from the IPReservation is back within moments."""
    c = capo.cluster
    await capo.start_operators(1, reserve_time="1h")
    ns = await c.create_namespace("apps")
    ips = [pod_ip(await c.create_pod(ns, f"redis-{i}")) for i in range(3)]
    for i in range(3):
        await c.delete_pod(ns, f"redis-{i}")
    await capo.wait_reserved(*ips)
    await asyncio.sleep(3)  # the clocks started, the ledger saved: settled

    # A fault that answers nothing differently: it only counts the requests its path matches
    # (every non-watch request of the leader's release work: Calico, records, ledger, owners).
    work = r"^/(apis/(crd\.projectcalico\.org|capo\.io|apps)/|api/v1/namespaces/[^/]+/configmaps)(?!.*watch=)"
    counter = c.emulator.cluster.faults.add({"path": work})
    await asyncio.sleep(3)  # 12 release periods
    assert counter.hits == 0, "a pass with nothing due made API calls"

    group, version = c.calico_group
    path = f"/apis/{group}/{version}/ipreservations/{c.reservation_name}"
    obj = await c.kube.get_or_none(path)
    assert obj is not None
    obj["spec"]["reservedCIDRs"] = [e for e in obj["spec"]["reservedCIDRs"] if not e.startswith(ips[0] + "/")]
    await c.kube.replace(path, obj)  # `kubectl edit`: one reservation removed
    await eventually(c.reserved_ips, lambda r: ips[0] in r, within=5, what=f"{ips[0]} re-added")
    assert counter.hits > 0  # the repair read and wrote: the counter sees the leader's calls
