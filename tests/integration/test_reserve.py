"""Reserving: the IP of a deleted or evicted pod is not handed to the next pod until released."""

from __future__ import annotations

from typing import Any

import pytest

from capo_testkit import Harness, eventually, pod_ip, pod_ips

STS = "statefulset.kubernetes.io/pod-name"


async def test_without_operator_the_ip_goes_to_the_next_pod(capo: Harness) -> None:
    """Negative control: the property the operator exists for is not true by itself."""
    c = capo.cluster
    ns = await c.create_namespace("apps")
    ip = pod_ip(await c.create_pod(ns, "redis-0"))
    resp = await c.delete_pod(ns, "redis-0")
    assert resp.status == 200, "deletion must succeed with nothing behind the webhook (failurePolicy Ignore)"
    new = await c.create_pod(ns, "redis-1")
    assert pod_ip(new) == ip, f"without capo the freed IP {ip} goes to the next pod, got {pod_ip(new)}"
    assert await c.reserved_ips() == set() and await c.records() == {}


async def test_delete_reserves_until_expiry_then_ip_is_reusable(capo: Harness) -> None:
    c = capo.cluster
    await capo.start_operators(1, reserve_time="4s")
    ns = await c.create_namespace("apps")
    ip = pod_ip(await c.create_pod(ns, "redis-0"))

    resp = await c.delete_pod(ns, "redis-0")
    assert resp.status == 200
    record = (await capo.wait_reserved(ip))[ip]
    spec = record["spec"]
    assert spec["trigger"] == "delete", spec
    assert spec["pod"]["namespace"] == ns and spec["pod"]["name"] == "redis-0", spec
    assert spec["holdSeconds"] == 4, spec
    assert record["metadata"]["name"] == ip

    # While held, new pods get other IPs.
    other = [pod_ip(await c.create_pod(ns, f"redis-{i}")) for i in (1, 2)]
    assert ip not in other, f"reserved IP {ip} was handed out again: {other}"

    await capo.wait_released(ip, within=15)
    await capo.wait_metric("capo_releases_total", 1, reason="expired")
    again = pod_ip(await c.create_pod(ns, "redis-3"))
    assert again == ip, f"after release {ip} is allocatable again (lowest free), the next pod got {again}"


async def test_eviction_reserves(capo: Harness) -> None:
    c = capo.cluster
    await capo.start_operators(1, reserve_time="30s")
    ns = await c.create_namespace("apps")
    ip = pod_ip(await c.create_pod(ns, "kafka-0", labels={"brokerId": "0"}, stateful=False))

    resp = await c.evict_pod(ns, "kafka-0")
    assert resp.status == 201, resp.body
    record = (await capo.wait_reserved(ip))[ip]
    assert record["spec"]["trigger"] == "eviction", record["spec"]
    assert pod_ip(await c.create_pod(ns, "kafka-1", labels={"brokerId": "1"}, stateful=False)) != ip
    await capo.wait_metric("capo_reservations_total", 1, trigger="eviction")


async def test_kubelet_eviction_is_reserved_by_the_safety_net(capo: Harness) -> None:
    """Node-pressure eviction: the pod turns Failed/Evicted, no API call reaches the webhook."""
    c = capo.cluster
    await capo.start_operators(1, reserve_time="30s")
    ns = await c.create_namespace("apps")
    ip = pod_ip(await c.create_pod(ns, "redis-0"))

    await c.kubelet_evict(ns, "redis-0")
    record = (await capo.wait_reserved(ip))[ip]
    assert record["spec"]["trigger"] == "kubelet-eviction", record["spec"]
    assert pod_ip(await c.create_pod(ns, "redis-1")) != ip
    # Deleting the evicted pod later is no second reservation.
    await c.delete_pod(ns, "redis-0")
    assert set(await c.records()) == {ip}
    await capo.wait_metric("capo_reservations_total", 1)


