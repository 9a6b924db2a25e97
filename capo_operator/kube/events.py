"""Kubernetes Events, posted in the background so that no reservation ever waits for one."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from kubernetes.aio import client as k8s

from capo_operator.kube.slim import CoreV1

logger = logging.getLogger(__name__)

COMPONENT = "capo-operator"


@dataclass(frozen=True)
class ObjectRef:
    kind: str
    name: str
    namespace: str | None = None  # None: cluster-scoped (the Event goes to "default")
    uid: str | None = None
    api_version: str = "v1"


class EventRecorder:
    """Posts at most `rate` Events per second (like client-go's recorder, it protects the apiserver
    and, here, the webhook's event loop during a burst of deletions); beyond the queue they are dropped."""

    def __init__(
        self,
        api: k8s.ApiClient,
        *,
        host: str,
        max_queue: int = 2000,
        rate: float = 50.0,
        on_drop: Callable[[], None] = lambda: None,
    ) -> None:
        self._core = CoreV1(api)
        self._host = host
        self._queue: asyncio.Queue[tuple[ObjectRef, str, str, str]] = asyncio.Queue(max_queue)
        self._interval = 1.0 / rate
        self._on_drop = on_drop

    def post(self, ref: ObjectRef, reason: str, message: str, *, warning: bool = False) -> None:
        """Queue an Event; when the queue is full the Event is dropped (and counted), never awaited."""
        try:
            self._queue.put_nowait((ref, "Warning" if warning else "Normal", reason, message))
        except asyncio.QueueFull:
            self._on_drop()

    async def run(self) -> None:
        while True:
            ref, type_, reason, message = await self._queue.get()
            try:
                await self._send(ref, type_, reason, message)
            except Exception as exc:  # an Event is best effort; the log has the same facts
                logger.debug("could not post event %s on %s/%s: %s", reason, ref.kind, ref.name, exc)
            await asyncio.sleep(self._interval)

    async def drain(self, seconds: float = 2.0) -> None:
        """Post what is queued (used at shutdown)."""
        async with asyncio.timeout(seconds):
            while not self._queue.empty():
                ref, type_, reason, message = self._queue.get_nowait()
                await self._send(ref, type_, reason, message)

    async def _send(self, ref: ObjectRef, type_: str, reason: str, message: str) -> None:
        now = datetime.now(UTC)
        namespace = ref.namespace or "default"
        body = k8s.CoreV1Event(
            metadata=k8s.V1ObjectMeta(generate_name=f"{ref.name[:200]}."),
            involved_object=k8s.V1ObjectReference(
                api_version=ref.api_version,
                kind=ref.kind,
                name=ref.name,
                namespace=ref.namespace,
                uid=ref.uid,
            ),
            reason=reason,
            message=message[:1024],
            type=type_,
            source=k8s.V1EventSource(component=COMPONENT, host=self._host),
            reporting_component=COMPONENT,
            reporting_instance=self._host,
            first_timestamp=now,
            last_timestamp=now,
            event_time=now,
            action=reason,
            count=1,
        )
        await self._core.create_namespaced_event(namespace, body)
