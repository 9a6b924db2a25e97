"""Mutating admission on CREATE, as kube-apiserver (v1) runs it: JSONPatch responses, order,
failurePolicy and reinvocationPolicy."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from .conftest import Http, pod
from .webhook_server import WebhookServer, make_pki

MWC = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations"
NS = "tenant"
PODS = f"/api/v1/namespaces/{NS}/pods"


@pytest.fixture
async def tenant(http: Http) -> str:
    s, _, _ = await http.post(
        "/api/v1/namespaces", {"metadata": {"name": NS, "labels": {"ip-reserve": "enabled"}}}
    )
    assert s == 201
    return NS


async def started(n: int) -> AsyncIterator[list[WebhookServer]]:
    servers = [WebhookServer(make_pki(["hook.capo-system.svc"])) for _ in range(n)]
    for server in servers:
        await server.start()
    yield servers
    for server in servers:
        await server.stop()


@pytest.fixture
async def hooks() -> AsyncIterator[list[WebhookServer]]:
    async for servers in started(2):
        yield servers


def patch_response(ops: list[dict[str, Any]]) -> dict[str, Any]:
    return {"patchType": "JSONPatch", "patch": base64.b64encode(json.dumps(ops).encode()).decode()}


def annotate(key: str, value: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def extra(request: dict[str, Any]) -> dict[str, Any]:
        annotations = (request["object"].get("metadata") or {}).get("annotations")
        if annotations is None:
            return patch_response([{"op": "add", "path": "/metadata/annotations", "value": {key: value}}])
        path = "/metadata/annotations/" + key.replace("~", "~0").replace("/", "~1")
        return patch_response([{"op": "add", "path": path, "value": value}])

    return extra


async def install(
    http: Http,
    name: str,
    server: WebhookServer,
    *,
    policy: str = "Fail",
    reinvoke: str = "Never",
    seconds: int = 5,
) -> None:
    config = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": [
            {
                "name": f"{name}.test.io",
                "clientConfig": {"url": server.url + "/mutate", "caBundle": server.pki.ca_bundle},
                "rules": [
                    {
                        "apiGroups": [""],
                        "apiVersions": ["v1"],
                        "operations": ["CREATE"],
                        "resources": ["pods"],
                    }
                ],
                "failurePolicy": policy,
                "sideEffects": "None",
                "admissionReviewVersions": ["v1"],
                "timeoutSeconds": seconds,
                "reinvocationPolicy": reinvoke,
                "namespaceSelector": {"matchLabels": {"ip-reserve": "enabled"}},
            }
        ],
    }
    s, body, _ = await http.post(MWC, config)
    assert s == 201, body


async def test_patch_is_applied_before_storage(http: Http, hooks: list[WebhookServer], tenant: str) -> None:
    await install(http, "a", hooks[0])
    hooks[0].extra = annotate("cni.projectcalico.org/ipAddrs", '["10.244.0.9"]')
    s, created, _ = await http.post(PODS, pod("p"))
    assert s == 201, created
    assert created["metadata"]["annotations"]["cni.projectcalico.org/ipAddrs"] == '["10.244.0.9"]'
    _, stored, _ = await http.get(f"{PODS}/p")
    assert stored["metadata"]["annotations"]["cni.projectcalico.org/ipAddrs"] == '["10.244.0.9"]'
    request = hooks[0].requests("CREATE")[0]
    # As on kube-apiserver, the registry has not yet set the uid when mutating webhooks run.
    assert "uid" not in request["object"]["metadata"] and request["name"] == "p"
    assert created["metadata"]["uid"]


async def test_generate_name_is_not_resolved_for_mutating_webhooks(
    http: Http, hooks: list[WebhookServer], tenant: str
) -> None:
    await install(http, "a", hooks[0])
    body = pod("x")
    del body["metadata"]["name"]
    body["metadata"]["generateName"] = "web-"
    s, created, _ = await http.post(PODS, body)
    assert s == 201 and created["metadata"]["name"].startswith("web-")
    request = hooks[0].requests("CREATE")[0]
    assert "name" not in request and "name" not in request["object"]["metadata"]


async def test_not_called_outside_the_namespace_selector(http: Http, hooks: list[WebhookServer]) -> None:
    await install(http, "a", hooks[0])
    s, _, _ = await http.post("/api/v1/namespaces/default/pods", pod("p"))
    assert s == 201 and hooks[0].reviews == []


async def test_webhooks_run_in_name_order_each_seeing_the_previous_patch(
    http: Http, hooks: list[WebhookServer], tenant: str
) -> None:
    await install(http, "b-second", hooks[1])
    await install(http, "a-first", hooks[0])
    hooks[0].extra = annotate("first", "1")
    hooks[1].extra = annotate("second", "2")
    s, created, _ = await http.post(PODS, pod("p"))
    assert s == 201
    assert created["metadata"]["annotations"] == {"first": "1", "second": "2"}
    seen = hooks[1].requests("CREATE")[0]["object"]["metadata"]["annotations"]
    assert seen == {"first": "1"}


@pytest.mark.parametrize("failure", ["refused", "timeout", "bad-patch-type"])
async def test_failure_policy_ignore_lets_the_create_through_unpatched(
    http: Http, hooks: list[WebhookServer], tenant: str, failure: str
) -> None:
    server = hooks[0]
    await install(http, "a", server, policy="Ignore", seconds=1)
    if failure == "refused":
        await server.stop()
    elif failure == "timeout":
        server.delay = 1.5
    else:
        server.extra = lambda _r: {
            "patchType": "MergePatch",
            "patch": base64.b64encode(b'{"metadata":{"labels":{"x":"y"}}}').decode(),
        }
    s, created, _ = await http.post(PODS, pod("p"))
    assert s == 201, created
    assert "x" not in (created["metadata"].get("labels") or {})
    _, log, _ = await http.get("/_emulator/admission-log")
    assert [e["outcome"] for e in log["entries"]] == ["ignored"]


async def test_failure_policy_fail_rejects(http: Http, hooks: list[WebhookServer], tenant: str) -> None:
    await install(http, "a", hooks[0], policy="Fail")
    await hooks[0].stop()
    s, body, _ = await http.post(PODS, pod("p"))
    assert s == 500 and 'failed calling webhook "a.test.io"' in body["message"]
    s, _, _ = await http.get(f"{PODS}/p")
    assert s == 404


async def test_a_patch_that_does_not_apply_rejects_even_with_ignore(
    http: Http, hooks: list[WebhookServer], tenant: str
) -> None:
    await install(http, "a", hooks[0], policy="Ignore")
    hooks[0].extra = lambda _r: patch_response([{"op": "replace", "path": "/metadata/nothere/x", "value": 1}])
    s, body, _ = await http.post(PODS, pod("p"))
    assert s == 500 and body["reason"] == "InternalError"


async def test_a_patched_object_is_validated(http: Http, hooks: list[WebhookServer], tenant: str) -> None:
    await install(http, "a", hooks[0])
    hooks[0].extra = lambda _r: patch_response(
        [{"op": "add", "path": "/metadata/labels", "value": {"bad label!": "x"}}]
    )
    s, body, _ = await http.post(PODS, pod("p"))
    assert s == 422, body


async def test_denial(http: Http, hooks: list[WebhookServer], tenant: str) -> None:
    await install(http, "a", hooks[0], policy="Ignore")
    hooks[0].deny, hooks[0].message = True, "no"
    s, body, _ = await http.post(PODS, pod("p"))
    assert s == 403 and body["message"] == 'admission webhook "a.test.io" denied the request: no'


async def test_dry_run_patches_the_answer_only(http: Http, hooks: list[WebhookServer], tenant: str) -> None:
    await install(http, "a", hooks[0])
    hooks[0].extra = annotate("k", "v")
    s, created, _ = await http.post(PODS + "?dryRun=All", pod("p"))
    assert s == 201 and created["metadata"]["annotations"] == {"k": "v"}
    assert hooks[0].requests("CREATE")[0]["dryRun"] is True
    s, _, _ = await http.get(f"{PODS}/p")
    assert s == 404


@pytest.mark.parametrize(
    ("policy", "later_changes", "calls"),
    [("IfNeeded", True, 2), ("IfNeeded", False, 1), ("Never", True, 1)],
)
async def test_reinvocation_policy(
    http: Http, hooks: list[WebhookServer], tenant: str, policy: str, later_changes: bool, calls: int
) -> None:
    await install(http, "a-first", hooks[0], reinvoke=policy)
    await install(http, "b-second", hooks[1])
    hooks[0].extra = annotate("first", "1")
    if later_changes:
        hooks[1].extra = annotate("second", "2")
    s, _, _ = await http.post(PODS, pod("p"))
    assert s == 201
    assert len(hooks[0].requests("CREATE")) == calls
    assert len(hooks[1].requests("CREATE")) == 1  # never reinvoked: it changed nothing after itself
    if calls == 2:
        # The reinvocation sees the later webhook's change.
        assert hooks[0].requests("CREATE")[1]["object"]["metadata"]["annotations"]["second"] == "2"


async def test_own_change_does_not_reinvoke_itself(
    http: Http, hooks: list[WebhookServer], tenant: str
) -> None:
    await install(http, "a", hooks[0], reinvoke="IfNeeded")
    hooks[0].extra = annotate("k", "v")
    s, _, _ = await http.post(PODS, pod("p"))
    assert s == 201 and len(hooks[0].requests("CREATE")) == 1
