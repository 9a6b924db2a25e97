"""PodGC: pods bound to a Node that does not exist are failed and force-deleted after a quarantine."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from kube_emulator.server import Options
from kube_emulator.testing import Emulator

from .conftest import Http, admin_ssl, pod

PODS = "/api/v1/namespaces/default/pods"
DELAY = 1.0


@pytest.fixture
async def gc_http() -> AsyncIterator[Http]:
    async with Emulator(podgc_orphan_delay=DELAY, kubelet_delay=0.05) as emu, aiohttp.ClientSession() as s:
        yield Http(emu.url, s, admin_ssl(emu))


async def gone(http: Http, name: str, within: float) -> bool:
    for _ in range(int(within / 0.05)):
        if (await http.get(f"{PODS}/{name}"))[0] == 404:
            return True
        await asyncio.sleep(0.05)
    return False


def test_default_quarantine_is_the_real_one() -> None:
    assert Options().podgc_orphan_delay == 40.0


async def test_orphan_is_failed_then_force_deleted(gc_http: Http) -> None:
    s, _, _ = await gc_http.post(PODS, pod("orphan", nodeName="ghost"))
    assert s == 201
    task = asyncio.create_task(gc_http.watch(f"{PODS}?watch=true&timeoutSeconds=5", until=4))
    await asyncio.sleep(0.2)
    assert (await gc_http.get(f"{PODS}/orphan"))[0] == 200  # still quarantined
    assert await gone(gc_http, "orphan", 5)
    events: list[dict[str, Any]] = await task
    # Failed, then the force delete's two writes (deletionTimestamp with grace 0, then the removal).
    assert [e["type"] for e in events] == ["ADDED", "MODIFIED", "MODIFIED", "DELETED"]
    assert events[2]["object"]["metadata"]["deletionGracePeriodSeconds"] == 0
    failed = events[1]["object"]["status"]
    assert failed["phase"] == "Failed"
    target = next(c for c in failed["conditions"] if c["type"] == "DisruptionTarget")
    assert (target["status"], target["reason"], target["message"]) == (
        "True",
        "DeletionByPodGC",
        "PodGC: node no longer exists",
    )


async def test_pod_whose_node_appears_in_time_is_kept(gc_http: Http) -> None:
    s, _, _ = await gc_http.post(PODS, pod("late-node", nodeName="node-9"))
    assert s == 201
    node = {"metadata": {"name": "node-9"}}
    assert (await gc_http.post("/api/v1/nodes", node))[0] == 201
    await asyncio.sleep(DELAY * 2)
    s, body, _ = await gc_http.get(f"{PODS}/late-node")
    assert s == 200 and body["status"]["phase"] != "Failed"


async def test_pods_of_a_deleted_node_are_collected(gc_http: Http) -> None:
    s, _, _ = await gc_http.post(PODS, pod("on-node-1", nodeName="node-1"))
    assert s == 201
    await asyncio.sleep(DELAY * 1.5)
    assert (await gc_http.get(f"{PODS}/on-node-1"))[0] == 200
    assert (await gc_http.delete("/api/v1/nodes/node-1"))[0] == 200
    assert await gone(gc_http, "on-node-1", 5)
