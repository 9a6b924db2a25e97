"""The operator's caches: informers for pods, namespaces and this installation's ReservedIP records,
and their handlers, which feed the safety net and the releaser.

    watchers = Watchers(rt, KubeTransport(api))   # attaches the stores to rt.views
    task = asyncio.create_task(watchers.run())      # rt.views.synced is set once all three listed

Handlers run in the informers' tasks and only queue work (the safety net, manual releases), so a
pod event costs no API call. An object delivered by the first list is not an event (nothing was
freed while we watched: the ledger covers the time we were away). A pod found missing when the
informer lists again after a watch gap (410 Gone) reaches the safety net as a deletion.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from typing import Any

from capo_operator.decisions.policy import NamespaceFacts, PodFacts
from capo_operator.kube import Informer, Transport, namespace_informer, pod_informer, record_informer
from capo_operator.kube.records import Record
from capo_operator.runtime import Runtime
from capo_operator.serving.metrics import InformerState

logger = logging.getLogger(__name__)


class Watchers:
    """The three informers of one replica, their handlers, and their statistics as metrics."""

    def __init__(self, rt: Runtime, transport: Transport, **options: Any) -> None:
        self.rt = rt
        # Namespaces outside `namespaceSelector` are not even cached: unknown, nothing in them is reserved.
        self.namespaces: Informer[NamespaceFacts] = namespace_informer(
            transport, label_selector=rt.config.namespace_selector.query(), **options
        )
        self.pods: Informer[PodFacts] = pod_informer(transport, **options)
        # Records are labelled with the name of the IPReservation they belong to.
        self.records: Informer[Record] = record_informer(transport, rt.calico.name, **options)
        rt.views.attach(pods=self.pods.store, namespaces=self.namespaces.store, records=self.records.store)
        self.pods.add_handlers(on_add=self.pod_added, on_update=self.pod_updated, on_delete=self.pod_deleted)
        self.records.add_handlers(
            on_add=self.record_seen,
            on_update=lambda _old, new: self.record_seen(new),
            on_delete=self.record_deleted,
        )

    @property
    def informers(self) -> dict[str, Informer[Any]]:
        return {"pods": self.pods, "namespaces": self.namespaces, "reservedips": self.records}

    async def run(self) -> None:
        """Run the informers until cancelled; set `views.synced` once all three have listed.
        Namespaces list first (a handful of objects): a pod event is judged by its namespace."""
        tasks: list[asyncio.Task[None]] = []
        try:
            tasks.append(asyncio.create_task(self.namespaces.run(), name="informer-namespaces"))
            await _first(self.namespaces.synced.wait(), tasks)
            for name in ("pods", "reservedips"):
                tasks.append(asyncio.create_task(self.informers[name].run(), name=f"informer-{name}"))
            await _first(asyncio.gather(self.pods.synced.wait(), self.records.synced.wait()), tasks)
            freeze_heap()
            self.rt.views.synced.set()
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

    # -- pods -------------------------------------------------------------------------------------

    def _turned_terminal(self, pod: PodFacts) -> bool:
        """First sight of this pod Failed/Succeeded (only a transition frees an IP now)."""
        terminal = self.rt.terminal_uids
        if pod.terminal and pod.uid not in terminal:
            terminal.add(pod.uid)
            return True
        return False

    def _selected(self, pod: PodFacts) -> bool:
        namespace = self.rt.views.namespace(pod.namespace)
        return namespace is not None and namespace.enabled

    def pod_added(self, pod: PodFacts) -> None:
        # Listed or created: nothing was freed, but a pod listed terminal must not count later.
        turned_terminal = self._turned_terminal(pod)
        if not self.pods.synced.is_set():
            return  # the first list (client-go's "isInInitialList"): not an event
        # Found on a relist after a watch gap, already Failed: it was created and failed unseen.
        if turned_terminal and pod.ips and self._selected(pod):
            self.rt.safety_net.pod_terminated(pod)

    def pod_updated(self, old: PodFacts, new: PodFacts) -> None:
        turned_terminal = self._turned_terminal(new)
        if old is new:  # a resync re-delivers what is cached: no change
            return
        if turned_terminal and new.ips and self._selected(new):
            self.rt.safety_net.pod_terminated(new)

    def pod_deleted(self, pod: PodFacts) -> None:
        # A watch DELETED, or a pod found gone when listing again after a gap: the same to us.
        self.rt.terminal_uids.discard(pod.uid)
        if self._selected(pod):
            self.rt.safety_net.pod_gone(pod)

    # -- records ----------------------------------------------------------------------------------

    def record_seen(self, record: Record) -> None:
        """Every replica: the pod had a record, so the safety net leaves it alone from now on."""
        if record.pod is not None and record.pod.uid:
            self.rt.reserved_uids.add(record.pod.uid)

    def record_deleted(self, record: Record) -> None:
        rt = self.rt
        if not rt.leading or record.releasing is not None:
            return  # standbys do nothing; a record marked releasing is the releaser's own deletion
        logger.info("record %s was deleted by someone: releasing %s now", record.name, record.ip)
        rt.manual_releases.add(record.ip)

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
