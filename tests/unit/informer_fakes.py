"""A fake API server for informer unit tests: the `Transport` protocol over in-memory state.

It keeps objects with a global resourceVersion and a bounded event history, pages lists from a
snapshot per continue token, and streams watch events; tests can expire tokens, compact the
history (410 on watch), drop streams and fail requests.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import json
from collections.abc import AsyncGenerator, Mapping
from typing import Any

from capo_operator.kube import ApiError

Obj = dict[str, Any]


def pod(
    name: str,
    namespace: str = "ns",
    *,
    ips: tuple[str, ...] = (),
    phase: str = "Running",
    host_network: bool = False,
    deleting: bool = False,
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    uid: str | None = None,
) -> Obj:
    metadata: Obj = {
        "name": name,
        "namespace": namespace,
        "uid": uid or f"uid-{namespace}-{name}",
        "labels": labels or {},
        "annotations": annotations or {},
    }
    if deleting:
        metadata["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    status: Obj = {"phase": phase}
    if ips:
        status["podIP"] = ips[0]
        status["podIPs"] = [{"ip": ip} for ip in ips]
    return {
        "metadata": metadata,
        "spec": {"nodeName": "node-1", "hostNetwork": host_network, "containers": [{"name": "c"}]},
        "status": status,
    }


def _key(obj: Obj) -> str:
    meta = obj["metadata"]
    return f"{meta['namespace']}/{meta['name']}" if meta.get("namespace") else meta["name"]


class FakeKube:
    """In-memory API server for one resource."""

    def __init__(self, history: int = 1000) -> None:
        self.rv = 0
        self.objects: dict[str, Obj] = {}
        self.history: list[tuple[int, str, Obj]] = []
        self.history_size = history
        self.floor = 0  # events with rv > floor are in history
        self._snapshots: dict[str, tuple[int, list[Obj]]] = {}
        self._tokens = itertools.count(1)
        self._streams: set[asyncio.Queue[bytes | None]] = set()
        self.expire_next_continue = 0
        self.fail_next: list[ApiError] = []
        self.lists = 0
        self.watch_params: list[dict[str, str]] = []

    # -- state changes ----------------------------------------------------------------------

    def _emit(self, kind: str, obj: Obj) -> None:
        self.history.append((self.rv, kind, obj))
        while len(self.history) > self.history_size:
            self.floor = self.history.pop(0)[0]
        line = json.dumps({"type": kind, "object": obj}).encode()
        for queue in self._streams:
            queue.put_nowait(line)

    def put(self, obj: Obj) -> Obj:
        obj = copy.deepcopy(obj)
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)
        key = _key(obj)
        kind = "MODIFIED" if key in self.objects else "ADDED"
        self.objects[key] = obj
        self._emit(kind, obj)
        return obj

    def delete(self, key: str) -> None:
        obj = copy.deepcopy(self.objects.pop(key))
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)
        self._emit("DELETED", obj)

    def put_silently(self, obj: Obj) -> None:
        """A change the watchers never hear of (as if made while disconnected, then compacted)."""
        obj = copy.deepcopy(obj)
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)
        self.objects[_key(obj)] = obj
        self.compact()
        self.drop_watches()

    def delete_silently(self, key: str) -> None:
        self.objects.pop(key)
        self.rv += 1
        self.compact()
        self.drop_watches()

    def compact(self) -> None:
        """Forget the history: a watch from an older resourceVersion gets 410."""
        self.floor = self.rv
        self.history.clear()
        self._snapshots.clear()

    def bookmark(self) -> None:
        line = json.dumps(
            {"type": "BOOKMARK", "object": {"kind": "Pod", "metadata": {"resourceVersion": str(self.rv)}}}
        ).encode()
        for queue in self._streams:
            queue.put_nowait(line)

    def send_raw(self, line: bytes) -> None:
        for queue in self._streams:
            queue.put_nowait(line)

    def drop_watches(self) -> None:
        for queue in self._streams:
            queue.put_nowait(None)

    @property
    def watching(self) -> int:
        return len(self._streams)

    # -- Transport --------------------------------------------------------------------------

    async def get(self, path: str, params: Mapping[str, str]) -> bytes:
        await asyncio.sleep(0)
        if self.fail_next:
            raise self.fail_next.pop(0)
        limit = int(params.get("limit", "0"))
        token = params.get("continue", "")
        if token:
            if self.expire_next_continue:
                self.expire_next_continue -= 1
                self._snapshots.pop(token, None)
            if token not in self._snapshots:
                raise ApiError(410, "Expired", "The provided continue parameter is too old")
            rv, rest = self._snapshots.pop(token)
        else:
            self.lists += 1
            rv, rest = self.rv, [self.objects[k] for k in sorted(self.objects)]
        page, rest = (rest[:limit], rest[limit:]) if limit else (rest, [])
        meta: Obj = {"resourceVersion": str(rv)}
        if rest:
            next_token = f"t{next(self._tokens)}"
            self._snapshots[next_token] = (rv, rest)
            meta["continue"] = next_token
        return json.dumps({"kind": "PodList", "metadata": meta, "items": page}).encode()

    async def stream(self, path: str, params: Mapping[str, str], seconds: float) -> AsyncGenerator[bytes]:
        await asyncio.sleep(0)
        self.watch_params.append(dict(params))
        if self.fail_next:
            raise self.fail_next.pop(0)
        since = int(params["resourceVersion"])
        queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        if since < self.floor:
            status = {
                "kind": "Status",
                "code": 410,
                "reason": "Expired",
                "message": "too old resource version",
            }
            yield json.dumps({"type": "ERROR", "object": status}).encode()
            return
        for rv, kind, obj in self.history:
            if rv > since:
                queue.put_nowait(json.dumps({"type": kind, "object": obj}).encode())
        self._streams.add(queue)
        try:
            while (line := await queue.get()) is not None:
                yield line
        finally:
            self._streams.discard(queue)
