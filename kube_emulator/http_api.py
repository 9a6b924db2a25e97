"""The HTTP face of the emulator: kube-apiserver's REST paths, discovery and watch streams."""

from __future__ import annotations

import asyncio
import base64
import binascii
import bisect
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec
from aiohttp import web

from . import discovery
from . import errors as E
from .context import RequestContext, UserInfo
from .faults import fault_error
from .resources import ResourceType
from .selectors import fields_match, matches, parse_field_selector, parse_label_selector
from .store import Obj, TooOld, Watcher

if TYPE_CHECKING:
    from .server import Cluster

log = logging.getLogger("kube_emulator.http")

CTX_KEY = web.RequestKey("ctx", RequestContext)
# Set by the authentication middleware (auth.py) before any handler runs.
USER_KEY = web.RequestKey("user", UserInfo)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


_ENCODER = msgspec.json.Encoder()


def dumpb(obj: Any) -> bytes:
    """Compact JSON, UTF-8 as kube-apiserver writes it. msgspec rather than the json module: a
    large object (an IPReservation of a few hundred entries, returned by every write of it) took
    the json module a quarter of the emulator's time, a cost the Go server does not have."""
    try:
        return _ENCODER.encode(obj)
    except (msgspec.EncodeError, OverflowError):  # e.g. an integer beyond 64 bits
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


# Most watch events sent in one write (a burst is sent in chunks of this many).
WATCH_BATCH = 100


def json_response(
    body: Any, status: int = 200, warnings: list[str] | None = None, headers: dict[str, str] | None = None
) -> web.Response:
    resp = web.Response(body=dumpb(body), status=status, content_type="application/json")
    for key, value in (headers or {}).items():
        resp.headers[key] = value
    for text in warnings or []:
        resp.headers.add("Warning", f'299 - "{text}"')
    return resp


def error_response(exc: E.ApiError, warnings: list[str] | None = None) -> web.Response:
    return json_response(exc.status(), exc.code, warnings, exc.headers)


@dataclass
class Target:
    rt: ResourceType
    namespace: str | None
    name: str | None
    subresource: str


def _user(request: web.Request) -> UserInfo:
    user: UserInfo | None = request.get(USER_KEY)
    if user is None:
        raise E.ApiError(401, "Unauthorized")  # no authentication middleware ran: trust nobody
    return user


def _truthy(value: str | None) -> bool:
    return value is not None and value.lower() in ("true", "1")


async def _error_event(request: web.Request, exc: E.ApiError) -> web.StreamResponse:
    """A watch answered with 200 and a single ERROR event (how the real server reports a 410)."""
    resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    await resp.write(dumpb({"type": "ERROR", "object": exc.status()}) + b"\n")
    await resp.write_eof()
    return resp


