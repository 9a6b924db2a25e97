"""Live configuration reload: new hold time, cap and selector apply without a restart."""

from __future__ import annotations

from capo_testkit import Harness, eventually, pod_ip


async def test_live_reload_and_bad_config_keeps_the_old_one(capo: Harness) -> None:
    c = capo.cluster
    (op,) = await capo.start_operators(1, reserve_time="60s", max_count=10)
    ns = await c.create_namespace("apps")
    ips = [pod_ip(await c.create_pod(ns, f"redis-{i}")) for i in range(3)]
    web_ip = pod_ip(await c.create_pod(ns, "web-0", stateful=False, labels={"tier": "web"}))

    # Hold time and cap.
    op.update_config(ipReserveTime="5s", ipReserveMaxCount=4)
    await capo.wait_metric("capo_config_reloads_total", 1, op=op, result="success")
    await capo.wait_metric("ip_reserve_count_max", 4, op=op)
    await c.delete_pod(ns, "redis-0")
    record = (await capo.wait_reserved(ips[0]))[ips[0]]
    assert record["spec"]["holdSeconds"] == 5, f"the reloaded ipReserveTime applies: {record['spec']}"

    # Selector: only tier=web pods now.
    op.update_config(labelSelector={"matchExpressions": [{"key": "tier", "operator": "Exists"}]})
    await capo.wait_metric("capo_config_reloads_total", 2, op=op, result="success")
    await c.delete_pod(ns, "redis-1")
    await c.delete_pod(ns, "web-0")
    await capo.wait_reserved(web_ip)
    m = await op.metrics()
    assert m.value("capo_webhook_skips_total", reason="selector-mismatch") >= 1
    assert ips[1] not in await c.reserved_ips(), "redis-1 no longer matches the reloaded selector"

    # A bad file is refused; the last good config stays in force.
    good = dict(op.config)
    op.write_config({**good, "ipReserveTime": "soon"})
    await capo.wait_metric("capo_config_reloads_total", 1, op=op, result="failure")
    m = await op.metrics()
    assert m.value("capo_config_last_reload_successful") == 0
    assert m.value("ip_reserve_count_max") == 4
    assert op.running, "a bad config does not stop the operator"
    rejected = await eventually(
        lambda: c.events(c.operator_namespace, reason="ConfigRejected"),
        lambda evs: len(evs) == 1,
        within=10,
        what="a ConfigRejected Event",
    )
    assert "ipReserveTime" in rejected[0]["message"], rejected[0]["message"]
    gone = pod_ip(await c.create_pod(ns, "web-1", stateful=False, labels={"tier": "web"}))
    await c.delete_pod(ns, "web-1")
    record = (await capo.wait_reserved(gone))[gone]
    assert record["spec"]["holdSeconds"] == 5, "the old (good) config still decides"
