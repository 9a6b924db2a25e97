"""Release planning: expiry, cap (oldest first), owner/namespace deletion, stopped clocks, drift."""

from __future__ import annotations

import dataclasses
import random
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from capo_operator.decisions.planner import DEFAULT_GRACE, ClockChange, Plan, RecordView, drift, plan, retime

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
HOLD = timedelta(minutes=40)


def rec(
    name: str,
    *,
    age: timedelta = timedelta(minutes=10),
    expires_in: timedelta | None = timedelta(minutes=30),
    pod_uid: str | None = None,
    namespace: str | None = "db",
    owner_uid: str | None = None,
    hold: timedelta = HOLD,
    default_policy: bool = True,
) -> RecordView:
    return RecordView(
        name=name,
        ip=name,
        pod_uid=pod_uid if pod_uid is not None else f"uid-{name}",
        namespace=namespace,
        owner_uid=owner_uid,
        reserved_at=NOW - age,
        expires_at=None if expires_in is None else NOW + expires_in,
        hold=hold,
        default_policy=default_policy,
    )


def reasons(result: Plan) -> dict[str, str]:
    return {r.name: r.reason for r in result.releases}


def test_nothing_to_do() -> None:
    result = plan([rec("10.0.0.1"), rec("10.0.0.2")], now=NOW, max_count=10, alive_pod_uids=())
    assert result == Plan((), (), next_deadline=NOW + timedelta(minutes=30))


def test_expired_records_are_released() -> None:
    records = [
        rec("10.0.0.1", age=timedelta(minutes=41), expires_in=-timedelta(minutes=1)),
        rec("10.0.0.2", age=timedelta(minutes=40), expires_in=timedelta(0)),  # due exactly now
        rec("10.0.0.3", age=timedelta(minutes=39), expires_in=timedelta(seconds=1)),
    ]
    result = plan(records, now=NOW, max_count=10, alive_pod_uids=())
    assert reasons(result) == {"10.0.0.1": "expired", "10.0.0.2": "expired"}
    held = {r.name: r.held for r in result.releases}
    assert held == {"10.0.0.1": timedelta(minutes=41), "10.0.0.2": timedelta(minutes=40)}


def test_cap_releases_the_oldest_first() -> None:
    records = [rec(f"10.0.0.{i}", age=timedelta(minutes=i)) for i in range(1, 6)]
    result = plan(records, now=NOW, max_count=3, alive_pod_uids=())
    assert [(r.name, r.reason) for r in result.releases] == [("10.0.0.5", "cap"), ("10.0.0.4", "cap")]


def test_cap_ties_are_broken_by_name() -> None:
    records = [rec(name, age=timedelta(minutes=5)) for name in ("10.0.0.3", "10.0.0.1", "10.0.0.2")]
    result = plan(records, now=NOW, max_count=1, alive_pod_uids=())
    assert [r.name for r in result.releases] == ["10.0.0.1", "10.0.0.2"]


def test_cap_counts_after_expiry() -> None:
    records = [
        rec("10.0.0.1", age=timedelta(hours=2), expires_in=-timedelta(hours=1)),
        rec("10.0.0.2", age=timedelta(minutes=20)),
        rec("10.0.0.3", age=timedelta(minutes=10)),
    ]
    result = plan(records, now=NOW, max_count=2, alive_pod_uids=())
    assert reasons(result) == {"10.0.0.1": "expired"}


def test_cap_counts_stopped_clocks_too() -> None:
    alive = rec("10.0.0.1", age=timedelta(hours=5), expires_in=None, pod_uid="alive")
    records = [alive, rec("10.0.0.2"), rec("10.0.0.3", age=timedelta(minutes=1))]
    result = plan(records, now=NOW, max_count=2, alive_pod_uids={"alive"})
    assert reasons(result) == {"10.0.0.1": "cap"}


def test_alive_pod_stops_the_clock_and_is_not_expired() -> None:
    record = rec(
        "10.0.0.1", age=timedelta(hours=1), expires_in=-timedelta(minutes=20), pod_uid="p", owner_uid="o"
    )
    result = plan(
        [record], now=NOW, max_count=10, alive_pod_uids={"p"}, gone_owner_uids={"o"}, gone_namespaces={"db"}
    )
    assert result.releases == ()
    assert result.clock_changes == (ClockChange("10.0.0.1", record.reserved_at, None, HOLD),)


