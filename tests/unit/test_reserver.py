"""The reserve write shared by the webhook and the safety net: Calico first, then one record per IP."""

from __future__ import annotations

from datetime import timedelta

import pytest
from fakes import NOW, STS, Harness, make_harness, make_pod, make_record

from capo_operator.decisions.policy import Hold
from capo_operator.decisions.record import PodRef
from capo_operator.flows.reserver import new_record
from capo_operator.kube.calico import CalicoError

HOLD_2H = Hold(timedelta(hours=2), "annotation capo.io/reserve-time=2h")


@pytest.fixture
def h() -> Harness:
    return make_harness()


def test_new_record_carries_the_pod_the_hold_and_the_trigger() -> None:
    pod = make_pod(uid="u-1", node="node-3")

    rec = new_record(pod, "10.0.0.1", HOLD_2H, "eviction", NOW)

    assert rec.name == "10.0.0.1"
    assert rec.pod == PodRef(namespace="db", name="db-0", uid="u-1", node="node-3")
    assert rec.owner == STS
    assert rec.trigger == "eviction"
    assert rec.reserved_at == NOW
    assert rec.expires_at == NOW + timedelta(hours=2)
    assert rec.hold == timedelta(hours=2)
    assert rec.policy == "annotation capo.io/reserve-time=2h"
    assert rec.releasing is None


async def test_reserve_writes_calico_then_records(h: Harness) -> None:
    pod = make_pod(ips=("10.0.0.1", "fd00::1"))

    result = await h.op.reserver.reserve(pod, pod.ips, HOLD_2H, "delete")

    assert result.ips == ("10.0.0.1", "fd00::1")
    assert set(result.created) == {"10.0.0.1", "fd00::1"}
    assert h.journal.ops()[0] == "calico.append"
    assert h.journal.ops()[1:] == ["records.create", "records.create"]
    assert h.records.items["fd00--1"].expires_at == NOW + timedelta(hours=2)
    assert h.sample("capo_reservations_total", trigger="delete") == 2
    reserved = h.events.with_reason("IPReserved")
    kinds = sorted(p.ref.kind for p in reserved)
    assert kinds == ["Pod", "ReservedIP", "ReservedIP"]
    assert all("hold annotation capo.io/reserve-time=2h" in p.message for p in reserved)


async def test_an_existing_record_is_kept_and_not_counted_again(h: Harness) -> None:
    earlier = h.add_record(make_record("10.0.0.1", age=timedelta(minutes=5), trigger="delete"))
    pod = make_pod(ips=("10.0.0.1", "10.0.0.2"))

    result = await h.op.reserver.reserve(pod, pod.ips, HOLD_2H, "safety-net")

    assert result.created == ("10.0.0.2",)
    assert h.records.items["10.0.0.1"] == earlier  # the first reservation's clock stands
    assert h.sample("capo_reservations_total", trigger="safety-net") == 1
    pod_events = [p for p in h.events.with_reason("IPReserved") if p.ref.kind == "Pod"]
    assert len(pod_events) == 1 and "10.0.0.1" not in pod_events[0].message


async def test_nothing_is_counted_when_every_record_exists(h: Harness) -> None:
    h.add_record(make_record("10.0.0.1"))

    result = await h.op.reserver.reserve(make_pod(), ("10.0.0.1",), HOLD_2H, "delete")

    assert result.created == ()
    assert h.sample("capo_reservations_total", trigger="delete") == 0
    assert h.events.posted == []


async def test_record_create_failure_after_calico_does_not_raise(h: Harness) -> None:
    h.records.fail("create", RuntimeError("apiserver down"))

    result = await h.op.reserver.reserve(make_pod(), ("10.0.0.1",), HOLD_2H, "delete")

    assert result.ips == ("10.0.0.1",)
    assert result.created == ()
    assert h.calico.ips == {"10.0.0.1"}  # IPAM obeys this; the leader adopts the entry later
    assert h.sample("capo_reservations_total", trigger="delete") == 0


async def test_one_failed_record_does_not_stop_the_others(h: Harness) -> None:
    h.records.fail("create", RuntimeError("conflict storm"))
    pod = make_pod(ips=("10.0.0.1", "10.0.0.2"))

    result = await h.op.reserver.reserve(pod, pod.ips, HOLD_2H, "eviction")

    assert len(result.created) == 1
    assert h.sample("capo_reservations_total", trigger="eviction") == 1


async def test_calico_failure_raises_counts_and_writes_no_record(h: Harness) -> None:
    h.calico.fail("append", CalicoError("HTTP 500", 500))

    with pytest.raises(CalicoError):
        await h.op.reserver.reserve(make_pod(), ("10.0.0.1",), HOLD_2H, "delete")

    assert h.journal.ops() == ["calico.append"]
    assert h.sample("capo_calico_write_errors_total", operation="append") == 1
    assert h.sample("capo_reservations_total", trigger="delete") == 0
