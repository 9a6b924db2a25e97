"""The leader's pass: releases by expiry, cap, namespace/owner deletion and manual request, in the
order Calico-then-record; reconciliation of Calico and the records; recovery from the ledger."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import timedelta
from typing import Any

import pytest
from fakes import (
    HOLD,
    NOW,
    Clock,
    FakeLedger,
    Harness,
    make_harness,
    make_ns,
    make_pod,
    make_record,
)
from kubernetes.aio import client as k8s

from capo_operator.config import Config
from capo_operator.decisions import pending
from capo_operator.decisions.policy import Hold, Owner
from capo_operator.decisions.record import PodRef
from capo_operator.decisions.selector import NamespaceSelector
from capo_operator.flows import releaser as releaser_module
from capo_operator.flows.releaser import OwnerChecker, Releaser, alive_uids
from capo_operator.kube.calico import CalicoError
from capo_operator.kube.ledger import LedgerEntry


@pytest.fixture
def h() -> Harness:
    h = make_harness(leading=True)
    h.add_ns(make_ns("db"))
    return h


def releaser(h: Harness, ledger: FakeLedger | None = None, clock: Clock | None = None) -> Releaser:
    return h.releaser(ledger, clock=clock or Clock())


def writes(h: Harness) -> list[tuple[str, Any]]:
    """The journal without reads."""
    return [(op, args) for op, args in h.journal if op not in ("calico.read", "records.list")]


# -- releases ---------------------------------------------------------------------------------


async def test_expired_record_is_released_calico_first(h: Harness) -> None:
    h.add_record(make_record("10.0.0.1", age=timedelta(minutes=41), expires_in=timedelta(minutes=-1)))
    h.add_record(make_record("10.0.0.2", age=timedelta(minutes=5), expires_in=timedelta(minutes=35)))

    await releaser(h).pass_once()

    assert writes(h) == [
        ("records.mark_releasing", ("10.0.0.1", "expired")),
        ("calico.remove", ("10.0.0.1",)),
        ("records.delete", "10.0.0.1"),
    ]
    assert h.calico.ips == {"10.0.0.2"}
    assert set(h.records.items) == {"10.0.0.2"}
    assert h.sample("capo_releases_total", reason="expired") == 1
    assert h.sample("capo_reservation_hold_seconds_count") == 1
    assert h.sample("capo_reservation_hold_seconds_sum") == 41 * 60
    released = h.events.with_reason("IPReleased")
    assert {p.ref.kind for p in released} == {"ReservedIP", "Pod"}
    assert all("expired" in p.message for p in released)


async def test_over_the_cap_the_oldest_are_released(h: Harness) -> None:
    h.op.config.current = Config(ip_reserve_max_count=2)
    for minutes, ip in [(30, "10.0.0.3"), (10, "10.0.0.1"), (40, "10.0.0.4"), (20, "10.0.0.2")]:
        h.add_record(make_record(ip, age=timedelta(minutes=minutes), expires_in=timedelta(minutes=5)))

    await releaser(h).pass_once()

    assert set(h.records.items) == {"10.0.0.1", "10.0.0.2"}
    assert h.calico.ips == {"10.0.0.1", "10.0.0.2"}
    assert writes(h) == [
        ("records.mark_releasing", ("10.0.0.4", "cap")),
        ("records.mark_releasing", ("10.0.0.3", "cap")),
        ("calico.remove", ("10.0.0.3", "10.0.0.4")),  # one batched write
        ("records.delete", "10.0.0.4"),
        ("records.delete", "10.0.0.3"),
    ]
    assert h.sample("capo_releases_total", reason="cap") == 2
    assert h.sample("ip_reserve_evictions_count") == 2


async def test_expiry_does_not_count_as_a_cap_eviction(h: Harness) -> None:
    h.op.config.current = Config(ip_reserve_max_count=1)
    h.add_record(make_record("10.0.0.1", expires_in=timedelta(seconds=-1)))
    h.add_record(make_record("10.0.0.2"))

    await releaser(h).pass_once()

    assert set(h.records.items) == {"10.0.0.2"}
    assert h.sample("ip_reserve_evictions_count") == 0


async def test_a_release_interrupted_by_a_crash_is_finished(h: Harness) -> None:
    # Marked, removed from Calico, then the leader died before deleting the record.
    h.add_record(make_record("10.0.0.1", releasing="cap", expires_in=timedelta(minutes=20)), in_calico=False)

    await releaser(h).pass_once()

    assert h.journal.ops("records.mark_releasing") == []
    assert ("calico.remove", ("10.0.0.1",)) in writes(h)
    assert h.records.items == {}
    assert h.journal.ops("calico.append") == []  # not re-added: it is on its way out
    assert h.sample("capo_releases_total", reason="cap") == 1


async def test_calico_entry_without_record_is_adopted_on_the_second_pass(h: Harness) -> None:
    h.calico.ips.add("10.0.0.9")
    r = releaser(h)

    await r.pass_once()
    assert h.records.items == {}  # the webhook may be about to create it

    await r.pass_once()
    rec = h.records.items["10.0.0.9"]
    assert (rec.trigger, rec.pod, rec.reserved_at, rec.expires_at) == ("recovered", None, NOW, NOW + HOLD)
    assert h.sample("capo_reservations_total", trigger="recovered") == 1
    assert h.calico.ips == {"10.0.0.9"}  # never dropped


async def test_an_orphan_that_gets_its_record_is_not_adopted(h: Harness) -> None:
    h.calico.ips.add("10.0.0.9")
    r = releaser(h)
    await r.pass_once()
    h.add_record(make_record("10.0.0.9"))  # the webhook's record arrives

    await r.pass_once()
    await r.pass_once()

    assert h.records.items["10.0.0.9"].trigger == "delete"
    assert h.sample("capo_reservations_total", trigger="recovered") == 0


# -- adoption with the details the Calico write carried ----------------------------------------------


async def reserve_then_crash(h: Harness, pod_ips: tuple[str, ...] = ("10.0.0.9",)) -> None:
    """The webhook's one write lands; the process dies before any record is written."""
    import asyncio

    h.records.gate = asyncio.Event()  # never opened: the records never come from this replica
    pod = h.add_pod(make_pod(name="db-3", uid="u-3", ips=pod_ips, node="node-2"))
    hold = Hold(timedelta(hours=2), "annotation capo.io/reserve-time=2h")
    await h.op.reserver.reserve(pod, pod.ips, hold, "eviction", records_later=True)
    h.remove_pod(pod)
    h.records.gate = None
    h.op.reserver.follower.stop()


