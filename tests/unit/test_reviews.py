"""The AdmissionReview shape check in front of Kopf: a clear error naming the field."""

from __future__ import annotations

import asyncio
import copy
import json
from typing import Any

import aiohttp.web
import pytest
from aiohttp.test_utils import TestClient, TestServer

from capo_operator.serving import reviews
from capo_operator.serving.reviews import ReviewError, check_review, check_subject

REVIEW: dict[str, Any] = {
    "apiVersion": "admission.k8s.io/v1",
    "kind": "AdmissionReview",
    "request": {
        "uid": "r-1",
        "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "resource": {"group": "", "version": "v1", "resource": "pods"},
        "operation": "DELETE",
        "userInfo": {"username": "u"},
        "oldObject": {
            "metadata": {"name": "p", "namespace": "ns", "uid": "p-1", "labels": {"a": "b"}},
            "status": {"podIPs": [{"ip": "10.0.0.1"}]},
        },
    },
}


def changed(path: tuple[str | int, ...], value: Any) -> dict[str, Any]:
    review = copy.deepcopy(REVIEW)
    target: Any = review
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return review


def test_a_well_formed_review_passes() -> None:
    request = check_review(REVIEW)
    check_subject(request)
    assert request["uid"] == "r-1"


@pytest.mark.parametrize(
    ("review", "message"),
    [
        ([], "expected an AdmissionReview object, got list"),
        (changed(("apiVersion",), "admission.k8s.io/v1beta1"), "expected apiVersion admission.k8s.io/v1"),
        (changed(("request", "uid"), 7), "request.uid: expected a string, got int"),
        (changed(("request", "uid"), ""), "request.uid: must not be empty"),
        (changed(("request", "dryRun"), 0), "request.dryRun: expected a boolean, got int"),
        (changed(("request", "operation"), "PATCH"), "request.operation: 'PATCH' is not one of"),
        (changed(("request", "resource"), "pods"), "request.resource: expected an object, got str"),
        (changed(("request", "oldObject"), None), "neither object nor oldObject"),
    ],
)
def test_a_malformed_envelope_names_the_field(review: Any, message: str) -> None:
    with pytest.raises(ReviewError) as info:
        check_review(review)
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (("metadata", "uid"), None, "request.oldObject.metadata.uid: required"),
        (("metadata", "labels"), ["a"], "request.oldObject.metadata.labels: expected an object, got list"),
        (
            ("metadata", "labels"),
            {"a": 1},
            "request.oldObject.metadata.labels['a']: expected a string, got int",
        ),
        (("status", "podIPs"), "10.0.0.1", "request.oldObject.status.podIPs: expected a list, got str"),
        (
            ("status", "podIPs"),
            [{"ip": 1}],
            "request.oldObject.status.podIPs[0].ip: expected a string, got int",
        ),
        (
            ("spec",),
            {"hostNetwork": "true"},
            "request.oldObject.spec.hostNetwork: expected a boolean, got str",
        ),
    ],
)
def test_a_malformed_pod_names_the_field(path: tuple[str, ...], value: Any, message: str) -> None:
    review = changed(("request", "oldObject", *path), value)
    with pytest.raises(ReviewError) as info:
        check_subject(check_review(review))
    assert message in str(info.value)


def test_a_malformed_eviction_names_the_field() -> None:
    review = changed(("request", "subResource"), "eviction")
    review["request"]["operation"] = "CREATE"
    review["request"]["object"] = {
        "metadata": {"name": "p", "namespace": "ns"},
        "deleteOptions": {"dryRun": "All"},
    }
    with pytest.raises(ReviewError, match=r"request\.object\.deleteOptions\.dryRun: expected a list"):
        check_subject(check_review(review))


async def test_a_slow_handler_is_answered_in_time_and_finishes_in_the_background() -> None:
    finished = asyncio.Event()

    async def slow(data: Any, **_: Any) -> dict[str, Any]:
        await asyncio.sleep(0.5)  # e.g. a Calico write past the webhook's timeout
        finished.set()
        return reviews.allowed(data["request"]["uid"], "late")

    async def handle(request: aiohttp.web.Request) -> aiohttp.web.Response:
        return await reviews.serve(slow, request, answer_within=0.05)

    app = aiohttp.web.Application()
    app.router.add_post("/{id}", handle)
    async with TestClient(TestServer(app)) as http:
        loop = asyncio.get_running_loop()
        started = loop.time()
        resp = await http.post("/reserve-on-delete", data=json.dumps(REVIEW))
        answer = await resp.json()
        assert resp.status == 200 and loop.time() - started < 0.4
        assert answer["response"] == {
            "uid": "r-1",
            "allowed": True,
            "warnings": ["capo-operator could not check this request (timed out)"],
        }
        await asyncio.wait_for(finished.wait(), 2)  # not cancelled: it queues its own retries


async def test_a_review_the_shortcut_answers_never_reaches_the_handler() -> None:
    reached: list[str] = []

    async def handler(data: Any, **_: Any) -> dict[str, Any]:
        reached.append(data["request"]["uid"])
        return reviews.allowed(data["request"]["uid"], "from the handler")

    def shortcut(request: Any) -> bool:
        return bool(request["oldObject"]["metadata"]["uid"] == "p-1")  # a repeat of this pod

    async def handle(request: aiohttp.web.Request) -> aiohttp.web.Response:
        return await reviews.serve(handler, request, shortcut=shortcut)

    app = aiohttp.web.Application()
    app.router.add_post("/{id}", handle)
    async with TestClient(TestServer(app)) as http:
        resp = await http.post("/reserve-on-delete", data=json.dumps(REVIEW))
        assert (await resp.json())["response"] == {"uid": "r-1", "allowed": True}
        other = changed(("request", "oldObject", "metadata", "uid"), "p-2")
        resp = await http.post("/reserve-on-delete", data=json.dumps(other))
        assert (await resp.json())["response"]["warnings"] == ["from the handler"]
        # A malformed review is refused before any shortcut (it never reads one).
        resp = await http.post("/reserve-on-delete", data=json.dumps(changed(("request", "uid"), 7)))
        assert resp.status == 400
    assert reached == ["r-1"]
