"""The probe endpoints (`/healthz`, `/readyz`) and the metrics endpoint (`/metrics`)."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest


def split_bind_address(address: str) -> tuple[str, int]:
    """Capo's "host:port" bind addresses; an empty host (":8080") means every interface, IPv6
    included (returned as "")."""
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def probes_app(
    ready: Callable[[], tuple[bool, str]], alive: Callable[[], tuple[bool, str]]
) -> web.Application:
    async def healthz(_: web.Request) -> web.Response:
        ok, why = alive()
        return web.Response(status=200 if ok else 500, text=why + "\n")

    async def readyz(_: web.Request) -> web.Response:
        ok, why = ready()
        return web.Response(status=200 if ok else 503, text=why + "\n")

    app = web.Application()
    app.add_routes([web.get("/healthz", healthz), web.get("/readyz", readyz)])
    return app


def metrics_app(registry: CollectorRegistry) -> web.Application:
    async def metrics(_: web.Request) -> web.Response:
        body = generate_latest(registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.add_routes([web.get("/metrics", metrics)])
    return app


async def serve(app: web.Application, address: str) -> web.AppRunner:
    host, port = split_bind_address(address)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, host or None, port, reuse_address=True).start()
    return runner
