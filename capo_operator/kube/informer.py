"""A lean informer in the spirit of client-go's: reflector + store + indexer, one per resource.

    informer = Informer(KubeTransport(api), PODS, indexers=POD_INDEXERS)
    informer.add_handlers(on_delete=lambda pod: ...)
    task = asyncio.create_task(informer.run())
    await informer.synced.wait()
    informer.store.by_index("ip", "10.0.0.7")

Reflector: a paginated LIST (`limit`/`continue`; an expired continue token starts the list
again), then a WATCH from the list's resourceVersion with bookmarks (which advance the
resourceVersion). A stream that ends or breaks is resumed from the last resourceVersion, which
the server replays losslessly; when it cannot (410 Gone, as an event or an answer) the informer
lists again and diffs the result against the store: what vanished is deleted (with a delete
notification: no ghosts), what changed is updated, what appeared is added.

Handlers are plain callables run in the informer's task, in registration order, after the store
changed; one that raises is logged and counted and never stops the informer or the other
handlers. Handlers see `synced` unset while the first list is delivered (client-go's
"isInInitialList"). A periodic resync re-delivers every cached object as `on_update(obj, obj)`.
Errors back off exponentially with full jitter; cancelling `run()` at any point ends it cleanly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import aiohttp

from capo_operator.kube.models import Codec, DecodeError, Foreign, Kind
from capo_operator.kube.transport import ApiError, Transport

logger = logging.getLogger(__name__)

T = TypeVar("T")

IndexFunc = Callable[[T], Iterable[str]]
OnAdd = Callable[[T], None]
OnUpdate = Callable[[T, T], None]
OnDelete = Callable[[T], None]

# Handlers run synchronously; yield to the event loop every this many deliveries in bulk work
# (a relist, a resync) so that webhook requests are not starved.
_YIELD_EVERY = 500


def object_key(namespace: str, name: str) -> str:
    """client-go's MetaNamespaceKeyFunc: "namespace/name", or "name" for a cluster-scoped object."""
    return f"{namespace}/{name}" if namespace else name


