"""Sticky IPs through the real operator and the emulator: a recreated pod gets its held IP back
(Calico's ipAddrs annotation, set by the mutating webhook), no other pod ever gets it, and each
release policy ends the hold when it should."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from capo_testkit import Harness, eventually, pod_ip, pod_ips
from capo_testkit.kube import path_for

pytestmark = pytest.mark.emulator_only  # the emulator's allocator honours ipAddrs as Calico does

STICKY = {"capo.io/sticky": "true"}


async def statefulset(capo: Harness, ns: str, name: str, replicas: int) -> dict[str, Any]:
    """A StatefulSet object (the emulator runs no controller: the tests create its pods)."""
    body = {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "replicas": replicas,
            "serviceName": name,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "app", "image": "registry.k8s.io/pause:3.10"}]},
            },
        },
    }
    return await capo.cluster.kube.create(path_for("apps", "v1", "statefulsets", ns), body)


def owner_of(obj: dict[str, Any], kind: str = "StatefulSet") -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": kind,
        "name": obj["metadata"]["name"],
        "uid": obj["metadata"]["uid"],
        "controller": True,
    }


async def sticky_pod(
    capo: Harness, ns: str, name: str, owner: dict[str, Any], policy: str | None = None, **kw: Any
) -> dict[str, Any]:
    annotations = dict(STICKY)
    if policy:
        annotations["capo.io/release-policy"] = policy
    return await capo.cluster.create_pod(ns, name, annotations=annotations, owner=owner, **kw)


async def start(capo: Harness, reserve_time: str = "60s", **extra: Any) -> None:
    await capo.install_sticky_webhook()
    config = {"sticky": {"claimTimeout": "10s", **extra.pop("sticky", {})}, **extra}
    await capo.start_operators(1, reserve_time=reserve_time, extra=config)


async def test_statefulset_pod_gets_its_own_ip_back_and_nobody_else_does(capo: Harness) -> None:
    c = capo.cluster
    await start(capo)
    ns = await c.create_namespace("db")
    owner = owner_of(await statefulset(capo, ns, "redis", 3))
    first = await sticky_pod(capo, ns, "redis-0", owner)
    ip, node = pod_ip(first), first["spec"]["nodeName"]
    await c.delete_pod(ns, "redis-0")
    record = (await capo.wait_reserved(ip))[ip]
    assert record["spec"]["sticky"] is True and record["spec"]["releasePolicy"] == "ttl", record["spec"]

    # While held, other pods (sticky ones of other identities too) get other IPs.
    others = [pod_ip(await c.create_pod(ns, f"web-{i}", stateful=False)) for i in range(2)]
    others.append(pod_ip(await sticky_pod(capo, ns, "redis-1", owner)))
    assert ip not in others, f"held IP {ip} handed to another pod: {others}"

    back = await sticky_pod(capo, ns, "redis-0", owner)
    assert pod_ip(back) == ip, f"redis-0 came back with {pod_ip(back)}, not its own {ip}"
    annotations = back["metadata"]["annotations"]
    assert json.loads(annotations["cni.projectcalico.org/ipAddrs"]) == [ip]
    assert annotations["capo.io/sticky-claim"]
    terms = back["spec"]["affinity"]["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert terms[0]["weight"] == 100
    assert terms[0]["preference"]["matchExpressions"][0]["values"] == [node]

    # Hand-over: the hold ends (reclaimed), its Calico entry is gone; the pod keeps the IP.
    await capo.wait_released(ip, within=15)
    await capo.wait_metric("capo_releases_total", 1, reason="reclaimed")
    await capo.wait_metric("capo_sticky_claims_total", 1, outcome="claimed")
    await capo.wait_metric("capo_sticky_claims_total", 1, outcome="reclaimed")
    assert pod_ip(await c.get_pod(ns, "redis-0") or {}) == ip

    # Deleted again: held again, and given back again.
    await c.delete_pod(ns, "redis-0")
    await capo.wait_reserved(ip)
    assert pod_ip(await sticky_pod(capo, ns, "redis-0", owner)) == ip


@pytest.mark.parametrize("cluster_options", [{"dual_stack": True}], ids=["dual-stack"])
async def test_dual_stack_pod_gets_both_addresses_back(capo: Harness) -> None:
    c = capo.cluster
    await start(capo, sticky={"nodeAffinityWeight": 0})
    ns = await c.create_namespace("db")
    owner = owner_of(await statefulset(capo, ns, "zk", 3))
    ips = pod_ips(await sticky_pod(capo, ns, "zk-0", owner))
    assert len(ips) == 2, ips
    await c.delete_pod(ns, "zk-0")
    await capo.wait_reserved(*ips)
    assert not set(ips) & set(pod_ips(await c.create_pod(ns, "other-0"))), "a held IP was handed out"
    back = await sticky_pod(capo, ns, "zk-0", owner)
    assert pod_ips(back) == ips
    assert "affinity" not in back["spec"], "nodeAffinityWeight 0 adds no affinity"
    await capo.wait_released(*ips, within=15)


async def test_concurrent_claims_on_one_pool_hold_give_it_to_one_pod(capo: Harness) -> None:
    c = capo.cluster
    await start(capo)
    ns = await c.create_namespace("app")
    rs = {
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "name": "web-6f9c7",
        "uid": "rs-uid",
        "controller": True,
    }
    ip = pod_ip(await c.create_pod(ns, "web-6f9c7-aaaaa", annotations=STICKY, owner=rs, stateful=False))
    await c.delete_pod(ns, "web-6f9c7-aaaaa")
    await capo.wait_reserved(ip)

    names = [f"web-6f9c7-n{i}" for i in range(4)]
    pods = await asyncio.gather(
        *(c.create_pod(ns, n, annotations=STICKY, owner=rs, stateful=False) for n in names)
    )
    got = [pod_ip(p) for p in pods]
    assert got.count(ip) == 1, f"the held IP {ip} must go to exactly one pod: {got}"
    assert len(set(got)) == len(got)
    await capo.wait_released(ip, within=15)


@pytest.mark.parametrize("outage", ["refused", "timeout"])
async def test_webhook_outage_lets_pods_start_and_keeps_the_hold(capo: Harness, outage: str) -> None:
    c = capo.cluster
    await start(capo)
    ns = await c.create_namespace("db")
    owner = owner_of(await statefulset(capo, ns, "redis", 1))
    ip = pod_ip(await sticky_pod(capo, ns, "redis-0", owner))
    await c.delete_pod(ns, "redis-0")
    await capo.wait_reserved(ip)

    # The sticky webhook cannot answer (connection refused, or slower than its 3 s timeout):
    # failurePolicy Ignore lets the pod in unpatched.
    fault = await c.control.add_fault(
        "webhook", webhook="sticky-ip", **({"status": 0} if outage == "refused" else {"latency": 4.0})
    )
    try:
        back = await sticky_pod(capo, ns, "redis-0", owner)
    finally:
        await c.control.remove_fault(fault)
    assert pod_ip(back) != ip, "without the webhook the pod gets a fresh IP"
    assert "capo.io/sticky-claim" not in (back["metadata"].get("annotations") or {})
    await asyncio.sleep(1.5)
    assert ip in await capo.cluster.reserved_ips(), "the hold stays for a later incarnation"
    # The next incarnation, with the webhook back, gets the latest incarnation's IP (what its peers
    # last saw); the older hold is left to its TTL.
    await c.delete_pod(ns, "redis-0")
    assert pod_ip(await sticky_pod(capo, ns, "redis-0", owner)) == pod_ip(back)
    assert ip in await capo.cluster.reserved_ips()


async def test_release_policies(capo: Harness) -> None:
    """ttl expires; immutable outlives the TTL and ends when scaled below the ordinal; never
    outlives TTL and owner deletion and ends only when its record is deleted."""
    c = capo.cluster
    await start(capo, reserve_time="3s")
    ns = await c.create_namespace("db")
    sts = await statefulset(capo, ns, "redis", 3)
    owner = owner_of(sts)
    ips = {}
    for ordinal, policy in ((0, "ttl"), (1, "never"), (2, "immutable")):
        ips[policy] = pod_ip(await sticky_pod(capo, ns, f"redis-{ordinal}", owner, policy))
    for ordinal in range(3):
        await c.delete_pod(ns, f"redis-{ordinal}")
    records = await capo.wait_reserved(*ips.values())
    assert {r["spec"]["releasePolicy"] for r in records.values()} == {"ttl", "never", "immutable"}

    await capo.wait_released(ips["ttl"], within=15)
    await asyncio.sleep(2)  # well past the 3 s TTL
    assert {ips["never"], ips["immutable"]} <= await c.reserved_ips()

    await c.kube.patch(path_for("apps", "v1", "statefulsets", ns, "redis"), {"spec": {"replicas": 2}})
    await capo.wait_released(ips["immutable"], within=15)
    await capo.wait_metric("capo_releases_total", 1, reason="scaled-down")
    assert ips["never"] in await c.reserved_ips()

    await c.delete_record(ips["never"])
    await capo.wait_released(ips["never"], within=15)


async def test_invalid_release_policy_falls_back_to_ttl(capo: Harness) -> None:
    c = capo.cluster
    await start(capo, reserve_time="60s")
    ns = await c.create_namespace("db")
    owner = owner_of(await statefulset(capo, ns, "redis", 1))
    ip = pod_ip(await sticky_pod(capo, ns, "redis-0", owner, "forever"))
    await c.delete_pod(ns, "redis-0")
    record = (await capo.wait_reserved(ip))[ip]
    assert record["spec"]["releasePolicy"] == "ttl"
    await eventually(
        lambda: c.events(ns, "InvalidStickyAnnotation"),
        lambda events: any("forever" in e.get("message", e.get("note", "")) for e in events),
        within=10,
        what="a warning Event about the bad capo.io/release-policy",
    )


async def test_a_burst_of_deletions_keeps_every_hold_sticky(capo: Harness) -> None:
    """Many deletions at once: the delete webhook answers after the Calico append and its records
    follow after a lull, so the leader may adopt some entries from their pending details first, and
    a pod may be recreated before its record reached the cache. Every pod still gets its own IP."""
    c = capo.cluster
    await start(capo)
    ns = await c.create_namespace("db")
    owner = owner_of(await statefulset(capo, ns, "kafka", 24))
    names = [f"kafka-{i}" for i in range(24)]
    ips = {n: pod_ip(await sticky_pod(capo, ns, n, owner)) for n in names}
    await asyncio.gather(*(c.delete_pod(ns, n) for n in names))
    records = await capo.wait_reserved(*ips.values(), within=20)
    assert all(r["spec"].get("sticky") for r in records.values()), "adopted records stay sticky"
    back = await asyncio.gather(*(sticky_pod(capo, ns, n, owner) for n in names))
    m = await capo.metrics()
    outcomes = {o: m.value("capo_sticky_claims_total", outcome=o) for o in ("claimed", "no-hold", "conflict")}
    assert {p["metadata"]["name"]: pod_ip(p) for p in back} == ips, outcomes
    await capo.wait_released(*ips.values(), within=20)