def test_already_stopped_clock_is_left_alone() -> None:
    record = rec("10.0.0.1", age=timedelta(hours=1), expires_in=None, pod_uid="p")
    assert plan([record], now=NOW, max_count=10, alive_pod_uids={"p"}) == Plan((), ())


def test_a_pod_still_present_stops_the_clock_at_once() -> None:
    # Reserved by the webhook a moment ago, the pod still terminating: the hold has not begun.
    record = rec("10.0.0.1", age=timedelta(seconds=3), pod_uid="p")
    assert plan([record], now=NOW, max_count=10, alive_pod_uids={"p"}) == Plan(
        (), (ClockChange("10.0.0.1", record.reserved_at, None, HOLD),)
    )


def test_alive_pod_within_an_explicit_grace_keeps_its_running_clock() -> None:
    grace = timedelta(seconds=10)
    record = rec("10.0.0.1", age=timedelta(seconds=3), pod_uid="p")
    result = plan([record], now=NOW, max_count=10, alive_pod_uids={"p"}, grace=grace)
    assert (result.releases, result.clock_changes) == ((), ())
    # Planned again once the grace is over (then the clock stops).
    assert result.next_deadline is not None
    assert (
        record.reserved_at + grace < result.next_deadline <= record.reserved_at + grace + timedelta(seconds=1)
    )
    just_over = rec("10.0.0.1", age=timedelta(seconds=11), pod_uid="p")
    assert plan([just_over], now=NOW, max_count=10, alive_pod_uids={"p"}, grace=grace).clock_changes


def test_clock_starts_when_the_pod_is_gone() -> None:
    record = rec("10.0.0.1", age=timedelta(hours=3), expires_in=None, pod_uid="p", hold=timedelta(hours=2))
    result = plan([record], now=NOW, max_count=10, alive_pod_uids=())
    assert result.releases == ()
    assert result.clock_changes == (
        ClockChange("10.0.0.1", NOW, NOW + timedelta(hours=2), timedelta(hours=2)),
    )


def test_restarted_clock_counts_as_newest_for_the_cap() -> None:
    restarted = rec("10.0.0.1", age=timedelta(hours=3), expires_in=None, pod_uid="p")
    records = [restarted, rec("10.0.0.2", age=timedelta(minutes=1))]
    result = plan(records, now=NOW, max_count=1, alive_pod_uids=())
    assert reasons(result) == {"10.0.0.2": "cap"}
    assert [c.name for c in result.clock_changes] == ["10.0.0.1"]


def test_namespace_and_owner_deletion_release() -> None:
    records = [
        rec("10.0.0.1", namespace="gone"),
        rec("10.0.0.2", owner_uid="gone-owner"),
        rec("10.0.0.3", namespace="gone", owner_uid="gone-owner"),
        rec("10.0.0.4", namespace="db", owner_uid="kept-owner"),
        rec("10.0.0.5", namespace=None, owner_uid=None),
        rec("10.0.0.6", expires_in=None, owner_uid="gone-owner"),  # clock would start: released instead
    ]
    result = plan(
        records,
        now=NOW,
        max_count=10,
        alive_pod_uids=(),
        gone_namespaces={"gone"},
        gone_owner_uids={"gone-owner"},
    )
    assert reasons(result) == {
        "10.0.0.1": "namespace-deleted",
        "10.0.0.2": "owner-deleted",
        "10.0.0.3": "namespace-deleted",
        "10.0.0.6": "owner-deleted",
    }
    assert result.clock_changes == ()


def test_young_alive_pod_is_not_released_with_its_owner_or_namespace() -> None:
    records = [
        rec("10.0.0.1", age=timedelta(seconds=2), pod_uid="p", owner_uid="o"),
        rec("10.0.0.2", age=timedelta(seconds=2), pod_uid="q", namespace="gone"),
    ]
    result = plan(
        records,
        now=NOW,
        max_count=10,
        alive_pod_uids={"p", "q"},
        gone_owner_uids={"o"},
        gone_namespaces={"gone"},
    )
    assert result.releases == ()


def test_zero_cap_releases_everything_kept() -> None:
    records = [rec("10.0.0.1"), rec("10.0.0.2", expires_in=-timedelta(seconds=1))]
    result = plan(records, now=NOW, max_count=0, alive_pod_uids=())
    assert reasons(result) == {"10.0.0.1": "cap", "10.0.0.2": "expired"}