class Store(Generic[T]):
    """The informer's cache: objects by key ("namespace/name" or "name") plus secondary indexes.

    Index functions (like client-go's Indexers) map an object to the index values it is found
    under; `by_index(name, value)` answers in O(1). Only the informer writes to the store.
    """

    def __init__(self, indexers: Mapping[str, IndexFunc[T]] | None = None) -> None:
        self._items: dict[str, tuple[str, str, T]] = {}  # key -> (resourceVersion, uid, object)
        self._indexers: dict[str, IndexFunc[T]] = dict(indexers or {})
        # value -> the key holding it, or a set of keys when several do: nearly every value (a
        # uid, a live IP) has one holder, and a set per value was most of the index's memory.
        self._indices: dict[str, dict[str, str | set[str]]] = {name: {} for name in self._indexers}
        # Bumped by every change: readers cache what they derive from the store until it moves.
        self.version = 0
        self._listeners: list[Callable[[T | None, T | None], None]] = []

    def listen(self, listener: Callable[[T | None, T | None], None]) -> None:
        """Call `listener(old, new)` after every change (None: absent before/after), synchronously
        in the writer's task: for readers that must know *which* objects changed, cheaply."""
        self._listeners.append(listener)

    def _changed(self, old: T | None, new: T | None) -> None:
        for listener in self._listeners:
            try:
                listener(old, new)
            except Exception:
                logger.exception("store listener %r failed", listener)

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def get(self, key: str) -> T | None:
        entry = self._items.get(key)
        return None if entry is None else entry[2]

    def get_by_name(self, namespace: str, name: str) -> T | None:
        return self.get(object_key(namespace, name))

    def resource_version(self, key: str) -> str | None:
        entry = self._items.get(key)
        return None if entry is None else entry[0]

    def uid(self, key: str) -> str | None:
        entry = self._items.get(key)
        return None if entry is None else entry[1]

    def keys(self) -> list[str]:
        return list(self._items)

    def values(self) -> list[T]:
        return [entry[2] for entry in self._items.values()]

    def by_index(self, index: str, value: str) -> list[T]:
        """The objects found under `value` in `index` (KeyError for an unknown index)."""
        keys = self._indices[index].get(value)
        if not keys:
            return []
        if isinstance(keys, str):
            return [self._items[keys][2]]
        return [self._items[key][2] for key in keys]

    def index_keys(self, index: str) -> Collection[str]:
        """A live view of the values present in `index` (O(1) membership, no copy)."""
        return self._indices[index].keys()

    def index_values(self, index: str) -> list[str]:
        """Every value present in `index` (e.g. every IP held by a live pod)."""
        return list(self._indices[index])

    def _index_values_of(self, index: str, obj: T) -> set[str]:
        try:
            return set(self._indexers[index](obj))
        except Exception:
            logger.exception("index function %r failed; the object is left out of that index", index)
            return set()

    def _put(self, key: str, rv: str, uid: str, obj: T) -> T | None:
        entry = self._items.get(key)
        old = None if entry is None else entry[2]
        self._items[key] = (rv, uid, obj)
        self.version += 1
        for index, values in self._indices.items():
            before = self._index_values_of(index, old) if old is not None else set()
            after = self._index_values_of(index, obj)
            for value in before - after:
                self._unindex(values, value, key)
            for value in after - before:
                self._index(values, value, key)
        if self._listeners:
            self._changed(old, obj)
        return old

    def _remove(self, key: str) -> T | None:
        entry = self._items.pop(key, None)
        if entry is None:
            return None
        self.version += 1
        for index, values in self._indices.items():
            for value in self._index_values_of(index, entry[2]):
                self._unindex(values, value, key)
        if self._listeners:
            self._changed(entry[2], None)
        return entry[2]

    @staticmethod
    def _index(values: dict[str, str | set[str]], value: str, key: str) -> None:
        keys = values.get(value)
        if keys is None:
            values[value] = key
        elif isinstance(keys, str):
            if keys != key:
                values[value] = {keys, key}
        else:
            keys.add(key)

    @staticmethod
    def _unindex(values: dict[str, str | set[str]], value: str, key: str) -> None:
        keys = values.get(value)
        if keys is None:
            return
        if isinstance(keys, str):
            if keys == key:
                del values[value]
            return
        keys.discard(key)
        if len(keys) == 1:
            values[value] = next(iter(keys))
        elif not keys:
            del values[value]


@dataclass
class Backoff:
    """Exponential backoff with full jitter (a random delay up to the current ceiling)."""

    initial: float = 0.5
    maximum: float = 30.0
    factor: float = 2.0
    _ceiling: float = field(default=0.0, init=False)

    def next(self) -> float:
        self._ceiling = self.initial if self._ceiling == 0 else min(self.maximum, self._ceiling * self.factor)
        return random.uniform(self._ceiling / 2, self._ceiling)

    def reset(self) -> None:
        self._ceiling = 0.0


@dataclass
class InformerStats:
    lists: int = 0  # complete LISTs (the first one and every relist)
    list_restarts: int = 0  # LISTs started again because a continue token expired
    watches: int = 0  # WATCH requests made
    expired: int = 0  # 410 Gone answers/events that forced a relist
    errors: int = 0  # failed LIST/WATCH attempts (each followed by a backoff)
    events: int = 0  # watch events applied (bookmarks excluded)
    bookmarks: int = 0
    skipped: int = 0  # objects left out because they could not be decoded
    handler_errors: int = 0
    resyncs: int = 0


class _Expired(Exception):
    """The server cannot resume from our resourceVersion: list again."""


@dataclass(frozen=True)
class _Handlers(Generic[T]):
    on_add: OnAdd[T] | None
    on_update: OnUpdate[T] | None
    on_delete: OnDelete[T] | None


