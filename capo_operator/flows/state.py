"""The live state the flows share, each piece a small object with one job, handed explicitly (by the
composition root, `capo_operator.app.assemble`) to exactly the parts that read or write it.

- `Leadership`: whether this replica leads now (set by the Lease election; read by the safety net
  to pick its delay and by the record handlers, which queue manual releases only on the leader).
- `RecentUIDs`: pods whose IPs this replica reserved recently (the webhook writes; the webhook
  skips repeats and the safety net leaves them alone) and pods that had a record (the record
  handlers write; the safety net leaves them alone, even after their hold was released).
- `TerminalUIDs`: the pods seen Failed/Succeeded (the pod handlers' own memory).

The current configuration after reloads is `capo_operator.config.LiveConfig`.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Collection


class Leadership:
    """Whether this replica leads now. Only the Lease election (or its absence) sets it."""

    def __init__(self, leading: bool = False) -> None:
        self.leading = leading


class RecentUIDs:
    """Pod UIDs seen recently, forgotten after `ttl` seconds or beyond `max_size` (oldest first)."""

    def __init__(self, ttl: float = 600.0, max_size: int = 50_000) -> None:
        self.ttl = ttl
        self.max_size = max_size
        self._seen: OrderedDict[str, float] = OrderedDict()

    def add(self, uid: str) -> None:
        self._seen[uid] = time.monotonic()
        self._seen.move_to_end(uid)
        while len(self._seen) > self.max_size:
            self._seen.popitem(last=False)

    def discard(self, uid: str) -> None:
        self._seen.pop(uid, None)

    def __contains__(self, uid: object) -> bool:
        if not isinstance(uid, str):
            return False
        seen = self._seen.get(uid)
        if seen is None:
            return False
        if time.monotonic() - seen > self.ttl:
            self._seen.pop(uid, None)
            return False
        return True


class TerminalUIDs:
    """The pods this replica has seen Failed/Succeeded, so that only a *transition* counts.

    Entries normally leave on the pod's DELETED event, but those are lost in watch gaps; so the
    set is also pruned against the pods present (`present`) after as many additions as it holds,
    and never exceeds `max_size` (the oldest go first: forgetting one can at worst
    make a later event of a long-terminal pod look like a new transition, which the safety
    net's own checks, a record or another live holder of the IP, then turn into a no-op)."""

    def __init__(self, present: Callable[[], Collection[str]], max_size: int = 100_000) -> None:
        self._present = present
        self.max_size = max_size
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._added = 0  # since the last prune
        self._prune_after = 64

    def __contains__(self, uid: object) -> bool:
        return uid in self._seen

    def __len__(self) -> int:
        return len(self._seen)

    def add(self, uid: str) -> None:
        self._seen[uid] = None
        self._seen.move_to_end(uid)
        self._added += 1
        # After as many additions as the set holds: O(1) per addition, amortized.
        if self._added >= self._prune_after:
            self._added = 0
            present = self._present()
            for stale in [u for u in self._seen if u not in present and u != uid]:
                del self._seen[stale]
            self._prune_after = max(len(self._seen), 64)
        while len(self._seen) > self.max_size:
            self._seen.popitem(last=False)

    def discard(self, uid: str) -> None:
        self._seen.pop(uid, None)
