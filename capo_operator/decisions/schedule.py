"""When a step of the leader's release pass has work: pure bookkeeping of what its last run saw.

Each step (plan the releases, reconcile the Calico object with the records, save the ledger) is a
function of a few inputs whose changes are cheap to observe: the caches' change counters, the
config object, the owners found gone, the IPReservation watch's counter. A `Gate` remembers the
inputs of the step's last successful run and the earliest moment the same inputs give another
answer (the next expiry); the step is due only when they differ, that moment has come, or the
last run failed. So a pass with nothing due compares a few tuples and makes no API call.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field
from datetime import datetime

_NEVER: Hashable = object()  # the inputs before the first run: always due


@dataclass
class Gate:
    inputs: Hashable = field(default=_NEVER)
    deadline: datetime | None = None  # None: never due by time alone
    failed: bool = False

    def due(self, inputs: Hashable, now: datetime) -> bool:
        return self.failed or inputs != self.inputs or (self.deadline is not None and now >= self.deadline)

    def ran(self, inputs: Hashable, *, ok: bool, deadline: datetime | None = None) -> None:
        """The step ran with `inputs` (captured before it started, so its own writes, seen later
        as changes, make it run once more); `ok` False retries it next pass whatever happens."""
        self.inputs, self.failed, self.deadline = inputs, not ok, deadline

    def reset(self) -> None:
        """Due at the next pass (a new leadership term starts from nothing)."""
        self.inputs, self.failed, self.deadline = _NEVER, False, None
