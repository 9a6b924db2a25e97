"""HTTP for the informer: raw LIST and WATCH bytes through the operator's `kubernetes.aio` client.

Requests go through `ApiClient.param_serialize` + `call_api`, so the endpoint, TLS (CA, client
certificates), the bearer token and its refresh hook are exactly the rest of the operator's.
Responses are read as bytes and never deserialized into the generated models (too slow).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, Mapping
from typing import Any, Protocol

import aiohttp
import msgspec
from kubernetes.aio import client as k8s

from capo_operator.kube.models import Status

_STATUS = msgspec.json.Decoder(Status)


class ApiError(Exception):
    """A non-200 answer from the API server, with its Status when it sent one."""

    def __init__(self, status: int, reason: str = "", message: str = "", retry_after: float | None = None):
        super().__init__(f"{status} {reason}: {message}".strip())
        self.status = status
        self.reason = reason
        self.message = message
        self.retry_after = retry_after
        self.continue_token = ""  # set on a 410 for an expired continue token
        self.during_continue = False  # the request carried a continue token

    @classmethod
    def from_body(cls, status: int, body: bytes, retry_after: str | None = None) -> ApiError:
        try:
            decoded = _STATUS.decode(body)
            error = cls(status, decoded.reason, decoded.message)
            error.continue_token = decoded.metadata.continue_
        except (msgspec.DecodeError, msgspec.ValidationError):
            error = cls(status, "", body[:200].decode(errors="replace"))
        if retry_after:
            with contextlib.suppress(ValueError):
                error.retry_after = float(retry_after)
        return error

    @property
    def expired(self) -> bool:
        """410 Gone/Expired: a too-old resourceVersion or continue token."""
        return self.status == 410


async def send_json(
    api: k8s.ApiClient, method: str, path: str, body: Any, *, content_type: str = "application/json"
) -> bytes:
    """One write through the client's own endpoint, TLS, credentials and 401/403 handling
    (`call_api`) without the generated method around it: no per-call argument validation, no model
    (de)serialization. `body` is JSON data (a list for a JSON patch). Returns the answer's body;
    ApiError for a status of 300 or more."""
    method, url, headers, _body, _post = await api.param_serialize(
        method,
        path,
        header_params={"Content-Type": content_type, "Accept": "application/json"},
        auth_settings=["BearerToken"],
    )
    response = await api.call_api(method, url, header_params=headers, body=body)
    try:
        data: bytes = await response.read()
    finally:
        response.response.release()
    if response.status >= 300:
        raise ApiError.from_body(response.status, data, response.headers.get("Retry-After"))
    return data


class Transport(Protocol):
    """What an informer needs from the API server (a fake implements it in the unit tests)."""

    async def get(self, path: str, params: Mapping[str, str]) -> bytes:
        """A GET answered 200: its body. ApiError otherwise."""
        ...

    def stream(self, path: str, params: Mapping[str, str], seconds: float) -> AsyncGenerator[bytes]:
        """A watch taking at most `seconds` in all: each non-empty line of the response body.
        ApiError for a non-200 answer; the iteration ends when the server closes the stream."""
        ...


class KubeTransport:
    """`Transport` over a `kubernetes.aio.client.ApiClient` (shared with the rest of the operator)."""

    def __init__(self, api: k8s.ApiClient, *, request_timeout: float = 60.0) -> None:
        self.api = api
        self.request_timeout = request_timeout

    async def _request(self, path: str, params: Mapping[str, str], limits: aiohttp.ClientTimeout) -> Any:
        method, url, headers, _body, _post = await self.api.param_serialize(
            "GET",
            path,
            query_params=list(params.items()),
            header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"],
        )
        response = await self.api.call_api(method, url, header_params=headers, _request_timeout=limits)
        if response.status != 200:
            try:
                body = await response.read()
            finally:
                response.response.release()
            raise ApiError.from_body(response.status, body, response.headers.get("Retry-After"))
        return response

    async def get(self, path: str, params: Mapping[str, str]) -> bytes:
        response = await self._request(path, params, aiohttp.ClientTimeout(total=self.request_timeout))
        try:
            data: bytes = await response.read()
        finally:
            response.response.release()
        return data

    async def stream(self, path: str, params: Mapping[str, str], seconds: float) -> AsyncGenerator[bytes]:
        # No read timeout between chunks (a quiet watch is normal); the total bounds a dead peer.
        limits = aiohttp.ClientTimeout(total=seconds, sock_connect=self.request_timeout)
        response = await self._request(path, params, limits)
        raw: aiohttp.ClientResponse = response.response
        try:
            buffer = b""
            # Split lines ourselves: aiohttp's readline refuses lines over 128 KiB, and a pod with
            # big annotations can be larger than that.
            async for chunk in raw.content.iter_any():
                buffer = buffer + chunk if buffer else chunk
                start = 0
                while (end := buffer.find(b"\n", start)) >= 0:
                    if end > start:
                        yield buffer[start:end]
                    start = end + 1
                buffer = buffer[start:]
            if buffer.strip():
                yield buffer
        finally:
            # A watch left half-read cannot go back to the pool.
            raw.close()
