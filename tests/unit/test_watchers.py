"""The informers behind the caches: which pod and record changes reach the safety net and the
releaser, when the caches count as synced, and what a watch gap does."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from typing import Any

import pytest
from fakes import Harness, eventually, make_harness, make_ns, make_pod, make_record
from informer_fakes import FakeKube, Obj, pod
from prometheus_client import generate_latest

from capo_operator.config import parse_config
from capo_operator.decisions.policy import PodFacts
from capo_operator.decisions.record import PodRef
from capo_operator.flows.watchers import Watchers
from capo_operator.kube.caches import Caches

NS_PATH, POD_PATH, RECORD_PATH = "/api/v1/namespaces", "/api/v1/pods", "/apis/capo.io/v1/reservedips"


class Router:
    """A `Transport` over one FakeKube per resource path."""

    def __init__(self) -> None:
        self.kubes = {NS_PATH: FakeKube(), POD_PATH: FakeKube(), RECORD_PATH: FakeKube()}

    async def get(self, path: str, params: Mapping[str, str]) -> bytes:
        return await self.kubes[path].get(path, params)

    def stream(self, path: str, params: Mapping[str, str], seconds: float) -> AsyncGenerator[bytes]:
        return self.kubes[path].stream(path, params, seconds)


def namespace(name: str, *, enabled: bool = True) -> Obj:
    labels = {"ip-reserve": "enabled"} if enabled else {}
    return {
        "metadata": {"name": name, "uid": f"uid-ns-{name}", "labels": labels},
        "status": {"phase": "Active"},
    }


def sts_pod(name: str, ip: str, *, uid: str | None = None, phase: str = "Running", **kw: Any) -> Obj:
    return pod(
        name, "db", ips=(ip,), phase=phase, uid=uid, labels={"statefulset.kubernetes.io/pod-name": name}, **kw
    )


def record_obj(ip: str, pod_uid: str, *, reservation: str | None = None, **meta: Any) -> Obj:
    body = make_record(ip, pod=PodRef("db", "db-0", pod_uid, "node-1")).to_body()
    if reservation is not None:
        body["metadata"]["labels"]["capo.io/reservation"] = reservation
    body["metadata"].update(uid=f"uid-rec-{ip}", **meta)
    return body


def queued(h: Harness) -> list[tuple[str, str]]:
    return sorted((item.pod.name, item.trigger) for item in h.safety_net._heap)


# -- the handlers, called as the informers call them -------------------------------------------


def facts(
    phase: str = "Running", *, uid: str = "uid-1", deleting: bool = False, reason: str | None = None
) -> PodFacts:
    return make_pod(uid=uid, phase=phase, deleting=deleting, reason=reason)


@pytest.fixture
def w() -> Watchers:
    h = make_harness()
    h.add_ns(make_ns("db"))
    watchers = h.op.watchers
    watchers.caches.pods.synced.set()  # past the first list unless a test says otherwise
    return watchers


def triggers(w: Watchers) -> list[str]:
    return sorted(item.trigger for item in w.safety_net._heap)


def test_a_kubelet_eviction_is_handed_to_the_safety_net_once(w: Watchers) -> None:
    running = facts("Running")
    w.pod_added(running)
    evicted = facts("Failed", reason="Evicted")
    w.pod_updated(running, evicted)
    w.pod_updated(evicted, facts("Failed", reason="Evicted"))  # later status updates of the same pod
    assert triggers(w) == ["kubelet-eviction"]


def test_a_pod_already_terminal_when_listed_is_not_a_fresh_transition(w: Watchers) -> None:
    # Its IP was freed long ago and may be someone else's: deleting it later reserves nothing.
    w.caches.pods.synced.clear()
    listed = facts("Failed", reason="Evicted")
    w.pod_added(listed)
    w.caches.pods.synced.set()
    deleting = facts("Failed", reason="Evicted", deleting=True)
    w.pod_updated(listed, deleting)
    w.pod_deleted(deleting)
    assert triggers(w) == []


def test_the_first_list_is_not_an_event(w: Watchers) -> None:
    w.caches.pods.synced.clear()
    w.pod_added(facts("Failed", reason="Evicted"))
    w.pod_added(facts("Running", uid="uid-2"))
    assert triggers(w) == []


def test_a_pod_found_failed_on_a_relist_is_a_transition_missed_in_the_gap(w: Watchers) -> None:
    w.pod_added(facts("Failed", reason="Evicted"))
    assert triggers(w) == ["kubelet-eviction"]


def test_a_pod_turning_terminal_while_being_deleted_is_a_missed_deletion(w: Watchers) -> None:
    running = facts("Running")
    w.pod_added(running)
    deleting = facts("Running", deleting=True)
    w.pod_updated(running, deleting)
    w.pod_updated(deleting, facts("Succeeded", deleting=True))
    assert triggers(w) == ["safety-net"]


def test_a_deleted_running_pod_goes_to_the_safety_net(w: Watchers) -> None:
    running = facts("Running")
    w.pod_added(running)
    w.pod_deleted(facts("Running", deleting=True))
    assert triggers(w) == ["safety-net"]


def test_a_resync_is_not_a_change(w: Watchers) -> None:
    running = facts("Running")
    w.pod_added(running)
    w.pod_updated(running, running)
    assert triggers(w) == []


def test_pods_of_namespaces_not_enabled_are_ignored() -> None:
    h = make_harness()
    h.add_ns(make_ns("db", enabled=False))
    w = h.op.watchers
    w.caches.pods.synced.set()
    w.pod_updated(facts("Running"), facts("Failed", reason="Evicted"))
    w.pod_deleted(facts("Running", uid="uid-2"))
    assert triggers(w) == []


def test_a_record_marks_its_pod_as_reserved_on_every_replica(w: Watchers) -> None:
    w.record_seen(make_record("10.0.0.1", pod=PodRef("db", "db-0", "uid-1", "n1")))
    assert "uid-1" in w.reserved_uids


def test_a_record_deleted_by_a_person_is_released_by_the_leader(w: Watchers) -> None:
    w.leadership.leading = True
    w.record_deleted(make_record("10.0.0.1"))
    assert w.manual_releases == {"10.0.0.1"}


def test_the_releasers_own_deletions_and_standbys_release_nothing(w: Watchers) -> None:
    w.leadership.leading = True
    w.record_deleted(make_record("10.0.0.1", releasing="expired"))
    w.leadership.leading = False
    w.record_deleted(make_record("10.0.0.2"))
    assert w.manual_releases == set()


# -- running informers against a fake API server ----------------------------------------------


@pytest.fixture
async def running() -> AsyncIterator[tuple[Harness, Watchers, Router]]:
    router = Router()
    router.kubes[NS_PATH].put(namespace("db"))
    router.kubes[NS_PATH].put(namespace("other", enabled=False))
    h = make_harness(attach=False, transport=router, resync_period=None)
    watchers = h.op.watchers
    task = asyncio.create_task(h.op.caches.run())
    try:
        yield h, watchers, router
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_synced_only_once_all_three_listed_and_the_list_reserves_nothing(
    running: tuple[Harness, Watchers, Router],
) -> None:
    h, watchers, router = running
    gate = asyncio.Event()
    records = router.kubes[RECORD_PATH]
    real_get = records.get

    async def slow_get(path: str, params: Mapping[str, str]) -> bytes:
        await gate.wait()
        return await real_get(path, params)

    records.get = slow_get  # type: ignore[method-assign]
    router.kubes[POD_PATH].put(sts_pod("db-0", "10.0.0.1"))
    router.kubes[POD_PATH].put(sts_pod("db-1", "10.0.0.2", phase="Failed"))
    records.put(record_obj("10.0.0.9", "uid-gone"))
    await eventually(watchers.caches.pods.synced.is_set)
    await asyncio.sleep(0.01)
    assert not h.op.views.synced.is_set(), "the records are not listed yet"
    gate.set()
    await asyncio.wait_for(h.op.views.synced.wait(), 2)
    assert h.op.views.ip_holders(("10.0.0.1", "10.0.0.2")) == {"10.0.0.1": "uid-db-db-0"}
    assert h.op.views.record("10.0.0.9") is not None
    assert "uid-gone" in h.op.reserved_uids
    assert queued(h) == []


async def test_a_pod_deleted_during_a_watch_gap_reaches_the_safety_net(
    running: tuple[Harness, Watchers, Router],
) -> None:
    h, watchers, router = running
    pods = router.kubes[POD_PATH]
    pods.put(sts_pod("db-0", "10.0.0.1"))
    pods.put(sts_pod("db-1", "10.0.0.2"))
    await asyncio.wait_for(h.op.views.synced.wait(), 2)

    pods.delete_silently("db/db-0")  # deleted while the watch was down; the server forgot the history

    await eventually(lambda: queued(h) == [("db-0", "safety-net")])
    assert watchers.caches.pods.stats.expired == 1
    assert h.op.views.pod("db", "db-0") is None


async def test_a_ghost_pod_from_before_a_gap_does_not_hold_its_ip_for_a_later_pod(
    running: tuple[Harness, Watchers, Router],
) -> None:
    h, _watchers, router = running
    pods = router.kubes[POD_PATH]
    pods.put(sts_pod("db-0", "10.0.0.1", uid="old"))
    await asyncio.wait_for(h.op.views.synced.wait(), 2)

    # In the gap, db-0 went away and a pod of another workload got its IP.
    pods.objects.pop("db/db-0")
    pods.put_silently(sts_pod("web-0", "10.0.0.1", uid="new"))

    await eventually(lambda: h.op.views.pod("db", "web-0") is not None)
    assert h.op.views.ip_holders(("10.0.0.1",)) == {"10.0.0.1": "new"}
    assert h.op.views.ip_holders(("10.0.0.1",), except_uid="new") == {}, "no ghost holds the IP"
    assert queued(h) == [("db-0", "safety-net")]


async def test_a_statefulset_pod_recreated_in_a_gap_is_a_deletion_then_an_addition(
    running: tuple[Harness, Watchers, Router],
) -> None:
    h, _watchers, router = running
    pods = router.kubes[POD_PATH]
    pods.put(sts_pod("db-0", "10.0.0.1", uid="first"))
    await asyncio.wait_for(h.op.views.synced.wait(), 2)

    pods.put_silently(sts_pod("db-0", "10.0.0.5", uid="second"))

    await eventually(lambda: queued(h) == [("db-0", "safety-net")])
    assert h.safety_net._heap[0].pod.uid == "first"
    assert h.op.views.ip_holders(("10.0.0.1", "10.0.0.5")) == {"10.0.0.5": "second"}


async def test_only_this_installations_records_are_cached(running: tuple[Harness, Watchers, Router]) -> None:
    h, watchers, router = running
    records = router.kubes[RECORD_PATH]
    records.put(record_obj("10.0.0.1", "mine-default"))  # no label: the default installation
    records.put(record_obj("10.0.0.2", "theirs", reservation="tenant-b"))
    records.put(record_obj("10.0.0.3", "mine", reservation="capo-reserved-ips"))
    await asyncio.wait_for(h.op.views.synced.wait(), 2)
    h.op.leadership.leading = True

    assert {r.ip for r in h.op.views.records()} == {"10.0.0.1", "10.0.0.3"}
    assert "theirs" not in h.op.reserved_uids
    records.delete("10.0.0.2")
    records.delete("10.0.0.3")
    await eventually(lambda: h.op.views.record("10.0.0.3") is None)
    assert h.op.manual_releases == {"10.0.0.3"}
    assert watchers.caches.records.stats.skipped == 0, "another installation's records are no error"


async def test_a_record_being_deleted_is_cached_with_its_finalizers(
    running: tuple[Harness, Watchers, Router],
) -> None:
    h, _watchers, router = running
    router.kubes[RECORD_PATH].put(
        record_obj("10.0.0.1", "u", finalizers=["capo.io/release"], deletionTimestamp="2026-01-01T00:00:00Z")
    )
    await asyncio.wait_for(h.op.views.synced.wait(), 2)
    record = h.op.views.record("10.0.0.1")
    assert record is not None and record.deleting and record.finalizers == ("capo.io/release",)


async def test_informer_statistics_are_exposed_as_metrics(running: tuple[Harness, Watchers, Router]) -> None:
    h, watchers, router = running
    # The composition root registered the informers' statistics with the metrics.
    router.kubes[POD_PATH].put(sts_pod("db-0", "10.0.0.1"))
    await asyncio.wait_for(h.op.views.synced.wait(), 2)
    router.kubes[POD_PATH].delete_silently("db/db-0")
    await eventually(lambda: watchers.caches.pods.stats.expired == 1)

    text = generate_latest(h.metrics.registry).decode()
    assert 'capo_informer_objects{resource="namespaces"} 2.0' in text
    assert 'capo_informer_objects{resource="pods"} 0.0' in text
    assert 'capo_informer_relists_total{resource="pods"} 1.0' in text
    assert 'capo_informer_synced{resource="reservedips"} 1.0' in text
    assert json.dumps(h.sample("capo_informer_lists_total", resource="pods")) == "2.0"


def test_the_namespace_informer_asks_only_for_the_selected_namespaces() -> None:
    selector = parse_config("namespaceSelector: {matchLabels: {capo.io/test-run: r1}}").namespace_selector
    caches = Caches(Router(), reservation="capo-reserved-ips", namespace_selector=selector.query())
    assert caches.namespaces._params() == {"labelSelector": "capo.io/test-run in (r1)"}
    assert Caches(Router(), reservation="capo-reserved-ips").namespaces._params() == {}
