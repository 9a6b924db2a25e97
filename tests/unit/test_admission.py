"""The webhook's review: reserve selected pods (Calico first), skip with reasons, never block on our
own trouble unless strict mode says so."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import kopf
import pytest
from fakes import HOLD, Harness, eventually, make_harness, make_ns, make_pod
from kubernetes.aio import client as k8s

from capo_operator.config import Config
from capo_operator.decisions.policy import NamespaceFacts, PodFacts
from capo_operator.flows import admission


@pytest.fixture
def h() -> Harness:
    h = make_harness()
    h.add_ns(make_ns("db"))
    return h


async def review(
    h: Harness, pod: PodFacts, *, operation: str = "delete", dry_run: bool = False, settle: bool = True
) -> list[str]:
    """One review; with `settle`, also wait for the records that follow it in the background."""
    warnings: list[str] = []
    await h.op.admission.review(pod, operation=operation, dry_run=dry_run, warnings=warnings)
    if settle:
        await h.op.reserver.follower.flush()
    return warnings


def outcome(h: Harness, outcome: str, operation: str = "delete") -> float:
    return h.sample("capo_webhook_requests_total", operation=operation, outcome=outcome)


# -- reserve ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("operation", "trigger"), [("delete", "delete"), ("eviction", "eviction")])
async def test_selected_pod_is_reserved_calico_first(h: Harness, operation: str, trigger: str) -> None:
    pod = h.add_pod(make_pod(ips=("10.0.0.1", "fd00::7")))

    warnings = await review(h, pod, operation=operation)
    await h.op.reserver.follower.flush()

    assert warnings == []
    assert h.journal.ops() == ["calico.append", "records.create", "records.create"]
    assert h.journal[0] == ("calico.append", ("10.0.0.1", "fd00::7"))
    assert h.calico.ips == {"10.0.0.1", "fd00::7"}
    assert set(h.records.items) == {"10.0.0.1", "fd00--7"}
    for rec in h.records.items.values():
        assert rec.trigger == trigger
        assert rec.hold == HOLD
        assert rec.expires_at == rec.reserved_at + HOLD
        assert rec.policy == "ipReserveTime=40m"
        assert rec.pod is not None
        assert (rec.pod.namespace, rec.pod.name, rec.pod.uid, rec.pod.node) == (
            "db",
            "db-0",
            pod.uid,
            "node-1",
        )
        assert rec.owner == pod.owner
    assert h.sample("capo_reservations_total", trigger=trigger) == 2
    assert outcome(h, "reserved", operation) == 1
    assert pod.uid in h.op.recent
    assert "IPReserved" in h.events.reasons()


async def test_repeated_review_of_same_pod_makes_no_store_call(h: Harness) -> None:
    pod = h.add_pod(make_pod())
    await review(h, pod)
    await h.op.reserver.follower.flush()
    calls = len(h.journal)

    for _ in range(3):  # the apiserver's retries and kubelet's final DELETE
        assert await review(h, pod) == []

    assert len(h.journal) == calls
    assert outcome(h, "repeated") == 3
    assert outcome(h, "reserved") == 1
    assert h.sample("capo_reservations_total", trigger="delete") == 1


def delete_request(uid: str, **changes: Any) -> dict[str, Any]:
    request: dict[str, Any] = {
        "operation": "DELETE",
        "resource": {"group": "", "version": "v1", "resource": "pods"},
        "oldObject": {"metadata": {"name": "db-0", "namespace": "db", "uid": uid}},
    }
    request.update(changes)
    return request


async def test_a_deletions_repeated_call_is_answered_before_any_handler(h: Harness) -> None:
    pod = h.add_pod(make_pod())
    assert not h.op.admission.repeated(delete_request(pod.uid))  # not reserved yet: the handler runs
    await review(h, pod)

    assert h.op.admission.repeated(delete_request(pod.uid))
    assert outcome(h, "repeated") == 1
    # Not a repeat: a dry run, an eviction (the pod's own DELETE follows), another pod.
    assert not h.op.admission.repeated(delete_request(pod.uid, dryRun=True))
    assert not h.op.admission.repeated(delete_request(pod.uid, subResource="eviction", operation="CREATE"))
    assert not h.op.admission.repeated(delete_request("someone-else"))
    assert outcome(h, "repeated") == 1


async def test_the_answer_waits_for_the_calico_write_only(h: Harness) -> None:
    h.records.gate = asyncio.Event()  # record creation hangs
    pod = h.add_pod(make_pod(ips=("10.0.0.1",)))

    warnings = await asyncio.wait_for(review(h, pod, settle=False), 2.0)

    assert warnings == [] and outcome(h, "reserved") == 1
    assert h.calico.ips == {"10.0.0.1"}
    assert h.records.items == {}
    # The append carried what the record will say, so a crash now loses nothing.
    (details,) = h.calico.details
    assert set(details) == {"10.0.0.1"} and '"db-0"' in details["10.0.0.1"]
    h.records.gate.set()
    await h.op.reserver.follower.flush()
    assert h.records.items["10.0.0.1"].trigger == "delete"
    assert h.sample("capo_reservations_total", trigger="delete") == 1


async def test_concurrent_reviews_share_calico_writes(h: Harness) -> None:
    h.calico.gate = asyncio.Event()  # the first write is in flight while the others arrive
    pods = [h.add_pod(make_pod(name=f"db-{i}", uid=f"u-{i}", ips=(f"10.0.0.{i + 1}",))) for i in range(10)]

    first = asyncio.ensure_future(review(h, pods[0]))
    await eventually(lambda: len(h.journal) == 1)  # its write is in flight
    others = asyncio.gather(*(review(h, p) for p in pods[1:]))
    await eventually(lambda: h.op.reserver.commit.waiting == 9)
    h.calico.gate.set()
    assert await first == [] and await others == [[]] * 9

    appends = [ips for op, ips in h.journal if op == "calico.append"]
    assert appends == [("10.0.0.1",), tuple(f"10.0.0.{i + 1}" for i in range(1, 10))]
    assert outcome(h, "reserved") == 10
    await h.op.reserver.follower.flush()
    assert len(h.records.items) == 10


async def test_a_failed_shared_write_fails_every_review_it_carried(h: Harness) -> None:
    h.calico.gate = asyncio.Event()
    pods = [h.add_pod(make_pod(name=f"db-{i}", uid=f"u-{i}", ips=(f"10.0.0.{i + 1}",))) for i in range(4)]
    first = asyncio.ensure_future(review(h, pods[0]))
    await eventually(lambda: len(h.journal) == 1)
    others = asyncio.gather(*(review(h, p) for p in pods[1:]))
    await eventually(lambda: h.op.reserver.commit.waiting == 3)
    h.calico.fail("append", times=2)  # the first write and the batch of the other three
    h.calico.gate.set()

    results = [await first, *await others]
    assert len([op for op, _ in h.journal if op == "calico.append"]) == 2

    assert all(len(w) == 1 and "could not reserve IP" in w[0] for w in results)
    assert outcome(h, "reserved") == 0
    assert h.op.safety_net.pending == 4  # every one of them retried in the background
    assert not any(p.uid in h.op.recent for p in pods)


async def test_a_new_pod_with_the_same_name_is_not_a_repeat(h: Harness) -> None:
    first = h.add_pod(make_pod(uid="uid-1"))
    await review(h, first)
    second = make_pod(uid="uid-2", ips=("10.0.0.2",))
    h.remove_pod(first)
    h.add_pod(second)

    await review(h, second)

    assert outcome(h, "reserved") == 2
    assert "10.0.0.2" in h.records.items


async def test_hold_annotation_warning_is_returned_to_the_client(h: Harness) -> None:
    pod = h.add_pod(make_pod(annotations={"capo.io/reserve-time": "forever"}))

    warnings = await review(h, pod)

    assert len(warnings) == 1
    assert "capo.io/reserve-time" in warnings[0]
    assert h.records.items["10.0.0.1"].hold == HOLD  # fell back to ipReserveTime


async def test_partly_reused_ips_reserve_the_rest_and_count_the_loss(h: Harness) -> None:
    pod = h.add_pod(make_pod(ips=("10.0.0.1", "10.0.0.2")))
    h.add_holder("10.0.0.2", "someone-else")

    await review(h, pod)

    assert h.journal[0] == ("calico.append", ("10.0.0.1",))
    assert set(h.records.items) == {"10.0.0.1"}
    assert h.sample("capo_reservations_lost_total") == 1


# -- skips ------------------------------------------------------------------------------------


async def test_dry_run_reserves_nothing(h: Harness) -> None:
    pod = h.add_pod(make_pod())

    assert await review(h, pod, dry_run=True) == []

    assert h.journal == []
    assert h.sample("capo_webhook_skips_total", reason="dry-run") == 1
    assert outcome(h, "dry-run") == 1
    assert h.events.posted == []
    assert pod.uid not in h.op.recent  # the real deletion that follows must still reserve


SKIPS: list[tuple[str, dict[str, Any], NamespaceFacts, bool]] = [
    ("namespace-not-enabled", {}, make_ns("db", enabled=False), False),
    ("namespace-terminating", {}, make_ns("db", terminating=True), False),
    ("selector-mismatch", {"labels": {"app": "web"}}, make_ns("db"), False),
    ("opted-out", {"annotations": {"capo.io/reserve": "false"}}, make_ns("db"), False),
    ("host-network", {"host_network": True}, make_ns("db"), True),
    ("no-ip", {"ips": ()}, make_ns("db"), True),
    ("terminal", {"phase": "Failed", "reason": "Evicted"}, make_ns("db"), True),
    ("ip-held-by-other-pod", {}, make_ns("db"), True),
]


@pytest.mark.parametrize(("reason", "pod_kwargs", "ns", "notable"), SKIPS, ids=[s[0] for s in SKIPS])
async def test_skip_reserves_nothing_and_counts_its_reason(
    reason: str, pod_kwargs: dict[str, Any], ns: NamespaceFacts, notable: bool
) -> None:
    h = make_harness()
    h.add_ns(ns)
    pod = make_pod(**pod_kwargs)
    if reason == "ip-held-by-other-pod":
        h.add_holder("10.0.0.1", "another-pod")  # the deleted pod's IP went to someone else already

    warnings = await review(h, pod)

    assert warnings == []
    assert h.journal == []
    assert h.sample("capo_webhook_skips_total", reason=reason) == 1
    assert outcome(h, "skipped") == 1
    not_reserved = h.events.with_reason("IPNotReserved")
    if notable:
        assert len(not_reserved) == 1
        assert (not_reserved[0].ref.kind, not_reserved[0].ref.name) == ("Pod", "db-0")
        assert not_reserved[0].ref.uid == pod.uid
    else:
        assert not_reserved == []


async def test_an_opted_in_pod_is_reserved_without_matching_the_selector(h: Harness) -> None:
    pod = h.add_pod(make_pod(labels={"app": "web"}, annotations={"capo.io/reserve": "true"}))

    await review(h, pod)

    assert "10.0.0.1" in h.records.items


async def test_fully_reused_ip_counts_a_lost_reservation(h: Harness) -> None:
    pod = make_pod()
    h.add_holder("10.0.0.1", "another-pod")

    await review(h, pod)

    assert h.sample("capo_reservations_lost_total") == 1


# -- our own trouble --------------------------------------------------------------------------


async def test_calico_failure_allows_with_a_warning_and_hands_over_to_the_safety_net(h: Harness) -> None:
    pod = h.add_pod(make_pod())
    h.calico.fail("append")

    warnings = await review(h, pod)

    assert len(warnings) == 1
    assert "could not reserve IP 10.0.0.1" in warnings[0]
    assert h.records.items == {}  # records only after Calico holds the IP
    assert outcome(h, "error") == 1
    assert h.sample("capo_calico_write_errors_total", operation="append") == 1
    assert h.safety_net.pending == 1
    assert pod.uid not in h.op.recent  # the next DELETE of this pod tries again


async def test_slow_write_past_the_deadline_allows_and_finishes_in_the_background() -> None:
    h = make_harness(Config(webhook_deadline=timedelta(milliseconds=30)))
    h.add_ns(make_ns("db"))
    pod = h.add_pod(make_pod())
    h.calico.gate = asyncio.Event()
    loop = asyncio.get_running_loop()

    started = loop.time()
    warnings = await review(h, pod)
    took = loop.time() - started

    assert took < 0.5
    assert len(warnings) == 1 and "timed out" in warnings[0]
    assert outcome(h, "error") == 1
    assert h.safety_net.pending == 1
    # The write was not cancelled: once Calico answers, the record is created.
    h.calico.gate.set()
    await eventually(lambda: "10.0.0.1" in h.records.items)


async def test_strict_mode_refuses_the_deletion_when_calico_fails() -> None:
    h = make_harness(Config(strict_mode=True))
    h.add_ns(make_ns("db"))
    pod = h.add_pod(make_pod())
    h.calico.fail("append")

    with pytest.raises(kopf.AdmissionError) as caught:
        await review(h, pod)

    assert caught.value.code == 503
    assert "10.0.0.1" in str(caught.value)
    assert outcome(h, "denied") == 1
    assert h.safety_net.pending == 1


async def test_strict_mode_refuses_the_deletion_when_the_write_is_too_slow() -> None:
    h = make_harness(Config(strict_mode=True, webhook_deadline=timedelta(milliseconds=20)))
    h.add_ns(make_ns("db"))
    pod = h.add_pod(make_pod())
    h.calico.gate = asyncio.Event()

    with pytest.raises(kopf.AdmissionError) as caught:
        await review(h, pod)

    assert caught.value.code == 503
    assert outcome(h, "denied") == 1
    h.calico.gate.set()
    await eventually(lambda: "10.0.0.1" in h.records.items)


class _CoreApi:
    """Stands in for slim.CoreV1: answers from dicts, or raises the given ApiException."""

    namespaces: dict[str, dict[str, Any]] = {}
    pods: dict[tuple[str, str], dict[str, Any]] = {}
    error: k8s.ApiException | None = None
    calls: list[str] = []

    def __init__(self, api: Any) -> None:
        pass

    async def read_namespace(self, name: str) -> dict[str, Any]:
        _CoreApi.calls.append(f"namespace/{name}")
        if _CoreApi.error is not None:
            raise _CoreApi.error
        if name not in _CoreApi.namespaces:
            raise k8s.ApiException(status=404, reason="Not Found")
        return _CoreApi.namespaces[name]

    async def read_namespaced_pod(self, name: str, namespace: str) -> dict[str, Any]:
        _CoreApi.calls.append(f"pod/{namespace}/{name}")
        if _CoreApi.error is not None:
            raise _CoreApi.error
        if (namespace, name) not in _CoreApi.pods:
            raise k8s.ApiException(status=404, reason="Not Found")
        return _CoreApi.pods[(namespace, name)]


@pytest.fixture
def core_api(monkeypatch: pytest.MonkeyPatch) -> type[_CoreApi]:
    monkeypatch.setattr(_CoreApi, "namespaces", {})
    monkeypatch.setattr(_CoreApi, "pods", {})
    monkeypatch.setattr(_CoreApi, "error", None)
    monkeypatch.setattr(_CoreApi, "calls", [])
    monkeypatch.setattr(admission, "CoreV1", _CoreApi)
    return _CoreApi


async def test_api_error_reading_the_namespace_allows_with_a_warning(core_api: type[_CoreApi]) -> None:
    h = make_harness()
    core_api.error = k8s.ApiException(status=500, reason="Internal Server Error")

    warnings = await review(h, make_pod(namespace="new"))

    assert len(warnings) == 1 and "could not check" in warnings[0]
    assert outcome(h, "error") == 1
    assert h.journal == []


async def test_api_error_in_strict_mode_denies(core_api: type[_CoreApi]) -> None:
    h = make_harness(Config(strict_mode=True))
    core_api.error = k8s.ApiException(status=500, reason="Internal Server Error")

    with pytest.raises(kopf.AdmissionError) as caught:
        await review(h, make_pod(namespace="new"))

    assert caught.value.code == 503
    assert outcome(h, "denied") == 1


# -- facts ------------------------------------------------------------------------------------


async def test_namespace_facts_prefers_the_cache(h: Harness, core_api: type[_CoreApi]) -> None:
    assert await h.op.admission.namespace_facts("db") == make_ns("db")
    assert core_api.calls == []


async def test_namespace_facts_reads_a_namespace_the_watch_has_not_delivered(
    h: Harness, core_api: type[_CoreApi]
) -> None:
    core_api.namespaces["fresh"] = {"metadata": {"name": "fresh", "labels": {"ip-reserve": "enable"}}}

    facts = await h.op.admission.namespace_facts("fresh")

    assert facts == make_ns("fresh")
    assert await h.op.admission.namespace_facts("missing") is None
    assert core_api.calls == ["namespace/fresh", "namespace/missing"]


async def test_review_of_a_pod_in_a_fresh_namespace_reserves(h: Harness, core_api: type[_CoreApi]) -> None:
    core_api.namespaces["fresh"] = {"metadata": {"name": "fresh", "labels": {"ip-reserve": "enabled"}}}

    await review(h, make_pod(namespace="fresh", ips=("10.0.0.5",)))

    assert "10.0.0.5" in h.records.items


async def test_pod_facts_prefers_the_cache_then_one_get(h: Harness, core_api: type[_CoreApi]) -> None:
    cached = h.add_pod(make_pod())
    core_api.pods[("db", "db-1")] = {
        "metadata": {"namespace": "db", "name": "db-1", "uid": "u1"},
        "status": {"podIPs": [{"ip": "10.0.0.9"}]},
    }

    assert await h.op.admission.pod_facts("db", "db-0") == cached
    fetched = await h.op.admission.pod_facts("db", "db-1")
    assert fetched is not None and fetched.uid == "u1" and fetched.ips == ("10.0.0.9",)
    assert await h.op.admission.pod_facts("db", "gone") is None
    assert core_api.calls == ["pod/db/db-1", "pod/db/gone"]


async def test_a_cached_pod_without_ip_is_read_again(h: Harness, core_api: type[_CoreApi]) -> None:
    # The watch may still hold the copy from before the IP was assigned: an eviction then would
    # reserve nothing (the kubelet's later DELETE would, with the wrong trigger and a later clock).
    h.add_pod(make_pod(ips=()))
    core_api.pods[("db", "db-0")] = {
        "metadata": {"namespace": "db", "name": "db-0", "uid": "uid-db-db-0"},
        "status": {"phase": "Running", "podIPs": [{"ip": "10.0.0.1"}]},
    }

    fetched = await h.op.admission.pod_facts("db", "db-0")

    assert fetched is not None and fetched.ips == ("10.0.0.1",)
    assert core_api.calls == ["pod/db/db-0"]


async def test_pod_facts_raises_other_api_errors(h: Harness, core_api: type[_CoreApi]) -> None:
    core_api.error = k8s.ApiException(status=403, reason="Forbidden")
    with pytest.raises(k8s.ApiException):
        await h.op.admission.pod_facts("db", "db-9")


@pytest.mark.parametrize(
    ("eviction", "expected"),
    [
        ({}, False),
        ({"deleteOptions": None}, False),
        ({"deleteOptions": {}}, False),
        ({"deleteOptions": {"dryRun": []}}, False),
        ({"deleteOptions": {"dryRun": ["All"]}}, True),
    ],
)
def test_eviction_dry_run_reads_delete_options(eviction: dict[str, Any], expected: bool) -> None:
    assert admission.eviction_dry_run(eviction) is expected


# -- latency ----------------------------------------------------------------------------------


async def test_latency_is_observed_per_operation(h: Harness) -> None:
    pod = h.add_pod(make_pod())
    await review(h, pod, operation="delete")
    await review(h, pod, operation="delete")  # repeated
    await review(h, make_pod(name="x", labels={}), operation="eviction")  # skipped

    assert h.sample("capo_webhook_duration_seconds_count", operation="delete") == 2
    assert h.sample("capo_webhook_duration_seconds_count", operation="eviction") == 1
    assert h.sample("capo_webhook_duration_seconds_sum", operation="delete") < 1.0