def test_retime_moves_default_holds_only() -> None:
    new = timedelta(hours=1)
    records = [
        rec("10.0.0.1"),  # default, running: moved
        rec("10.0.0.2", default_policy=False),  # annotation or hand-edited expiry: untouched
        rec("10.0.0.3", hold=timedelta(hours=2)),  # an older default (changed twice meanwhile): moved
        rec("10.0.0.4", expires_in=None),  # stopped: new hold, still stopped
        rec("10.0.0.5", hold=new),  # already the new default: untouched
    ]
    changes = retime(records, new=new, policy="ipReserveTime=1h")
    r1, r3, r4 = records[0], records[2], records[3]
    assert changes == (
        ClockChange("10.0.0.1", r1.reserved_at, r1.reserved_at + new, new, "ipReserveTime=1h"),
        ClockChange("10.0.0.3", r3.reserved_at, r3.reserved_at + new, new, "ipReserveTime=1h"),
        ClockChange("10.0.0.4", r4.reserved_at, None, new, "ipReserveTime=1h"),
    )
    assert retime(records[4:], new=new, policy="ipReserveTime=1h") == ()


@given(st.lists(st.tuples(st.sampled_from([HOLD, timedelta(hours=1), timedelta(seconds=90)]), st.booleans())))
def test_retime_is_idempotent(holds: list[tuple[timedelta, bool]]) -> None:
    """Applying the changes and retiming again changes nothing: a value is applied once."""
    new = timedelta(hours=1)
    records = [rec(f"10.0.0.{i}", hold=h, default_policy=d) for i, (h, d) in enumerate(holds)]
    changed = {c.name: c for c in retime(records, new=new, policy="ipReserveTime=1h")}
    after = [
        dataclasses.replace(r, hold=changed[r.name].hold, expires_at=changed[r.name].expires_at)
        if r.name in changed
        else r
        for r in records
    ]
    assert retime(after, new=new, policy="ipReserveTime=1h") == ()
    assert all(r.hold == new for r in after if r.default_policy)


def test_drift() -> None:
    result = drift(
        calico_ips=["10.0.0.1/32", "10.0.0.2/32", "fd00::7/128", "10.9.9.9/32", "10.0.0.0/24", "garbage"],
        record_ips=["10.0.0.1", "10.0.0.3", "FD00::7", "10.0.0.4"],
        releasing=["10.0.0.4", "10.9.9.9"],
    )
    assert result.missing_in_calico == {"10.0.0.3"}
    assert result.without_record == {"10.0.0.2"}
    assert result.invalid_in_calico == {"10.0.0.0/24", "garbage"}


def test_drift_when_in_sync() -> None:
    result = drift(["10.0.0.1/32", "fd00::1/128"], ["10.0.0.1", "fd00::1"])
    assert not result.missing_in_calico and not result.without_record and not result.invalid_in_calico


# ---------------------------------------------------------------- properties

Scenario = tuple[list[RecordView], dict[str, object]]
UIDS = ["u0", "u1", "u2", "u3", "u4"]


RECORD_FIELDS = st.tuples(
    st.integers(-5, 6000),  # age in seconds (a little clock skew included)
    st.sampled_from([1, 60, 600, 2400]),  # hold in seconds
    st.one_of(st.none(), st.integers(-3000, 3000)),  # expires_at relative to now
    st.sampled_from([*UIDS, None]),
    st.sampled_from(["a", "b", None]),
    st.sampled_from(["o1", "o2", None]),
    st.booleans(),
)


def make_records(
    fields: list[tuple[int, int, int | None, str | None, str | None, str | None, bool]],
) -> list[RecordView]:
    return [
        RecordView(
            name=f"10.0.0.{i}",
            ip=f"10.0.0.{i}",
            pod_uid=uid,
            namespace=namespace,
            owner_uid=owner,
            reserved_at=NOW - timedelta(seconds=age),
            expires_at=None if expires is None else NOW + timedelta(seconds=expires),
            hold=timedelta(seconds=hold),
            default_policy=default,
        )
        for i, (age, hold, expires, uid, namespace, owner, default) in enumerate(fields)
    ]


scenarios = st.tuples(
    st.lists(RECORD_FIELDS, max_size=14).map(make_records),
    st.fixed_dictionaries(
        {
            "now": st.just(NOW),
            "max_count": st.integers(1, 12),
            "alive_pod_uids": st.frozensets(st.sampled_from(UIDS)),
            "gone_namespaces": st.frozensets(st.sampled_from(["a", "b"])),
            "gone_owner_uids": st.frozensets(st.sampled_from(["o1", "o2"])),
        }
    ),
)


