"""Paginated lists (limit/continue) and resourceVersion(Match), as kube-apiserver serves them."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from kube_emulator.testing import Emulator

from .conftest import Http, admin_ssl

CMS = "/api/v1/namespaces/default/configmaps"
ALL_CMS = "/api/v1/configmaps"


def cm(name: str, labels: dict[str, str] | None = None) -> dict[str, object]:
    return {"metadata": {"name": name, "labels": labels or {}}, "data": {}}


def names(body: dict[str, Any]) -> list[str]:
    return [item["metadata"]["name"] for item in body["items"]]


async def read_all(http: Http, path: str, limit: int) -> tuple[list[str], list[dict[str, Any]]]:
    """Every page of a list; returns the names and the page metadata."""
    got: list[str] = []
    metas: list[dict[str, Any]] = []
    token = ""
    while True:
        sep = "&" if "?" in path else "?"
        query = f"{sep}limit={limit}" + (f"&continue={token}" if token else "")
        status, body, _ = await http.get(path + query)
        assert status == 200, body
        got += names(body)
        metas.append(body["metadata"])
        token = body["metadata"].get("continue", "")
        if not token:
            return got, metas


async def test_pages_cover_everything_once_in_key_order(http: Http) -> None:
    for i in range(7):
        await http.post(CMS, cm(f"p{i}"))
    got, metas = await read_all(http, CMS, 3)
    assert got == [f"p{i}" for i in range(7)]
    assert [m.get("remainingItemCount") for m in metas] == [4, 1, None]
    # Every page reports the list's resourceVersion, not the time it was served.
    assert len({m["resourceVersion"] for m in metas}) == 1


async def test_continued_pages_show_the_snapshot_of_the_first(http: Http) -> None:
    for i in range(6):
        await http.post(CMS, cm(f"s{i}"))
    status, first, _ = await http.get(f"{CMS}?limit=2")
    assert status == 200 and names(first) == ["s0", "s1"]
    # Changes after the first page are invisible to its continuation, as the real server promises.
    await http.delete(f"{CMS}/s3")
    await http.post(CMS, cm("s9"))
    await http.patch(f"{CMS}/s4", {"metadata": {"labels": {"changed": "yes"}}})
    status, rest, _ = await http.get(f"{CMS}?limit=10&continue={first['metadata']['continue']}")
    assert status == 200 and names(rest) == ["s2", "s3", "s4", "s5"]
    assert rest["items"][2]["metadata"]["labels"] == {}
    assert rest["metadata"]["resourceVersion"] == first["metadata"]["resourceVersion"]
    # A fresh list sees the new state.
    _, fresh, _ = await http.get(CMS)
    assert names(fresh) == ["s0", "s1", "s2", "s4", "s5", "s9"]


async def test_label_selector_pages_and_no_remaining_count(http: Http) -> None:
    for i in range(6):
        await http.post(CMS, cm(f"l{i}", {"odd": str(i % 2)}))
    got, metas = await read_all(http, f"{CMS}?labelSelector=odd%3D1", 2)
    assert got == ["l1", "l3", "l5"]
    assert all("remainingItemCount" not in m for m in metas)


async def test_cluster_wide_pages_span_namespaces(http: Http) -> None:
    await http.post("/api/v1/namespaces", {"metadata": {"name": "other"}})
    for i in range(3):
        await http.post(CMS, cm(f"d{i}"))
        await http.post("/api/v1/namespaces/other/configmaps", cm(f"o{i}"))
    got, _ = await read_all(http, ALL_CMS, 2)
    assert sorted(n for n in got if n[0] in "do") == ["d0", "d1", "d2", "o0", "o1", "o2"]
    assert len(got) == len(set(got))
    # One namespace pages alone, with its own remaining count.
    got, metas = await read_all(http, "/api/v1/namespaces/other/configmaps", 2)
    assert got == ["o0", "o1", "o2"] and [m.get("remainingItemCount") for m in metas] == [1, None]
    got, metas = await read_all(http, "/api/v1/namespaces/other/configmaps", 3)
    assert got == ["o0", "o1", "o2"] and len(metas) == 1 and "continue" not in metas[0]


async def test_expired_continue_is_410_with_an_inconsistent_token() -> None:
    async with Emulator(watch_history=3) as emu, aiohttp.ClientSession() as session:
        http = Http(emu.url, session, admin_ssl(emu))
        for i in range(4):
            await http.post(CMS, cm(f"e{i}"))
        _, first, _ = await http.get(f"{CMS}?limit=2")
        for i in range(4):  # more changes than the history keeps: the snapshot cannot be rebuilt
            await http.post(CMS, cm(f"x{i}"))
        status, body, _ = await http.get(f"{CMS}?limit=2&continue={first['metadata']['continue']}")
        assert status == 410 and body["reason"] == "Expired" and body["code"] == 410
        assert body["message"].startswith(
            "The provided continue parameter is too old to display a consistent list result."
        )
        # The token in the error continues after the same key, from the newest state.
        status, rest, _ = await http.get(f"{CMS}?limit=10&continue={body['metadata']['continue']}")
        assert status == 200 and names(rest) == ["e2", "e3", "x0", "x1", "x2", "x3"]


async def test_resource_version_match_exact_and_too_old() -> None:
    async with Emulator(watch_history=3) as emu, aiohttp.ClientSession() as session:
        http = Http(emu.url, session, admin_ssl(emu))
        _, a, _ = await http.post(CMS, cm("a"))
        await http.post(CMS, cm("b"))
        rv = a["metadata"]["resourceVersion"]
        status, body, _ = await http.get(f"{CMS}?resourceVersion={rv}&resourceVersionMatch=Exact")
        assert status == 200 and names(body) == ["a"] and body["metadata"]["resourceVersion"] == rv
        # NotOlderThan (and a bare resourceVersion) may serve anything at least that new: the newest.
        status, body, _ = await http.get(f"{CMS}?resourceVersion={rv}&resourceVersionMatch=NotOlderThan")
        assert status == 200 and names(body) == ["a", "b"]
        for i in range(4):
            await http.post(CMS, cm(f"c{i}"))
        status, body, _ = await http.get(f"{CMS}?resourceVersion={rv}&resourceVersionMatch=Exact")
        assert status == 410 and body["message"] == "The resourceVersion for the provided list is too old."


@pytest.mark.parametrize(
    ("query", "status", "message"),
    [
        ("resourceVersionMatch=Exact", 400, "resourceVersionMatch is forbidden unless resourceVersion"),
        ("resourceVersion=1&resourceVersionMatch=Newest", 400, 'Unsupported value: "Newest"'),
        ("continue=bm90LWEtdG9rZW4", 400, "continue key is not valid"),
        ("resourceVersion=99999999", 504, "Too large resource version: 99999999"),
    ],
)
async def test_bad_list_options(http: Http, query: str, status: int, message: str) -> None:
    got, body, _ = await http.get(f"{CMS}?{query}")
    assert got == status and message in body["message"]


async def test_continue_with_resource_version_is_400(http: Http) -> None:
    for i in range(3):
        await http.post(CMS, cm(f"r{i}"))
    _, first, _ = await http.get(f"{CMS}?limit=1")
    token = first["metadata"]["continue"]
    status, body, _ = await http.get(f"{CMS}?limit=1&continue={token}&resourceVersion=1")
    assert status == 400
    assert body["message"] == "specifying resource version is not allowed when using continue"


async def test_a_watch_from_a_paginated_lists_version_sees_every_later_change(http: Http) -> None:
    for i in range(3):
        await http.post(CMS, cm(f"h{i}"))
    _, first, _ = await http.get(f"{CMS}?limit=2")
    await http.post(CMS, cm("h3"))  # after the list's snapshot, before its last page
    _, rest, _ = await http.get(f"{CMS}?limit=2&continue={first['metadata']['continue']}")
    assert names(rest) == ["h2"]
    await http.delete(f"{CMS}/h0")
    rv = first["metadata"]["resourceVersion"]
    events = await http.watch(f"{CMS}?watch=true&resourceVersion={rv}&timeoutSeconds=1")
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [
        ("ADDED", "h3"),
        ("DELETED", "h0"),
    ]
