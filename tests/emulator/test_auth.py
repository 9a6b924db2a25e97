"""Authentication as kube-apiserver does it: TLS, client certificates, TokenRequest tokens, anonymous."""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from kube_emulator.testing import Emulator, write_token_kubeconfig
from kube_emulator.tls import Pki, client_context, read_kubeconfig

from .conftest import Http, Identities, sa_subject

UNAUTHORIZED = {
    "kind": "Status",
    "apiVersion": "v1",
    "metadata": {},
    "status": "Failure",
    "message": "Unauthorized",
    "reason": "Unauthorized",
    "code": 401,
}
TOKEN = "/api/v1/namespaces/default/serviceaccounts/{}/token"
PODS = "/api/v1/namespaces/default/pods"


def forbidden(message: str, details: dict[str, Any]) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": "Forbidden",
        "details": details,
        "code": 403,
    }


async def test_served_over_https_only_with_the_kubeconfig_ca(emu: Emulator) -> None:
    assert emu.url.startswith("https://127.0.0.1:")
    parts = read_kubeconfig(emu.kubeconfig_path)
    assert parts.server == emu.url and parts.ca_pem == emu.server.pki.ca_pem
    assert set(parts.user) == {"client-certificate-data", "client-key-data"}
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await session.get(emu.url + "/healthz")  # the system roots do not know the emulator's CA
        plain = emu.url.replace("https://", "http://")
        with pytest.raises(aiohttp.ClientError):
            await session.get(plain + "/healthz")  # plain HTTP is not served


async def test_anonymous_is_refused_with_the_real_403(who: Identities) -> None:
    anon = who.anonymous()
    s, body, _ = await anon.get("/api")
    assert (s, body) == (403, forbidden('forbidden: User "system:anonymous" cannot get path "/api"', {}))
    s, body, _ = await anon.get(PODS)
    assert (s, body) == (
        403,
        forbidden(
            'pods is forbidden: User "system:anonymous" cannot list resource "pods" in API group "" '
            'in the namespace "default"',
            {"kind": "pods"},
        ),
    )
    # system:public-info-viewer is bound to system:unauthenticated, as on the real server.
    for path in ("/healthz", "/readyz", "/livez", "/version"):
        s, _, _ = await anon.get(path)
        assert s == 200, path


async def test_invalid_bearer_token_is_401_not_anonymous(who: Identities) -> None:
    s, body, _ = await who.bearer("not-a-token").get("/healthz")
    assert (s, body) == (401, UNAUTHORIZED)
    forged = await who.token(str((await who.service_account("op"))["metadata"]["name"]))
    s, body, _ = await who.bearer(forged[:-4] + "AAAA").get("/healthz")
    assert s == 401
    # Another scheme is no bearer token at all: the caller is anonymous.
    s, body, _ = await who.anonymous().request("GET", "/api", headers={"Authorization": "Basic Zm9vOmJhcg=="})
    assert s == 403 and 'User "system:anonymous"' in body["message"]


async def test_client_certificate_user_and_groups(who: Identities) -> None:
    alice = who.certificate("alice", ("devs", "ops"))
    s, body, _ = await alice.get(PODS)
    assert s == 403 and body["message"].startswith('pods is forbidden: User "alice" cannot list')
    await who.grant(
        {"kind": "Group", "name": "ops"}, [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}]
    )
    s, body, _ = await alice.get(PODS)
    assert s == 200, body
    # system:authenticated is added: discovery (system:discovery) is allowed.
    s, _, _ = await alice.get("/api")
    assert s == 200


async def test_certificate_of_another_ca_is_refused(emu: Emulator, tmp_path: Path) -> None:
    # Client certificates are verified against the emulator's CA alone, not the system roots.
    assert len(emu.server.pki.server_context().get_ca_certs()) == 1
    stranger = Pki(tmp_path)  # a CA the emulator does not trust
    context = client_context(emu.server.pki.ca_pem, stranger.admin)
    async with aiohttp.ClientSession() as session:
        with pytest.raises((aiohttp.ClientError, ssl.SSLError, ConnectionError)):
            async with session.get(emu.url + "/api", ssl=context) as resp:
                await resp.read()


