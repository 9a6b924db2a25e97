"""What must not be reserved, each checked against a positive control in the same cluster."""

from __future__ import annotations

from capo_testkit import Harness, eventually, pod_ip, stays


async def test_skipped_cases_reserve_nothing(capo: Harness) -> None:
    c = capo.cluster
    ns = await c.create_namespace("apps")
    plain_ns = await c.create_namespace("plain", enabled=False)

    # A terminal pod: Failed before the operator runs; its freed IP already went to another pod.
    terminal_ip = pod_ip(await c.create_pod(ns, "done-0"))
    if c.is_emulator:
        await c.control.kubelet_fail(ns, "done-0")
    else:
        await c.kubelet_evict(ns, "done-0")
    taker_ip = pod_ip(await c.create_pod(ns, "taker-0"))
    assert taker_ip == terminal_ip, "the terminal pod's IP is free and goes to the next pod"

    await capo.start_operators(1, reserve_time="60s")
    ips: dict[str, str] = {}
    ips["namespace not enabled"] = pod_ip(await c.create_pod(plain_ns, "redis-0"))
    ips["selector mismatch"] = pod_ip(await c.create_pod(ns, "web-0", stateful=False))
    ips["opted out"] = pod_ip(await c.create_pod(ns, "redis-1", annotations={"capo.io/reserve": "false"}))
    ips["host network"] = pod_ip(await c.create_pod(ns, "redis-2", host_network=True))
    ips["dry-run delete"] = pod_ip(await c.create_pod(ns, "redis-3"))
    ips["dry-run eviction"] = pod_ip(await c.create_pod(ns, "redis-4"))
    await c.create_pod(ns, "redis-5", schedulable=False)  # no IP

    await c.delete_pod(plain_ns, "redis-0")
    await c.delete_pod(ns, "web-0")
    await c.delete_pod(ns, "redis-1")
    await c.delete_pod(ns, "redis-2")
    dry = await c.delete_pod(ns, "redis-3", dry_run=True)
    assert dry.status == 200 and await c.get_pod(ns, "redis-3") is not None
    drain = await c.evict_pod(ns, "redis-4", dry_run=True)
    assert drain.status == 201 and await c.get_pod(ns, "redis-4") is not None
    await c.delete_pod(ns, "redis-5")
    await c.delete_pod(ns, "done-0")

    expected_skips = {
        "selector-mismatch",
        "opted-out",
        "host-network",
        "dry-run",
        "no-ip",
    }
    # The terminal pod's IP is also held by another pod now: either reason is right.
    terminal = ("terminal", "ip-held-by-other-pod")
    await eventually(
        lambda: capo.metrics(),
        lambda m: (
            all(m.value("capo_webhook_skips_total", reason=r) >= 1 for r in expected_skips)
            and any(m.value("capo_webhook_skips_total", reason=r) >= 1 for r in terminal)
        ),
        within=10,
        what=f"the webhook to count a skip for each of {sorted(expected_skips)} and one of {terminal}",
        diagnostics=capo.logs,
    )
    m = await capo.metrics()
    assert m.value("capo_webhook_skips_total", reason="dry-run") == 2, "one dry-run delete, one drain dry run"
    assert m.value("capo_webhook_skips_total", reason="namespace-not-enabled") == 0, (
        "the shipped namespaceSelector keeps the webhook from being called for unlabelled namespaces"
    )

    # Positive control: a selected pod deleted after all of the above is reserved, and alone.
    control_ip = pod_ip(await c.create_pod(ns, "redis-6"))
    await c.delete_pod(ns, "redis-6")
    await capo.wait_reserved(control_ip)
    await stays(
        c.reserved_ips,
        lambda r: r == {control_ip},
        duration=1.5,
        what=f"only the control IP {control_ip} reserved (not {ips} nor terminal {terminal_ip})",
        diagnostics=capo.logs,
    )
    assert set(await c.records()) == {control_ip}
    live = await c.get_pod(ns, "taker-0")
    assert live is not None and pod_ip(live) == taker_ip, "the live pod keeps its IP"
    not_reserved = await c.events(ns, reason="IPNotReserved")
    pods = {e["involvedObject"]["name"] for e in not_reserved}
    assert {"redis-2", "redis-5", "done-0"} <= pods, f"skip Events for host network, no IP, terminal: {pods}"