async def test_crash_after_the_calico_write_is_adopted_with_the_pods_details(h: Harness) -> None:
    reserved_at = NOW - timedelta(minutes=3)
    h.op.reserver.clock = lambda: reserved_at
    await reserve_then_crash(h, ("10.0.0.9", "fd00::9"))
    r = releaser(h)

    await r.pass_once()
    await r.pass_once()

    for ip, name in (("10.0.0.9", "10.0.0.9"), ("fd00::9", "fd00--9")):
        rec = h.records.items[name]
        assert rec.ip == ip
        assert rec.trigger == "eviction"  # not "recovered"
        assert rec.pod == PodRef(namespace="db", name="db-3", uid="u-3", node="node-2")
        assert rec.owner is not None and rec.owner.kind == "StatefulSet"
        assert rec.reserved_at == reserved_at  # the real reservation time, not the adoption's
        assert rec.expires_at == reserved_at + timedelta(hours=2)
        assert rec.policy == "annotation capo.io/reserve-time=2h"
    assert h.sample("capo_reservations_total", trigger="eviction") == 2
    assert h.sample("capo_reservations_total", trigger="recovered") == 0
    # The details served their purpose: the next pass removes them in one write.
    await r.pass_once()
    assert h.calico.annotations == {}
    assert len(h.journal.ops("calico.clear_pending")) == 1


async def test_a_corrupt_pending_annotation_is_adopted_as_recovered(h: Harness) -> None:
    h.calico.ips.add("10.0.0.9")
    h.calico.annotations[pending.key("10.0.0.9")] = '[1,"10.0.0.9","db"'  # truncated
    r = releaser(h)

    await r.pass_once()
    await r.pass_once()

    rec = h.records.items["10.0.0.9"]
    assert (rec.trigger, rec.pod, rec.reserved_at) == ("recovered", None, NOW)
    await r.pass_once()
    assert h.calico.annotations == {}  # its record exists now


async def test_a_missing_pending_annotation_is_adopted_as_recovered(h: Harness) -> None:
    await reserve_then_crash(h)
    h.calico.annotations.clear()  # e.g. the budget was full, or a person edited the object
    r = releaser(h)

    await r.pass_once()
    await r.pass_once()

    assert h.records.items["10.0.0.9"].trigger == "recovered"
    assert h.calico.ips == {"10.0.0.9"}


async def test_a_record_written_by_a_standby_is_kept_and_its_details_cleared(h: Harness) -> None:
    await reserve_then_crash(h)
    standby_record = make_record("10.0.0.9", age=timedelta(seconds=1), trigger="eviction")
    h.add_record(standby_record)
    r = releaser(h)
    creates = len(h.journal.ops("records.create"))

    await r.pass_once()
    await r.pass_once()

    assert h.records.items["10.0.0.9"] == standby_record
    assert len(h.journal.ops("records.create")) == creates  # the leader adopted nothing
    assert h.calico.annotations == {}
    assert h.sample("capo_reservations_total", trigger="eviction") == 0


async def test_pending_details_without_their_entry_are_cleared_and_nothing_is_adopted(h: Harness) -> None:
    h.calico.annotations[pending.key("10.0.0.8")] = "garbage"
    r = releaser(h)

    await r.pass_once()

    assert h.calico.annotations == {}
    assert h.records.items == {}


async def test_a_failed_clearing_does_not_stop_the_pass(h: Harness) -> None:
    h.calico.annotations[pending.key("10.0.0.8")] = "garbage"
    h.calico.fail("clear_pending", CalicoError("HTTP 500", 500))
    ledger = FakeLedger()
    h.add_pod(make_pod(ips=("10.0.0.1",)))
    r = releaser(h, ledger)

    await r.pass_once()  # no exception

    assert ledger.saves, "the ledger was still saved"
    await r.pass_once()
    assert h.calico.annotations == {}  # the next pass cleared it


async def test_nothing_to_clear_costs_no_write(h: Harness) -> None:
    h.add_record(make_record("10.0.0.1"))
    r = releaser(h)

    await r.pass_once()

    assert h.journal.ops("calico.clear_pending") == []


async def test_record_whose_ip_is_missing_from_calico_is_re_added(h: Harness) -> None:
    h.add_record(make_record("10.0.0.1"), in_calico=False)
    h.add_record(make_record("10.0.0.2"))

    await releaser(h).pass_once()

    assert writes(h) == [("calico.append", ("10.0.0.1",))]
    assert h.calico.ips == {"10.0.0.1", "10.0.0.2"}


async def test_manual_release_removes_from_calico_and_counts(h: Harness) -> None:
    h.calico.ips.update({"10.0.0.7", "10.0.0.8"})
    h.add_record(make_record("10.0.0.8"))
    h.op.manual_releases.add("10.0.0.7")  # its record was deleted by a person
    r = releaser(h)

    await r.pass_once()
    await r.pass_once()

    assert h.calico.ips == {"10.0.0.8"}
    assert "10.0.0.7" not in h.records.items  # not adopted back
    assert h.op.manual_releases == set()
    assert h.sample("capo_releases_total", reason="manual") == 1


async def test_a_manual_release_leaves_an_ip_reserved_again_since(h: Harness) -> None:
    # A person deleted the record of 10.0.0.7; before the leader's next pass, a late write of the
    # same pod's reservation (its review had run out of time) made a new record of it. Taking the
    # IP out of Calico now would leave that hold without its entry: the IP could be handed out.
    h.op.manual_releases.add("10.0.0.7")
    h.add_record(make_record("10.0.0.7", age=timedelta(seconds=1)))

    await releaser(h).pass_once()

    assert h.calico.ips == {"10.0.0.7"}
    assert ("calico.remove", ("10.0.0.7",)) not in list(h.journal)
    assert set(h.records.items) == {"10.0.0.7"}
    assert h.op.manual_releases == set()
    assert h.sample("capo_releases_total", reason="manual") == 0


async def test_clock_of_a_record_whose_pod_survived_is_stopped(h: Harness) -> None:
    pod = h.add_pod(make_pod(name="pod-10.0.0.1", uid="uid-10.0.0.1"))  # eviction refused by a PDB
    h.add_record(make_record("10.0.0.1", age=timedelta(minutes=50), expires_in=timedelta(minutes=-10)))
    h.add_record(make_record("10.0.0.2", age=timedelta(seconds=5)))  # reserved a moment ago
    h.add_pod(make_pod(name="pod-10.0.0.2", uid="uid-10.0.0.2", ips=("10.0.0.2",), deleting=True))

    await releaser(h).pass_once()

    assert pod.uid in alive_uids(h.op.views.pods())
    assert sorted(writes(h)) == [
        ("records.set_clock", ("10.0.0.1", NOW - timedelta(minutes=50), None, HOLD)),
        ("records.set_clock", ("10.0.0.2", NOW - timedelta(seconds=5), None, HOLD)),
    ]
    assert set(h.records.items) == {"10.0.0.1", "10.0.0.2"}
    assert h.sample("capo_releases_total", reason="expired") == 0


async def test_clock_starts_when_the_pod_is_really_gone(h: Harness) -> None:
    h.add_record(make_record("10.0.0.1", age=timedelta(hours=3), expires_in=None))

    await releaser(h).pass_once()

    assert writes(h) == [("records.set_clock", ("10.0.0.1", NOW, NOW + HOLD, HOLD))]


@pytest.mark.parametrize("gone", ["deleted", "terminating"])
async def test_records_of_a_gone_namespace_are_released(h: Harness, gone: str) -> None:
    other = PodRef(namespace="tenant-a", name="db-0", uid="u-a", node=None)
    h.add_record(make_record("10.0.0.1", pod=other))
    h.add_record(make_record("10.0.0.2"))
    if gone == "terminating":
        h.add_ns(make_ns("tenant-a", terminating=True))

    await releaser(h).pass_once()

    assert set(h.records.items) == {"10.0.0.2"}
    assert h.calico.ips == {"10.0.0.2"}
    assert h.sample("capo_releases_total", reason="namespace-deleted") == 1


