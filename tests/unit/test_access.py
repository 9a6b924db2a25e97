"""The permission check and the run-time 403 report: a missing RBAC rule is never silent."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web
from fakes import make_harness
from kubernetes.aio import client as k8s

from capo_operator.kube import access
from capo_operator.kube.credentials import Credentials, Source

NAMES = access.Names(
    namespace="capo-system",
    calico_group="crd.projectcalico.org",
    ip_reservation="capo-reserved-ips",
    lease="capo",
    lease_namespace="capo-system",
    ledger="capo-ledger",
    config_map="capo-config",
)


@pytest.mark.parametrize(
    ("method", "url", "expected"),
    [
        ("GET", "https://h:6443/api/v1/pods?limit=500", ("list", "pods")),
        ("GET", "https://h:6443/api/v1/pods?watch=true&resourceVersion=5", ("watch", "pods")),
        ("GET", "https://h/api/v1/namespaces/ns/pods/p", ("get", "pods")),
        ("POST", "https://h/api/v1/namespaces/ns/pods/p/eviction", ("create", "pods/eviction")),
        ("PUT", "https://h/api/v1/namespaces/ns/pods/p/status", ("update", "pods/status")),
        ("GET", "https://h/api/v1/namespaces/ns", ("get", "namespaces")),
        ("GET", "https://h/api/v1/namespaces", ("list", "namespaces")),
        ("PATCH", "https://h/apis/crd.projectcalico.org/v1/ipreservations/x", ("patch", "ipreservations")),
        ("DELETE", "https://h/apis/capo.io/v1/reservedips/x", ("delete", "reservedips")),
        ("DELETE", "https://h/apis/capo.io/v1/reservedips", ("deletecollection", "reservedips")),
        ("POST", "https://h/apis/coordination.k8s.io/v1/namespaces/n/leases", ("create", "leases")),
        ("GET", "https://h/apis", ("get", "nonresource")),
    ],
)
def test_verb_and_resource_follow_the_api_servers_request_info(
    method: str, url: str, expected: tuple[str, str]
) -> None:
    assert access.verb_and_resource(method, url) == expected


def test_every_reservation_path_permission_is_critical() -> None:
    perms = access.required(NAMES)
    critical = {(p.verb, p.resource) for p in perms if p.critical}
    assert {("patch", "ipreservations"), ("watch", "pods"), ("create", "reservedips")} <= critical
    # Names from the configuration are what is asked about (the shipped RBAC grants by name).
    patch = next(p for p in perms if (p.verb, p.resource) == ("patch", "ipreservations"))
    assert patch.name == "capo-reserved-ips" and patch.group == "crd.projectcalico.org"
    assert patch.describe() == 'patch ipreservations.crd.projectcalico.org "capo-reserved-ips" (cluster-wide)'
    lease = next(p for p in perms if (p.verb, p.resource) == ("update", "leases"))
    assert lease.describe() == 'update leases.coordination.k8s.io "capo" in namespace "capo-system"'


def test_builtin_certificates_add_their_permissions() -> None:
    plain = {(p.verb, p.resource) for p in access.required(NAMES)}
    builtin = access.required(
        access.Names(**{**NAMES.__dict__, "builtin_certs": True, "cert_secret": "s", "webhook_config": "w"})
    )
    extra = {(p.verb, p.resource) for p in builtin} - plain
    assert extra == {
        ("get", "secrets"),
        ("patch", "validatingwebhookconfigurations"),
        ("patch", "mutatingwebhookconfigurations"),
    }


class FakeApiServer:
    """Answers SelfSubjectAccessReviews from a set of refused verbs, and 403s one path."""

    def __init__(self, refused: set[tuple[str, str]]) -> None:
        self.refused = refused
        self.reviews: list[dict[str, Any]] = []

    async def ssar(self, request: web.Request) -> web.Response:
        body = await request.json()
        attrs = body["spec"]["resourceAttributes"]
        self.reviews.append(attrs)
        allowed = (attrs["verb"], attrs["resource"]) not in self.refused
        return web.json_response({**body, "status": {"allowed": allowed}}, status=201)

    async def forbidden(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "kind": "Status",
                "apiVersion": "v1",
                "status": "Failure",
                "reason": "Forbidden",
                "code": 403,
                "message": 'ipreservations.crd.projectcalico.org "capo-reserved-ips" is forbidden: User '
                '"system:serviceaccount:capo-system:capo-operator" cannot patch resource "ipreservations" '
                'in API group "crd.projectcalico.org" at the cluster scope',
            },
            status=403,
        )


@contextlib.asynccontextmanager
async def serve(app: web.Application) -> AsyncIterator[str]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@pytest.fixture
async def server() -> AsyncIterator[tuple[FakeApiServer, k8s.ApiClient, list[tuple[str, str]]]]:
    fake = FakeApiServer({("patch", "ipreservations"), ("create", "events")})
    app = web.Application()
    app.router.add_post("/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", fake.ssar)
    app.router.add_route("*", "/apis/crd.projectcalico.org/v1/{tail:.*}", fake.forbidden)
    async with serve(app) as url:
        counted: list[tuple[str, str]] = []
        api = access.ObservedApiClient(
            k8s.Configuration(host=url), access.ForbiddenLog(lambda v, r: counted.append((v, r)))
        )
        yield fake, api, counted
        await api.close()  # type: ignore[no-untyped-call]


async def test_the_start_up_check_names_each_missing_permission(
    server: tuple[FakeApiServer, k8s.ApiClient, list[tuple[str, str]]], caplog: pytest.LogCaptureFixture
) -> None:
    fake, api, _ = server
    gaps = await access.missing(api, access.required(NAMES))
    assert gaps is not None
    assert {(p.verb, p.resource) for p in gaps} == {("patch", "ipreservations"), ("create", "events")}
    # The review asked about the exact object the shipped RBAC names.
    asked = next(r for r in fake.reviews if r["verb"] == "patch" and r["resource"] == "ipreservations")
    assert asked["name"] == "capo-reserved-ips" and asked["group"] == "crd.projectcalico.org"
    with caplog.at_level(logging.ERROR, logger="capo_operator.kube.access"):
        access.report_missing(gaps, "system:serviceaccount:capo-system:capo-operator")
    text = caplog.text
    assert 'not allowed to patch ipreservations.crd.projectcalico.org "capo-reserved-ips"' in text
    assert "stays unready" in text and "create events" in text


async def test_a_server_that_cannot_answer_the_check_is_not_fatal() -> None:
    async with serve(web.Application()) as url:  # 404 for everything
        api = access.ObservedApiClient(k8s.Configuration(host=url))
        try:
            assert await access.missing(api, access.required(NAMES)) is None
        finally:
            await api.close()  # type: ignore[no-untyped-call]


async def test_a_403_at_run_time_is_logged_with_the_servers_words_and_counted(
    server: tuple[FakeApiServer, k8s.ApiClient, list[tuple[str, str]]], caplog: pytest.LogCaptureFixture
) -> None:
    _, api, counted = server
    custom = k8s.CustomObjectsApi(api)
    with (
        caplog.at_level(logging.ERROR, logger="capo_operator.kube.access"),
        pytest.raises(k8s.ApiException) as exc,
    ):
        await custom.patch_cluster_custom_object(
            "crd.projectcalico.org",
            "v1",
            "ipreservations",
            "capo-reserved-ips",
            [{"op": "test", "path": "/"}],
        )
    assert exc.value.status == 403  # the caller still sees the error as before
    assert counted == [("patch", "ipreservations")]
    assert 'cannot patch resource "ipreservations"' in caplog.text
    assert (
        "forbidden by RBAC: PATCH /apis/crd.projectcalico.org/v1/ipreservations/capo-reserved-ips"
        in caplog.text
    )
    assert json.loads(exc.value.body)["reason"] == "Forbidden"


async def test_a_critical_missing_permission_keeps_the_replica_unready() -> None:
    h = make_harness(cert_ready=True)
    readiness = h.op.readiness
    ok, _ = readiness.check()
    assert ok
    perms = access.required(NAMES)
    readiness.missing_permissions = [p for p in perms if p.verb == "create" and p.resource == "events"]
    assert readiness.check()[0]  # Events are not worth refusing traffic for
    readiness.missing_permissions.append(next(p for p in perms if p.critical))
    ready, why = readiness.check()
    assert not ready and "missing permissions" in why


async def test_a_401_reloads_the_credentials_and_retries_once_with_the_rotated_token(tmp_path: Path) -> None:
    """The kubelet rotated the token file and the old token expired: the next call succeeds at once
    instead of failing until the periodic refresh."""
    seen: list[str] = []

    async def namespace(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization", ""))
        if request.headers.get("Authorization") != "Bearer new-token":
            return web.json_response({"kind": "Status", "code": 401, "reason": "Unauthorized"}, status=401)
        return web.json_response({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}})

    app = web.Application()
    app.router.add_get("/api/v1/namespaces/x", namespace)
    async with serve(app) as url:
        token_file = tmp_path / "token"
        token_file.write_text("old-token")
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "c", "cluster": {"server": url}}],
                    "users": [{"name": "u", "user": {"tokenFile": str(token_file)}}],
                    "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                    "current-context": "x",
                }
            )
        )
        creds = Credentials(Source(kubeconfig=str(kubeconfig)))
        api = access.ObservedApiClient(await creds.load(), relogin=creds.relogin)
        try:
            core = k8s.CoreV1Api(api)
            with pytest.raises(k8s.ApiException) as exc:  # nothing new to try: the 401 stands
                await core.read_namespace("x")
            assert exc.value.status == 401
            token_file.write_text("new-token\n")
            await asyncio.sleep(1.1)  # reloads are rate-limited to one a second
            ns = await core.read_namespace("x")
            assert ns.metadata.name == "x"
            assert seen[-2:] == ["Bearer old-token", "Bearer new-token"]
        finally:
            await api.close()  # type: ignore[no-untyped-call]


def test_the_proxy_environment_is_read_once_and_netrc_never(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://user:pw@proxy.example:3128")
    monkeypatch.setenv("NO_PROXY", "10.96.0.1")
    monkeypatch.delenv("https_proxy", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    via_proxy = k8s.Configuration(host="https://api.example:6443")
    access.resolve_proxy_once(via_proxy)
    assert via_proxy.proxy == "http://proxy.example:3128"
    assert via_proxy.proxy_headers == {"Proxy-Authorization": "Basic dXNlcjpwdw=="}
    assert via_proxy.client_session_kwargs == {"trust_env": False}
    direct = k8s.Configuration(host="https://10.96.0.1:443")
    access.resolve_proxy_once(direct)
    assert not direct.proxy and direct.client_session_kwargs == {"trust_env": False}
    explicit = k8s.Configuration(host="https://api.example:6443")
    explicit.proxy = "http://chosen.example:8080"  # a kubeconfig's proxy-url wins over the environment
    access.resolve_proxy_once(explicit)
    assert explicit.proxy == "http://chosen.example:8080"


async def test_api_calls_make_no_thread_hops(monkeypatch: pytest.MonkeyPatch) -> None:
    """aiohttp's trust_env would look up proxies and netrc in a worker thread on each request."""
    loop = asyncio.get_running_loop()
    hops: list[Any] = []
    real = loop.run_in_executor

    def counting(executor: Any, fn: Any, *args: Any) -> Any:
        hops.append(fn)
        return real(executor, fn, *args)

    async def namespace(_request: web.Request) -> web.Response:
        return web.json_response({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}})

    app = web.Application()
    app.router.add_get("/api/v1/namespaces/x", namespace)
    monkeypatch.setattr(loop, "run_in_executor", counting)
    async with serve(app) as url:
        api = access.ObservedApiClient(k8s.Configuration(host=url))
        try:
            for _ in range(3):
                assert (await k8s.CoreV1Api(api).read_namespace("x")).metadata.name == "x"
        finally:
            await api.close()  # type: ignore[no-untyped-call]
    assert hops == []