async def test_token_request_answers_like_the_real_server(who: Identities, http: Http) -> None:
    sa = await who.service_account("op")
    before = dt.datetime.now(dt.UTC)
    s, body, _ = await http.post(
        TOKEN.format("op"), {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest"}
    )
    assert s == 201, body
    assert body["kind"] == "TokenRequest" and body["apiVersion"] == "authentication.k8s.io/v1"
    assert body["spec"] == {
        "audiences": ["https://kubernetes.default.svc.cluster.local"],
        "expirationSeconds": 3600,
        "boundObjectRef": None,
    }
    expires = dt.datetime.strptime(body["status"]["expirationTimestamp"], "%Y-%m-%dT%H:%M:%SZ").replace(
        tzinfo=dt.UTC
    )
    assert abs((expires - before).total_seconds() - 3600) < 5
    token = body["status"]["token"]
    assert token.count(".") == 2  # a JWT, as the real server issues
    s, body, _ = await who.bearer(token).get(PODS)
    assert s == 403 and body["message"].startswith(
        'pods is forbidden: User "system:serviceaccount:default:op" cannot list resource "pods"'
    )
    s, body, _ = await http.post(
        TOKEN.format("op"), {"spec": {"expirationSeconds": 7200, "audiences": ["x"]}}
    )
    assert s == 201 and body["spec"]["expirationSeconds"] == 7200 and body["spec"]["audiences"] == ["x"]
    assert sa["metadata"]["uid"]


@pytest.mark.parametrize(
    ("seconds", "why"),
    [
        (599, "Invalid value: 599: may not specify a duration less than 10 minutes"),
        (2**32 + 1, f"Invalid value: {2**32 + 1}: may not specify a duration larger than 2^32 seconds"),
    ],
)
async def test_token_request_bounds(who: Identities, http: Http, seconds: int, why: str) -> None:
    await who.service_account("op")
    s, body, _ = await http.post(TOKEN.format("op"), {"spec": {"expirationSeconds": seconds}})
    assert s == 422 and body["reason"] == "Invalid"
    # The real server names no object in this message.
    assert (
        body["message"] == f'TokenRequest.authentication.k8s.io "" is invalid: spec.expirationSeconds: {why}'
    )
    s, _, _ = await http.post(TOKEN.format("op"), {"spec": {"expirationSeconds": 600}})
    assert s == 201  # the bound itself is allowed


async def test_token_request_needs_the_service_account_and_permission(who: Identities, http: Http) -> None:
    s, body, _ = await http.post(TOKEN.format("ghost"), {})
    assert s == 404 and body["message"] == 'serviceaccounts "ghost" not found'
    op = await who.sa_client("op")
    s, body, _ = await op.post(TOKEN.format("op"), {})
    assert (s, body) == (
        403,
        forbidden(
            'serviceaccounts "op" is forbidden: User "system:serviceaccount:default:op" '
            "cannot create resource "
            '"serviceaccounts/token" in API group "" in the namespace "default"',
            {"name": "op", "kind": "serviceaccounts"},
        ),
    )
    await who.grant(
        sa_subject("op"),
        [
            {
                "apiGroups": [""],
                "resources": ["serviceaccounts/token"],
                "verbs": ["create"],
                "resourceNames": ["op"],
            }
        ],
    )
    s, body, _ = await op.post(TOKEN.format("op"), {})
    assert s == 201 and body["status"]["token"]


async def test_expired_token_is_401(who: Identities, emu: Emulator) -> None:
    await who.service_account("op")
    await who.grant(sa_subject("op"), [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}])
    token = await who.token("op", seconds=600)
    op = who.bearer(token)
    assert (await op.get(PODS))[0] == 200
    tokens = emu.cluster.auth.tokens
    real_clock = tokens.clock
    try:
        # The real validator allows a minute of clock skew after exp.
        tokens.clock = lambda: real_clock() + dt.timedelta(seconds=600 + 50)
        assert (await op.get(PODS))[0] == 200
        tokens.clock = lambda: real_clock() + dt.timedelta(seconds=600 + 70)
        s, body, _ = await op.get(PODS)
        assert (s, body) == (401, UNAUTHORIZED)
    finally:
        tokens.clock = real_clock


