"""A small async Kubernetes REST client for tests: plain dicts in and out, warnings kept.

The product uses `kubernetes.aio`; the tests talk to the API more directly so that they can send
exactly what `kubectl` would (dry runs, evictions, status writes, JSON patches) and read the
admission warnings the API server returns. Credentials come from `kubernetes.aio`'s kubeconfig
loader, so exec plugins and tokens of a real cluster work too.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import aiohttp
from kubernetes.aio import client as k8s
from kubernetes.aio import config as k8s_config
from multidict import CIMultiDictProxy

Obj = dict[str, Any]
JSON_PATCH = "application/json-patch+json"
MERGE_PATCH = "application/merge-patch+json"


class ApiError(Exception):
    def __init__(self, method: str, path: str, status: int, body: Any) -> None:
        message = body.get("message") if isinstance(body, dict) else str(body)[:500]
        super().__init__(f"{method} {path}: HTTP {status}: {message}")
        self.status = status
        self.body = body
        self.message = message or ""


@dataclass
class Response:
    status: int
    body: Any
    warnings: list[str] = field(default_factory=list)


def path_for(
    group: str,
    version: str,
    plural: str,
    namespace: str | None = None,
    name: str | None = None,
    subresource: str | None = None,
) -> str:
    base = f"/api/{version}" if group in ("", "core") else f"/apis/{group}/{version}"
    if namespace is not None:
        base += f"/namespaces/{quote(namespace, safe='')}"
    base += f"/{plural}"
    if name is not None:
        base += f"/{quote(name, safe='')}"
    if subresource is not None:
        base += f"/{subresource}"
    return base


def pods_path(namespace: str, name: str | None = None, subresource: str | None = None) -> str:
    return path_for("", "v1", "pods", namespace, name, subresource)


def _warnings(headers: CIMultiDictProxy[str]) -> list[str]:
    # RFC 7234 warning headers as kube-apiserver writes them: `299 - "text"`.
    out = []
    for raw in headers.getall("Warning", []):
        text = raw.split(" ", 2)[-1] if raw.startswith("299") else raw
        out.append(text.strip().strip('"'))
    return out


class Kube:
    """One aiohttp session to one API server."""

    def __init__(self, host: str, ssl_context: ssl.SSLContext | bool, headers: dict[str, str]) -> None:
        self.host = host.rstrip("/")
        self._ssl = ssl_context
        self._headers = headers
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    async def from_kubeconfig(cls, path: str) -> Kube:
        cfg = k8s.Configuration()
        await k8s_config.load_kube_config(config_file=path, client_configuration=cfg)
        context: ssl.SSLContext | bool = (
            ssl.create_default_context(cafile=cfg.ssl_ca_cert) if cfg.verify_ssl else False
        )
        if cfg.cert_file and isinstance(context, ssl.SSLContext):
            context.load_cert_chain(cfg.cert_file, cfg.key_file)
        headers = {}
        token = (cfg.api_key or {}).get("authorization") or (cfg.api_key or {}).get("BearerToken")
        if token:
            headers["Authorization"] = token if token.lower().startswith("bearer") else f"Bearer {token}"
        return cls(cfg.host, context, headers)

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                headers=self._headers, timeout=aiohttp.ClientTimeout(total=30, sock_connect=5)
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        params: Mapping[str, str | list[str]] | None = None,
        content_type: str = "application/json",
        ok: tuple[int, ...] = (),
    ) -> Response:
        """One request; raises ApiError for a status >= 400 unless it is listed in `ok`."""
        data = None if body is None else json.dumps(body)
        headers = {"Content-Type": content_type, "Accept": "application/json"}
        query: list[tuple[str, str]] = []
        for key, value in (params or {}).items():
            query.extend((key, v) for v in ([value] if isinstance(value, str) else value))
        async with self._client().request(
            method, self.host + path, data=data, headers=headers, params=query, ssl=self._ssl
        ) as resp:
            text = await resp.text()
            try:
                parsed: Any = json.loads(text) if text else None
            except ValueError:
                parsed = text
            if resp.status >= 400 and resp.status not in ok:
                raise ApiError(method, path, resp.status, parsed)
            return Response(resp.status, parsed, _warnings(resp.headers))

    async def get(self, path: str) -> Obj:
        body: Obj = (await self.call("GET", path)).body
        return body

    async def get_or_none(self, path: str) -> Obj | None:
        resp = await self.call("GET", path, ok=(404,))
        return None if resp.status == 404 else dict(resp.body)

    async def list(self, path: str, label_selector: str | None = None) -> list[Obj]:
        params = {"labelSelector": label_selector} if label_selector else None
        body = (await self.call("GET", path, params=params)).body
        return list(body.get("items") or [])

    async def create(self, path: str, obj: Obj, *, dry_run: bool = False) -> Obj:
        params = {"dryRun": "All"} if dry_run else None
        body: Obj = (await self.call("POST", path, obj, params=params)).body
        return body

    async def patch(self, path: str, patch: Any, *, content_type: str = MERGE_PATCH) -> Obj:
        body: Obj = (await self.call("PATCH", path, patch, content_type=content_type)).body
        return body

    async def replace(self, path: str, obj: Obj) -> Obj:
        body: Obj = (await self.call("PUT", path, obj)).body
        return body

    async def delete(
        self,
        path: str,
        *,
        dry_run: bool = False,
        grace_period: int | None = None,
        label_selector: str | None = None,
        missing_ok: bool = False,
    ) -> Response:
        options: Obj = {"apiVersion": "v1", "kind": "DeleteOptions"}
        if dry_run:
            options["dryRun"] = ["All"]
        if grace_period is not None:
            options["gracePeriodSeconds"] = grace_period
        params = {"labelSelector": label_selector} if label_selector else None
        return await self.call("DELETE", path, options, params=params, ok=(404,) if missing_ok else ())

    async def watch(
        self, path: str, *, resource_version: str | None = None, within: float = 300
    ) -> AsyncIterator[Obj]:
        """Watch events ({type, object}) until the server ends the stream."""
        params = {"watch": "true", "allowWatchBookmarks": "false", "timeoutSeconds": str(int(within))}
        if resource_version:
            params["resourceVersion"] = resource_version
        async with self._client().get(
            self.host + path,
            params=params,
            ssl=self._ssl,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=within + 30),
        ) as resp:
            if resp.status >= 400:
                raise ApiError("WATCH", path, resp.status, await resp.text())
            async for line in resp.content:
                if line.strip():
                    yield json.loads(line)

    async def watch_lines(
        self, path: str, *, resource_version: str, within: float = 300
    ) -> AsyncIterator[bytes]:
        """The raw lines of a watch (one event each, not parsed: for throughput benchmarks)."""
        params = {"watch": "true", "resourceVersion": resource_version, "timeoutSeconds": str(int(within))}
        async with self._client().get(
            self.host + path,
            params=params,
            ssl=self._ssl,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=within + 30),
        ) as resp:
            if resp.status >= 400:
                raise ApiError("WATCH", path, resp.status, await resp.text())
            async for line in resp.content:
                yield line

    async def list_and_watch(self, path: str) -> AsyncIterator[Obj]:
        """Every object as ADDED first, then the live events; re-lists when the watch ends or
        expires, so a consumer sees a consistent stream without bookkeeping of its own."""
        seen: dict[str, str] = {}
        while True:
            body = (await self.call("GET", path)).body
            rv = body["metadata"]["resourceVersion"]
            for item in body.get("items") or []:
                uid = item["metadata"]["uid"]
                if seen.get(uid) != item["metadata"].get("resourceVersion"):
                    seen[uid] = item["metadata"].get("resourceVersion", "")
                    yield {"type": "ADDED", "object": item}
            try:
                async for event in self.watch(path, resource_version=rv):
                    if event.get("type") == "ERROR":
                        break
                    obj = event["object"]
                    seen[obj["metadata"]["uid"]] = obj["metadata"].get("resourceVersion", "")
                    yield event
            except (TimeoutError, aiohttp.ClientError, ApiError):
                await asyncio.sleep(0.2)  # the server went away for a moment: list again