async def test_with_a_namespace_selector_an_uncached_namespace_is_not_a_deleted_one(h: Harness) -> None:
    # Outside namespaceSelector a namespace is never cached although it exists: its holds run their
    # time; a selected namespace seen terminating is still released at once.
    h.op.config.current = dataclasses.replace(
        h.op.config.current, namespace_selector=NamespaceSelector.from_dict({"matchLabels": {"team": "db"}})
    )
    outside = PodRef(namespace="tenant-a", name="db-0", uid="u-a", node=None)
    h.add_record(make_record("10.0.0.1", pod=outside))
    leaving = PodRef(namespace="tenant-b", name="db-0", uid="u-b", node=None)
    h.add_record(make_record("10.0.0.2", pod=leaving))
    h.add_ns(make_ns("tenant-b", terminating=True))

    await releaser(h).pass_once()

    assert set(h.records.items) == {"10.0.0.1"}
    assert h.sample("capo_releases_total", reason="namespace-deleted") == 1


async def test_calico_remove_failure_counts_and_deletes_no_record(h: Harness) -> None:
    h.add_record(make_record("10.0.0.1", expires_in=timedelta(seconds=-1)))
    h.calico.fail("remove")
    r = releaser(h)

    assert await r.pass_once() == 1  # the pass goes on; the failure is counted and logged

    assert h.sample("capo_calico_write_errors_total", operation="remove") == 1
    assert h.journal.ops("records.delete") == []
    assert h.records.items["10.0.0.1"].releasing == "expired"  # the next pass finishes it
    assert h.sample("capo_releases_total", reason="expired") == 0

    await r.pass_once()
    assert h.records.items == {}
    assert h.calico.ips == set()
    assert h.sample("capo_releases_total", reason="expired") == 1


async def test_manual_release_is_kept_for_the_next_pass_when_calico_fails(h: Harness) -> None:
    h.calico.ips.add("10.0.0.7")
    h.op.manual_releases.add("10.0.0.7")
    h.calico.fail("remove")
    r = releaser(h)

    assert await r.pass_once() == 1
    assert h.op.manual_releases == {"10.0.0.7"}

    await r.pass_once()
    assert h.calico.ips == set()
    assert h.sample("capo_releases_total", reason="manual") == 1


async def test_a_release_is_not_counted_twice_when_the_record_was_already_gone(h: Harness) -> None:
    # The view still shows a record marked for release that is already deleted (watch lag).
    rec = make_record("10.0.0.1", releasing="cap")
    h.index_record(rec)
    h.records.items.clear()
    h.op.metrics.evictions.inc()  # counted when it was deleted the first time

    await releaser(h).pass_once()

    assert h.sample("ip_reserve_evictions_count") == 1
    assert h.sample("capo_releases_total", reason="cap") == 0


async def test_changed_reserve_time_retimes_default_holds(h: Harness) -> None:
    h.add_record(make_record("10.0.0.1", age=timedelta(minutes=10), expires_in=timedelta(minutes=30)))
    h.add_record(
        make_record(
            "10.0.0.2",
            hold=timedelta(hours=2),
            expires_in=timedelta(minutes=110),
            policy="annotation capo.io/reserve-time=2h",
        )
    )
    r = releaser(h)
    await r.pass_once()
    assert writes(h) == []

    h.op.config.current = Config(ip_reserve_time=timedelta(minutes=15))
    await r.pass_once()

    assert h.records.items["10.0.0.1"].expires_at == NOW + timedelta(minutes=5)
    assert h.records.items["10.0.0.2"].expires_at == NOW + timedelta(minutes=110)


async def test_pass_saves_the_ledger_of_selected_pods(h: Harness) -> None:
    ledger = FakeLedger()
    h.add_pod(make_pod(name="db-0", uid="u0", ips=("10.0.0.1",)))
    h.add_pod(make_pod(name="web-0", uid="u1", ips=("10.0.0.2",), labels={"app": "web"}))
    h.add_pod(make_pod(name="other", namespace="off", uid="u2", ips=("10.0.0.3",)))
    h.add_ns(make_ns("off", enabled=False))
    r = releaser(h, ledger)

    await r.pass_once()
    await r.pass_once()

    assert len(ledger.saves) == 1  # unchanged ledgers are not written again
    entry = ledger.saves[0]["10.0.0.1"]
    assert (entry.namespace, entry.name, entry.uid, entry.owner_kind) == ("db", "db-0", "u0", "StatefulSet")
    assert set(ledger.saves[0]) == {"10.0.0.1"}


# -- owner deletion ---------------------------------------------------------------------------


class FakeApps:
    """AppsV1Api: which owners exist, by (kind, namespace, name)."""

    READERS = {
        "read_namespaced_stateful_set": "StatefulSet",
        "read_namespaced_deployment": "Deployment",
        "read_namespaced_daemon_set": "DaemonSet",
        "read_namespaced_replica_set": "ReplicaSet",
    }

    def __init__(self, present: set[tuple[str, str, str]], error: BaseException | None = None) -> None:
        self.present = present
        self.error = error
        self.calls: list[tuple[str, str, str]] = []

    def __getattr__(self, method: str) -> Any:
        kind = self.READERS[method]

        async def read(name: str, namespace: str) -> dict[str, str]:
            self.calls.append((kind, namespace, name))
            if self.error is not None:
                raise self.error
            if (kind, namespace, name) not in self.present:
                raise k8s.ApiException(status=404, reason="Not Found")
            return {"kind": kind}

        return read


def owned(ip: str, kind: str, name: str, uid: str) -> Any:
    return make_record(ip, owner=Owner("apps/v1", kind, name, uid))


@pytest.fixture
def every_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(releaser_module, "OWNER_CHECK_PERIOD", 0.0)


@pytest.mark.usefixtures("every_pass")
async def test_owner_gone_for_the_confirmation_time_releases(h: Harness) -> None:
    clock = Clock()
    h.add_record(owned("10.0.0.1", "StatefulSet", "db", "sts-1"))
    h.add_record(owned("10.0.0.2", "StatefulSet", "kept", "sts-2"))
    r = releaser(h, clock=clock)
    r.owners.apps = FakeApps({("StatefulSet", "db", "kept")})  # type: ignore[assignment]

    await r.pass_once()
    assert set(h.records.items) == {"10.0.0.1", "10.0.0.2"}  # missing once is not enough

    clock.now = NOW + timedelta(seconds=61)
    await r.pass_once()
    assert set(h.records.items) == {"10.0.0.2"}
    assert h.sample("capo_releases_total", reason="owner-deleted") == 1