async def test_expire_tokens_control_endpoint_simulates_rotation(who: Identities, emu: Emulator) -> None:
    await who.service_account("op")
    await who.service_account("other")
    await who.grant(
        {"kind": "Group", "name": "system:serviceaccounts"},
        [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}],
    )
    first, second = await who.token("op"), await who.token("op")
    other = await who.token("other")
    assert await emu.control.expire_tokens("default", "op") == 2
    for token in (first, second):
        s, body, _ = await who.bearer(token).get(PODS)
        assert (s, body) == (401, UNAUTHORIZED)
    assert (await who.bearer(other).get(PODS))[0] == 200  # another account's tokens still work
    fresh = await who.token("op")
    assert (await who.bearer(fresh).get(PODS))[0] == 200  # a rotated token is accepted
    assert await emu.control.expire_tokens("default", "op") == 1


async def test_token_of_a_deleted_service_account_is_401_even_if_recreated(
    who: Identities, http: Http
) -> None:
    op = await who.sa_client("op")
    assert (await op.get("/api"))[0] == 200
    s, _, _ = await http.delete("/api/v1/namespaces/default/serviceaccounts/op")
    assert s == 200
    s, body, _ = await op.get("/api")
    assert (s, body) == (401, UNAUTHORIZED)
    await who.service_account("op")  # same name, new uid: the old token stays dead
    assert (await op.get("/api"))[0] == 401


async def test_token_bound_to_a_pod_dies_with_the_pod(who: Identities, http: Http, emu: Emulator) -> None:
    await who.service_account("op")
    spec = {"schedulerName": "none", "serviceAccountName": "op", "containers": [{"name": "c", "image": "x"}]}
    s, _, _ = await http.post(PODS, {"metadata": {"name": "p"}, "spec": spec})
    assert s == 201
    s, _, _ = await http.post(
        PODS, {"metadata": {"name": "q"}, "spec": {**spec, "serviceAccountName": "default"}}
    )
    assert s == 201
    ref = {"kind": "Pod", "apiVersion": "v1", "name": "p"}
    s, body, _ = await http.post(TOKEN.format("op"), {"spec": {"boundObjectRef": {**ref, "name": "q"}}})
    assert (s, body["message"]) == (
        400,
        'cannot bind token for serviceaccount "op" to pod running with different serviceaccount name.',
    )
    s, body, _ = await http.post(TOKEN.format("op"), {"spec": {"boundObjectRef": {**ref, "uid": "old"}}})
    assert s == 409 and "the UID in the bound object reference (old) does not match" in body["message"]
    s, body, _ = await http.post(TOKEN.format("op"), {"spec": {"boundObjectRef": {**ref, "name": "gone"}}})
    assert s == 404 and body["message"] == 'pods "gone" not found'
    s, body, _ = await http.post(TOKEN.format("op"), {"spec": {"boundObjectRef": ref}})
    assert s == 201 and body["metadata"]["uid"] and body["spec"]["boundObjectRef"] == ref
    op = who.bearer(body["status"]["token"])
    assert (await op.get("/api"))[0] == 200

    # kubelet's 1h7s projected token is reported as such but honoured for a year.
    s, body, _ = await http.post(
        TOKEN.format("op"), {"spec": {"boundObjectRef": ref, "expirationSeconds": 3607}}
    )
    assert s == 201
    projected = who.bearer(body["status"]["token"])
    unbound = who.bearer(await who.token("op", seconds=3607))
    tokens = emu.cluster.auth.tokens
    real_clock = tokens.clock
    try:
        tokens.clock = lambda: real_clock() + dt.timedelta(hours=2)
        assert (await projected.get("/api"))[0] == 200
        assert (await unbound.get("/api"))[0] == 401
    finally:
        tokens.clock = real_clock

    await http.delete(f"{PODS}/p")
    for _ in range(50):
        if (await http.get(f"{PODS}/p"))[0] == 404:
            break
        await asyncio.sleep(0.02)
    assert (await op.get("/api"))[0] == 401
    assert (await projected.get("/api"))[0] == 401


async def test_token_request_name_must_match(who: Identities, http: Http) -> None:
    await who.service_account("op")
    s, body, _ = await http.post(TOKEN.format("op"), {"metadata": {"name": "other"}})
    assert s == 422 and body["message"] == (
        'TokenRequest.authentication.k8s.io "op" is invalid: metadata.name: Invalid value: "other": '
        "must match the service account name if specified"
    )


