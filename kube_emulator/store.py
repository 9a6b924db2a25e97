"""In-memory object storage with a global resourceVersion and per-type bounded event history."""

from __future__ import annotations

import asyncio
import builtins
import copy
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .errors import gone
from .selectors import FieldSelector, Selector, fields_match, matches

Key = tuple[str, str]  # (group, plural)
Obj = dict[str, Any]


@dataclass
class WatchEvent:
    rv: int
    type: str  # ADDED, MODIFIED, DELETED
    obj: Obj
    old: Obj | None = None


class Watcher:
    """One watch stream's view of a bucket: filtered events queued for the HTTP writer."""

    def __init__(self, namespace: str | None, labels: Selector, fields: FieldSelector, path: str) -> None:
        self.namespace = namespace
        self.labels = labels
        self.fields = fields
        self.path = path  # path?query, for fault injection on watch streams
        self.queue: asyncio.Queue[tuple[str, Obj] | None] = asyncio.Queue()
        self.closed = False

    def selects(self, obj: Obj | None) -> bool:
        if obj is None:
            return False
        meta = obj.get("metadata") or {}
        if self.namespace is not None and meta.get("namespace") != self.namespace:
            return False
        return matches(self.labels, meta.get("labels")) and fields_match(self.fields, obj)

    def offer(self, event: WatchEvent) -> None:
        if self.closed:
            return
        now = self.selects(event.obj)
        if event.type == "MODIFIED":
            before = self.selects(event.old)
            if now and before:
                self.queue.put_nowait(("MODIFIED", event.obj))
            elif now:
                self.queue.put_nowait(("ADDED", event.obj))
            elif before and event.old is not None:
                # Leaving the selection: the real server sends DELETED with the previous state at the new rv.
                gone_obj = copy.deepcopy(event.old)
                gone_obj.setdefault("metadata", {})["resourceVersion"] = str(event.rv)
                self.queue.put_nowait(("DELETED", gone_obj))
        elif now:
            self.queue.put_nowait((event.type, event.obj))

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.queue.put_nowait(None)


@dataclass
class Bucket:
    history_size: int
    objects: dict[tuple[str, str], Obj] = field(default_factory=dict)
    history: deque[WatchEvent] = field(default_factory=deque)
    floor: int = 0  # every event with rv > floor is still in history
    watchers: set[Watcher] = field(default_factory=set)
    # Sorted states at a resourceVersion, reused by the pages of one paginated list.
    snapshots: dict[int, builtins.list[tuple[tuple[str, str], Obj]]] = field(default_factory=dict)


class TooOld(Exception):
    """The requested state is older than the bucket's history (the real server: compacted)."""

    def __init__(self, requested: int, oldest: int) -> None:
        super().__init__(f"too old resource version: {requested} ({oldest})")
        self.requested = requested
        self.oldest = oldest


SNAPSHOTS_KEPT = 4


Listener = Callable[[Key, WatchEvent], None]


class Store:
    def __init__(self, history_size: int = 2000) -> None:
        self.rv = 0
        self.history_size = history_size
        self.buckets: dict[Key, Bucket] = {}
        self.listeners: list[Listener] = []

    def bucket(self, key: Key) -> Bucket:
        b = self.buckets.get(key)
        if b is None:
            b = self.buckets[key] = Bucket(self.history_size, floor=self.rv)
        return b

    def get(self, key: Key, namespace: str | None, name: str) -> Obj | None:
        return self.bucket(key).objects.get((namespace or "", name))

    def list(self, key: Key, namespace: str | None = None) -> list[Obj]:
        objs = self.bucket(key).objects
        if namespace is None:
            return [objs[k] for k in sorted(objs)]
        return [objs[k] for k in sorted(objs) if k[0] == namespace]

    def snapshot(
        self, key: Key, rv: int | None = None
    ) -> tuple[int, builtins.list[tuple[tuple[str, str], Obj]]]:
        """Every object of a type as it was at ``rv`` (None: now), sorted by (namespace, name).

        Rebuilt from the current objects by undoing the newer events of the bucket's history, as
        etcd serves a read at an older revision; TooOld when ``rv`` is older than that history.
        Stored objects are never mutated in place (every write stores a new dict), so the
        snapshot can share them.
        """
        b = self.bucket(key)
        at = self.rv if rv is None or rv > self.rv else rv
        if at < b.floor:
            raise TooOld(at, b.floor + 1)
        cached = b.snapshots.get(at)
        if cached is not None:
            return at, cached
        objects = dict(b.objects)
        for event in reversed(b.history):
            if event.rv <= at:
                break
            meta = event.obj["metadata"]
            ident = (meta.get("namespace") or "", meta["name"])
            if event.type == "ADDED":
                objects.pop(ident, None)
            elif event.old is not None:
                objects[ident] = event.old
        items = sorted(objects.items(), key=lambda item: item[0])
        b.snapshots[at] = items
        while len(b.snapshots) > SNAPSHOTS_KEPT:
            del b.snapshots[next(iter(b.snapshots))]
        return at, items

    def put(self, key: Key, obj: Obj) -> Obj:
        """Store ``obj`` (owned by the store from now on) with a new resourceVersion."""
        self.rv += 1
        meta = obj["metadata"]
        meta["resourceVersion"] = str(self.rv)
        ident = (meta.get("namespace") or "", meta["name"])
        b = self.bucket(key)
        old = b.objects.get(ident)
        b.objects[ident] = obj
        self._emit(key, b, WatchEvent(self.rv, "MODIFIED" if old is not None else "ADDED", obj, old))
        return obj

    def remove(self, key: Key, namespace: str | None, name: str) -> Obj | None:
        b = self.bucket(key)
        old = b.objects.pop((namespace or "", name), None)
        if old is None:
            return None
        self.rv += 1
        final = copy.deepcopy(old)
        final["metadata"]["resourceVersion"] = str(self.rv)
        self._emit(key, b, WatchEvent(self.rv, "DELETED", final, old))
        return final

    def drop(self, key: Key) -> None:
        """Forget a whole type (its CRD is gone): watchers are closed."""
        b = self.buckets.pop(key, None)
        if b:
            for w in list(b.watchers):
                w.close()

    def _emit(self, key: Key, b: Bucket, event: WatchEvent) -> None:
        b.history.append(event)
        while len(b.history) > b.history_size:
            b.floor = b.history.popleft().rv
        for w in list(b.watchers):
            w.offer(event)
        for listener in self.listeners:
            listener(key, event)

    def start_watch(self, key: Key, watcher: Watcher, since: int | None) -> None:
        """Register a watcher; queue the initial state (``since`` None) or the history after ``since``.

        Done without awaiting, so no event can slip between the snapshot and the live stream.
        """
        b = self.bucket(key)
        if since is None:
            for obj in self.list(key, watcher.namespace):
                if watcher.selects(obj):
                    watcher.queue.put_nowait(("ADDED", obj))
        else:
            if since < b.floor:
                raise gone(since, b.floor + 1)
            for event in b.history:
                if event.rv > since:
                    watcher.offer(event)
        b.watchers.add(watcher)

    def stop_watch(self, key: Key, watcher: Watcher) -> None:
        b = self.buckets.get(key)
        if b:
            b.watchers.discard(watcher)

    def all_watchers(self) -> builtins.list[Watcher]:
        return [w for b in self.buckets.values() for w in b.watchers]
