"""Fixtures: an in-process emulator, a raw HTTP helper and a kubernetes.aio client bound to it."""

from __future__ import annotations

import json
import ssl
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from kube_emulator.testing import Emulator
from kube_emulator.tls import client_context


def admin_ssl(emu: Emulator) -> ssl.SSLContext:
    """TLS as the emulator's admin (client certificate in system:masters)."""
    return client_context(emu.server.pki.ca_pem, emu.server.pki.admin)


class Http:
    """Raw HTTPS against the emulator: returns (status, parsed body, headers).

    ``ssl_context`` decides who is calling (the admin certificate, another certificate, or none);
    ``token`` adds a bearer token.
    """

    def __init__(
        self, url: str, session: aiohttp.ClientSession, ssl_context: ssl.SSLContext, token: str | None = None
    ) -> None:
        self.url = url
        self.session = session
        self.ssl = ssl_context
        self.token = token

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any, Any]:
        data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        hdrs = {"Content-Type": content_type}
        if self.token:
            hdrs["Authorization"] = f"Bearer {self.token}"
        hdrs.update(headers or {})
        async with self.session.request(
            method, self.url + path, data=data, headers=hdrs, ssl=self.ssl
        ) as resp:
            text = await resp.text()
            try:
                parsed = json.loads(text)
            except ValueError:
                parsed = text
            return resp.status, parsed, resp.headers

    async def get(self, path: str) -> tuple[int, Any, Any]:
        return await self.request("GET", path)

    async def post(self, path: str, body: Any, **kw: Any) -> tuple[int, Any, Any]:
        return await self.request("POST", path, body, **kw)

    async def put(self, path: str, body: Any) -> tuple[int, Any, Any]:
        return await self.request("PUT", path, body)

    async def patch(
        self, path: str, body: Any, content_type: str = "application/merge-patch+json"
    ) -> tuple[int, Any, Any]:
        return await self.request("PATCH", path, body, content_type=content_type)

    async def delete(self, path: str, body: Any = None) -> tuple[int, Any, Any]:
        return await self.request("DELETE", path, body)

    async def watch(self, path: str, *, until: int | None = None, limit: float = 5.0) -> list[dict[str, Any]]:
        """Read watch events from ``path`` until the stream ends or ``until`` events arrived."""
        events: list[dict[str, Any]] = []
        hdrs = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        async with self.session.get(
            self.url + path, timeout=aiohttp.ClientTimeout(total=limit), ssl=self.ssl, headers=hdrs
        ) as resp:
            assert resp.status == 200, await resp.text()
            async for line in resp.content:
                if line.strip():
                    events.append(json.loads(line))
                    if until is not None and len(events) >= until:
                        break
        return events


def pod(name: str, labels: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {"containers": [{"name": "c", "image": "busybox"}], **spec},
    }


@pytest.fixture
async def emu() -> AsyncIterator[Emulator]:
    async with Emulator(kubelet_delay=0.1, watch_history=2000) as e:
        yield e


@pytest.fixture
async def http(emu: Emulator) -> AsyncIterator[Http]:
    async with aiohttp.ClientSession() as session:
        yield Http(emu.url, session, admin_ssl(emu))


@pytest.fixture
async def k8s(emu: Emulator) -> AsyncIterator[Any]:
    from kubernetes.aio import client, config

    cfg = client.Configuration()
    await config.load_kube_config(config_file=emu.kubeconfig_path, client_configuration=cfg)
    api = client.ApiClient(cfg)
    try:
        yield api
    finally:
        await api.close()


class Identities:
    """Callers other than the admin: anonymous, a client certificate, a ServiceAccount token."""

    def __init__(self, emu: Emulator, admin: Http) -> None:
        self.emu = emu
        self.admin = admin

    def anonymous(self) -> Http:
        return Http(self.emu.url, self.admin.session, client_context(self.emu.server.pki.ca_pem))

    def certificate(self, user: str, groups: tuple[str, ...] = ()) -> Http:
        pair = self.emu.server.pki.client_pair(user, groups)
        return Http(self.emu.url, self.admin.session, client_context(self.emu.server.pki.ca_pem, pair))

    def bearer(self, token: str) -> Http:
        return Http(self.emu.url, self.admin.session, client_context(self.emu.server.pki.ca_pem), token)

    async def service_account(self, name: str, namespace: str = "default") -> dict[str, Any]:
        """Create the ServiceAccount (if absent); returns it."""
        s, body, _ = await self.admin.post(
            f"/api/v1/namespaces/{namespace}/serviceaccounts", {"metadata": {"name": name}}
        )
        if s == 409:
            s, body, _ = await self.admin.get(f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}")
        assert s in (200, 201), body
        return dict(body)

    async def token(self, name: str, namespace: str = "default", seconds: int | None = None) -> str:
        spec = {} if seconds is None else {"expirationSeconds": seconds}
        s, body, _ = await self.admin.post(
            f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token",
            {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec},
        )
        assert s == 201, body
        return str(body["status"]["token"])

    async def sa_client(self, name: str, namespace: str = "default") -> Http:
        await self.service_account(name, namespace)
        return self.bearer(await self.token(name, namespace))

    async def grant(
        self,
        subject: dict[str, Any],
        rules: list[dict[str, Any]],
        *,
        namespace: str | None = "default",
        name: str = "grant",
        cluster_role: bool = False,
    ) -> None:
        """A Role (or ClusterRole) with ``rules`` bound to ``subject`` in ``namespace``.

        ``namespace=None`` binds a ClusterRole cluster-wide."""
        rbac = "/apis/rbac.authorization.k8s.io/v1"
        if namespace is None or cluster_role:
            s, body, _ = await self.admin.post(
                f"{rbac}/clusterroles", {"metadata": {"name": name}, "rules": rules}
            )
            role_kind = "ClusterRole"
        else:
            s, body, _ = await self.admin.post(
                f"{rbac}/namespaces/{namespace}/roles", {"metadata": {"name": name}, "rules": rules}
            )
            role_kind = "Role"
        assert s == 201, body
        binding = {
            "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": name},
            "subjects": [subject],
        }
        path = (
            f"{rbac}/clusterrolebindings"
            if namespace is None
            else f"{rbac}/namespaces/{namespace}/rolebindings"
        )
        s, body, _ = await self.admin.post(path, binding)
        assert s == 201, body


def sa_subject(name: str, namespace: str = "default") -> dict[str, Any]:
    return {"kind": "ServiceAccount", "name": name, "namespace": namespace}


@pytest.fixture
def who(emu: Emulator, http: Http) -> Identities:
    return Identities(emu, http)