@pytest.mark.usefixtures("every_pass")
async def test_owner_recreated_in_between_is_not_gone() -> None:
    clock = Clock()
    apps = FakeApps(set())
    checker = OwnerChecker(None, clock)  # type: ignore[arg-type]
    checker.apps = apps  # type: ignore[assignment]
    records = [owned("10.0.0.1", "StatefulSet", "db", "sts-1")]

    assert await checker.gone_owner_uids(records) == frozenset()
    apps.present.add(("StatefulSet", "db", "db"))  # helm delete-and-recreate
    clock.now = NOW + timedelta(seconds=30)
    assert await checker.gone_owner_uids(records) == frozenset()
    apps.present.clear()
    clock.now = NOW + timedelta(seconds=70)
    assert await checker.gone_owner_uids(records) == frozenset()  # the missing time starts again
    clock.now = NOW + timedelta(seconds=131)
    assert await checker.gone_owner_uids(records) == {"sts-1"}


@pytest.mark.usefixtures("every_pass")
async def test_replica_set_counts_as_gone_only_with_its_deployment() -> None:
    clock = Clock()
    apps = FakeApps({("Deployment", "db", "web")})
    checker = OwnerChecker(None, clock)  # type: ignore[arg-type]
    checker.apps = apps  # type: ignore[assignment]
    records = [owned("10.0.0.1", "ReplicaSet", "web-5d8f7c9b4", "rs-1")]

    await checker.gone_owner_uids(records)
    clock.now = NOW + timedelta(minutes=5)
    assert await checker.gone_owner_uids(records) == frozenset()  # a rollout pruned the ReplicaSet
    assert ("Deployment", "db", "web") in apps.calls

    apps.present.clear()
    await checker.gone_owner_uids(records)
    clock.now = NOW + timedelta(minutes=10)
    assert await checker.gone_owner_uids(records) == {"rs-1"}


@pytest.mark.usefixtures("every_pass")
async def test_an_api_error_reading_an_owner_keeps_the_reservation() -> None:
    clock = Clock()
    checker = OwnerChecker(None, clock)  # type: ignore[arg-type]
    checker.apps = FakeApps(set(), error=k8s.ApiException(status=403, reason="Forbidden"))  # type: ignore[assignment]
    records = [owned("10.0.0.1", "DaemonSet", "agent", "ds-1")]

    await checker.gone_owner_uids(records)
    clock.now = NOW + timedelta(hours=1)
    assert await checker.gone_owner_uids(records) == frozenset()


@pytest.mark.usefixtures("every_pass")
async def test_a_network_error_reading_an_owner_does_not_stop_expiry(h: Harness) -> None:
    h.add_record(owned("10.0.0.1", "StatefulSet", "db", "sts-1"))
    h.add_record(make_record("10.0.0.2", expires_in=timedelta(seconds=-1)))
    r = releaser(h)
    r.owners.apps = FakeApps(set(), error=ConnectionResetError("apiserver went away"))  # type: ignore[assignment]

    await r.pass_once()

    assert "10.0.0.2" not in h.records.items
    assert "10.0.0.1" in h.records.items


async def test_owner_checks_are_off_when_configured(h: Harness) -> None:
    h.op.config.current = Config(release_on_owner_deletion=False)
    h.add_record(owned("10.0.0.1", "StatefulSet", "db", "sts-1"))
    r = releaser(h)
    apps = FakeApps(set())
    r.owners.apps = apps  # type: ignore[assignment]

    await r.pass_once()

    assert apps.calls == []


def test_alive_uids_leaves_out_deleting_and_terminal_pods() -> None:
    pods = [
        make_pod(name="a", uid="a"),
        make_pod(name="b", uid="b", deleting=True),
        make_pod(name="c", uid="c", phase="Failed"),
        make_pod(name="d", uid="d", phase="Succeeded"),
        make_pod(name="e", uid="e", phase="Pending"),
    ]
    assert alive_uids(pods) == {"a", "e"}


# -- recovery from the ledger -----------------------------------------------------------------


def entry(ip: str, uid: str, name: str = "db-0") -> LedgerEntry:
    return LedgerEntry(
        ip=ip,
        namespace="db",
        name=name,
        uid=uid,
        node="n1",
        owner_kind="StatefulSet",
        owner_name="db",
        owner_uid="sts-1",
    )


async def test_vanished_pod_with_a_free_ip_is_reserved_from_the_ledger(h: Harness) -> None:
    ledger = FakeLedger({"10.0.0.1": entry("10.0.0.1", "gone-uid")})

    await releaser(h, ledger).recover_from_ledger()

    rec = h.records.items["10.0.0.1"]
    assert rec.trigger == "safety-net"
    assert rec.pod == PodRef("db", "db-0", "gone-uid", "n1")
    assert rec.owner is not None and rec.owner.uid == "sts-1"
    assert rec.expires_at == NOW + HOLD
    assert h.calico.ips == {"10.0.0.1"}
    assert h.sample("capo_safety_net_catches_total", trigger="safety-net") == 1


async def test_a_ledger_entry_whose_reservation_carried_details_is_adopted_from_them(h: Harness) -> None:
    # The webhook's write landed, then every replica died before the record: the ledger still lists
    # the pod, and the Calico entry carries the details.
    reserved_at = NOW - timedelta(minutes=7)
    h.op.reserver.clock = lambda: reserved_at
    await reserve_then_crash(h)
    appends = len(h.journal.ops("calico.append"))
    ledger = FakeLedger({"10.0.0.9": entry("10.0.0.9", "u-3")})

    await releaser(h, ledger).recover_from_ledger()

    rec = h.records.items["10.0.0.9"]
    assert (rec.trigger, rec.reserved_at, rec.policy) == (
        "eviction",
        reserved_at,
        "annotation capo.io/reserve-time=2h",
    )
    assert rec.pod == PodRef(namespace="db", name="db-3", uid="u-3", node="node-2")
    assert len(h.journal.ops("calico.append")) == appends  # no new reservation
    assert h.sample("capo_safety_net_catches_total", trigger="safety-net") == 0
    assert h.sample("capo_reservations_total", trigger="eviction") == 1


async def test_vanished_pod_whose_ip_another_pod_holds_is_reported_lost(h: Harness) -> None:
    h.add_pod(make_pod(name="newcomer", uid="new-uid", ips=("10.0.0.1",)))
    ledger = FakeLedger({"10.0.0.1": entry("10.0.0.1", "gone-uid")})

    await releaser(h, ledger).recover_from_ledger()

    assert h.journal == []
    assert h.sample("capo_reservations_lost_total") == 1
    lost = h.events.with_reason("IPLost")
    assert len(lost) == 1 and lost[0].warning and lost[0].ref.uid == "gone-uid"


async def test_live_and_recorded_pods_are_left_alone(h: Harness) -> None:
    h.add_pod(make_pod(name="db-0", uid="live", ips=("10.0.0.1",)))
    h.add_record(make_record("10.0.0.2"))
    ledger = FakeLedger({"10.0.0.1": entry("10.0.0.1", "live"), "10.0.0.2": entry("10.0.0.2", "gone")})

    await releaser(h, ledger).recover_from_ledger()

    assert h.journal.ops("calico.append") == []
    assert h.journal.ops("records.create") == []


async def test_known_terminal_pod_keeps_its_eviction_trigger(h: Harness) -> None:
    h.add_pod(make_pod(uid="evicted", phase="Failed", reason="Evicted"))
    ledger = FakeLedger({"10.0.0.1": entry("10.0.0.1", "evicted")})

    await releaser(h, ledger).recover_from_ledger()

    assert h.records.items["10.0.0.1"].trigger == "kubelet-eviction"


