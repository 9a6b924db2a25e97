"""The safety net: reserves deletions the webhook missed, terminal transitions and failed writes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import timedelta

import pytest
from fakes import Harness, eventually, make_harness, make_ns, make_pod, make_record

from capo_operator.decisions.policy import Hold
from capo_operator.flows import safety_net
from capo_operator.flows.safety_net import SafetyNet
from capo_operator.flows.state import Leadership, RecentUIDs, TerminalUIDs

LEADER = 0.01
STANDBY = 0.3


@pytest.fixture(autouse=True)
def _fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(safety_net, "LEADER_DELAY", LEADER)
    monkeypatch.setattr(safety_net, "STANDBY_DELAY", STANDBY)
    monkeypatch.setattr(safety_net, "MAX_BACKOFF", 0.005)


Runner = Callable[[SafetyNet], None]


@pytest.fixture
async def start(h: Harness) -> AsyncIterator[Runner]:
    tasks: list[asyncio.Task[None]] = []

    def run(net: SafetyNet) -> None:
        tasks.append(asyncio.create_task(net.run()))

    yield run
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


@pytest.fixture
def h() -> Harness:
    h = make_harness(leading=True)
    h.add_ns(make_ns("db"))
    return h


async def test_deleted_pod_without_records_is_reserved(h: Harness, start: Runner) -> None:
    pod = make_pod(deleting=True, ips=("10.0.0.1", "fd00::1"))
    start(h.safety_net)

    h.safety_net.pod_gone(pod)

    await eventually(lambda: h.safety_net.pending == 0 and len(h.records.items) == 2)
    assert {r.trigger for r in h.records.items.values()} == {"safety-net"}
    assert h.calico.ips == {"10.0.0.1", "fd00::1"}
    assert h.sample("capo_safety_net_catches_total", trigger="safety-net") == 2
    assert h.sample("capo_reservations_total", trigger="safety-net") == 2


async def test_deleted_pod_with_its_record_present_writes_nothing(h: Harness, start: Runner) -> None:
    h.add_record(make_record("10.0.0.1"))
    start(h.safety_net)

    h.safety_net.pod_gone(make_pod(deleting=True))

    await eventually(lambda: h.safety_net.pending == 0)
    await asyncio.sleep(0.01)
    assert h.journal == []
    assert h.sample("capo_safety_net_catches_total", trigger="safety-net") == 0


async def test_only_unrecorded_ips_are_reserved(h: Harness, start: Runner) -> None:
    h.add_record(make_record("10.0.0.1"))
    start(h.safety_net)

    h.safety_net.pod_gone(make_pod(deleting=True, ips=("10.0.0.1", "10.0.0.2")))

    await eventually(lambda: "10.0.0.2" in h.records.items)
    assert h.journal[0] == ("calico.append", ("10.0.0.2",))
    assert h.sample("capo_safety_net_catches_total", trigger="safety-net") == 1


@pytest.mark.parametrize(("reason", "trigger"), [("Evicted", "kubelet-eviction"), (None, "terminated")])
async def test_terminal_transition_is_reserved(
    h: Harness, start: Runner, reason: str | None, trigger: str
) -> None:
    start(h.safety_net)

    h.safety_net.pod_terminated(make_pod(phase="Failed", reason=reason))

    # The catch is counted once the reservation returned, a moment after the record exists.
    await eventually(lambda: h.sample("capo_safety_net_catches_total", trigger=trigger) == 1)
    assert h.records.items["10.0.0.1"].trigger == trigger


async def test_deletion_of_a_terminal_pod_is_not_reserved_again(h: Harness) -> None:
    h.safety_net.pod_gone(make_pod(phase="Failed", reason="Evicted", deleting=True))
    assert h.safety_net.pending == 0


async def test_repeated_notices_of_one_pod_queue_it_once(h: Harness) -> None:
    pod = make_pod(deleting=True)
    h.safety_net.pod_gone(pod)
    h.safety_net.pod_gone(pod)
    h.safety_net.pod_terminated(pod)
    assert h.safety_net.pending == 1


async def test_pod_outside_policy_is_not_reserved(h: Harness, start: Runner) -> None:
    start(h.safety_net)
    h.safety_net.pod_gone(make_pod(deleting=True, labels={"app": "web"}))

    await eventually(lambda: h.safety_net.pending == 0)
    await asyncio.sleep(0.01)
    assert h.journal == []


async def test_failing_write_is_retried_with_backoff(h: Harness, start: Runner) -> None:
    h.calico.fail("append", times=3)
    start(h.safety_net)

    h.safety_net.pod_gone(make_pod(deleting=True))

    await eventually(lambda: "10.0.0.1" in h.records.items)
    assert h.journal.ops("calico") == ["calico.append"] * 4
    assert h.sample("capo_calico_write_errors_total", operation="append") == 3
    assert h.sample("capo_safety_net_catches_total", trigger="safety-net") == 1
    await eventually(lambda: h.safety_net.pending == 0)


async def test_gives_up_after_max_attempts_and_accepts_the_pod_again(
    h: Harness, start: Runner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(safety_net, "MAX_ATTEMPTS", 2)
    h.calico.fail("append", times=2)
    start(h.safety_net)
    pod = make_pod(deleting=True)

    h.safety_net.pod_gone(pod)
    await eventually(lambda: len(h.journal.ops("calico.append")) == 2 and h.safety_net.pending == 0)
    assert h.records.items == {}

    h.safety_net.pod_gone(pod)  # no longer pending: a later notice is taken
    # Records follow the Calico write after a lull (up to 2 s): a loaded machine needs more.
    await eventually(lambda: "10.0.0.1" in h.records.items, within=10.0)


async def test_webhook_retry_uses_its_decision(h: Harness, start: Runner) -> None:
    hold = Hold(timedelta(hours=3), "annotation capo.io/reserve-time=3h")
    start(h.safety_net)

    # Policy would skip this pod now (selector mismatch): the webhook's decision stands.
    h.safety_net.retry(make_pod(labels={}), ("10.0.0.1",), hold, "eviction")

    await eventually(lambda: "10.0.0.1" in h.records.items)
    rec = h.records.items["10.0.0.1"]
    assert (rec.trigger, rec.hold) == ("eviction", timedelta(hours=3))


async def test_ip_now_held_by_another_live_pod_is_reported_not_reserved(h: Harness, start: Runner) -> None:
    h.add_holder("10.0.0.1", "newcomer")
    start(h.safety_net)

    h.safety_net.pod_gone(make_pod(deleting=True))

    await eventually(lambda: h.safety_net.pending == 0)
    await asyncio.sleep(0.01)
    assert h.journal == []
    assert h.sample("capo_reservations_lost_total") == 1
    lost = h.events.with_reason("IPLost")
    assert len(lost) == 1 and lost[0].warning and "10.0.0.1" in lost[0].message


async def test_standby_acts_only_after_its_longer_delay(h: Harness, start: Runner) -> None:
    h.op.leadership.leading = False
    loop = asyncio.get_running_loop()
    start(h.safety_net)

    queued = loop.time()
    h.safety_net.pod_gone(make_pod(deleting=True))
    await asyncio.sleep(LEADER * 5)
    assert h.journal == []  # the leader's turn

    await eventually(lambda: "10.0.0.1" in h.records.items)
    assert h.calico.append_times[0] - queued >= STANDBY * 0.9


async def test_leader_acts_first_and_the_standby_finds_the_record(h: Harness, start: Runner) -> None:
    leader = h.safety_net
    standby = SafetyNet(
        views=h.op.views,
        reserver=h.op.reserver,
        metrics=h.metrics,
        config=h.op.config,
        leadership=Leadership(leading=False),
        recent=RecentUIDs(),
        reserved_uids=h.op.reserved_uids,
    )
    loop = asyncio.get_running_loop()
    start(leader)
    start(standby)
    pod = make_pod(deleting=True)

    queued = loop.time()
    standby.pod_gone(pod)
    leader.pod_gone(pod)
    await eventually(lambda: "10.0.0.1" in h.records.items)
    assert h.calico.append_times[0] - queued < STANDBY
    await eventually(lambda: standby.pending == 0)

    assert h.journal.ops("calico.append") == ["calico.append"]  # written once, by the leader
    assert h.sample("capo_safety_net_catches_total", trigger="safety-net") == 1


async def test_webhook_retry_of_an_ip_now_held_by_another_pod_is_reported_not_reserved(
    h: Harness, start: Runner
) -> None:
    hold = Hold(timedelta(minutes=40), "ipReserveTime=40m")
    # The webhook's write failed, so the IP was never reserved...
    h.safety_net.retry(make_pod(deleting=True), ("10.0.0.1",), hold, "delete")
    h.add_holder("10.0.0.1", "newcomer")  # ...so IPAM gave it to a new pod meanwhile
    start(h.safety_net)

    await eventually(lambda: h.safety_net.pending == 0)
    await asyncio.sleep(0.01)

    assert h.records.items == {}
    assert h.sample("capo_reservations_lost_total") == 1


async def test_pod_reserved_once_before_is_left_alone(h: Harness, start: Runner) -> None:
    # The webhook reserved it, the cap released it and a new pod took the IP: not a miss, not a loss.
    pod = make_pod(deleting=True)
    h.op.reserved_uids.add(pod.uid)
    h.add_holder("10.0.0.1", "newcomer")
    start(h.safety_net)

    h.safety_net.pod_gone(pod)
    h.safety_net.pod_terminated(make_pod(name="db-1", uid=pod.uid, phase="Failed", reason="Evicted"))

    await eventually(lambda: h.safety_net.pending == 0)
    await asyncio.sleep(0.01)
    assert h.journal == []
    assert h.sample("capo_reservations_lost_total") == 0
    assert h.events.posted == []


async def test_webhook_retry_of_a_pod_reserved_before_still_writes(h: Harness, start: Runner) -> None:
    pod = make_pod(deleting=True)
    h.op.reserved_uids.add(pod.uid)  # e.g. its eviction was reserved; now its DELETE write failed
    start(h.safety_net)

    h.safety_net.retry(pod, ("10.0.0.1",), Hold(timedelta(minutes=40), "ipReserveTime=40m"), "delete")

    await eventually(lambda: "10.0.0.1" in h.records.items)


@pytest.mark.parametrize("leading", [True, False])
async def test_a_kubelet_eviction_is_reserved_at_once_on_every_replica(
    h: Harness, start: Runner, monkeypatch: pytest.MonkeyPatch, leading: bool
) -> None:
    """Bug 4: no webhook races a kubelet eviction, and the freed IP can go to a new pod at once."""
    monkeypatch.setattr(safety_net, "LEADER_DELAY", 30.0)
    monkeypatch.setattr(safety_net, "STANDBY_DELAY", 30.0)
    h.op.leadership.leading = leading
    start(h.safety_net)

    h.safety_net.pod_terminated(make_pod(phase="Failed", reason="Evicted"))

    await eventually(lambda: "10.0.0.1" in h.records.items, within=2.0)
    assert h.calico.ips == {"10.0.0.1"}


async def test_a_repeated_terminal_reserve_by_two_replicas_is_harmless(h: Harness, start: Runner) -> None:
    # Both replicas reserve at once: the second write finds the record and creates nothing.
    other = SafetyNet(
        views=h.op.views,
        reserver=h.op.reserver,
        metrics=h.op.metrics,
        config=h.op.config,
        leadership=Leadership(leading=False),
        recent=RecentUIDs(),
        reserved_uids=RecentUIDs(),
    )
    start(h.safety_net)
    start(other)
    pod = make_pod(phase="Failed", reason="Evicted")

    h.safety_net.pod_terminated(pod)
    other.pod_terminated(pod)

    await eventually(lambda: h.sample("capo_safety_net_catches_total", trigger="kubelet-eviction") == 1)
    await eventually(lambda: h.safety_net.pending == 0 and other.pending == 0)
    await asyncio.sleep(0.05)  # both have handled it
    assert len(h.records.items) == 1
    assert h.sample("capo_safety_net_catches_total", trigger="kubelet-eviction") == 1


def test_terminal_uids_stay_bounded_without_deleted_events() -> None:
    """Bug 7: DELETED events are lost in watch gaps; the set of pods seen terminal stays bounded."""
    live: set[str] = set()
    seen = TerminalUIDs(present=lambda: live, max_size=10_000)
    for i in range(1_000):
        uid = f"u{i}"
        live.add(uid)
        seen.add(uid)
        if i >= 10:
            live.discard(f"u{i - 10}")  # the pod went; its DELETED event was lost
    assert len(seen) < 100  # it follows the pods present, far below its hard cap
    assert all(f"u{i}" in seen for i in range(990, 1_000))  # the ones still present are remembered


def test_terminal_uids_drop_the_oldest_when_every_pod_is_still_there() -> None:
    seen = TerminalUIDs(present=lambda: {f"u{i}" for i in range(500)}, max_size=100)
    for i in range(500):
        seen.add(f"u{i}")
    assert len(seen) == 100 and "u499" in seen and "u0" not in seen


async def test_a_pod_this_replicas_webhook_reserved_is_not_written_again(h: Harness, start: Runner) -> None:
    # The webhook's Calico write succeeded; its records wait for a lull in the burst.
    h.records.gate = asyncio.Event()
    pod = h.add_pod(make_pod(uid="u-9", ips=("10.0.0.9",)))
    await h.op.admission.review(pod, operation="delete", dry_run=False, warnings=[])
    appends = len(h.journal.ops("calico.append"))
    start(h.safety_net)

    h.remove_pod(pod)
    h.safety_net.pod_gone(make_pod(uid="u-9", ips=("10.0.0.9",), deleting=True))

    await eventually(lambda: h.safety_net.pending == 0)
    await asyncio.sleep(0.02)
    assert len(h.journal.ops("calico.append")) == appends  # no second write for it
    h.records.gate.set()
    await h.op.reserver.follower.flush()
    assert h.records.items["10.0.0.9"].trigger == "delete"