def run(records: list[RecordView], kwargs: dict[str, object]) -> Plan:
    return plan(records, **kwargs)  # type: ignore[arg-type]


def alive_and_old(record: RecordView, kwargs: dict[str, object]) -> bool:
    alive = kwargs["alive_pod_uids"]
    assert isinstance(alive, frozenset)
    return record.pod_uid in alive and NOW - record.reserved_at > DEFAULT_GRACE


def effective_reserved_at(record: RecordView, kwargs: dict[str, object]) -> datetime:
    alive = kwargs["alive_pod_uids"]
    assert isinstance(alive, frozenset)
    if record.expires_at is None and record.pod_uid not in alive:
        return NOW
    return record.reserved_at


PROPERTY = settings(max_examples=300, deadline=None)


@PROPERTY
@given(scenarios)
def test_remaining_records_fit_the_cap(scenario: Scenario) -> None:
    records, kwargs = scenario
    result = run(records, kwargs)
    assert len(records) - len(result.releases) <= kwargs["max_count"]  # type: ignore[operator]


@PROPERTY
@given(scenarios)
def test_under_the_cap_only_due_records_are_released(
    scenario: Scenario,
) -> None:
    records, kwargs = scenario
    kwargs = {
        **kwargs,
        "gone_namespaces": frozenset(),
        "gone_owner_uids": frozenset(),
        "max_count": max(len(records), 1),
    }
    by_name = {r.name: r for r in records}
    for release in run(records, kwargs).releases:
        expires_at = by_name[release.name].expires_at
        assert expires_at is not None and expires_at <= NOW
        assert release.reason == "expired"


@PROPERTY
@given(scenarios)
def test_release_once_and_no_clock_change_for_released(
    scenario: Scenario,
) -> None:
    records, kwargs = scenario
    result = run(records, kwargs)
    released = [r.name for r in result.releases]
    assert len(released) == len(set(released))
    changed = [c.name for c in result.clock_changes]
    assert len(changed) == len(set(changed))
    assert not set(released) & set(changed)
    by_name = {r.name: r for r in records}
    for release in result.releases:
        assert release.ip == by_name[release.name].ip
        assert release.held == NOW - by_name[release.name].reserved_at


@PROPERTY
@given(scenarios)
def test_alive_pods_are_only_released_by_the_cap(
    scenario: Scenario,
) -> None:
    records, kwargs = scenario
    by_name = {r.name: r for r in records}
    result = run(records, kwargs)
    alive = kwargs["alive_pod_uids"]
    assert isinstance(alive, frozenset)
    for release in result.releases:
        if by_name[release.name].pod_uid in alive:  # its IP is in use, however young the record
            assert release.reason == "cap"
    for change in result.clock_changes:
        record = by_name[change.name]
        if alive_and_old(record, kwargs):
            assert change == ClockChange(record.name, record.reserved_at, None, record.hold)
        else:  # the clock starts now
            assert record.expires_at is None
            assert change == ClockChange(record.name, NOW, NOW + record.hold, record.hold)


@PROPERTY
@given(scenarios)
def test_every_clock_that_must_change_does(scenario: Scenario) -> None:
    records, kwargs = scenario
    result = run(records, kwargs)
    released = {r.name for r in result.releases}
    changed = {c.name for c in result.clock_changes}
    alive = kwargs["alive_pod_uids"]
    assert isinstance(alive, frozenset)
    for record in records:
        if record.name in released:
            continue
        stop = alive_and_old(record, kwargs) and record.expires_at is not None
        start = record.expires_at is None and record.pod_uid not in alive
        assert (record.name in changed) == (stop or start)


@PROPERTY
@given(scenarios)
def test_owner_and_namespace_releases_are_for_gone_pods_only(scenario: Scenario) -> None:
    records, kwargs = scenario
    by_name = {r.name: r for r in records}
    for release in run(records, kwargs).releases:
        record = by_name[release.name]
        if release.reason in ("owner-deleted", "namespace-deleted"):
            assert record.pod_uid not in kwargs["alive_pod_uids"]  # type: ignore[operator]
        if release.reason == "owner-deleted":
            assert record.owner_uid in kwargs["gone_owner_uids"]  # type: ignore[operator]
        if release.reason == "namespace-deleted":
            assert record.namespace in kwargs["gone_namespaces"]  # type: ignore[operator]


