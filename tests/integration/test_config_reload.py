"""Live configuration reload: new hold time, cap and selector apply without a restart."""

from __future__ import annotations

import yaml

from capo_testkit import Harness, eventually, pod_ip
from capo_testkit.kube import path_for


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


async def test_a_configmap_edit_applies_without_waiting_for_the_mounted_file(capo: Harness) -> None:
    """The operator watches the ConfigMap its file is mounted from: the kubelet refreshes a mounted
    file only within about a minute, the watch applies the edit at once."""
    c = capo.cluster
    op = capo.add_operator(args=["--config-map", "capo-config"], reserve_time="60s", max_count=10)
    key = op.config_path.name  # the ConfigMap key is the mounted file's name
    path = path_for("", "v1", "configmaps", c.operator_namespace)
    await c.kube.create(path, {"metadata": {"name": "capo-config"}, "data": {key: yaml.safe_dump(op.config)}})
    op.start()
    await op.wait_ready()
    await capo.wait_leader()

    edited = {**op.config, "ipReserveMaxCount": 3}
    await c.kube.patch(f"{path}/capo-config", {"data": {key: yaml.safe_dump(edited)}})
    await capo.wait_metric("ip_reserve_count_max", 3, op=op, within=5)
    assert yaml.safe_load(op.config_path.read_text())["ipReserveMaxCount"] == 10, "the file is unchanged"

    # A bad edit is refused there too; the good one stays.
    await c.kube.patch(f"{path}/capo-config", {"data": {key: "ipReserveMaxCount: many\n"}})
    await capo.wait_metric("capo_config_reloads_total", 1, op=op, result="failure", within=5)
    assert (await op.metrics()).value("ip_reserve_count_max") == 3