async def test_failed_recovery_stays_in_the_ledger(h: Harness) -> None:
    ledger = FakeLedger({"10.0.0.1": entry("10.0.0.1", "gone-uid")})
    h.calico.fail("append")
    r = releaser(h, ledger)

    await r.recover_from_ledger()
    assert h.records.items == {}

    await r.pass_once()
    assert "10.0.0.1" in ledger.entries  # kept for the next leader term


async def test_recovery_of_a_known_pod_honours_its_hold_annotation(h: Harness) -> None:
    h.add_pod(
        make_pod(uid="evicted", phase="Failed", reason="Evicted", annotations={"capo.io/reserve-time": "2h"})
    )
    ledger = FakeLedger({"10.0.0.1": entry("10.0.0.1", "evicted")})

    await releaser(h, ledger).recover_from_ledger()

    assert h.records.items["10.0.0.1"].hold == timedelta(hours=2)


async def test_failed_re_add_is_counted_as_a_calico_write_error(h: Harness) -> None:
    h.add_record(make_record("10.0.0.1"), in_calico=False)
    h.calico.fail("append")

    assert await releaser(h).pass_once() == 1

    assert h.sample("capo_calico_write_errors_total", operation="append") == 1


# -- failure paths (docs/reliability.md) ------------------------------------------------------


async def test_a_pod_stuck_terminating_keeps_its_hold_from_ageing(h: Harness) -> None:
    """Bug 1: the clock starts when the pod is really gone, not at the first DELETE. A pod that stays
    Terminating (long grace period, partitioned node) still uses its IP."""
    clock = Clock()
    pod = h.add_pod(make_pod(name="pod-10.0.0.1", uid="uid-10.0.0.1", deleting=True))
    h.add_record(make_record("10.0.0.1", age=timedelta(minutes=50), expires_in=timedelta(minutes=-10)))
    r = releaser(h, clock=clock)

    await r.pass_once()

    assert h.calico.ips == {"10.0.0.1"}
    assert h.records.items["10.0.0.1"].expires_at is None  # stopped: the pod still holds the IP
    assert h.sample("capo_releases_total", reason="expired") == 0

    h.remove_pod(pod)  # the kubelet finished, or the node came back
    clock.now = NOW + timedelta(minutes=7)
    await r.pass_once()

    rec = h.records.items["10.0.0.1"]
    assert (rec.reserved_at, rec.expires_at) == (clock.now, clock.now + HOLD)
    assert h.calico.ips == {"10.0.0.1"}


async def test_a_terminal_pod_does_not_hold_its_ip(h: Harness) -> None:
    # Failed/Succeeded: the kubelet freed the IP, the hold runs.
    h.add_pod(make_pod(name="pod-10.0.0.1", uid="uid-10.0.0.1", phase="Failed", reason="Evicted"))
    h.add_record(make_record("10.0.0.1", age=timedelta(minutes=50), expires_in=timedelta(minutes=-10)))

    await releaser(h).pass_once()

    assert h.records.items == {}
    assert h.sample("capo_releases_total", reason="expired") == 1


async def test_one_failing_clock_patch_does_not_block_the_others(h: Harness) -> None:
    """Bug 3: every record's work is isolated."""
    ledger = FakeLedger()
    h.add_record(make_record("10.0.0.1", age=timedelta(hours=1), expires_in=None))  # clock to start
    h.add_record(make_record("10.0.0.2", expires_in=timedelta(seconds=-1)))  # expired
    h.add_pod(make_pod(name="db-0", uid="u0", ips=("10.0.0.5",)))
    h.records.fail("set_clock")
    r = releaser(h, ledger)

    await r.pass_once()

    assert "10.0.0.2" not in h.records.items
    assert h.calico.ips == {"10.0.0.1"}
    assert h.records.items["10.0.0.1"].expires_at is None  # retried next pass
    assert set(ledger.entries) == {"10.0.0.5"}

    await r.pass_once()
    assert h.records.items["10.0.0.1"].expires_at == NOW + HOLD


async def test_one_failing_mark_does_not_block_the_other_releases(h: Harness) -> None:
    h.add_record(make_record("10.0.0.1", age=timedelta(minutes=50), expires_in=timedelta(minutes=-2)))
    h.add_record(make_record("10.0.0.2", age=timedelta(minutes=45), expires_in=timedelta(minutes=-1)))
    h.records.fail("mark_releasing")  # the first mark (the oldest record) fails
    r = releaser(h)

    await r.pass_once()

    # Only a marked record's IP leaves Calico: an unmarked one would be re-added (invariant 3).
    assert h.calico.ips == {"10.0.0.1"}
    assert set(h.records.items) == {"10.0.0.1"}
    assert h.sample("capo_releases_total", reason="expired") == 1

    await r.pass_once()
    assert h.records.items == {} and h.calico.ips == set()


async def test_a_failed_re_add_still_adopts_and_saves_the_ledger(h: Harness) -> None:
    ledger = FakeLedger()
    h.add_record(make_record("10.0.0.1"), in_calico=False)
    h.calico.ips.add("10.0.0.9")  # an entry without a record
    h.add_pod(make_pod(name="db-0", uid="u0", ips=("10.0.0.5",)))
    r = releaser(h, ledger)
    await r.pass_once()  # re-adds 10.0.0.1; first sight of 10.0.0.9
    h.calico.ips.discard("10.0.0.1")
    h.calico.fail("append")

    await r.pass_once()

    assert h.sample("capo_calico_write_errors_total", operation="append") == 1
    assert h.records.items["10.0.0.9"].trigger == "recovered"
    assert set(ledger.entries) == {"10.0.0.5"}


async def test_record_writes_run_concurrently_under_a_bound(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(releaser_module, "MAX_CONCURRENT_WRITES", 4)
    for i in range(1, 13):
        h.add_record(make_record(f"10.0.0.{i}", age=timedelta(hours=1), expires_in=None))
    in_flight, peak = 0, 0
    original = h.records.set_clock

    async def slow_set_clock(name: str, **kwargs: Any) -> None:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.01)
        in_flight -= 1
        await original(name, **kwargs)

    h.records.set_clock = slow_set_clock  # type: ignore[method-assign]

    await releaser(h).pass_once()

    assert peak == 4
    assert all(r.expires_at == NOW + HOLD for r in h.records.items.values())


