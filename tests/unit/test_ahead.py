"""decisions/ahead.py: which entries reserveAhead adds, removes and leaves waiting for a record."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from capo_operator.decisions import ahead

IPS = st.sets(st.sampled_from([f"10.0.0.{i}" for i in range(8)]))

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def test_missing_is_the_wanted_ips_the_object_lacks_sorted() -> None:
    assert ahead.missing({"10.0.0.3", "10.0.0.1", "10.0.0.2"}, ["10.0.0.2"]) == ["10.0.0.1", "10.0.0.3"]
    assert ahead.missing({"10.0.0.1"}, frozenset({"10.0.0.1"})) == []


@given(IPS, IPS)
def test_missing_is_exactly_the_difference_in_order(wanted: set[str], held: set[str]) -> None:
    out = ahead.missing(wanted, held)
    assert out == sorted(out) and set(out) == wanted - held


def test_stale_is_an_unannounced_orphan_that_an_unselected_live_pod_uses() -> None:
    orphans = {"10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"}
    holders = {"10.0.0.1": "deselected", "10.0.0.2": "selected", "10.0.0.4": "announced"}
    stale = ahead.stale(orphans, holders, wanted={"10.0.0.2"}, announced={"10.0.0.4"})
    # 10.0.0.3: no live pod uses it, its pod went: a hold, not stale.
    assert stale == {"10.0.0.1"}


def test_waiting_lasts_the_grace_and_only_for_ips_no_live_pod_uses() -> None:
    left_at = {
        "10.0.0.1": NOW - timedelta(seconds=5),  # its pod went a moment ago: the record is on its way
        "10.0.0.2": NOW - ahead.ADOPT_GRACE,  # the grace is over: adopted
        "10.0.0.3": NOW - timedelta(seconds=5),  # deselected, still running: stale, not waiting
    }
    orphans = {"10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"}
    assert ahead.waiting(orphans, left_at, NOW, live_holders={"10.0.0.3"}) == {"10.0.0.1"}
    assert ahead.waiting(orphans, left_at, NOW) == {"10.0.0.1", "10.0.0.3"}