class Api:
    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.watchers: set[Watcher] = set()

    # Middleware ------------------------------------------------------------------------------

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.monotonic()
        if request.path.startswith("/_emulator/"):
            return await handler(request)
        target = request.path_qs
        fault = self.cluster.faults.api_fault(request.method, target)
        if fault is not None:
            if fault.latency:
                await asyncio.sleep(fault.latency)
            if fault.status:
                log.info("fault %s: %s %s -> %s", fault.id, request.method, target, fault.status)
                if fault.watch_event and _truthy(request.query.get("watch")):
                    return await _error_event(request, fault_error(fault))
                return error_response(fault_error(fault))
        try:
            response = await handler(request)
        except E.ApiError as exc:
            ctx = request.get(CTX_KEY)
            # Admission warnings reach the client even when the request fails.
            response = error_response(exc, ctx.warnings if isinstance(ctx, RequestContext) else None)
        except web.HTTPException:
            raise
        except Exception as exc:
            log.exception("internal error on %s %s", request.method, target)
            response = error_response(E.ApiError(500, f"Internal error occurred: {exc}"))
        log.debug(
            "%s %s -> %s (%.1f ms)",
            request.method,
            target,
            response.status,
            (time.monotonic() - started) * 1000,
        )
        return response

    # Routing ---------------------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path.rstrip("/") or "/"
        if path in ("/healthz", "/readyz", "/livez"):
            return web.Response(text="ok")
        if path == "/version":
            return json_response(discovery.VERSION_INFO)
        parts = [p for p in path.split("/") if p]
        if not parts:
            return json_response({"paths": ["/api", "/api/v1", "/apis", "/healthz", "/readyz", "/version"]})
        registry = self.cluster.registry
        if parts[0] == "api":
            if len(parts) == 1:
                return self._get_only(request, discovery.api_versions(request.host))
            group, version, rest = "", parts[1], parts[2:]
        elif parts[0] == "apis":
            if len(parts) == 1:
                return self._get_only(request, discovery.api_group_list(registry))
            if len(parts) == 2:
                doc = discovery.api_group(registry, parts[1])
                if doc is None:
                    raise E.resource_not_found()
                return self._get_only(request, doc)
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise E.resource_not_found()
        if not rest:
            doc = discovery.api_resource_list(registry, group, version)
            if doc is None:
                raise E.resource_not_found()
            return self._get_only(request, doc)
        target = self._resolve(group, version, rest)
        return await self._dispatch(request, target)

    def _get_only(self, request: web.Request, body: Any) -> web.Response:
        if request.method != "GET":
            raise E.method_not_allowed()
        return json_response(body)

    def _resolve(self, group: str, version: str, rest: list[str]) -> Target:
        registry = self.cluster.registry
        namespace: str | None = None
        if rest[0] == "namespaces" and len(rest) >= 3:
            rt = registry.get(group, version, rest[2])
            if rt is not None and rt.namespaced:
                namespace, rest = rest[1], rest[2:]
        rt = registry.get(group, version, rest[0])
        if rt is None or len(rest) > 3:
            raise E.resource_not_found()
        if rt.namespaced and namespace is None and len(rest) > 1:
            raise E.resource_not_found()  # a namespaced object needs its namespace in the path
        name = rest[1] if len(rest) > 1 else None
        sub = rest[2] if len(rest) > 2 else ""
        if sub and rt.subresource(sub) is None:
            raise E.resource_not_found()
        return Target(rt, namespace, name, sub)

    async def _dispatch(self, request: web.Request, t: Target) -> web.StreamResponse:
        method = request.method
        q = request.query
        ctx = RequestContext(user=_user(request), dry_run=q.get("dryRun") == "All")
        request[CTX_KEY] = ctx
        if "dryRun" in q and q["dryRun"] not in ("All", ""):
            raise E.bad_request(f'Invalid value: "{q["dryRun"]}": supported values: "All"')
        api = self.cluster.api
        rt = t.rt
        virtual = self.cluster.virtual.get((rt.key, t.subresource))
        if virtual is not None:
            # Create-only and never stored (TokenRequest, SelfSubjectAccessReview).
            if method != "POST" or (t.name is None) != (not t.subresource):
                raise E.method_not_allowed()
            return json_response(await virtual(t, await self._body(request), ctx), 201)
        if t.name is None:
            if method == "GET":
                if _truthy(q.get("watch")):
                    self._need_verb(rt, "watch")
                    return await self._watch(request, t)
                self._need_verb(rt, "list")
                return self._list(request, t)
            if method == "POST":
                self._need_verb(rt, "create")
                body = await self._body(request)
                obj = await api.create(rt, t.namespace, body, ctx)
                return json_response(self._show(rt, obj), 201, ctx.warnings)
            if method == "DELETE":
                self._need_verb(rt, "deletecollection")
                options = await self._delete_options(request)
                labels = parse_label_selector(q.get("labelSelector"))
                fields = parse_field_selector(q.get("fieldSelector"), rt.group, rt.plural)
                items = await api.delete_collection(rt, t.namespace, labels, fields, options, ctx)
                return json_response(self._list_body(rt, items), 200, ctx.warnings)
            raise E.method_not_allowed()
        name = t.name
        if t.subresource == "eviction":
            if method != "POST":
                raise E.method_not_allowed()
            body = await self._body(request)
            result = await api.evict(rt, t.namespace or "", name, body, ctx)
            return json_response(result, 201, ctx.warnings)
        if t.subresource not in ("", "status"):
            raise E.method_not_allowed()
        if method == "GET":
            self._need_verb(rt, "get")
            return json_response(self._show(rt, api.get(rt, t.namespace, name)))
        if method == "PUT":
            self._need_verb(rt, "update")
            body = await self._body(request)
            obj = await api.update(rt, t.namespace, name, body, ctx, t.subresource)
            return json_response(self._show(rt, obj), 200, ctx.warnings)
        if method == "PATCH":
            self._need_verb(rt, "patch")
            raw = await request.read()
            obj = await api.patch(
                rt, t.namespace, name, request.headers.get("Content-Type", ""), raw, ctx, t.subresource
            )
            return json_response(self._show(rt, obj), 200, ctx.warnings)
        if method == "DELETE" and not t.subresource:
            self._need_verb(rt, "delete")
            options = await self._delete_options(request)
            if options.get("dryRun") == ["All"]:
                ctx.dry_run = True
            obj, _removed = await api.delete(rt, t.namespace, name, options, ctx)
            status = 202 if options.get("orphanDependents") is False and not _removed else 200
            return json_response(self._show(rt, obj), status, ctx.warnings)
        raise E.method_not_allowed()

    @staticmethod
    def _need_verb(rt: ResourceType, verb: str) -> None:
        if verb not in rt.verbs:
            raise E.method_not_allowed()

    @staticmethod
    async def _body(request: web.Request) -> Any:
        ctype = request.headers.get("Content-Type", "application/json").split(";")[0].strip()
        if ctype not in ("application/json", "", "*/*"):
            raise E.unsupported_media_type(ctype)
        raw = await request.read()
        try:
            return json.loads(raw or b"{}")
        except ValueError as exc:
            raise E.bad_request(f"couldn't get version/kind; json parse error: {exc}") from exc

    async def _delete_options(self, request: web.Request) -> Obj:
        options: Obj = {}
        raw = await request.read()
        if raw.strip():
            try:
                body = json.loads(raw)
            except ValueError as exc:
                raise E.bad_request(f"json parse error: {exc}") from exc
            if isinstance(body, dict):
                options.update(body)
        q = request.query
        if "gracePeriodSeconds" in q:
            try:
                options["gracePeriodSeconds"] = int(q["gracePeriodSeconds"])
            except ValueError as exc:
                raise E.bad_request("gracePeriodSeconds must be an integer") from exc
        if "propagationPolicy" in q:
            options["propagationPolicy"] = q["propagationPolicy"]
        if "orphanDependents" in q:
            options["orphanDependents"] = _truthy(q["orphanDependents"])
        if q.get("dryRun") == "All":
            options["dryRun"] = ["All"]
        policy = options.get("propagationPolicy")
        if policy not in (None, "Orphan", "Background", "Foreground"):
            raise E.bad_request(
                f'Unsupported value: "{policy}": supported values: "Foreground", "Background", "Orphan"'
            )
        return options

    # Reading ---------------------------------------------------------------------------------

    def _show(self, rt: ResourceType, obj: Obj) -> Obj:
        return self.cluster.api.present(rt, obj)

    def _list_body(self, rt: ResourceType, items: list[Obj], rv: int | None = None) -> Obj:
        builtin = rt.crd_name is None
        shown = []
        for obj in items:
            if builtin:
                # Items of built-in lists carry no kind/apiVersion on the real server.
                shown.append({k: v for k, v in obj.items() if k not in ("kind", "apiVersion")})
            else:
                shown.append(self._show(rt, obj))
        return {
            "kind": f"{rt.kind}List",
            "apiVersion": rt.api_version,
            "metadata": {"resourceVersion": str(self.cluster.store.rv if rv is None else rv)},
            "items": shown,
        }

    def _list(self, request: web.Request, t: Target) -> web.Response:
        q = request.query
        labels = parse_label_selector(q.get("labelSelector"))
        fields = parse_field_selector(q.get("fieldSelector"), t.rt.group, t.rt.plural)
        limit = 0
        if "limit" in q:
            try:
                limit = int(q["limit"])
            except ValueError as exc:
                raise E.bad_request("limit must be an integer") from exc
        token = q.get("continue") or ""
        rv_text = q.get("resourceVersion") or ""
        match = q.get("resourceVersionMatch") or ""
        at = self._list_version(token, rv_text, match)
        start: tuple[str, str] | None = None
        if token:
            at, start = _decode_continue(token)
        store = self.cluster.store
        try:
            at, snapshot = store.snapshot(t.rt.key, None if at is None or at < 0 else at)
        except TooOld as exc:
            if not token:
                raise E.ApiError(410, "The resourceVersion for the provided list is too old.") from exc
            return self._expired_continue(start)
        ns = t.namespace
        if start is not None:
            begin = bisect.bisect_right(snapshot, start, key=lambda item: item[0])
        else:  # keys are sorted by namespace first: a namespace's objects are one run
            begin = bisect.bisect_left(snapshot, (ns, ""), key=lambda item: item[0]) if ns is not None else 0
        selective = bool(labels) or bool(fields)
        items: list[Obj] = []
        next_key: tuple[str, str] | None = None
        index = begin
        for index in range(begin, len(snapshot)):
            ident, obj = snapshot[index]
            if ns is not None and ident[0] != ns:
                if ident[0] > ns:
                    break
                continue
            if selective and not (
                matches(labels, (obj.get("metadata") or {}).get("labels")) and fields_match(fields, obj)
            ):
                continue
            items.append(obj)
            if limit > 0 and len(items) >= limit:
                next_key = ident
                break
        body = self._list_body(t.rt, items, at)
        if next_key is not None and index + 1 < len(snapshot):
            if ns is not None:
                end = bisect.bisect_left(snapshot, (ns + "\x00", ""), key=lambda item: item[0])
                rest = max(0, end - index - 1)
            else:
                rest = len(snapshot) - index - 1
            if rest:
                # The real server sets a token whenever keys remain (even if the selector will filter
                # them all out), and counts what remains only when no selector applies.
                body["metadata"]["continue"] = _encode_continue(at, next_key)
                if not selective:
                    body["metadata"]["remainingItemCount"] = rest
        return json_response(body)

    def _list_version(self, token: str, rv_text: str, match: str) -> int | None:
        """The resourceVersion a list reads at (None: the newest), from resourceVersion(Match)."""
        if match and match not in ("Exact", "NotOlderThan"):
            raise E.bad_request(f'Unsupported value: "{match}": supported values: "Exact", "NotOlderThan"')
        if match and not rv_text:
            raise E.bad_request("resourceVersionMatch is forbidden unless resourceVersion is provided")
        if token:
            if rv_text:
                raise E.bad_request("specifying resource version is not allowed when using continue")
            return None
        if not rv_text:
            return None  # the newest state (a consistent read)
        try:
            rv = int(rv_text)
        except ValueError as exc:
            raise E.bad_request(f"invalid resource version: {rv_text}") from exc
        if rv > self.cluster.store.rv:
            raise E.ApiError(
                504,
                f"Timeout: Too large resource version: {rv}, current: {self.cluster.store.rv}",
                reason="Timeout",
                details={
                    "causes": [
                        {"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}
                    ],
                    "retryAfterSeconds": 1,
                },
            )
        if match == "Exact":
            return rv
        return None  # "0" (any) and NotOlderThan: the newest state is always recent enough

    def _expired_continue(self, start: tuple[str, str] | None) -> web.Response:
        status = E.ApiError(
            410,
            "The provided continue parameter is too old to display a consistent list result. You can "
            "start a new list without the continue parameter, or use the continue token in this response "
            "to retrieve the remainder of the results. Continuing with the provided token results in an "
            "inconsistent list - objects that were created, modified, or deleted between the time the "
            "first chunk was returned and now may show up in the list.",
            reason="Expired",
        ).status()
        if start is not None:
            status.setdefault("metadata", {})["continue"] = _encode_continue(-1, start)
        return json_response(status, 410)

    async def _watch(self, request: web.Request, t: Target) -> web.StreamResponse:
        q = request.query
        rt = t.rt
        store = self.cluster.store
        labels = parse_label_selector(q.get("labelSelector"))
        fields = parse_field_selector(q.get("fieldSelector"), rt.group, rt.plural)
        since_text = q.get("resourceVersion") or ""
        send_initial = _truthy(q.get("sendInitialEvents"))
        try:
            since = None if since_text in ("", "0") or send_initial else int(since_text)
        except ValueError as exc:
            raise E.bad_request(f"invalid resource version: {since_text}") from exc
        bookmarks = _truthy(q.get("allowWatchBookmarks"))
        timeout = float(q["timeoutSeconds"]) if q.get("timeoutSeconds") else None
        watcher = Watcher(t.namespace, labels, fields, request.path_qs)
        resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        try:
            store.start_watch(rt.key, watcher, since)
        except E.ApiError as exc:
            # The real server answers an expired watch with 200 and a single ERROR event.
            return await _error_event(request, exc)
        if send_initial:
            watcher.queue.put_nowait(("INITIAL_END", {}))
        self.watchers.add(watcher)
        drop = self.cluster.faults.watch_drop(request.path_qs)
        loop = asyncio.get_running_loop()
        if drop is not None:
            loop.call_later(0.1, watcher.close)
        deadline = loop.time() + timeout if timeout is not None else None
        interval = self.cluster.options.bookmark_interval
        next_bookmark = loop.time() + interval
        # Events already queued are sent together, in one write (a burst of writes costs one
        # wait and one send instead of one per event); the stream is flushed before any wait.
        pending: list[bytes] = []
        try:
            await resp.prepare(request)
            while True:
                wait = next_bookmark - loop.time() if bookmarks else None
                if deadline is not None:
                    left = deadline - loop.time()
                    if left <= 0:
                        break
                    wait = left if wait is None else min(wait, left)
                try:
                    item = watcher.queue.get_nowait()
                except asyncio.QueueEmpty:
                    if pending:
                        await resp.write(b"".join(pending))
                        pending.clear()
                        continue
                    try:
                        item = (
                            await asyncio.wait_for(watcher.queue.get(), max(wait, 0))
                            if wait is not None
                            else await watcher.queue.get()
                        )
                    except TimeoutError:
                        if bookmarks and loop.time() >= next_bookmark:
                            next_bookmark = loop.time() + interval
                            await resp.write(self._bookmark(rt, store.rv, False))
                        continue
                if item is None:
                    break
                kind, obj = item
                if kind == "INITIAL_END":
                    pending.append(self._bookmark(rt, store.rv, True))
                else:
                    shown = self._show(rt, obj)
                    pending.append(dumpb({"type": kind, "object": shown}) + b"\n")
                if len(pending) >= WATCH_BATCH:
                    await resp.write(b"".join(pending))
                    pending.clear()
            if pending:
                await resp.write(b"".join(pending))
        except ConnectionResetError:
            return resp
        finally:
            watcher.closed = True
            store.stop_watch(rt.key, watcher)
            self.watchers.discard(watcher)
        with contextlib.suppress(ConnectionResetError, RuntimeError):
            await resp.write_eof()
        return resp

    @staticmethod
    def _bookmark(rt: ResourceType, rv: int, initial_end: bool) -> bytes:
        meta: Obj = {"resourceVersion": str(rv)}
        if initial_end:
            meta["annotations"] = {"k8s.io/initial-events-end": "true"}
        obj = {"kind": rt.kind, "apiVersion": rt.api_version, "metadata": meta}
        return dumpb({"type": "BOOKMARK", "object": obj}) + b"\n"

    def drop_watches(self, pattern_match: Callable[[str], bool]) -> int:
        count = 0
        for watcher in list(self.watchers):
            if pattern_match(watcher.path):
                watcher.close()
                count += 1
        return count

    def close_all_watches(self) -> None:
        for watcher in list(self.watchers):
            watcher.close()


def _encode_continue(rv: int, start: tuple[str, str]) -> str:
    """An opaque token like the real server's: base64 of the version and the last key returned.
    rv -1 continues from the newest state (the token handed out with an expired-continue 410)."""
    raw = json.dumps({"v": "meta.k8s.io/v1", "rv": rv, "start": list(start)}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode()


def _decode_continue(token: str) -> tuple[int | None, tuple[str, str]]:
    try:
        data = json.loads(base64.urlsafe_b64decode(token.encode() + b"=" * (-len(token) % 4)))
        rv, start = data["rv"], data["start"]
        if data.get("v") != "meta.k8s.io/v1" or not isinstance(rv, int) or len(start) != 2:
            raise ValueError("unknown token version")
        ns, name = str(start[0]), str(start[1])
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise E.bad_request(f"continue key is not valid: {exc}") from exc
    return (None if rv < 0 else rv), (ns, name)