async def test_a_reserve_time_changed_while_another_replica_led_applies(h: Harness) -> None:
    """Bug 5: the new value reaches existing records whichever replica leads, after any failover."""
    h.add_record(make_record("10.0.0.1", age=timedelta(minutes=10), expires_in=timedelta(minutes=30)))
    h.add_record(make_record("10.0.0.2", age=timedelta(hours=2), expires_in=None))  # stopped clock
    h.add_record(
        make_record(
            "10.0.0.3",
            hold=timedelta(hours=2),
            expires_in=timedelta(minutes=110),
            policy="annotation capo.io/reserve-time=2h",
        )
    )
    h.op.config.current = Config(ip_reserve_time=timedelta(minutes=15))  # changed before this replica led
    r = releaser(h)

    await r.pass_once()

    assert h.records.items["10.0.0.1"].expires_at == NOW + timedelta(minutes=5)
    assert h.records.items["10.0.0.1"].policy == "ipReserveTime=15m"
    assert h.records.items["10.0.0.2"].hold == timedelta(minutes=15)
    assert h.records.items["10.0.0.2"].expires_at is None or h.records.items["10.0.0.2"].expires_at == (
        NOW + timedelta(minutes=15)
    )
    assert h.records.items["10.0.0.3"].expires_at == NOW + timedelta(minutes=110)

    h.journal.clear()
    await r.pass_once()
    assert h.journal.ops("records.set_clock") == []  # applied once


async def test_a_record_deleted_while_no_replica_led_is_released_not_adopted(h: Harness) -> None:
    """Bug 2: the new leader never sees the DELETED event; the finalizer keeps the request durable."""
    h.add_record(make_record("10.0.0.1"))
    h.add_record(make_record("10.0.0.2"))
    h.records.delete_by_person("10.0.0.1")  # during the failover: nobody leads, no event is handled
    assert h.records.items["10.0.0.1"].deleting
    r = releaser(h)  # the new leader

    await r.pass_once()
    await r.pass_once()

    assert h.calico.ips == {"10.0.0.2"}
    assert set(h.records.items) == {"10.0.0.2"}
    assert h.sample("capo_releases_total", reason="manual") == 1
    assert h.sample("capo_reservations_total", trigger="recovered") == 0
    order = [op for op, _ in writes(h)]
    assert order.index("calico.remove") < order.index("records.finish_manual")  # Calico first


async def test_a_deleted_record_whose_calico_removal_fails_stays_until_done(h: Harness) -> None:
    h.add_record(make_record("10.0.0.1"))
    h.records.delete_by_person("10.0.0.1")
    h.calico.fail("remove")
    r = releaser(h)

    assert await r.pass_once() == 1
    assert h.records.items["10.0.0.1"].deleting  # still held by the finalizer
    assert h.calico.ips == {"10.0.0.1"}  # neither re-added twice nor dropped
    assert h.journal.ops("calico.append") == []

    await r.pass_once()
    assert h.records.items == {} and h.calico.ips == set()
    assert h.sample("capo_releases_total", reason="manual") == 1


async def test_records_made_before_the_finalizer_get_it(h: Harness) -> None:
    h.add_record(dataclasses.replace(make_record("10.0.0.1"), finalizers=()))
    h.add_record(make_record("10.0.0.2"))

    await releaser(h).pass_once()

    assert h.journal.ops("records.add_finalizer") == ["records.add_finalizer"]
    assert all(r.finalizers == ("capo.io/release",) for r in h.records.items.values())


async def test_a_release_drops_the_finalizer_with_the_mark(h: Harness) -> None:
    h.add_record(make_record("10.0.0.1", expires_in=timedelta(seconds=-1)))
    h.records.fail("delete")  # the pass dies after Calico: the marked record must not stay stuck
    r = releaser(h)

    await r.pass_once()
    assert h.records.items["10.0.0.1"].finalizers == ()
    assert h.records.items["10.0.0.1"].releasing == "expired"

    await r.pass_once()
    assert h.records.items == {}


async def test_malformed_entries_are_reported_once_and_removed(h: Harness) -> None:
    """Bug 6: entries Calico cannot parse break its auto-assignment; they are reported and removed."""
    h.add_record(make_record("10.0.0.1"))
    h.calico.malformed[:] = ["10.0.0.0/255.0.0.0", "garbage"]
    h.calico.fail("remove")  # the first cleaning write fails: retried next pass, reported once
    r = releaser(h)

    assert await r.pass_once() == 1
    await r.pass_once()
    await r.pass_once()

    assert h.calico.malformed == []
    assert h.calico.ips == {"10.0.0.1"}
    assert h.journal.ops("calico.remove") == ["calico.remove", "calico.remove"]  # no write once clean
    assert h.sample("capo_calico_malformed_entries_total") == 2
    (event,) = h.events.with_reason("MalformedEntries")
    assert event.warning and event.ref.kind == "IPReservation" and "'garbage'" in event.message


async def test_capo_bare_ip_entries_are_adopted_at_once_as_imported(h: Harness) -> None:
    h.calico.ips.update({"10.0.0.5", "10.0.0.6"})
    h.calico.bare.add("10.0.0.5")  # Capo wrote "10.0.0.5"; the operator writes "10.0.0.6/32"

    await releaser(h).pass_once()

    assert set(h.records.items) == {"10.0.0.5"}
    rec = h.records.items["10.0.0.5"]
    assert (rec.trigger, rec.expires_at) == ("imported", NOW + HOLD)
    assert h.sample("capo_reservations_total", trigger="imported") == 1


async def test_a_failed_lengthening_never_releases_early(h: Harness) -> None:
    # Made under ipReserveTime=40m, expired by that; the config now says 2h: it must stay.
    h.add_record(make_record("10.0.0.1", age=timedelta(minutes=41), expires_in=timedelta(minutes=-1)))
    h.op.config.current = Config(ip_reserve_time=timedelta(hours=2))
    h.records.fail("set_clock")
    r = releaser(h)

    assert await r.pass_once() == 1
    assert "10.0.0.1" in h.records.items and h.calico.ips == {"10.0.0.1"}
    assert h.journal.ops("calico.append") == []  # not mistaken for a missing entry either

    await r.pass_once()
    assert h.records.items["10.0.0.1"].expires_at == NOW - timedelta(minutes=41) + timedelta(hours=2)


# -- a stale view never acts on a fresh record of the same name (issue 10) --------------------------


def stale_view(h: Harness, old: Any, fresh: Any) -> None:
    """The record `old` was released and deleted, and the IP reserved anew (`fresh`, same name, a
    new object) before the records watch delivered either change: the cache still shows `old`."""
    h.records.items.pop(old.name)
    h.records.put(fresh)  # the store: a new uid
    h.index_record(old)  # the cache: still the old object


async def test_a_stale_view_never_marks_a_fresh_record_of_the_same_name(h: Harness) -> None:
    old = h.add_record(make_record("10.0.0.1", age=timedelta(minutes=41), expires_in=timedelta(minutes=-1)))
    old = h.records.items[old.name]
    stale_view(h, old, make_record("10.0.0.1", age=timedelta(seconds=5), expires_in=timedelta(minutes=40)))

    await releaser(h).pass_once()

    fresh = h.records.items["10.0.0.1"]
    assert fresh.uid != old.uid and fresh.releasing is None  # the fresh hold is untouched
    assert h.calico.ips == {"10.0.0.1"}  # its IP is still reserved
    assert h.sample("capo_releases_total", reason="expired") == 0


