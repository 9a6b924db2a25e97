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
