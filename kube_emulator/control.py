"""Control endpoints under ``/_emulator/``: kubelet helpers, services, faults, allocator, admission log,
ServiceAccount token expiry, pod churn for benchmarks (``pods/touch``, see ``churn``). Test plumbing:
served over the same TLS, without authentication."""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

from aiohttp import web

from . import errors as E
from .apiserver import check_write_latency
from .churn import touch_pods
from .http_api import error_response, json_response

if TYPE_CHECKING:
    from .server import Cluster


def add_routes(app: web.Application, cluster: Cluster) -> None:
    async def body(request: web.Request) -> dict[str, Any]:
        raw = await request.read()
        try:
            data = json.loads(raw or b"{}")
        except ValueError as exc:
            raise E.bad_request(f"invalid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise E.bad_request("expected a JSON object")
        return data

    def guarded(fn: Any) -> Any:
        async def wrapper(request: web.Request) -> web.StreamResponse:
            try:
                result: web.StreamResponse = await fn(request)
                return result
            except E.ApiError as exc:
                return error_response(exc)

        return wrapper

    async def kubelet_evict(request: web.Request) -> web.Response:
        data = await body(request)
        pod = await cluster.kubelet.terminate(
            data["namespace"],
            data["name"],
            "Evicted",
            data.get("message")
            or "The node was low on resource: memory. Threshold quantity: 100Mi, available: 50Mi. ",
            evicted=True,
        )
        return json_response(pod)

    async def kubelet_fail(request: web.Request) -> web.Response:
        data = await body(request)
        reason = data.get("reason") or "Error"
        pod = await cluster.kubelet.terminate(
            data["namespace"],
            data["name"],
            reason,
            data.get("message") or f"pod failed: {reason}",
            evicted=False,
        )
        return json_response(pod)

    async def kubelet_pause(request: web.Request) -> web.Response:
        data = await body(request)
        if data.get("paused", True):
            cluster.kubelet.paused.clear()
        else:
            cluster.kubelet.paused.set()
        return json_response({"paused": not cluster.kubelet.paused.is_set()})

    async def services(request: web.Request) -> web.Response:
        data = await body(request)
        port = data.get("port")
        cluster.services.set(
            data["namespace"], data["name"], int(port) if port is not None else None, data["url"]
        )
        return json_response(
            {"services": {f"{k[0]}/{k[1]}:{k[2]}": v for k, v in cluster.services.targets.items()}}
        )

    async def add_fault(request: web.Request) -> web.Response:
        fault = cluster.faults.add(await body(request))
        if fault.drop_watch:
            pattern = fault.path

            def hit(path: str) -> bool:
                return not pattern or re.search(pattern, path) is not None

            closed = cluster.http.drop_watches(hit)
            if fault.times is not None:
                fault.times -= closed
                if fault.times <= 0:
                    cluster.faults.remove(fault.id)
        return json_response({"id": fault.id, "fault": fault.to_dict()})

    async def list_faults(request: web.Request) -> web.Response:
        return json_response({"faults": [f.to_dict() for f in cluster.faults.faults.values()]})

    async def clear_faults(request: web.Request) -> web.Response:
        cluster.faults.clear()
        return json_response({"faults": []})

    async def delete_fault(request: web.Request) -> web.Response:
        if not cluster.faults.remove(int(request.match_info["id"])):
            raise E.ApiError(404, "no such fault")
        return json_response({"deleted": int(request.match_info["id"])})

    async def allocator(request: web.Request) -> web.Response:
        return json_response(cluster.allocator.snapshot())

    async def admission_log(request: web.Request) -> web.Response:
        return json_response({"entries": cluster.admission.log})

    async def clear_admission_log(request: web.Request) -> web.Response:
        cluster.admission.log.clear()
        return json_response({"entries": []})

    async def expire_tokens(request: web.Request) -> web.Response:
        data = await body(request)
        if not isinstance(data.get("namespace"), str) or not isinstance(data.get("name"), str):
            raise E.bad_request('expected {"namespace": "...", "name": "..."} naming a ServiceAccount')
        count = cluster.auth.expire_tokens(data["namespace"], data["name"])
        return json_response({"expired": count})

    async def get_write_latency(request: web.Request) -> web.Response:
        return json_response({"seconds": cluster.api.write_latency})

    async def set_write_latency(request: web.Request) -> web.Response:
        data = await body(request)
        try:
            cluster.api.write_latency = check_write_latency(data.get("seconds"))
        except ValueError as exc:
            raise E.bad_request(str(exc)) from exc
        return json_response({"seconds": cluster.api.write_latency})

    async def pods_touch(request: web.Request) -> web.Response:
        data = await body(request)
        count, rate, namespace = data.get("count"), data.get("rate"), data.get("namespace")
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise E.bad_request('expected {"count": N} with N >= 0 (and optionally "rate", "namespace")')
        if rate is not None and (isinstance(rate, bool) or not isinstance(rate, int | float) or rate <= 0):
            raise E.bad_request('"rate" must be a positive number of writes per second')
        if namespace is not None and not isinstance(namespace, str):
            raise E.bad_request('"namespace" must be a string')
        try:
            churn = await touch_pods(cluster.store, count, rate=rate, namespace=namespace)
        except ValueError as exc:
            raise E.bad_request(str(exc)) from exc
        return json_response({"events": churn.events, "seconds": churn.seconds})

    routes = [
        web.post("/_emulator/serviceaccounts/expire-tokens", guarded(expire_tokens)),
        web.post("/_emulator/kubelet/evict", guarded(kubelet_evict)),
        web.post("/_emulator/kubelet/fail", guarded(kubelet_fail)),
        web.post("/_emulator/kubelet/pause", guarded(kubelet_pause)),
        web.post("/_emulator/services", guarded(services)),
        web.post("/_emulator/faults", guarded(add_fault)),
        web.get("/_emulator/faults", guarded(list_faults)),
        web.delete("/_emulator/faults", guarded(clear_faults)),
        web.delete("/_emulator/faults/{id}", guarded(delete_fault)),
        web.get("/_emulator/allocator", guarded(allocator)),
        web.get("/_emulator/admission-log", guarded(admission_log)),
        web.delete("/_emulator/admission-log", guarded(clear_admission_log)),
        web.get("/_emulator/write-latency", guarded(get_write_latency)),
        web.post("/_emulator/write-latency", guarded(set_write_latency)),
        web.post("/_emulator/pods/touch", guarded(pods_touch)),
    ]
    app.add_routes(routes)