async def test_a_stale_view_never_finishes_the_release_of_a_fresh_record(h: Harness) -> None:
    old = h.add_record(make_record("10.0.0.1", releasing="expired"))  # marked; the pass finishes it
    old = h.records.items[old.name]
    stale_view(h, old, make_record("10.0.0.1", age=timedelta(seconds=5), expires_in=timedelta(minutes=40)))
    r = releaser(h)
    r._finished[old.name] = old.uid  # this leader deleted the old one itself a moment ago

    await r.pass_once()

    assert h.records.items["10.0.0.1"].uid != old.uid  # the fresh record stays
    assert h.calico.ips == {"10.0.0.1"}  # and its IP in Calico
    assert h.journal.ops("records.delete") == []


async def test_a_delete_with_a_stale_uid_leaves_the_fresh_record(h: Harness) -> None:
    # Without the leader's own memory (another leader released it): the uid precondition still holds.
    old = h.add_record(make_record("10.0.0.1", releasing="expired"))
    old = h.records.items[old.name]
    stale_view(h, old, make_record("10.0.0.1", age=timedelta(seconds=5), expires_in=timedelta(minutes=40)))

    await releaser(h).pass_once()

    assert h.records.items["10.0.0.1"].uid != old.uid
    assert h.sample("capo_releases_total", reason="expired") == 0


# -- ledger recovery honours the hold annotation (issue 10) -------------------------------------------


async def test_recovery_of_a_vanished_pod_honours_its_hold_annotation(h: Harness) -> None:
    """The pod had `capo.io/reserve-time: 2h` and vanished while no replica watched: the ledger
    written while it lived must give it the hold the webhook would have given it."""
    pod = h.add_pod(make_pod(uid="annotated", annotations={"capo.io/reserve-time": "2h"}))
    h.add_pod(make_pod(name="db-1", uid="plain", ips=("10.0.0.2",)))
    ledger = FakeLedger()
    await releaser(h, ledger).pass_once()  # a leader saves the ledger
    h.remove_pod(pod)
    h.remove_pod(h.op.views.pod("db", "db-1"))  # type: ignore[arg-type]

    await releaser(h, ledger).recover_from_ledger()  # the next leader, after the outage

    assert h.records.items["10.0.0.1"].hold == timedelta(hours=2)
    assert h.records.items["10.0.0.1"].policy == "annotation capo.io/reserve-time=2h"
    assert h.records.items["10.0.0.2"].hold == HOLD


async def test_recovery_clamps_a_long_hold_annotation_as_the_webhook_does(h: Harness) -> None:
    h.op.config.current = Config(max_ip_reserve_time=timedelta(hours=3))
    pod = h.add_pod(make_pod(uid="greedy", annotations={"capo.io/reserve-time": "48h"}))
    ledger = FakeLedger()
    await releaser(h, ledger).pass_once()
    h.remove_pod(pod)

    await releaser(h, ledger).recover_from_ledger()

    assert h.records.items["10.0.0.1"].hold == timedelta(hours=3)


# -- work proportional to change: a pass with nothing due makes no API call ---------------------------


def leading(h: Harness, clock: Clock | None = None, ledger: FakeLedger | None = None) -> Releaser:
    """A releaser as `lead()` runs it: with the watched IPReservation."""
    r = releaser(h, ledger, clock)
    r._cache = h.calico.cache()  # type: ignore[assignment]
    return r


def api_calls(h: Harness) -> list[str]:
    return h.journal.ops()


