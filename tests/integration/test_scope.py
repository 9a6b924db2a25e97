"""namespaceSelector: an operator acts only in the namespaces it selects, whatever their ip-reserve label.

Several installations (or test runs on one real cluster) share the pods' watch: without the scope,
one operator's safety net would reserve the IPs of pods that another installation owns.
"""

from __future__ import annotations

from capo_testkit import Harness, eventually, pod_ip, stays
from capo_testkit.kube import pods_path

SCOPE = "capo.io/scope-test"


async def test_pods_outside_the_namespace_selector_are_never_reserved(capo: Harness) -> None:
    c = capo.cluster
    inside = await c.create_namespace("inside")
    outside = await c.create_namespace("outside")  # labelled ip-reserve=enabled all the same
    await c.kube.patch(f"/api/v1/namespaces/{inside}", {"metadata": {"labels": {SCOPE: "in"}}})
    labels = {SCOPE: "in"}
    if not c.is_emulator:
        labels.update(c.run_namespace_selector()["matchLabels"])
    await capo.start_operators(1, reserve_time="60s", extra={"namespaceSelector": {"matchLabels": labels}})

    outside_ips = [pod_ip(await c.create_pod(outside, f"redis-{i}")) for i in range(3)]
    # Through the webhook (the shipped configuration calls it for every enabled namespace).
    await c.delete_pod(outside, "redis-0")
    # A force delete, and a kubelet eviction (the safety net's path: it watches every pod).
    await c.kube.delete(pods_path(outside, "redis-1"), grace_period=0)
    await c.wait_gone(outside, "redis-1")
    await c.kubelet_evict(outside, "redis-2")

    control_ip = pod_ip(await c.create_pod(inside, "redis-0"))
    await c.delete_pod(inside, "redis-0")
    await capo.wait_reserved(control_ip)
    await eventually(
        lambda: capo.metrics(),
        lambda m: m.value("capo_webhook_skips_total", reason="namespace-not-enabled") >= 1,
        within=10,
        what="the webhook to answer for the namespace outside the selector without reserving",
        diagnostics=capo.logs,
    )
    await stays(
        c.reserved_ips,
        lambda r: r == {control_ip},
        duration=3.0,
        what=f"only {control_ip} reserved, none of {outside_ips} (outside namespaceSelector)",
        diagnostics=capo.logs,
    )
    assert set(await c.records()) == {control_ip}
