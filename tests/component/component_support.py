"""Helpers of the component tests (a uniquely named module: tests/ has no packages)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from kubernetes.aio import client, config

from kube_emulator.testing import Emulator

NAMESPACE = "capo-system"
ROOT = Path(__file__).resolve().parents[2]
RECORD_CRD = ROOT / "manifests" / "crd" / "capo.io_reservedips.yaml"

# Used only while manifests/crd/capo.io_reservedips.yaml does not exist yet.
MINIMAL_RECORD_CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "reservedips.capo.io"},
    "spec": {
        "group": "capo.io",
        "scope": "Cluster",
        "names": {
            "plural": "reservedips",
            "singular": "reservedip",
            "kind": "ReservedIP",
            "listKind": "ReservedIPList",
            "shortNames": ["rip"],
        },
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                        },
                    }
                },
            }
        ],
    },
}


@dataclass
class Calls:
    """Every request one ApiClient sent: (method, path, status)."""

    log: list[tuple[str, str, int]] = field(default_factory=list)

    def count(self, method: str | None = None, path_contains: str = "", status: int | None = None) -> int:
        return sum(
            1
            for m, p, s in self.log
            if (method is None or m == method) and path_contains in p and (status is None or s == status)
        )

    def clear(self) -> None:
        self.log.clear()


def record_calls(api: client.ApiClient) -> Calls:
    calls = Calls()
    rest: Any = api.rest_client  # untyped in the client
    original = rest.request

    async def request(method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        response = await original(method, url, *args, **kwargs)
        calls.log.append((method.upper(), urlsplit(url).path, response.status))
        return response

    rest.request = request
    return calls


@dataclass
class Cluster:
    emu: Emulator
    api: client.ApiClient
    calls: Calls
    _extra: list[client.ApiClient] = field(default_factory=list)

    @property
    def custom(self) -> client.CustomObjectsApi:
        return client.CustomObjectsApi(self.api)

    async def new_api(self) -> tuple[client.ApiClient, Calls]:
        """Another client, as another replica would have."""
        api = await api_for(self.emu)
        self._extra.append(api)
        return api, record_calls(api)


async def api_for(emu: Emulator) -> client.ApiClient:
    cfg = client.Configuration()
    await config.load_kube_config(config_file=str(emu.kubeconfig_path), client_configuration=cfg)
    return client.ApiClient(cfg)


async def install(api: client.ApiClient) -> None:
    custom = client.CustomObjectsApi(api)
    crd = yaml.safe_load(RECORD_CRD.read_text()) if RECORD_CRD.exists() else MINIMAL_RECORD_CRD
    await custom.create_cluster_custom_object("apiextensions.k8s.io", "v1", "customresourcedefinitions", crd)
    namespace = client.V1Namespace(metadata=client.V1ObjectMeta(name=NAMESPACE))
    await client.CoreV1Api(api).create_namespace(namespace)
    # The CRD is served once discovery lists it (a real server takes a moment to establish it).
    for _ in range(50):
        try:
            await custom.list_cluster_custom_object("capo.io", "v1", "reservedips")
            return
        except client.ApiException:
            await asyncio.sleep(0.05)
    raise RuntimeError("reservedips.capo.io never became served")


async def eventually(
    check: Callable[[], Awaitable[bool] | bool], within: float = 5.0, interval: float = 0.05
) -> float:
    """Wait until `check()` is true; returns the seconds it took. Fails the test on timeout."""
    start = time.monotonic()
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return time.monotonic() - start
        if time.monotonic() - start > within:
            pytest.fail(f"condition not met within {within}s")
        await asyncio.sleep(interval)