@PROPERTY
@given(scenarios)
def test_cap_releases_the_oldest(scenario: Scenario) -> None:
    records, kwargs = scenario
    result = run(records, kwargs)
    released = {r.name for r in result.releases}
    capped = [r for r in records if r.name in {x.name for x in result.releases if x.reason == "cap"}]
    kept = [r for r in records if r.name not in released]
    for c in capped:
        for k in kept:
            assert (effective_reserved_at(c, kwargs), c.name) <= (effective_reserved_at(k, kwargs), k.name)


@PROPERTY
@given(scenarios, st.randoms(use_true_random=False))
def test_plan_is_deterministic(scenario: Scenario, rng: random.Random) -> None:
    records, kwargs = scenario
    shuffled = list(records)
    rng.shuffle(shuffled)
    assert run(records, kwargs) == run(shuffled, kwargs) == run(list(records), dict(kwargs))
    assert run(records, kwargs) == plan(tuple(shuffled), **kwargs)  # type: ignore[arg-type]


def test_a_hold_shorter_than_the_grace_does_not_expire_while_the_pod_holds_its_ip() -> None:
    record = rec("10.0.0.1", age=timedelta(seconds=5), expires_in=timedelta(seconds=-3), pod_uid="p")
    assert plan([record], now=NOW, max_count=10, alive_pod_uids={"p"}).releases == ()
    assert plan([record], now=NOW, max_count=10, alive_pod_uids=()).releases[0].reason == "expired"


def test_next_deadline_is_the_earliest_running_clock_of_the_records_kept() -> None:
    soon = rec("10.0.0.1", expires_in=timedelta(minutes=5))
    later = rec("10.0.0.2", expires_in=timedelta(minutes=9))
    stopped = rec("10.0.0.3", expires_in=None, pod_uid="alive")
    due = rec("10.0.0.4", expires_in=timedelta(minutes=-1))
    result = plan([soon, later, stopped, due], now=NOW, max_count=10, alive_pod_uids={"alive"})
    assert [r.name for r in result.releases] == [due.name]
    assert result.next_deadline == NOW + timedelta(minutes=5)


def test_next_deadline_ignores_stopped_clocks_and_records_released_by_the_cap() -> None:
    capped = rec("10.0.0.1", age=timedelta(hours=2), expires_in=timedelta(minutes=1))
    stopped = rec("10.0.0.2", expires_in=timedelta(minutes=2), pod_uid="alive")
    result = plan([capped, stopped], now=NOW, max_count=1, alive_pod_uids={"alive"})
    assert [(r.name, r.reason) for r in result.releases] == [(capped.name, "cap")]
    assert result.next_deadline is None


def test_a_clock_started_now_is_due_one_hold_later() -> None:
    record = rec("10.0.0.1", expires_in=None, pod_uid="gone", hold=timedelta(minutes=40))
    result = plan([record], now=NOW, max_count=10, alive_pod_uids=())
    assert result.next_deadline == NOW + timedelta(minutes=40)


def applied(records: list[RecordView], result: Plan) -> list[RecordView]:
    """The records as they are once a plan's writes are done (releases gone, clocks changed)."""
    released = {r.name for r in result.releases}
    changes = {c.name: c for c in result.clock_changes}
    out = []
    for record in records:
        if record.name in released:
            continue
        change = changes.get(record.name)
        if change is not None:
            record = dataclasses.replace(record, reserved_at=change.reserved_at, expires_at=change.expires_at)
        out.append(record)
    return out


@PROPERTY
@given(scenarios, st.integers(1, 4000), st.sampled_from([DEFAULT_GRACE, timedelta(seconds=10)]))
def test_nothing_changes_before_the_next_deadline(scenario: Scenario, later_s: int, grace: timedelta) -> None:
    """What lets a pass skip planning: with the same inputs, planning again at any moment before
    `next_deadline` gives nothing to do. The deadline is in the future (no busy planning); it may
    be early (a grace that ends with nothing to stop), never late."""
    records, kwargs = scenario
    first = plan(records, grace=grace, **kwargs)  # type: ignore[arg-type]
    after = applied(records, first)
    later = NOW + timedelta(seconds=later_s)
    again = plan(after, grace=grace, **{**kwargs, "now": later})  # type: ignore[arg-type]
    if first.next_deadline is None or later < first.next_deadline:
        assert (again.releases, again.clock_changes) == ((), ())
    assert first.next_deadline is None or first.next_deadline > NOW