@pytest.mark.emulator_only
@pytest.mark.parametrize(
    "cluster_options",
    [
        {"calico": "crd", "calico_variant": "latest"},
        {"calico": "crd", "calico_variant": "v3.32.1"},
        {"calico": "crd", "calico_variant": "v3.31"},
        {"calico": "v3"},
    ],
    ids=["crd-latest", "crd-v3.32.1", "crd-v3.31", "projectcalico.org-v3"],
)
async def test_basic_reserve_on_each_calico_flavour(capo: Harness, cluster_options: dict[str, Any]) -> None:
    c = capo.cluster
    expected_group = "projectcalico.org" if cluster_options["calico"] == "v3" else "crd.projectcalico.org"
    assert c.calico_group[0] == expected_group
    await capo.start_operators(1, reserve_time="30s")
    ns = await c.create_namespace("apps")
    ip = pod_ip(await c.create_pod(ns, "redis-0"))
    await c.delete_pod(ns, "redis-0")
    await capo.wait_reserved(ip)
    reservation = await c.reservation()
    assert reservation is not None and reservation["apiVersion"].startswith(expected_group), reservation
    assert pod_ip(await c.create_pod(ns, "redis-1")) != ip


@pytest.mark.parametrize("cluster_options", [{"dual_stack": True}], ids=["dual-stack"])
async def test_dual_stack_pod_reserves_both_ips(capo: Harness) -> None:
    c = capo.cluster
    await capo.start_operators(1, reserve_time="30s")
    ns = await c.create_namespace("apps")
    ips = pod_ips(await c.create_pod(ns, "redis-0"))
    assert len(ips) == 2 and ":" in ips[1], f"a dual-stack pod has an IPv4 and an IPv6 address: {ips}"
    await c.delete_pod(ns, "redis-0")
    records = await capo.wait_reserved(*ips)
    expected = ips[1].replace(":", "-")  # the documented name: ':' -> '-', an edge '-' padded with 0
    expected = ("0" + expected if expected.startswith("-") else expected) + (
        "0" if expected.endswith("-") else ""
    )
    assert records[ips[1]]["metadata"]["name"] == expected, records[ips[1]]["metadata"]
    new = pod_ips(await c.create_pod(ns, "redis-1"))
    assert not set(new) & set(ips), f"new pod {new} got a reserved IP of {ips}"


async def test_delete_collection_reserves_every_pod(capo: Harness) -> None:
    c = capo.cluster
    await capo.start_operators(1, reserve_time="30s")
    ns = await c.create_namespace("apps")
    ips = [pod_ip(await c.create_pod(ns, f"redis-{i}", labels={"app": "redis"})) for i in range(3)]
    resp = await c.delete_collection(ns, "app=redis")
    assert resp.status == 200
    await capo.wait_reserved(*ips)
    assert set(await c.records()) == set(ips)
    await capo.wait_metric("capo_reservations_total", 3, trigger="delete")


async def test_repeated_admissions_cost_one_reservation(capo: Harness) -> None:
    """The graceful delete and the kubelet's final delete both call the webhook: one reservation."""
    c = capo.cluster
    await capo.start_operators(1, reserve_time="30s")
    ns = await c.create_namespace("apps")
    ip = pod_ip(await c.create_pod(ns, "redis-0"))
    await c.delete_pod(ns, "redis-0")
    await capo.wait_reserved(ip)
    await eventually(
        lambda: capo.total("capo_webhook_requests_total", operation="delete"),
        lambda v: v >= 2,
        within=10,
        what="at least two DELETE admissions (graceful and final)",
        diagnostics=capo.logs,
    )
    m = await capo.metrics()
    assert m.value("capo_reservations_total") == 1, m.by_label("capo_reservations_total", "trigger")
    assert m.value("capo_webhook_requests_total", operation="delete", outcome="reserved") == 1
    assert m.value("capo_calico_write_errors_total") == 0
    if c.is_emulator:
        calls = [e for e in await c.control.admission_log() if "reserve-on-delete" in str(e)]
        assert len(calls) >= 2, calls
    assert len(await c.events(ns, reason="IPReserved")) == 1
