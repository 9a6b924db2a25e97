"""Calico's explicit IP requests (``cni.projectcalico.org/ipAddrs``), as its CNI plugin handles them."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp

from kube_emulator.testing import Emulator

from .conftest import Http, admin_ssl, pod

PODS = "/api/v1/namespaces/default/pods"
CRD_RES = "/apis/crd.projectcalico.org/v1/ipreservations"
ANNOTATION = "cni.projectcalico.org/ipAddrs"


async def settle(http: Http, name: str, seconds: float = 5.0) -> dict[str, Any]:
    """The pod once it has IPs or the kubelet reported a sandbox failure."""
    body: dict[str, Any] = {}
    for _ in range(int(seconds / 0.02)):
        _, body, _ = await http.get(f"{PODS}/{name}")
        status = body.get("status") or {}
        failed = any(c.get("reason") == "FailedCreatePodSandBox" for c in status.get("conditions") or [])
        if status.get("podIPs") or failed:
            return body
        await asyncio.sleep(0.02)
    raise AssertionError(f"pod {name} never settled: {body}")


def ips(p: dict[str, Any]) -> list[str]:
    return [e["ip"] for e in p["status"].get("podIPs") or []]


def sandbox_error(p: dict[str, Any]) -> str:
    for c in p["status"].get("conditions") or []:
        if c.get("reason") == "FailedCreatePodSandBox":
            return str(c.get("message"))
    return ""


async def create(http: Http, name: str, requested: Any) -> dict[str, Any]:
    body = pod(name)
    text = requested if isinstance(requested, str) else json.dumps(requested)
    body["metadata"]["annotations"] = {ANNOTATION: text}
    s, out, _ = await http.post(PODS, body)
    assert s == 201, out
    return await settle(http, name)


async def test_requested_ip_is_assigned_even_when_reserved(http: Http) -> None:
    await http.post(CRD_RES, {"metadata": {"name": "r"}, "spec": {"reservedCIDRs": ["10.244.0.0/24"]}})
    p = await create(http, "a", ["10.244.0.77"])
    assert ips(p) == ["10.244.0.77"]


async def test_an_ip_in_use_is_refused(http: Http) -> None:
    first = await create(http, "first", ["10.244.0.20"])
    assert ips(first) == ["10.244.0.20"]
    second = await create(http, "second", ["10.244.0.20"])
    assert ips(second) == []
    assert "already assigned" in sandbox_error(second)
    # Once the holder is gone (sandbox torn down) the kubelet's retry gets it.
    await http.delete(f"{PODS}/first", {"gracePeriodSeconds": 0})
    for _ in range(250):
        _, again, _ = await http.get(f"{PODS}/second")
        if ips(again):
            break
        await asyncio.sleep(0.02)
    assert ips(again) == ["10.244.0.20"]


async def test_an_ip_outside_every_pool_is_refused(http: Http) -> None:
    p = await create(http, "outside", ["192.168.50.1"])
    assert ips(p) == [] and "not in any configured pool" in sandbox_error(p)


async def test_malformed_values_are_refused(http: Http) -> None:
    assert "invalid IP format" in sandbox_error(await create(http, "garbage", ["10.244.0.300"]))
    assert "specified but empty" in sandbox_error(await create(http, "empty", []))
    assert "JSON list" in sandbox_error(await create(http, "object", '{"ip": "10.244.0.5"}'))
    assert "failed to parse" in sandbox_error(await create(http, "notjson", "10.244.0.5"))


async def test_dual_stack_one_address_per_family() -> None:
    async with (
        Emulator(pod_cidr="10.1.0.0/24", pod_cidr_v6="fd00::/120", kubelet_delay=0.05) as emu,
        aiohttp.ClientSession() as s,
    ):
        http = Http(emu.url, s, admin_ssl(emu))
        both = await create(http, "both", ["10.1.0.40", "fd00::40"])
        assert ips(both) == ["10.1.0.40", "fd00::40"]
        two_v4 = await create(http, "two-v4", ["10.1.0.41", "10.1.0.42"])
        assert ips(two_v4) == []
        assert 'more than one IPv4 address for "cni.projectcalico.org/ipAddrs"' in sandbox_error(two_v4)
        two_v6 = await create(http, "two-v6", ["fd00::41", "fd00::42"])
        assert "more than one IPv6 address" in sandbox_error(two_v6)
        # One family requested: only that one is assigned (no automatic second address).
        v4_only = await create(http, "v4-only", ["10.1.0.43"])
        assert ips(v4_only) == ["10.1.0.43"]
