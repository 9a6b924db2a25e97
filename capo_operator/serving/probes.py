"""The probe endpoints (`/healthz`, `/readyz`) and the metrics endpoint (`/metrics`)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from capo_operator.kube.access import Permission


class Readiness:
    """What `/readyz` reports, in the order a person should fix it: permissions found missing by
    the start-up check (critical ones only), the serving certificate, the caches."""

    def __init__(self, synced: asyncio.Event) -> None:
        self.synced = synced  # set once the informers have listed (`kube.caches.Caches`)
        self.cert_ready = False
        self.missing_permissions: list[Permission] = []

    def check(self) -> tuple[bool, str]:
        critical = [p.describe() for p in self.missing_permissions if p.critical]
        if critical:
            return False, "missing permissions (see the log): " + "; ".join(critical)
        if not self.cert_ready:
            return False, "the webhook serving certificate is not loaded"
        if not self.synced.is_set():
            return False, "the pod, namespace and record caches are not synced yet"
        return True, "ready"


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