async def test_kubernetes_aio_loads_a_certificate_and_a_token_kubeconfig(
    emu: Emulator, who: Identities, tmp_path: Path
) -> None:
    from kubernetes.aio import client, config
    from kubernetes.aio.client.rest import ApiException

    async def core_for(path: str) -> tuple[client.ApiClient, Any]:
        cfg = client.Configuration()
        await config.load_kube_config(config_file=path, client_configuration=cfg)
        api = client.ApiClient(cfg)
        return api, client.CoreV1Api(api)

    admin_api, admin = await core_for(emu.kubeconfig_path)
    try:
        nodes = await admin.list_node()
        assert len(nodes.items) == 3
    finally:
        await admin_api.close()

    await who.service_account("op")
    await who.grant(
        sa_subject("op"), [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]}]
    )
    path = write_token_kubeconfig(emu.kubeconfig_path, await who.token("op"), tmp_path / "op.kubeconfig")
    op_api, op = await core_for(str(path))
    try:
        listed = await op.list_namespaced_config_map("default")
        assert listed.items == []
        with pytest.raises(ApiException) as info:
            await op.list_node()
        assert info.value.status == 403
        await emu.control.expire_tokens("default", "op")
        with pytest.raises(ApiException) as info:
            await op.list_namespaced_config_map("default")
        assert info.value.status == 401
    finally:
        await op_api.close()


async def test_impersonation_needs_the_impersonate_verb(who: Identities, http: Http) -> None:
    op = await who.sa_client("op")
    s, body, _ = await op.request("GET", PODS, headers={"Impersonate-User": "alice"})
    assert (s, body) == (
        403,
        forbidden(
            'users "alice" is forbidden: User "system:serviceaccount:default:op" cannot impersonate resource '
            '"users" in API group "" at the cluster scope',
            {"name": "alice", "kind": "users"},
        ),
    )
    await who.grant(
        sa_subject("op"),
        [{"apiGroups": [""], "resources": ["users"], "verbs": ["impersonate"], "resourceNames": ["alice"]}],
        namespace=None,
        name="impersonate-alice",
    )
    s, body, _ = await op.request("GET", PODS, headers={"Impersonate-User": "alice"})
    assert s == 403 and body["message"].startswith('pods is forbidden: User "alice" cannot list')
    s, body, _ = await op.request("GET", PODS, headers={"Impersonate-User": "bob"})
    assert s == 403 and body["message"].startswith('users "bob" is forbidden')
    # Groups need a permission of their own.
    s, body, _ = await op.request(
        "GET", PODS, headers={"Impersonate-User": "alice", "Impersonate-Group": "system:masters"}
    )
    assert s == 403 and body["message"].startswith('groups "system:masters" is forbidden')
    # The admin (system:masters) may impersonate anyone; the impersonated user's rights apply.
    s, body, _ = await http.request(
        "GET", PODS, headers={"Impersonate-User": "system:serviceaccount:default:op"}
    )
    assert s == 403 and 'User "system:serviceaccount:default:op" cannot list' in body["message"]
    s, body, _ = await http.request("GET", PODS, headers={"Impersonate-Group": "x"})
    assert s == 400  # groups without a user


async def test_self_subject_review_tells_who_is_calling(who: Identities, http: Http) -> None:
    path = "/apis/authentication.k8s.io/v1/selfsubjectreviews"
    body = {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
    s, out, _ = await http.post(path, body)
    assert s == 201 and out["status"]["userInfo"] == {
        "username": "kube-emulator-admin",
        "groups": ["system:masters", "system:authenticated"],
    }
    sa = await who.service_account("op")
    s, out, _ = await (await who.sa_client("op")).post(path, body)
    assert s == 201 and out["status"]["userInfo"] == {
        "username": "system:serviceaccount:default:op",
        "groups": ["system:serviceaccounts", "system:serviceaccounts:default", "system:authenticated"],
        "uid": sa["metadata"]["uid"],
    }
    s, out, _ = await who.anonymous().post(path, body)
    assert s == 403  # system:basic-user is bound to authenticated users only


async def test_expire_tokens_needs_a_service_account_name(emu: Emulator) -> None:
    from kube_emulator.testing import ControlError

    with pytest.raises(ControlError) as info:
        await emu.control._call("POST", "/_emulator/serviceaccounts/expire-tokens", {"namespace": "default"})
    assert info.value.status == 400 and "naming a ServiceAccount" in info.value.body["message"]
    assert await emu.control.expire_tokens("default", "nobody") == 0  # nothing issued: nothing expired
