"""Watch streams: initial state, resumption, 410 Gone, selectors, bookmarks, timeouts."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from kube_emulator.testing import Emulator

from .conftest import Http, admin_ssl

CMS = "/api/v1/namespaces/default/configmaps"


def cm(name: str, labels: dict[str, str] | None = None, **data: str) -> dict[str, object]:
    return {"metadata": {"name": name, "labels": labels or {}}, "data": data}


async def test_watch_without_version_lists_then_streams(http: Http) -> None:
    await http.post(CMS, cm("w1"))

    async def later() -> None:
        await asyncio.sleep(0.2)
        await http.post(CMS, cm("w2"))
        await http.delete(f"{CMS}/w1")

    task = asyncio.create_task(later())
    events = await http.watch(f"{CMS}?watch=true", until=3)
    await task
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [
        ("ADDED", "w1"),
        ("ADDED", "w2"),
        ("DELETED", "w1"),
    ]
    assert events[1]["object"]["kind"] == "ConfigMap" and events[1]["object"]["apiVersion"] == "v1"
    assert int(events[2]["object"]["metadata"]["resourceVersion"]) > int(
        events[1]["object"]["metadata"]["resourceVersion"]
    )


async def test_watch_resumes_from_resource_version(http: Http) -> None:
    _, a, _ = await http.post(CMS, cm("r1"))
    await http.post(CMS, cm("r2"))
    await http.patch(f"{CMS}/r1", {"data": {"x": "1"}})
    rv = a["metadata"]["resourceVersion"]
    events = await http.watch(f"{CMS}?watch=1&resourceVersion={rv}&timeoutSeconds=1")
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [
        ("ADDED", "r2"),
        ("MODIFIED", "r1"),
    ]


async def test_too_old_resource_version_is_gone() -> None:
    async with Emulator(watch_history=3) as emu, aiohttp.ClientSession() as session:
        http = Http(emu.url, session, admin_ssl(emu))
        _, first, _ = await http.post(CMS, cm("g0"))
        for i in range(1, 6):
            await http.post(CMS, cm(f"g{i}"))
        events = await http.watch(f"{CMS}?watch=true&resourceVersion={first['metadata']['resourceVersion']}")
        assert len(events) == 1 and events[0]["type"] == "ERROR"
        status = events[0]["object"]
        assert status["kind"] == "Status" and status["code"] == 410 and status["reason"] == "Expired"
        assert status["message"].startswith("too old resource version")


async def test_label_selector_on_watch_and_leaving_selection(http: Http) -> None:
    _, created, _ = await http.post(CMS, cm("s1", {"app": "a"}))
    rv = created["metadata"]["resourceVersion"]
    await http.post(CMS, cm("s2", {"app": "b"}))
    await http.patch(f"{CMS}/s2", {"metadata": {"labels": {"app": "a"}}})  # enters the selection
    await http.patch(f"{CMS}/s1", {"metadata": {"labels": {"app": "c"}}})  # leaves it
    events = await http.watch(f"{CMS}?watch=true&labelSelector=app%3Da&resourceVersion={rv}&timeoutSeconds=1")
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [
        ("ADDED", "s2"),
        ("DELETED", "s1"),
    ]


async def test_field_selector_on_watch(http: Http) -> None:
    await http.post(CMS, cm("f1"))
    await http.post(CMS, cm("f2"))
    events = await http.watch(f"{CMS}?watch=true&fieldSelector=metadata.name%3Df2&timeoutSeconds=1")
    assert [e["object"]["metadata"]["name"] for e in events] == ["f2"]


async def test_timeout_seconds_ends_stream(http: Http) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    events = await http.watch(f"{CMS}?watch=true&timeoutSeconds=1&resourceVersion=0")
    assert events == []
    assert 0.9 <= loop.time() - started < 3


async def test_bookmarks() -> None:
    async with Emulator(bookmark_interval=0.2) as emu, aiohttp.ClientSession() as session:
        http = Http(emu.url, session, admin_ssl(emu))
        events = await http.watch(f"{CMS}?watch=true&allowWatchBookmarks=true&timeoutSeconds=1")
        assert events and all(e["type"] == "BOOKMARK" for e in events)
        assert int(events[0]["object"]["metadata"]["resourceVersion"]) == emu.cluster.store.rv
        # Without allowWatchBookmarks no bookmark is sent.
        assert await http.watch(f"{CMS}?watch=true&timeoutSeconds=1") == []


async def test_send_initial_events_ends_with_marked_bookmark(http: Http) -> None:
    await http.post(CMS, cm("i1"))
    events = await http.watch(
        f"{CMS}?watch=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true",
        until=2,
    )
    assert events[0]["type"] == "ADDED" and events[1]["type"] == "BOOKMARK"
    assert events[1]["object"]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}


@pytest.mark.parametrize("query", ["labelSelector=a%20in%20(", "fieldSelector=spec.nope%3Dx"])
async def test_bad_selectors_are_400(http: Http, query: str) -> None:
    s, body, _ = await http.get(f"{CMS}?{query}")
    assert s == 400 and body["reason"] == "BadRequest"


async def test_drop_watch_fault_closes_streams(http: Http, emu: Emulator) -> None:
    task = asyncio.create_task(http.watch(f"{CMS}?watch=true", limit=5))
    await asyncio.sleep(0.2)
    fault = await emu.control.add_fault("api", path="/configmaps", drop_watch=True, times=2)
    events = await asyncio.wait_for(task, 2)  # closed at once
    assert events == []
    started = asyncio.get_running_loop().time()
    assert await http.watch(f"{CMS}?watch=true", limit=5) == []  # a new watch is dropped shortly after
    assert asyncio.get_running_loop().time() - started < 2
    assert fault > 0


async def test_watch_event_fault_answers_watches_as_the_real_server_reports_410(
    http: Http, emu: Emulator
) -> None:
    await emu.control.add_fault(
        "api", method="GET", path="/configmaps", status=410, times=2, watch_event=True
    )
    events = await http.watch(f"{CMS}?watch=true")
    assert [e["type"] for e in events] == ["ERROR"]  # 200, then one ERROR event, then the end
    assert events[0]["object"]["code"] == 410 and events[0]["object"]["reason"] == "Expired"
    status, body, _ = await http.get(CMS)  # a request that is not a watch gets the plain status
    assert status == 410 and body["code"] == 410
    status, body, _ = await http.get(CMS)  # the fault was used up
    assert status == 200 and body["kind"] == "ConfigMapList"
