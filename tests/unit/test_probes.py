"""`/healthz`, `/readyz` and `/metrics` over real sockets (port 0), and bind address parsing."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from fakes import make_record
from prometheus_client.parser import text_string_to_metric_families

from capo_operator.metrics import Metrics
from capo_operator.serving import probes


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        (":8080", ("", 8080)),
        ("127.0.0.1:9000", ("127.0.0.1", 9000)),
        ("localhost:8081", ("localhost", 8081)),
        ("[::1]:8081", ("::1", 8081)),
        ("[::]:8080", ("::", 8080)),
    ],
)
def test_split_bind_address(address: str, expected: tuple[str, int]) -> None:
    assert probes.split_bind_address(address) == expected


class Servers:
    def __init__(self) -> None:
        self.runners: list[web.AppRunner] = []

    async def start(self, app: web.Application, address: str = "127.0.0.1:0") -> int:
        runner = await probes.serve(app, address)
        self.runners.append(runner)
        port: int = runner.addresses[0][1]
        return port


@pytest.fixture
async def servers() -> AsyncIterator[Servers]:
    s = Servers()
    yield s
    for runner in s.runners:
        await runner.cleanup()


async def get(url: str) -> tuple[int, str, str]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, await response.text(), response.headers.get("Content-Type", "")


async def test_probes_answer_with_state_and_reason(servers: Servers) -> None:
    state = {"ready": (False, "the caches are not synced yet"), "alive": (True, "ok")}
    app = probes.probes_app(lambda: state["ready"], lambda: state["alive"])
    port = await servers.start(app)
    base = f"http://127.0.0.1:{port}"

    assert await get(f"{base}/readyz") == (
        503,
        "the caches are not synced yet\n",
        "text/plain; charset=utf-8",
    )
    assert (await get(f"{base}/healthz"))[:2] == (200, "ok\n")

    state["ready"] = (True, "ready")
    state["alive"] = (False, "the Kopf operator stopped")
    assert (await get(f"{base}/readyz"))[:2] == (200, "ready\n")
    assert (await get(f"{base}/healthz"))[:2] == (500, "the Kopf operator stopped\n")
    assert (await get(f"{base}/other"))[0] == 404


async def test_metrics_endpoint_serves_the_registry(servers: Servers) -> None:
    metrics = Metrics()
    records = [make_record(f"10.0.0.{i}") for i in range(3)]
    metrics.watch_records(lambda: records, lambda: 1000)
    port = await servers.start(probes.metrics_app(metrics.registry))

    status, body, content_type = await get(f"http://127.0.0.1:{port}/metrics")

    assert status == 200
    assert content_type.startswith("text/plain")
    values = {s.name: s.value for f in text_string_to_metric_families(body) for s in f.samples}
    assert values["ip_reserve_count"] == 3
    assert "ip_reserve_evictions_count" in values


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback on this host")
async def test_empty_host_listens_on_every_interface_ipv6_included(servers: Servers) -> None:
    # Port 0 would give the IPv4 and IPv6 sockets different ports: pick one free on both.
    with socket.socket(socket.AF_INET6) as probe:
        probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        probe.bind(("::", 0))
        port = probe.getsockname()[1]
    await servers.start(probes.probes_app(lambda: (True, "ready"), lambda: (True, "ok")), f":{port}")

    for url in (f"http://127.0.0.1:{port}/healthz", f"http://[::1]:{port}/healthz"):
        status, _, _ = await get(url)
        assert status == 200, url
