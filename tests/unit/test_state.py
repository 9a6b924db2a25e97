"""The shared live state: recently reserved pod UIDs; the views over the informer caches; readiness."""

from __future__ import annotations

import types

import pytest
from fakes import NoTransport, make_harness, make_ns, make_pod, make_record

from capo_operator.flows import state
from capo_operator.flows.state import RecentUIDs
from capo_operator.kube.caches import Caches


class FakeTime:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def fake_time(monkeypatch: pytest.MonkeyPatch) -> FakeTime:
    clock = FakeTime()
    monkeypatch.setattr(state, "time", types.SimpleNamespace(monotonic=clock.monotonic))
    return clock


# -- RecentUIDs -------------------------------------------------------------------------------


def test_recent_uids_expire_after_the_ttl(fake_time: FakeTime) -> None:
    recent = RecentUIDs(ttl=600)
    recent.add("a")

    fake_time.now += 600
    assert "a" in recent
    fake_time.now += 1
    assert "a" not in recent
    assert "a" not in recent._seen  # forgotten, not just hidden


def test_adding_again_renews_the_ttl(fake_time: FakeTime) -> None:
    recent = RecentUIDs(ttl=10)
    recent.add("a")
    fake_time.now += 8
    recent.add("a")
    fake_time.now += 8
    assert "a" in recent


def test_recent_uids_keep_at_most_max_size_dropping_the_oldest(fake_time: FakeTime) -> None:
    recent = RecentUIDs(max_size=3)
    for uid in "abc":
        recent.add(uid)
        fake_time.now += 1
    recent.add("a")  # renewed: now the newest
    recent.add("d")

    assert "b" not in recent
    assert all(uid in recent for uid in "acd")
    assert len(recent._seen) == 3


def test_recent_uids_discard_and_non_strings() -> None:
    recent = RecentUIDs()
    recent.add("a")
    recent.discard("a")
    recent.discard("never-added")
    assert "a" not in recent
    assert None not in recent
    assert 5 not in recent


# -- Views ------------------------------------------------------------------------------------


def test_views_before_the_first_list_are_empty_and_not_synced() -> None:
    views = Caches(NoTransport(), reservation="capo-reserved-ips").views
    assert not views.synced.is_set()
    assert views.pod("db", "db-0") is None
    assert views.namespace("db") is None
    assert views.records() == []
    assert views.ip_holders(("10.0.0.1",)) == {}
    assert list(views.pods()) == []


def test_views_read_the_live_indices() -> None:
    h = make_harness()
    pod = h.add_pod(make_pod(uid="u0", ips=("10.0.0.1", "fd00::1")))
    other = h.add_pod(make_pod(name="db-1", uid="u1", ips=("10.0.0.2",)))
    ns = h.add_ns(make_ns("db"))
    rec = h.add_record(make_record("10.0.0.9"))
    views = h.op.views

    assert views.synced.is_set()
    assert views.pod("db", "db-0") == pod
    assert views.pod("db", "nope") is None
    assert sorted(p.uid for p in views.pods()) == ["u0", "u1"]
    assert views.namespace("db") == ns
    assert views.namespace_names() == frozenset({"db"})
    assert views.records() == [rec]
    assert views.record("10.0.0.9") == rec
    assert views.record("10.0.0.1") is None
    assert views.all_ip_holders() == {"10.0.0.1": "u0", "fd00::1": "u0", "10.0.0.2": "u1"}

    # The informers update their stores in place: the view follows.
    late = h.add_ns(make_ns("late"))
    assert views.namespace("late") == late
    h.remove_pod(other)
    assert views.pod("db", "db-1") is None


def test_ip_holders_leave_out_the_pod_itself() -> None:
    h = make_harness()
    h.add_pod(make_pod(uid="u0", ips=("10.0.0.1",)))
    views = h.op.views

    assert views.ip_holders(("10.0.0.1",), except_uid="u0") == {}
    assert views.ip_holders(("10.0.0.1", "10.0.0.5")) == {"10.0.0.1": "u0"}
    newcomer = h.add_holder("10.0.0.1", "newcomer")  # old pod still listed, a new one got the IP too
    assert views.ip_holders(("10.0.0.1",), except_uid="u0") == {"10.0.0.1": "newcomer"}

    # The old pod leaves: the newcomer alone holds the IP; then nobody does.
    h.remove_pod(make_pod(uid="u0", ips=("10.0.0.1",)))
    assert views.ip_holders(("10.0.0.1",)) == {"10.0.0.1": "newcomer"}
    assert views.all_ip_holders() == {"10.0.0.1": "newcomer"}
    h.remove_pod(newcomer)
    assert views.ip_holders(("10.0.0.1",)) == {} and views.all_ip_holders() == {}
    assert "u0" not in views.pod_uids() and "newcomer" not in views.pod_uids()


# -- readiness --------------------------------------------------------------------------------


def test_ready_needs_the_certificate_then_the_caches() -> None:
    h = make_harness(cert_ready=False, attach=False)
    readiness = h.op.readiness
    assert readiness.check() == (False, "the webhook serving certificate is not loaded")

    readiness.cert_ready = True
    ok, why = readiness.check()
    assert not ok and "caches" in why

    h.op.views.synced.set()  # all three informers listed
    assert readiness.check() == (True, "ready")


def test_pod_listeners_see_every_change() -> None:
    h = make_harness(attach=False)
    seen: list[tuple[str | None, str | None]] = []
    views = h.op.views
    views.on_pod_change(lambda old, new: seen.append((old and old.uid, new and new.uid)))
    pod = h.add_pod(make_pod(uid="a"))
    h.add_pod(pod)
    h.remove_pod(pod)
    assert seen == [(None, "a"), ("a", "a"), ("a", None)]


def test_has_record_for_answers_from_the_records_pod_uid_index() -> None:
    h = make_harness()
    record = h.add_record(make_record("10.0.0.1"))
    assert record.pod is not None
    assert h.op.views.has_record_for(record.pod.uid)
    assert not h.op.views.has_record_for("someone-else")
    before = h.op.views.records_generation()
    h.records.items.clear()
    h.record_index._remove(record.name)
    assert not h.op.views.has_record_for(record.pod.uid)
    assert h.op.views.records_generation() != before