@pytest.fixture
def plans(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many records each full plan was given."""
    seen: list[int] = []
    real = releaser_module.planner.plan

    def counting(records: Any, **kw: Any) -> Any:
        seen.append(len(records))
        return real(records, **kw)

    monkeypatch.setattr(releaser_module.planner, "plan", counting)
    return seen


async def settled(h: Harness, r: Releaser) -> None:
    """Passes until one makes no call (the first ones save the ledger, see their own writes)."""
    for _ in range(4):
        h.journal.clear()
        await r.pass_once()
        if not h.journal:
            return
    raise AssertionError(f"still calling after 4 passes: {h.journal}")


async def test_a_pass_with_nothing_due_makes_no_api_call_and_plans_nothing(
    h: Harness, plans: list[int]
) -> None:
    for i in range(20):
        h.add_record(make_record(f"10.0.1.{i}", expires_in=timedelta(minutes=30)))
    h.add_pod(make_pod(uid="live"))
    r = leading(h)
    await settled(h, r)
    planned = len(plans)

    for _ in range(5):
        await r.pass_once()

    assert api_calls(h) == []  # not even a read of the IPReservation
    assert len(plans) == planned


async def test_pod_churn_unrelated_to_records_plans_nothing(h: Harness, plans: list[int]) -> None:
    h.add_record(make_record("10.0.0.1"))
    r = leading(h)
    await settled(h, r)
    planned = len(plans)

    for i in range(50):  # pods come and go; no record refers to them
        pod = h.add_pod(make_pod(name=f"web-{i}", namespace="web", uid=f"web-{i}", ips=(f"10.1.0.{i}",)))
        h.remove_pod(pod)
    await r.pass_once()

    assert len(plans) == planned
    assert api_calls(h) == []


async def test_a_change_of_a_pod_that_a_record_refers_to_plans_again(h: Harness, plans: list[int]) -> None:
    record = h.add_record(make_record("10.0.0.1", expires_in=None))  # its pod is alive: clock stopped
    pod = h.add_pod(make_pod(uid=record.pod.uid))  # type: ignore[union-attr]
    r = leading(h)
    await settled(h, r)
    assert h.records.items["10.0.0.1"].expires_at is None

    h.remove_pod(pod)  # now it is really gone: the clock starts
    await r.pass_once()

    assert h.records.items["10.0.0.1"].expires_at == NOW + HOLD


async def test_a_due_expiry_is_released_on_time_with_no_other_change(h: Harness) -> None:
    clock = Clock()
    h.add_record(make_record("10.0.0.1", expires_in=timedelta(seconds=30)))
    h.add_record(make_record("10.0.0.2", expires_in=timedelta(minutes=30)))
    r = leading(h, clock)
    await settled(h, r)

    clock.now = NOW + timedelta(seconds=29)
    await r.pass_once()
    assert api_calls(h) == []  # not yet

    clock.now = NOW + timedelta(seconds=30)
    await r.pass_once()
    assert set(h.records.items) == {"10.0.0.2"} and h.calico.ips == {"10.0.0.2"}
    assert h.sample("capo_releases_total", reason="expired") == 1


async def test_an_entry_removed_by_hand_is_re_added_at_the_next_pass(h: Harness) -> None:
    h.add_record(make_record("10.0.0.1"))
    h.add_record(make_record("10.0.0.2"))
    r = leading(h)
    await settled(h, r)

    h.calico.ips.discard("10.0.0.1")  # `kubectl edit ipreservation`: the watch sees it
    await r.pass_once()

    assert h.calico.ips == {"10.0.0.1", "10.0.0.2"}
    assert [op for op, _ in writes(h)] == ["calico.append"]


async def test_a_malformed_entry_added_by_hand_is_removed_at_the_next_pass(h: Harness) -> None:
    h.add_record(make_record("10.0.0.1"))
    r = leading(h)
    await settled(h, r)

    h.calico.malformed.append("10.0.0.0/255.0.0.0")
    await r.pass_once()

    assert h.calico.malformed == [] and h.calico.ips == {"10.0.0.1"}
    assert h.sample("capo_calico_malformed_entries_total") == 1
    await settled(h, r)  # and then quiet again


async def test_drift_in_a_lagging_watch_is_confirmed_by_a_read_before_any_write(h: Harness) -> None:
    h.add_record(make_record("10.0.0.1"))
    r = leading(h)
    assert r._cache is not None
    h.calico.ips.clear()
    r._cache.freeze()  # type: ignore[attr-defined]
    h.calico.ips.add("10.0.0.1")  # the object is fine; the watch has not delivered it yet
    h.calico.ips.add("10.0.0.7")  # nor this entry, which has no record

    await r.pass_once()

    assert "calico.read" in api_calls(h)
    assert h.journal.ops("calico.append") == []  # nothing re-added on the watch's word alone


async def test_without_a_synced_watch_the_object_is_read_every_pass(h: Harness) -> None:
    h.add_record(make_record("10.0.0.1"))
    r = leading(h)
    assert r._cache is not None
    r._cache.synced.clear()  # type: ignore[attr-defined]  # not listed yet, or RBAC refuses the watch

    for _ in range(3):
        h.journal.clear()
        await r.pass_once()
        assert h.journal.ops("calico.read") == ["calico.read"]


async def test_the_object_is_read_again_after_the_reread_period(h: Harness) -> None:
    clock = Clock()
    h.add_record(make_record("10.0.0.1", expires_in=timedelta(hours=1)))
    r = leading(h, clock)
    await settled(h, r)

    clock.now = NOW + releaser_module.CALICO_REREAD_PERIOD
    h.journal.clear()
    await r.pass_once()
    assert api_calls(h) == ["calico.read"]
    await settled(h, r)


@pytest.mark.usefixtures("every_pass")
async def test_owner_checks_read_only_the_owners_of_records_whose_pod_is_gone(h: Harness) -> None:
    alive = h.add_record(owned("10.0.0.1", "StatefulSet", "web", "sts-web"))
    h.add_pod(make_pod(uid=alive.pod.uid))  # type: ignore[union-attr]
    h.add_record(owned("10.0.0.2", "StatefulSet", "db", "sts-db"))  # its pod is gone
    h.add_record(make_record("10.0.0.3"))  # no owner
    r = leading(h)
    apps = FakeApps({("StatefulSet", "db", "db"), ("StatefulSet", "db", "web")})
    r.owners.apps = apps  # type: ignore[assignment]

    await r.pass_once()

    assert apps.calls == [("StatefulSet", "db", "db")]


async def test_no_owner_check_is_due_between_periods(h: Harness) -> None:
    h.add_record(owned("10.0.0.2", "StatefulSet", "db", "sts-db"))
    r = leading(h)
    apps = FakeApps({("StatefulSet", "db", "db")})
    r.owners.apps = apps  # type: ignore[assignment]
    await settled(h, r)
    assert len(apps.calls) == 1

    await r.pass_once()
    await r.pass_once()

    assert len(apps.calls) == 1  # within OWNER_CHECK_PERIOD


async def test_a_new_leadership_term_plans_and_reads_again(h: Harness) -> None:
    h.add_record(make_record("10.0.0.1"))
    r = leading(h)
    await settled(h, r)
    h.op.views.synced.set()

    task = asyncio.create_task(r.lead())
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert "calico.read" in api_calls(h)  # another leader may have changed anything meanwhile
    assert r._cache is None


async def test_the_ledger_follows_pod_changes_as_a_full_rebuild_would(h: Harness) -> None:
    h.add_ns(make_ns("off", enabled=False))
    ledger = FakeLedger()
    r = leading(h, ledger=ledger)
    pods = [h.add_pod(make_pod(name=f"db-{i}", uid=f"u{i}", ips=(f"10.0.2.{i}",))) for i in range(6)]
    await r.pass_once()
    assert set(ledger.entries) == {f"10.0.2.{i}" for i in range(6)}

    h.remove_pod(pods[0])  # gone
    h.add_pod(dataclasses.replace(pods[1], phase="Failed"))  # terminal: its IP is free
    h.add_pod(dataclasses.replace(pods[2], ips=("10.0.2.20",)))  # another IP
    h.add_pod(dataclasses.replace(pods[3], annotations={"capo.io/reserve-time": "3h"}))
    h.add_pod(make_pod(name="web-0", namespace="off", uid="w0", ips=("10.0.3.1",)))  # not selected
    h.add_pod(make_pod(name="db-9", uid="u9", ips=("10.0.2.9",)))  # new
    await r.pass_once()

    assert ledger.entries == r._selected_entries()  # what a rebuild from every pod gives
    assert set(ledger.entries) == {"10.0.2.20", "10.0.2.3", "10.0.2.4", "10.0.2.5", "10.0.2.9"}
    assert ledger.entries["10.0.2.3"].reserve_time == "3h"

    h.add_ns(make_ns("db", enabled=False))  # the namespace leaves: rebuilt whole
    await r.pass_once()
    assert ledger.entries == {}


# -- reserveAhead: entries of pods that leave the selection ----------------------------------------


async def test_reserve_ahead_entry_of_a_deselected_running_pod_is_removed_in_two_passes(h: Harness) -> None:
    """A namespace unlabelled while its pod runs: no record is on its way (the pod was not deleted),
    so its entry is removed after two passes, not kept for the adoption grace of a deleted pod."""
    h.op.config.current = Config(reserve_ahead=True)
    h.add_ns(make_ns("web"))
    h.add_pod(make_pod(name="db-0", uid="u0", ips=("10.0.0.1",)))
    h.add_pod(make_pod(name="web-0", namespace="web", uid="u1", ips=("10.0.0.2",)))
    clock = Clock()
    r = leading(h, clock)
    await settled(h, r)
    assert h.calico.ips == {"10.0.0.1", "10.0.0.2"}

    h.add_ns(make_ns("web", enabled=False))  # the label removed; web-0 runs on
    for _ in range(3):
        clock.now += timedelta(seconds=1)
        await r.pass_once()

    assert h.calico.ips == {"10.0.0.1"}
    assert h.records.items == {}
    assert [args for op, args in writes(h) if op == "calico.remove"] == [("10.0.0.2",)]


async def test_reserve_ahead_entry_of_a_deleted_pod_waits_for_its_record(h: Harness) -> None:
    """A deleted pod's entry is neither removed nor adopted during the grace: its record, with the
    pod's details, is on its way; only after the grace is it adopted (never dropped)."""
    h.op.config.current = Config(reserve_ahead=True)
    gone = h.add_pod(make_pod(name="db-1", uid="u2", ips=("10.0.0.3",)))
    clock = Clock()
    r = leading(h, clock)
    await settled(h, r)
    assert h.calico.ips == {"10.0.0.3"}

    h.remove_pod(gone)
    for _ in range(3):
        clock.now += timedelta(seconds=1)
        await r.pass_once()
    assert h.calico.ips == {"10.0.0.3"} and h.records.items == {}

    clock.now += timedelta(seconds=60)  # ahead.ADOPT_GRACE: no record came
    for _ in range(2):
        await r.pass_once()
    assert h.calico.ips == {"10.0.0.3"}
    assert h.records.items["10.0.0.3"].trigger == "recovered"
