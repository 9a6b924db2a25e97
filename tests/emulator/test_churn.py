"""`/_emulator/pods/touch`: in-process pod writes that watchers see as ordinary MODIFIED events."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from kube_emulator.churn import TOUCH_ANNOTATION

from .conftest import Http

PODS = "/api/v1/namespaces/default/pods"


def pod(name: str, labels: dict[str, str] | None = None) -> dict[str, object]:
    return {
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]},
    }


def _touch(event: dict[str, Any]) -> bool:
    """A touch's own write (the emulated kubelet may write the pods too, keeping the annotation):
    the annotation holds the resourceVersion of the write that set it."""
    meta = event["object"]["metadata"]
    return bool((meta.get("annotations") or {}).get(TOUCH_ANNOTATION) == meta["resourceVersion"])


async def test_touch_makes_modified_events_that_resume_and_select(http: Http) -> None:
    for name, app in (("p0", "a"), ("p1", "b"), ("p2", "a")):
        assert (await http.post(PODS, pod(name, {"app": app})))[0] == 201
    _, listed, _ = await http.get(PODS)
    rv = listed["metadata"]["resourceVersion"]

    status, result, _ = await http.post("/_emulator/pods/touch", {"count": 5, "namespace": "default"})
    assert status == 200 and result["events"] == 5

    # Resumed from the list: five MODIFIED events, cycling through the pods in name order, each at
    # a new resourceVersion and carrying the annotation.
    events = await http.watch(f"{PODS}?watch=1&resourceVersion={rv}&timeoutSeconds=1")
    touched = [e for e in events if _touch(e)]
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in touched] == [
        ("MODIFIED", "p0"),
        ("MODIFIED", "p1"),
        ("MODIFIED", "p2"),
        ("MODIFIED", "p0"),
        ("MODIFIED", "p1"),
    ]
    rvs = [int(e["object"]["metadata"]["resourceVersion"]) for e in touched]
    assert rvs == sorted(set(rvs)) and rvs[0] > int(rv)
    # The object is otherwise the stored pod (spec and labels kept).
    assert touched[0]["object"]["spec"]["containers"][0]["name"] == "c"
    assert touched[0]["object"]["metadata"]["labels"] == {"app": "a"}

    # A label selector applies as for any write.
    selected = await http.watch(f"{PODS}?watch=1&resourceVersion={rv}&labelSelector=app%3Da&timeoutSeconds=1")
    names = [e["object"]["metadata"]["name"] for e in selected if _touch(e)]
    assert names == ["p0", "p2", "p0"]

    # The stored object carries the last touch.
    _, p1, _ = await http.get(f"{PODS}/p1")
    assert p1["metadata"]["annotations"][TOUCH_ANNOTATION] == str(rvs[-1])


async def test_touch_reaches_a_live_watch(http: Http) -> None:
    assert (await http.post(PODS, pod("live")))[0] == 201
    _, listed, _ = await http.get(PODS)
    rv = listed["metadata"]["resourceVersion"]

    async def later() -> None:
        await asyncio.sleep(0.2)
        await http.post("/_emulator/pods/touch", {"count": 300})

    task = asyncio.create_task(later())
    events = await http.watch(f"{PODS}?watch=1&resourceVersion={rv}&timeoutSeconds=2", limit=10)
    await task
    assert len([e for e in events if _touch(e)]) == 300 and {e["type"] for e in events} == {"MODIFIED"}


async def test_touch_is_paced_by_rate(http: Http) -> None:
    assert (await http.post(PODS, pod("paced")))[0] == 201
    t0 = time.monotonic()
    status, result, _ = await http.post("/_emulator/pods/touch", {"count": 600, "rate": 1000})
    assert status == 200 and result["events"] == 600
    # 600 writes at 1,000/s: the last batch may not start before 0.4 s (batches of 200).
    assert time.monotonic() - t0 >= 0.4


async def test_touch_refuses_bad_requests(http: Http) -> None:
    for body in ({}, {"count": -1}, {"count": "3"}, {"count": 1, "rate": 0}, {"count": 1, "namespace": 5}):
        status, _, _ = await http.post("/_emulator/pods/touch", body)
        assert status == 400, body
    status, result, _ = await http.post("/_emulator/pods/touch", {"count": 1, "namespace": "empty"})
    assert status == 400 and "no pod" in result["message"]