class Informer(Generic[T]):
    """Keeps `store` equal to the server's state of one resource (every namespace), and tells
    handlers what changed. See the module docstring for the behaviour."""

    def __init__(
        self,
        transport: Transport,
        kind: Kind[T],
        *,
        indexers: Mapping[str, IndexFunc[T]] | None = None,
        page_size: int = 500,
        resync_period: float | None = 600.0,
        watch_timeout: float = 300.0,
        label_selector: str | None = None,
        field_selector: str | None = None,
        backoff: Backoff | None = None,
        max_list_restarts: int = 3,
    ) -> None:
        if page_size <= 0:
            raise ValueError(f"page_size must be positive, got {page_size}")
        if resync_period is not None and resync_period <= 0:
            raise ValueError(f"resync_period must be positive or None, got {resync_period}")
        self.transport = transport
        self.kind = kind
        self.codec = Codec(kind)
        self.store: Store[T] = Store(indexers)
        self.synced = asyncio.Event()
        self.resource_version = ""
        self.page_size = page_size
        self.resync_period = resync_period
        self.watch_timeout = watch_timeout
        self.label_selector = label_selector
        self.field_selector = field_selector
        self.backoff = backoff or Backoff()
        self.max_list_restarts = max_list_restarts
        self.stats = InformerStats()
        self._handlers: list[_Handlers[T]] = []

    def add_handlers(
        self,
        *,
        on_add: OnAdd[T] | None = None,
        on_update: OnUpdate[T] | None = None,
        on_delete: OnDelete[T] | None = None,
    ) -> None:
        """Register handlers (before `run()`, to see the first list). on_update(old, new) is also
        called with old == new on a resync; on_delete gets the last state known (for an object
        found missing on a relist, the state before it vanished)."""
        self._handlers.append(_Handlers(on_add, on_update, on_delete))

    # -- running ----------------------------------------------------------------------------

    async def run(self) -> None:
        """List, watch, relist when needed, resync; until cancelled."""
        resync = asyncio.create_task(self._resync_loop()) if self.resync_period else None
        try:
            await self._reflect()
        finally:
            if resync is not None:
                resync.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await resync

    async def _reflect(self) -> None:
        need_list = True
        expired_in_a_row = 0
        while True:
            try:
                if need_list:
                    await self._list()
                    need_list = False
                    self.backoff.reset()
                if await self._watch():
                    self.backoff.reset()
                    expired_in_a_row = 0
                    continue
                # A stream that ended at once with nothing in it: do not hammer the server.
                await asyncio.sleep(self.backoff.next())
            except _Expired:
                self.stats.expired += 1
                need_list = True
                expired_in_a_row += 1
                if expired_in_a_row > 1:  # a fresh list's version expired at once: back off
                    await asyncio.sleep(self.backoff.next())
            except Exception as exc:
                # Whatever broke (connection, server, a bug here), the cache must keep trying to
                # catch up: log, back off, go on. An unexpected error is logged with its traceback.
                self.stats.errors += 1
                expected = isinstance(
                    exc, ApiError | DecodeError | OSError | TimeoutError | aiohttp.ClientError
                )
                delay = self.backoff.next()
                if isinstance(exc, ApiError) and exc.retry_after:
                    delay = max(delay, exc.retry_after)
                logger.warning(
                    "%s %s failed (%s); retrying in %.1fs",
                    self.kind.resource,
                    "list" if need_list else "watch",
                    str(exc) or type(exc).__name__,
                    delay,
                    exc_info=not expected,
                )
                await asyncio.sleep(delay)

    def _params(self) -> dict[str, str]:
        params = {"labelSelector": self.label_selector} if self.label_selector else {}
        if self.field_selector:
            params["fieldSelector"] = self.field_selector
        return params

    async def _list(self) -> None:
        """One complete, consistent LIST (all pages at one resourceVersion), then the diff."""
        restarts = 0
        while True:
            try:
                fresh, version = await self._list_pages()
            except ApiError as exc:
                # Pages of one list all come from one snapshot; when the server no longer has it,
                # the only consistent answer is a new list from the first page.
                if not (exc.expired and exc.during_continue) or restarts >= self.max_list_restarts:
                    raise
                restarts += 1
                self.stats.list_restarts += 1
                logger.info("%s list: continue token expired; listing again", self.kind.resource)
                continue
            break
        self.stats.lists += 1
        await self._replace(fresh)
        self.resource_version = version
        if not self.synced.is_set():
            self.synced.set()
            logger.info("%s synced: %d objects", self.kind.resource, len(self.store))

    async def _list_pages(self) -> tuple[dict[str, tuple[str, str, T]], str]:
        """Every page of one list: (key -> (resourceVersion, uid, object), the list's version).
        The next page is requested before this one is converted, so that the server prepares it
        while we work."""
        fresh: dict[str, tuple[str, str, T]] = {}
        pending: asyncio.Task[bytes] | None = None
        try:
            data = await self._page("")
            while True:
                meta, items = self.codec.decode_list(data)
                if meta.continue_:
                    pending = asyncio.ensure_future(self._page(meta.continue_))
                    await asyncio.sleep(0)  # let the request go out
                self._convert_into(fresh, items)
                if pending is None:
                    return fresh, meta.resourceVersion
                data = await pending
                pending = None
        finally:
            if pending is not None:
                pending.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await pending

    async def _page(self, token: str) -> bytes:
        params = {**self._params(), "limit": str(self.page_size)}
        if token:
            params["continue"] = token
        try:
            return await self.transport.get(self.kind.path, params)
        except ApiError as exc:
            exc.during_continue = bool(token)
            raise

    def _convert_into(self, into: dict[str, tuple[str, str, T]], items: list[Any]) -> None:
        convert = self.kind.convert
        for item in items:
            meta = item.metadata
            try:
                obj = convert(item)
            except Foreign:
                continue
            except ValueError as exc:
                self.stats.skipped += 1
                logger.warning("skipping %s %s: %s", self.kind.resource, meta.name, exc)
                continue
            into[object_key(meta.namespace, meta.name)] = (meta.resourceVersion, meta.uid, obj)

    async def _replace(self, fresh: dict[str, tuple[str, str, T]]) -> None:
        """Make the store equal to a fresh list. Deletions come first (so an IP moving from a
        vanished pod to a new one is never held twice); an object replaced by another of the same
        name (a StatefulSet pod recreated in the gap: another uid) is a deletion plus an addition,
        not an update. Then additions and updates; unchanged resourceVersions are silent."""
        store = self.store
        done = 0
        gone = [key for key in store if key not in fresh or store.uid(key) != fresh[key][1]]
        for key in gone:
            old = store._remove(key)
            if old is not None:
                self._notify_delete(old)
            done += 1
            if done % _YIELD_EVERY == 0:
                await asyncio.sleep(0)
        for key, (rv, uid, obj) in fresh.items():
            if store.resource_version(key) == rv:
                continue
            old = store._put(key, rv, uid, obj)
            if old is None:
                self._notify_add(obj)
            else:
                self._notify_update(old, obj)
            done += 1
            if done % _YIELD_EVERY == 0:
                await asyncio.sleep(0)

    async def _watch(self) -> bool:
        """One WATCH from `resource_version`; True when the stream delivered something (or lasted),
        False when it ended at once and empty. Raises _Expired on 410."""
        # Spread the reconnections of many informers, as client-go does (timeout in [t, 2t)).
        timeout = int(self.watch_timeout * (1 + random.random()))
        params = {
            **self._params(),
            "watch": "true",
            "allowWatchBookmarks": "true",
            "resourceVersion": self.resource_version,
            "timeoutSeconds": str(timeout),
        }
        self.stats.watches += 1
        started = time.monotonic()
        delivered = False
        try:
            async with contextlib.aclosing(
                self.transport.stream(self.kind.path, params, timeout + 30.0)
            ) as lines:
                async for line in lines:
                    self._apply(line)
                    delivered = True
        except ApiError as exc:
            if exc.expired:
                raise _Expired from exc
            raise
        return delivered or time.monotonic() - started >= 1.0

    def _apply(self, line: bytes) -> None:
        kind, raw = self.codec.decode_event(line)
        if kind == "BOOKMARK":
            self.stats.bookmarks += 1
            self._advance(self.codec.decode_identity(raw).resourceVersion)
            return
        if kind == "ERROR":
            status = self.codec.decode_status(raw)
            if status.code == 410:
                raise _Expired(status.message)
            raise ApiError(status.code, status.reason, status.message)
        if kind not in ("ADDED", "MODIFIED", "DELETED"):
            logger.warning("ignoring %s watch event of unknown type %r", self.kind.resource, kind)
            return
        self.stats.events += 1
        try:
            item = self.codec.decode_item(raw)
        except DecodeError as exc:
            who = self.codec.decode_identity(raw)  # unreadable even so: the stream is broken
            self._unreadable(object_key(who.namespace, who.name), exc)
            self._advance(who.resourceVersion)
            return
        meta = item.metadata
        key = object_key(meta.namespace, meta.name)
        if kind == "DELETED":
            old = self.store._remove(key)
            if old is not None:
                try:
                    last = self.kind.convert(item)
                except ValueError:
                    last = old
                self._notify_delete(last)
        else:
            try:
                obj = self.kind.convert(item)
            except Foreign:
                gone = self.store._remove(key)  # relabelled away from us: no longer ours
                if gone is not None:
                    self._notify_delete(gone)
            except ValueError as exc:
                self._unreadable(key, exc)
            else:
                known = self.store.uid(key)
                previous = self.store._remove(key) if known is not None and known != meta.uid else None
                if previous is not None:  # another object under the same name: that one is gone
                    self._notify_delete(previous)
                old = self.store._put(key, meta.resourceVersion, meta.uid, obj)
                if old is None:
                    self._notify_add(obj)
                else:
                    self._notify_update(old, obj)
        self._advance(meta.resourceVersion)

    def _advance(self, version: str) -> None:
        if version:
            self.resource_version = version

    def _unreadable(self, key: str, error: Exception) -> None:
        # It leaves the cache, as if deleted: its last readable state cannot be trusted any more.
        self.stats.skipped += 1
        logger.warning("%s %s is unreadable now: %s", self.kind.resource, key, error)
        old = self.store._remove(key)
        if old is not None:
            self._notify_delete(old)

    async def _resync_loop(self) -> None:
        assert self.resync_period is not None
        await self.synced.wait()
        while True:
            await asyncio.sleep(self.resync_period)
            await self.resync()

    async def resync(self) -> None:
        """Re-deliver every cached object to the handlers as on_update(obj, obj)."""
        self.stats.resyncs += 1
        for done, key in enumerate(self.store.keys(), 1):
            obj = self.store.get(key)
            if obj is not None:  # it may have gone while we yielded
                self._notify_update(obj, obj)
            if done % _YIELD_EVERY == 0:
                await asyncio.sleep(0)

    # -- notifications ----------------------------------------------------------------------

    def _call(self, what: str, handler: Callable[..., None], *args: T) -> None:
        try:
            handler(*args)
        except Exception:
            self.stats.handler_errors += 1
            logger.exception("%s %s handler %r failed", self.kind.resource, what, handler)

    def _notify_add(self, obj: T) -> None:
        for h in self._handlers:
            if h.on_add is not None:
                self._call("add", h.on_add, obj)

    def _notify_update(self, old: T, new: T) -> None:
        for h in self._handlers:
            if h.on_update is not None:
                self._call("update", h.on_update, old, new)

    def _notify_delete(self, obj: T) -> None:
        for h in self._handlers:
            if h.on_delete is not None:
                self._call("delete", h.on_delete, obj)
