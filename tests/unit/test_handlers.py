"""The watch handlers: which pod and record events reach the safety net and the releaser."""

from __future__ import annotations

from typing import Any

import kopf
from fakes import Harness, make_harness, make_ns, make_record

from capo_operator import handlers


def pod_body(
    phase: str = "Running", *, uid: str = "uid-1", deleting: bool = False, reason: str | None = None
) -> kopf.Body:
    status: dict[str, Any] = {"phase": phase, "podIP": "10.0.0.1", "podIPs": [{"ip": "10.0.0.1"}]}
    if reason:
        status["reason"] = reason
    meta: dict[str, Any] = {
        "name": "db-0",
        "namespace": "db",
        "uid": uid,
        "labels": {"statefulset.kubernetes.io/pod-name": "db-0"},
    }
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return kopf.Body({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": {}, "status": status})


def event(h: Harness, kind: str | None, body: kopf.Body) -> None:
    handlers.pod_event(event={"type": kind, "object": dict(body)}, body=body, memo=h.rt)


def queued_triggers(h: Harness) -> list[str]:
    return sorted(item.trigger for item in h.safety_net._heap)


def harness() -> Harness:
    h = make_harness()
    h.add_ns(make_ns("db"))
    return h


def test_a_kubelet_eviction_is_handed_to_the_safety_net_once() -> None:
    h = harness()
    event(h, None, pod_body("Running"))
    event(h, "MODIFIED", pod_body("Failed", reason="Evicted"))
    event(h, "MODIFIED", pod_body("Failed", reason="Evicted"))  # later status updates of the same pod
    assert queued_triggers(h) == ["kubelet-eviction"]


def test_a_pod_already_terminal_when_listed_is_not_a_fresh_transition() -> None:
    # Its IP was freed long ago and may be someone else's: deleting it later reserves nothing.
    h = harness()
    event(h, None, pod_body("Failed", reason="Evicted"))
    event(h, "MODIFIED", pod_body("Failed", reason="Evicted", deleting=True))
    event(h, "DELETED", pod_body("Failed", reason="Evicted", deleting=True))
    assert queued_triggers(h) == []


def test_a_pod_turning_terminal_while_being_deleted_is_a_missed_deletion() -> None:
    h = harness()
    event(h, None, pod_body("Running"))
    event(h, "MODIFIED", pod_body("Running", deleting=True))
    event(h, "MODIFIED", pod_body("Succeeded", deleting=True))
    assert queued_triggers(h) == ["safety-net"]


def test_a_deleted_running_pod_goes_to_the_safety_net() -> None:
    h = harness()
    event(h, None, pod_body("Running"))
    event(h, "DELETED", pod_body("Running", deleting=True))
    assert queued_triggers(h) == ["safety-net"]


def test_pods_of_namespaces_not_enabled_are_ignored() -> None:
    h = make_harness()
    h.add_ns(make_ns("db", enabled=False))
    event(h, "MODIFIED", pod_body("Failed", reason="Evicted"))
    event(h, "DELETED", pod_body("Running", uid="uid-2"))
    assert queued_triggers(h) == []


def record_body(*, releasing: bool = False, reservation: str | None = None) -> kopf.Body:
    meta: dict[str, Any] = {"name": "10.0.0.1"}
    if reservation is not None:
        meta["labels"] = {"capo.io/reservation": reservation}
    if releasing:
        meta["annotations"] = {"capo.io/releasing": "expired"}
    spec = {"ip": "10.0.0.1", "pod": {"namespace": "db", "name": "db-0", "uid": "uid-1"}}
    return kopf.Body({"apiVersion": "capo.io/v1", "kind": "ReservedIP", "metadata": meta, "spec": spec})


def test_a_record_marks_its_pod_as_reserved_on_every_replica() -> None:
    h = harness()
    handlers.record_event(event={"type": "ADDED"}, body=record_body(), memo=h.rt)
    assert "uid-1" in h.rt.reserved_uids


def test_a_record_deleted_by_a_person_is_released_by_the_leader() -> None:
    h = harness()
    h.rt.leading = True
    handlers.record_event(event={"type": "DELETED"}, body=record_body(), memo=h.rt)
    assert h.rt.manual_releases == {"10.0.0.1"}


def test_the_releasers_own_deletions_and_standbys_release_nothing() -> None:
    h = harness()
    h.rt.leading = True
    handlers.record_event(event={"type": "DELETED"}, body=record_body(releasing=True), memo=h.rt)
    h.rt.leading = False
    handlers.record_event(event={"type": "DELETED"}, body=record_body(), memo=h.rt)
    assert h.rt.manual_releases == set()


def test_records_of_another_installation_are_neither_indexed_nor_released() -> None:
    h = harness()
    h.rt.leading = True
    theirs = record_body(reservation="tenant-b")
    assert handlers.records_by_name(name="10.0.0.1", body=theirs, memo=h.rt) is None
    handlers.record_event(event={"type": "DELETED"}, body=theirs, memo=h.rt)
    assert h.rt.manual_releases == set() and "uid-1" not in h.rt.reserved_uids
    full = make_record("10.0.0.1").to_body()
    full["metadata"]["labels"]["capo.io/reservation"] = "capo-reserved-ips"
    assert handlers.records_by_name(name="10.0.0.1", body=kopf.Body(full), memo=h.rt) is not None
