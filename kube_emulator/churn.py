"""Pod churn for benchmarks: many ordinary MODIFIED pod events, produced in-process.

Sending thousands of PATCH requests over HTTPS costs the emulator (TLS, parsing, admission,
validation) far more than serving the resulting watch events, so a benchmark of a watcher's
throughput would measure the writers instead. ``touch_pods`` writes new versions of existing pods
as the emulated kubelet writes pod status: a new object (stored objects are never mutated),
stored with ``Store.put``, so it gets the next resourceVersion, enters the watch history and reaches
every watcher as a normal MODIFIED event (selectors and resumption apply as for any other write).
The only change is one annotation, ``TOUCH_ANNOTATION``, set to a counter.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass

from .store import Key, Obj, Store

POD_KEY: Key = ("", "pods")
TOUCH_ANNOTATION = "emulator.capo.io/touched"
# Writes between yields to the event loop: the watch writers send while the churn goes on.
BATCH = 200


@dataclass(frozen=True)
class Churn:
    events: int  # writes made (each is one MODIFIED event for a watcher selecting the pod)
    seconds: float  # wall time from the first to the last write


def _touched(pod: Obj, value: str) -> Obj:
    meta = dict(pod["metadata"])
    meta["annotations"] = {**(meta.get("annotations") or {}), TOUCH_ANNOTATION: value}
    return {**pod, "metadata": meta}


async def touch_pods(
    store: Store, count: int, *, rate: float | None = None, namespace: str | None = None
) -> Churn:
    """Write `count` new versions of existing pods (cycling through them in name order), at most
    `rate` per second (None: as fast as the store takes them). ValueError when there is no pod."""
    if count < 0:
        raise ValueError("count must be >= 0")
    if rate is not None and rate <= 0:
        raise ValueError("rate must be > 0")
    idents = sorted(k for k in store.bucket(POD_KEY).objects if namespace is None or k[0] == namespace)
    if count and not idents:
        raise ValueError("no pod to touch")
    started = time.monotonic()
    done = 0
    for n, ident in enumerate(itertools.islice(itertools.cycle(idents), count), 1):
        pod = store.bucket(POD_KEY).objects.get(ident)
        if pod is not None:  # deleted meanwhile: skipped, the count is of writes made
            store.put(POD_KEY, _touched(pod, str(store.rv + 1)))
            done += 1
        if n % BATCH == 0:
            if rate is not None:
                # Paced in batches: the next batch starts when the rate allows it.
                await asyncio.sleep(max(0.0, started + n / rate - time.monotonic()))
            else:
                await asyncio.sleep(0)
    return Churn(events=done, seconds=time.monotonic() - started)
