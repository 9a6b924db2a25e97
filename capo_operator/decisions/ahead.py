"""Reserve ahead (`reserveAhead`): which IPReservation entries the leader adds and removes for
selected live pods, so that their deletion needs no write. Pure functions.

The wanted set is the ledger's: the IPs of selected, non-terminal, non-hostNetwork pods. An entry of
a wanted IP is never removed (a release of an older hold of the same IP deletes the record and keeps
the entry). When a pod goes, its entry stays: the webhook's record, the safety net's, or at last
the leader's adoption turns it into a hold; adoption waits `ADOPT_GRACE` so that one of the first
two, which know the pod, writes it.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from datetime import datetime, timedelta

# How long an entry whose pod left the selection waits for a record with the pod's details (the
# webhook's follower writes it within seconds, the safety net retries for minutes) before the leader
# adopts it without them. The entry is in the IPReservation meanwhile: waiting costs nothing.
ADOPT_GRACE = timedelta(seconds=60)


def missing(wanted: Collection[str], committed: Collection[str]) -> list[str]:
    """The wanted IPs the IPReservation lacks, sorted (one batched append)."""
    have = committed if isinstance(committed, (set, frozenset)) else set(committed)
    return sorted(ip for ip in wanted if ip not in have)


def stale(
    orphans: Collection[str],
    live_holders: Mapping[str, str],
    wanted: Collection[str],
    announced: Collection[str] = (),
) -> frozenset[str]:
    """Entries without a record or pending details (`announced`) whose IP a live pod uses that is not
    selected (its namespace or the selector changed): they were reserved ahead and are no longer
    wanted. An orphan no live pod uses is not stale: its pod went, it becomes a hold."""
    return frozenset(ip for ip in orphans if ip in live_holders and ip not in wanted and ip not in announced)


def waiting(
    orphans: Collection[str],
    left_at: Mapping[str, datetime],
    now: datetime,
    live_holders: Collection[str] = (),
) -> frozenset[str]:
    """Orphans whose pod left the selection less than ADOPT_GRACE ago: not adopted yet. Not those
    a live pod still uses (`live_holders`): that pod was deselected (its namespace or the selector
    changed), not deleted, so no record is on its way; its entry is `stale`, not waiting."""
    return frozenset(
        ip for ip in orphans if ip in left_at and now - left_at[ip] < ADOPT_GRACE and ip not in live_holders
    )
