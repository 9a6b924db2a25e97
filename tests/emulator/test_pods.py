"""The Calico-like allocator and the kubelet/scheduler behaviours."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from kube_emulator.testing import Emulator

from .conftest import Http, admin_ssl, pod

PODS = "/api/v1/namespaces/default/pods"
CRD_RES = "/apis/crd.projectcalico.org/v1/ipreservations"
V3_RES = "/apis/projectcalico.org/v3/ipreservations"


async def wait_pod(http: Http, name: str, pred: Any, seconds: float = 5.0) -> dict[str, Any]:
    body: dict[str, Any] = {}
    for _ in range(int(seconds / 0.02)):
        s, body, _ = await http.get(f"{PODS}/{name}")
        if s == 200 and pred(body):
            return body
        await asyncio.sleep(0.02)
    raise AssertionError(f"pod {name} never matched: {body}")


def has_ip(p: dict[str, Any]) -> bool:
    return bool(p["status"].get("podIPs"))


async def start(http: Http, name: str, **spec: Any) -> dict[str, Any]:
    s, body, _ = await http.post(PODS, pod(name, **spec))
    assert s == 201, body
    return await wait_pod(http, name, has_ip)


def ips(p: dict[str, Any]) -> list[str]:
    return [x["ip"] for x in p["status"]["podIPs"]]


async def test_pod_lifecycle_and_lowest_free_ip(http: Http) -> None:
    a = await start(http, "a")
    b = await start(http, "b")
    assert ips(a) == ["10.244.0.1"] and ips(b) == ["10.244.0.2"]  # the network address is skipped
    assert a["status"]["phase"] == "Running" and a["status"]["podIP"] == "10.244.0.1"
    assert a["spec"]["nodeName"] != b["spec"]["nodeName"]  # round-robin
    assert a["status"]["hostIP"].startswith("172.18.0.")
    assert {c["type"]: c["status"] for c in a["status"]["conditions"]}["Ready"] == "True"
    await http.delete(f"{PODS}/a")
    for _ in range(100):
        if (await http.get(f"{PODS}/a"))[0] == 404:
            break
        await asyncio.sleep(0.02)
    c = await start(http, "c")
    assert ips(c) == ["10.244.0.1"]  # freed and handed out again: what the operator must prevent


async def test_reserved_ip_is_not_handed_out_until_released(http: Http, emu: Emulator) -> None:
    await http.post(
        CRD_RES,
        {
            "apiVersion": "crd.projectcalico.org/v1",
            "kind": "IPReservation",
            "metadata": {"name": "r"},
            "spec": {"reservedCIDRs": ["10.244.0.1/32", "10.244.0.2/31"]},
        },
    )
    p = await start(http, "p")
    assert ips(p) == ["10.244.0.4"]
    snap = await emu.control.allocator()
    assert snap["allocated"] == {"10.244.0.4": "default/p"}
    assert snap["reserved"] == ["10.244.0.1/32", "10.244.0.2/31"] and snap["pools"] == ["10.244.0.0/24"]
    await http.patch(f"{CRD_RES}/r", {"spec": {"reservedCIDRs": ["10.244.0.2/31"]}})
    q = await start(http, "q")
    assert ips(q) == ["10.244.0.1"]


async def test_every_change_of_a_reservation_counts_for_the_next_assignment(http: Http) -> None:
    # The allocator keeps its parsed reservations between assignments: each write must show.
    await http.post(CRD_RES, {"metadata": {"name": "r"}, "spec": {"reservedCIDRs": ["10.244.0.1/32"]}})
    assert ips(await start(http, "a")) == ["10.244.0.2"]
    await http.patch(f"{CRD_RES}/r", {"spec": {"reservedCIDRs": ["10.244.0.1/32", "10.244.0.3/32"]}})
    assert ips(await start(http, "b")) == ["10.244.0.4"]
    await http.request("DELETE", f"{CRD_RES}/r")
    assert ips(await start(http, "c")) == ["10.244.0.1"]
    await http.post(CRD_RES, {"metadata": {"name": "r"}, "spec": {"reservedCIDRs": ["10.244.0.3/32"]}})
    assert ips(await start(http, "d")) == ["10.244.0.5"]


async def test_v3_reservations_and_bare_ips_count() -> None:
    async with Emulator(calico="both", calico_variant="v3.31") as emu, aiohttp.ClientSession() as s:
        http = Http(emu.url, s, admin_ssl(emu))
        await http.post(CRD_RES, {"metadata": {"name": "a"}, "spec": {"reservedCIDRs": ["10.244.0.1"]}})
        await http.post(V3_RES, {"metadata": {"name": "b"}, "spec": {"reservedCIDRs": ["10.244.0.2/32"]}})
        assert ips(await start(http, "p")) == ["10.244.0.3"]


async def test_malformed_reservation_breaks_auto_assignment() -> None:
    async with Emulator(calico="crd", calico_variant="v3.31") as emu, aiohttp.ClientSession() as s:
        http = Http(emu.url, s, admin_ssl(emu))
        await http.post(CRD_RES, {"metadata": {"name": "bad"}, "spec": {"reservedCIDRs": ["garbage"]}})
        await http.post(PODS, pod("stuck"))
        stuck = await wait_pod(
            http,
            "stuck",
            lambda p: any(
                c.get("reason") == "FailedCreatePodSandBox" for c in p["status"].get("conditions") or []
            ),
        )
        assert stuck["status"]["phase"] == "Pending" and not stuck["status"].get("podIPs")
        _, events, _ = await http.get(
            "/api/v1/namespaces/default/events?fieldSelector=reason%3DFailedCreatePodSandBox"
        )
        assert events["items"] and "garbage" in events["items"][0]["message"]
        # Explicit IPs bypass reservations, so they still work.
        body = pod("explicit")
        body["metadata"]["annotations"] = {"cni.projectcalico.org/ipAddrs": '["10.244.0.9"]'}
        await http.post(PODS, body)
        assert ips(await wait_pod(http, "explicit", has_ip)) == ["10.244.0.9"]
        await http.request("DELETE", f"{CRD_RES}/bad")
        fixed = await wait_pod(http, "stuck", has_ip, 3)  # the kubelet retries
        assert fixed["status"]["phase"] == "Running"


async def test_explicit_ip_annotation_bypasses_reservations(http: Http) -> None:
    await http.post(CRD_RES, {"metadata": {"name": "r"}, "spec": {"reservedCIDRs": ["10.244.0.50/32"]}})
    body = pod("fixed")
    body["metadata"]["annotations"] = {"cni.projectcalico.org/ipAddrs": '["10.244.0.50"]'}
    await http.post(PODS, body)
    p = await wait_pod(http, "fixed", has_ip)
    assert ips(p) == ["10.244.0.50"]


async def test_dual_stack() -> None:
    async with (
        Emulator(pod_cidr="10.1.0.0/24", pod_cidr_v6="fd00::/120") as emu,
        aiohttp.ClientSession() as s,
    ):
        http = Http(emu.url, s, admin_ssl(emu))
        p = await start(http, "dual")
        assert ips(p) == ["10.1.0.1", "fd00::"]


async def test_host_network_and_other_scheduler(http: Http) -> None:
    h = await start(http, "host", hostNetwork=True)
    assert ips(h) == [h["status"]["hostIP"]]
    await http.post(PODS, pod("orphan", schedulerName="my-scheduler"))
    await asyncio.sleep(0.3)
    _, o, _ = await http.get(f"{PODS}/orphan")
    assert o["status"]["phase"] == "Pending" and "nodeName" not in o["spec"] and not o["status"].get("podIPs")


async def test_kubelet_eviction_keeps_ips_in_status_but_frees_them(http: Http, emu: Emulator) -> None:
    p = await start(http, "victim")
    result = await emu.control.kubelet_evict("default", "victim")
    assert result["status"]["phase"] == "Failed" and result["status"]["reason"] == "Evicted"
    _, got, _ = await http.get(f"{PODS}/victim")
    assert ips(got) == ips(p)
    assert got["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 137
    assert "10.244.0.1" not in (await emu.control.allocator())["allocated"]
    assert ips(await start(http, "next")) == ips(p)
    # A Failed pod is removed at once by a delete (nothing to wait for).
    await emu.control.kubelet_fail("default", "next", reason="OOMKilled")
    s, _, _ = await http.delete(f"{PODS}/next")
    assert s == 200 and (await http.get(f"{PODS}/next"))[0] == 404


async def test_kubelet_pause_keeps_pods_terminating(http: Http, emu: Emulator) -> None:
    await start(http, "slow")
    await emu.control.kubelet_pause(True)
    await http.delete(f"{PODS}/slow")
    await asyncio.sleep(0.3)
    assert (await http.get(f"{PODS}/slow"))[0] == 200
    await emu.control.kubelet_pause(False)
    for _ in range(100):
        if (await http.get(f"{PODS}/slow"))[0] == 404:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("pod not removed after unpausing")


async def test_garbage_collection_of_owned_pods(http: Http) -> None:
    _, sts, _ = await http.post(
        "/apis/apps/v1/namespaces/default/statefulsets",
        {
            "metadata": {"name": "db"},
            "spec": {
                "selector": {"matchLabels": {"app": "db"}},
                "serviceName": "db",
                "template": {
                    "metadata": {"labels": {"app": "db"}},
                    "spec": {"containers": [{"name": "c", "image": "i"}]},
                },
            },
        },
    )
    owned = pod("db-0", {"app": "db"})
    owned["metadata"]["ownerReferences"] = [
        {
            "apiVersion": "apps/v1",
            "kind": "StatefulSet",
            "name": "db",
            "uid": sts["metadata"]["uid"],
            "controller": True,
        }
    ]
    await http.post(PODS, owned)
    await wait_pod(http, "db-0", has_ip)
    await http.delete("/apis/apps/v1/namespaces/default/statefulsets/db")
    for _ in range(100):
        if (await http.get(f"{PODS}/db-0"))[0] == 404:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("owned pod not garbage-collected")


async def test_garbage_collection_follows_references_as_they_change(http: Http) -> None:
    """Dependents are found by their current ownerReferences (set at creation or added later), only
    in the owner's namespace, and not while another owner is alive."""
    cms = "/api/v1/namespaces/{}/configmaps"
    _, owner, _ = await http.post(cms.format("default"), {"metadata": {"name": "owner"}})
    _, other, _ = await http.post(cms.format("default"), {"metadata": {"name": "other"}})
    await http.post("/api/v1/namespaces", {"metadata": {"name": "elsewhere"}})

    def ref(obj: dict[str, Any]) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "name": obj["metadata"]["name"],
            "uid": obj["metadata"]["uid"],
        }

    await http.post(cms.format("default"), {"metadata": {"name": "later"}})
    await http.patch(f"{cms.format('default')}/later", {"metadata": {"ownerReferences": [ref(owner)]}})
    await http.post(
        cms.format("default"), {"metadata": {"name": "shared", "ownerReferences": [ref(owner), ref(other)]}}
    )
    await http.post(
        cms.format("elsewhere"), {"metadata": {"name": "foreign", "ownerReferences": [ref(owner)]}}
    )
    await http.post(cms.format("default"), {"metadata": {"name": "dropped", "ownerReferences": [ref(owner)]}})
    await http.patch(f"{cms.format('default')}/dropped", {"metadata": {"ownerReferences": None}})

    await http.delete(f"{cms.format('default')}/owner")
    for _ in range(100):
        if (await http.get(f"{cms.format('default')}/later"))[0] == 404:
            break
        await asyncio.sleep(0.02)
    else:
        raise AssertionError("a reference added by an update was not followed")
    await asyncio.sleep(0.1)
    assert (await http.get(f"{cms.format('default')}/shared"))[0] == 200  # its other owner lives
    assert (await http.get(f"{cms.format('elsewhere')}/foreign"))[0] == 200  # another namespace
    assert (await http.get(f"{cms.format('default')}/dropped"))[0] == 200  # reference removed


async def test_api_fault_injection(http: Http, emu: Emulator) -> None:
    fid = await emu.control.add_fault("api", method="PATCH", path="/configmaps/", status=500, times=1)
    await http.post("/api/v1/namespaces/default/configmaps", {"metadata": {"name": "x"}})
    s, body, _ = await http.patch("/api/v1/namespaces/default/configmaps/x", {"data": {"a": "1"}})
    assert s == 500 and body["kind"] == "Status" and body["reason"] == "InternalError"
    s, _, _ = await http.patch("/api/v1/namespaces/default/configmaps/x", {"data": {"a": "1"}})
    assert s == 200
    fid = await emu.control.add_fault("api", path="/configmaps", latency=0.3)
    loop = asyncio.get_running_loop()
    started = loop.time()
    s, _, _ = await http.get("/api/v1/namespaces/default/configmaps/x")
    assert s == 200 and loop.time() - started >= 0.3
    await emu.control.remove_fault(fid)
    await emu.control.clear_faults()
