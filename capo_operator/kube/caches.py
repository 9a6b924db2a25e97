"""The replica's caches: informers for pods, namespaces and this installation's ReservedIP records,
and the read-only `Views` over their stores that the webhook, the safety net and the releaser share.

    caches = Caches(KubeTransport(api), reservation="capo-reserved-ips")
    task = asyncio.create_task(caches.run())   # caches.synced is set once all three have listed
    caches.views.ip_holders(("10.244.0.7",))   # uid of the live pod holding it, if any

Who reacts to a change registers handlers on the informers (`flows.watchers`).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from typing import Any

from capo_operator.decisions.policy import NamespaceFacts, PodFacts
from capo_operator.decisions.record import Record
from capo_operator.kube import (
    POD_IP_INDEX,
    RECORD_POD_UID_INDEX,
    UID_INDEX,
    Informer,
    InformerStats,
    Store,
    Transport,
    namespace_informer,
    pod_informer,
    record_informer,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class InformerState:
    """One informer as `Metrics.watch_informers` exposes it at scrape time."""

    resource: str
    objects: int
    synced: bool
    stats: InformerStats


class Views:
    """Read-only views over the informers' stores (pods, namespaces, this installation's records).
    The stores are updated in place by the informers; `synced` is set once all three have listed."""

    def __init__(
        self,
        *,
        pods: Store[PodFacts],
        namespaces: Store[NamespaceFacts],
        records: Store[Record],
        synced: asyncio.Event,
    ) -> None:
        self._pods, self._namespaces, self._records = pods, namespaces, records
        self.synced = synced

    def on_pod_change(self, listener: Callable[[PodFacts | None, PodFacts | None], None]) -> None:
        """`listener(old, new)` after every change of the pod cache (see Store.listen)."""
        self._pods.listen(listener)

    def records_generation(self) -> tuple[int, int]:
        """Changes whenever a record changes."""
        return (id(self._records), self._records.version)

    def pod_cache_id(self) -> int:
        """Changes when another pod store is used (what was derived pod by pod is stale)."""
        return id(self._pods)

    def namespaces_generation(self) -> tuple[int, int]:
        return (id(self._namespaces), self._namespaces.version)

    def has_record_for(self, pod_uid: str) -> bool:
        """A record refers to this pod (O(1): the records' pod-uid index)."""
        return pod_uid in self._records.index_keys(RECORD_POD_UID_INDEX)

    def pods_with_uid(self, uid: str) -> list[PodFacts]:
        return self._pods.by_index(UID_INDEX, uid)

    def pod(self, namespace: str, name: str) -> PodFacts | None:
        return self._pods.get_by_name(namespace, name)

    def pods(self) -> Iterator[PodFacts]:
        return iter(self._pods.values())

    def generation(self) -> tuple[int, int, int, int]:
        """Changes whenever a pod or a namespace changes (what the ledger is derived from)."""
        return (id(self._pods), self._pods.version, id(self._namespaces), self._namespaces.version)

    def pod_count(self) -> int:
        return len(self._pods)

    def pod_uids(self) -> Collection[str]:
        """The uids of the pods present (a live view)."""
        return self._pods.index_keys(UID_INDEX)

    def namespace(self, name: str) -> NamespaceFacts | None:
        return self._namespaces.get(name)

    def namespace_names(self) -> frozenset[str]:
        return frozenset(self._namespaces)

    def ip_holders(self, ips: tuple[str, ...], *, except_uid: str | None = None) -> dict[str, str]:
        """IP -> uid of another live pod holding it now."""
        holders: dict[str, str] = {}
        for ip in ips:
            for pod in self._pods.by_index(POD_IP_INDEX, ip):
                if pod.uid != except_uid:
                    holders[ip] = pod.uid
                    break
        return holders

    def all_ip_holders(self) -> dict[str, str]:
        store = self._pods
        holders: dict[str, str] = {}
        for ip in store.index_values(POD_IP_INDEX):
            for pod in store.by_index(POD_IP_INDEX, ip):
                holders[ip] = pod.uid
        return holders

    def records(self) -> list[Record]:
        return self._records.values()

    def record(self, name: str) -> Record | None:
        return self._records.get(name)

    def record_count(self) -> int:
        return len(self._records)


class Caches:
    """The three informers of one replica and the views over them."""

    def __init__(
        self, transport: Transport, *, reservation: str, namespace_selector: str | None = None, **options: Any
    ) -> None:
        # Namespaces outside `namespaceSelector` are not even cached: unknown, nothing in them is reserved.
        self.namespaces: Informer[NamespaceFacts] = namespace_informer(
            transport, label_selector=namespace_selector, **options
        )
        self.pods: Informer[PodFacts] = pod_informer(transport, **options)
        # Records are labelled with the name of the IPReservation they belong to.
        self.records: Informer[Record] = record_informer(transport, reservation, **options)
        self.synced = asyncio.Event()
        self.views = Views(
            pods=self.pods.store,
            namespaces=self.namespaces.store,
            records=self.records.store,
            synced=self.synced,
        )

    @property
    def informers(self) -> dict[str, Informer[Any]]:
        return {"pods": self.pods, "namespaces": self.namespaces, "reservedips": self.records}

    async def run(self) -> None:
        """Run the informers until cancelled; set `synced` once all three have listed.
        Namespaces list first (a handful of objects): a pod event is judged by its namespace."""
        tasks: list[asyncio.Task[None]] = []
        try:
            tasks.append(asyncio.create_task(self.namespaces.run(), name="informer-namespaces"))
            await _first(self.namespaces.synced.wait(), tasks)
            for name in ("pods", "reservedips"):
                tasks.append(asyncio.create_task(self.informers[name].run(), name=f"informer-{name}"))
            await _first(asyncio.gather(self.pods.synced.wait(), self.records.synced.wait()), tasks)
            freeze_heap()
            self.synced.set()
            logger.info(
                "caches synced: %d pods, %d namespaces, %d records",
                len(self.pods.store),
                len(self.namespaces.store),
                len(self.records.store),
            )
            await asyncio.gather(*tasks)  # informers run until cancelled; one ending is a bug
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    def stats(self) -> list[InformerState]:
        """What `Metrics.watch_informers` exposes at scrape time."""
        return [
            InformerState(resource, len(informer.store), informer.synced.is_set(), informer.stats)
            for resource, informer in self.informers.items()
        ]


async def _first(waiting: Any, tasks: list[asyncio.Task[None]]) -> None:
    """Await `waiting`, unless an informer task ends first (it never should): then raise."""
    wait = asyncio.ensure_future(waiting)
    try:
        done, _ = await asyncio.wait([wait, *tasks], return_when=asyncio.FIRST_COMPLETED)
        if wait not in done:
            for task in done:
                task.result()  # its exception, if any
            raise RuntimeError("an informer stopped before the caches were synced")
    finally:
        if not wait.done():
            wait.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await wait


def freeze_heap() -> None:
    """Move what is alive once the caches are filled (mostly the pod store) out of the garbage
    collector's reach: full collections over it paused the event loop for 50-280 ms, which showed
    up as webhook latency spikes (bench/webhook.py)."""
    gc.collect()
    gc.freeze()
    logger.debug("froze %d objects after the caches synced", gc.get_freeze_count())
