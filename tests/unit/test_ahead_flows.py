"""reserveAhead: the leader reserves selected live pods' IPs before their deletion, so a deletion
needs no write; entries of selected live pods are never removed; departed pods' entries become
holds; deselected pods' entries go."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from datetime import timedelta

import pytest
from fakes import Clock, Harness, eventually, make_harness, make_ns, make_pod, make_record

from capo_operator.config import Config
from capo_operator.decisions import ahead
from capo_operator.decisions.record import PodRef

AHEAD = Config(reserve_ahead=True)


@pytest.fixture
def h() -> Harness:
    h = make_harness(AHEAD, leading=True, watch_reservations=True)
    h.add_ns(make_ns("db"))
    h.add_ns(make_ns("other", enabled=False))
    return h


def appends(h: Harness) -> list[tuple[str, ...]]:
    return [args for op, args in h.journal if op == "calico.append"]


# (The pure rules of decisions/ahead.py: tests/unit/test_ahead.py.)


# -- the leader -----------------------------------------------------------------------------------


async def test_selected_live_pods_are_reserved_in_one_write_and_only_they(h: Harness) -> None:
    h.add_pod(make_pod("db-0", ips=("10.0.0.1", "fd00::1")))
    h.add_pod(make_pod("db-1", ips=("10.0.0.2",)))
    h.add_pod(make_pod("db-2", ips=("10.0.0.3",), phase="Failed"))  # IP freed long ago
    h.add_pod(make_pod("db-3", ips=("10.0.0.4",), host_network=True))
    h.add_pod(make_pod("web-0", namespace="other", ips=("10.0.0.5",)))  # namespace not enabled
    r = h.releaser()

    await r.pass_once()
    await r.pass_once()  # nothing new: no write

    assert appends(h) == [("10.0.0.1", "10.0.0.2", "fd00::1")]
    assert h.calico.ips == {"10.0.0.1", "10.0.0.2", "fd00::1"}
    assert h.records.items == {}  # no record: nobody was deleted
    assert h.sample("capo_reserved_ahead_ips") == 3


async def test_off_by_default() -> None:
    h = make_harness(leading=True)
    h.add_ns(make_ns("db"))
    h.add_pod(make_pod("db-0"))

    await h.releaser().pass_once()

    assert appends(h) == [] and h.calico.ips == set()


async def test_many_pods_go_in_batches_of_the_group_commit_size(h: Harness) -> None:
    for i in range(600):
        h.add_pod(make_pod(f"db-{i}", ips=(f"10.1.{i // 250}.{i % 250 + 1}",)))

    await h.releaser().pass_once()

    assert [len(ips) for ips in appends(h)] == [256, 256, 88]
    assert len(h.calico.ips) == 600


async def test_a_hold_released_while_a_selected_pod_uses_its_ip_keeps_the_entry(h: Harness) -> None:
    # An older pod's hold of 10.0.0.1 expires while a selected pod runs with that IP (a sticky pod
    # given it back, say): the hold ends, the reservation of the running pod stays.
    h.add_record(make_record("10.0.0.1", age=timedelta(minutes=41), expires_in=timedelta(minutes=-1)))
    h.add_pod(make_pod("db-0", uid="new-pod", ips=("10.0.0.1",)))

    await h.releaser().pass_once()

    assert h.records.items == {}
    assert h.sample("capo_releases_total", reason="expired") == 1
    assert h.calico.ips == {"10.0.0.1"}
    assert ("calico.remove", ("10.0.0.1",)) not in list(h.journal)


async def test_the_same_release_without_reserve_ahead_removes_the_entry() -> None:
    h = make_harness(leading=True)
    h.add_ns(make_ns("db"))
    h.add_record(make_record("10.0.0.1", age=timedelta(minutes=41), expires_in=timedelta(minutes=-1)))
    h.add_pod(make_pod("db-0", uid="new-pod", ips=("10.0.0.1",)))

    await h.releaser().pass_once()

    assert h.calico.ips == set()


async def test_a_departed_pods_entry_waits_for_its_record_then_is_adopted(h: Harness) -> None:
    clock = Clock()
    r = h.releaser(clock=clock)
    pod = h.add_pod(make_pod("db-0", ips=("10.0.0.1",)))
    await r.pass_once()
    assert h.calico.ips == {"10.0.0.1"}

    h.remove_pod(pod)  # deleted; its record has not come (yet)
    for _ in range(3):
        clock.now += timedelta(seconds=5)
        await r.pass_once()
    assert h.records.items == {} and h.calico.ips == {"10.0.0.1"}, "waits for the record with details"

    clock.now += ahead.ADOPT_GRACE
    await r.pass_once()
    await r.pass_once()
    assert h.records.items["10.0.0.1"].trigger == "recovered"
    assert h.calico.ips == {"10.0.0.1"}, "never dropped"


async def test_a_departed_pods_record_with_details_is_kept_as_is(h: Harness) -> None:
    clock = Clock()
    r = h.releaser(clock=clock)
    pod = h.add_pod(make_pod("db-0", ips=("10.0.0.1",)))
    await r.pass_once()
    h.remove_pod(pod)
    await r.pass_once()
    ref = PodRef(namespace="db", name="db-0", uid=pod.uid, node="node-1")
    h.add_record(make_record("10.0.0.1", pod=ref, age=timedelta(0)))  # the webhook's follower

    clock.now += ahead.ADOPT_GRACE * 2
    await r.pass_once()
    await r.pass_once()

    assert h.records.items["10.0.0.1"].pod == ref
    assert h.sample("capo_reservations_total", trigger="recovered") == 0


async def test_a_deselected_pods_entry_is_removed_on_the_second_pass(h: Harness) -> None:
    clock = Clock()
    r = h.releaser(clock=clock)
    h.add_pod(make_pod("db-0", ips=("10.0.0.1",)))
    h.add_pod(make_pod("db-1", ips=("10.0.0.2",)))
    h.add_record(make_record("10.0.0.9"))  # a deleted pod's hold in the same namespace
    await r.pass_once()
    assert h.calico.ips == {"10.0.0.1", "10.0.0.2", "10.0.0.9"}

    h.add_ns(make_ns("db", enabled=False))  # ip-reserve label removed
    await r.pass_once()
    assert h.calico.ips == {"10.0.0.1", "10.0.0.2", "10.0.0.9"}, "confirmed in two passes"
    await r.pass_once()

    assert h.calico.ips == {"10.0.0.9"}
    assert set(h.records.items) == {"10.0.0.9"}
    assert h.sample("capo_reservations_total", trigger="recovered") == 0


# -- the webhook ------------------------------------------------------------------------------------


async def _review(h: Harness, pod_name: str = "db-0") -> None:
    pod = h.op.views.pod("db", pod_name)
    assert pod is not None
    warnings: list[str] = []
    await h.op.admission.review(pod, operation="delete", dry_run=False, warnings=warnings)
    await h.op.reserver.follower.flush()
    assert warnings == []


async def test_a_deletion_of_a_pod_reserved_ahead_writes_nothing_before_its_answer(h: Harness) -> None:
    h.add_pod(make_pod("db-0", ips=("10.0.0.1", "fd00::1")))
    await h.releaser().pass_once()
    h.journal.clear()

    await _review(h)

    assert h.journal.ops() == ["records.create", "records.create"]  # the records follow; no Calico write
    assert h.sample("capo_webhook_requests_total", operation="delete", outcome="reserved-ahead") == 1
    assert {r.trigger for r in h.records.items.values()} == {"delete"}


@pytest.mark.parametrize("held", [set(), {"10.0.0.1"}])
async def test_a_pod_not_yet_reserved_ahead_takes_the_one_write_path(h: Harness, held: set[str]) -> None:
    h.add_pod(make_pod("db-0", ips=("10.0.0.1", "fd00::1")))
    h.calico.ips.update(held)  # one of its two IPs, or none

    await _review(h)

    assert appends(h) == [("10.0.0.1", "fd00::1")]
    assert h.sample("capo_webhook_requests_total", operation="delete", outcome="reserved") == 1


async def test_the_fast_path_follows_the_config_and_the_watch(h: Harness) -> None:
    h.add_pod(make_pod("db-0", ips=("10.0.0.1",)))
    h.calico.ips.add("10.0.0.1")
    h.op.config.current = Config(reserve_ahead=False)  # turned off by a reload: write as Capo does
    assert not h.op.reserver.held_already(("10.0.0.1",))
    h.op.config.current = AHEAD
    assert h.op.reserver.held_already(("10.0.0.1",))
    assert h.op.reservations is not None
    h.op.reservations.synced.clear()  # not listed yet
    assert not h.op.reserver.held_already(("10.0.0.1",))


def test_without_the_watch_every_review_writes() -> None:
    h = make_harness(AHEAD)
    h.calico.ips.add("10.0.0.1")
    assert not h.op.reserver.held_already(("10.0.0.1",))


async def test_a_lagging_watch_does_not_make_the_leader_append_twice(h: Harness) -> None:
    r = h.releaser()
    cache = h.calico.cache()
    cache.freeze()  # shows the object as it was before any append, for the whole test
    r._cache = cache  # type: ignore[assignment]  # the leader's watch, as lead() sets it
    h.add_pod(make_pod("db-0", ips=("10.0.0.1",)))
    await r.pass_once()
    h.add_pod(make_pod("db-1", ips=("10.0.0.2",)))  # another change opens the step again

    await r.pass_once()

    assert appends(h) == [("10.0.0.1",), ("10.0.0.2",)]
    assert h.sample("capo_reserved_ahead_ips") == 2


async def test_turning_it_off_leaves_running_pods_entries_alone_and_real_holds_in_place(h: Harness) -> None:
    # Cap 1: one real hold. Were the running pod's entry adopted as "recovered", the cap would
    # release the older, real hold early.
    h.op.config.current = Config(reserve_ahead=True, ip_reserve_max_count=1)
    h.add_record(make_record("10.0.0.9", age=timedelta(minutes=5)))
    pod = h.add_pod(make_pod("db-0", ips=("10.0.0.1",)))
    r = h.releaser()
    await r.pass_once()
    assert h.calico.ips == {"10.0.0.1", "10.0.0.9"}
    assert h.sample("capo_reserved_ahead_ips") == 1

    h.op.config.current = Config(reserve_ahead=False, ip_reserve_max_count=1)  # a reload turns it off
    for _ in range(4):
        await r.pass_once()

    assert set(h.records.items) == {"10.0.0.9"}, "no recovered hold for the running pod"
    assert h.calico.ips == {"10.0.0.1", "10.0.0.9"}
    assert h.sample("capo_releases_total", reason="cap") == 0
    assert h.sample("capo_reserved_ahead_ips") == 0

    h.remove_pod(pod)  # deleted with no record (say the webhook was unreachable): a hold now
    await r.pass_once()
    await r.pass_once()
    assert h.records.items["10.0.0.1"].trigger == "recovered" and "10.0.0.1" in h.calico.ips


# -- the leader's loop: woken by a newly selected pod, not by others ---------------------------------


async def test_a_pod_selected_while_a_pass_writes_is_reserved_ahead_without_waiting_a_period() -> None:
    # A period far longer than the test: only the wake-up of a newly selected pod can bring the
    # second pod's IP in.
    h = make_harness(Config(reserve_ahead=True, ip_release_period=timedelta(seconds=60)), leading=True)
    h.add_ns(make_ns("db"))
    h.add_pod(make_pod(name="db-0", uid="u0", ips=("10.0.3.1",)))
    h.calico.gate = asyncio.Event()  # the pass's append waits: a pod is selected meanwhile
    h.op.views.synced.set()
    task = asyncio.create_task(h.op.releaser.lead())
    try:
        await eventually(lambda: ("calico.append", ("10.0.3.1",)) in h.journal)
        h.add_pod(make_pod(name="db-1", uid="u1", ips=("10.0.3.2",)))
        h.calico.gate.set()

        await eventually(lambda: "10.0.3.2" in h.calico.ips, within=3.0)

        assert h.calico.ips == {"10.0.3.1", "10.0.3.2"}
        assert h.sample("capo_reserved_ahead_ips") == 2
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_without_reserve_ahead_a_running_pod_is_not_reserved() -> None:
    h = make_harness(Config(ip_release_period=timedelta(milliseconds=50)), leading=True)
    h.add_ns(make_ns("db"))
    h.add_pod(make_pod(name="db-0", uid="u0", ips=("10.0.3.1",)))
    h.op.views.synced.set()
    task = asyncio.create_task(h.op.releaser.lead())
    try:
        await asyncio.sleep(0.3)  # several passes

        assert h.calico.ips == set()
        assert h.journal.ops("calico.append") == []
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_changes_of_a_pod_selected_already_do_not_wake_the_leader(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A drain marks every pod deleting: one pass per change would run the leader flat out for
    # nothing (their IPs are held already). Only a newly selected IP wakes it.
    h = make_harness(Config(reserve_ahead=True, ip_release_period=timedelta(seconds=60)), leading=True)
    h.add_ns(make_ns("db"))
    pod = h.add_pod(make_pod(name="db-0", uid="u0", ips=("10.0.3.1",)))
    h.op.views.synced.set()
    r = h.op.releaser
    passes: list[None] = []
    real = r.pass_once

    async def counted() -> int:
        passes.append(None)
        return await real()

    monkeypatch.setattr(r, "pass_once", counted)
    task = asyncio.create_task(r.lead())
    try:
        await eventually(lambda: "10.0.3.1" in h.calico.ips)
        await asyncio.sleep(0.3)
        assert len(passes) == 1

        h.add_pod(dataclasses.replace(pod, deleting=True))  # still selected, IP held already
        await asyncio.sleep(0.5)
        assert len(passes) == 1

        h.add_pod(make_pod(name="db-1", uid="u1", ips=("10.0.3.2",)))
        await eventually(lambda: "10.0.3.2" in h.calico.ips)
        assert len(passes) == 2
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
