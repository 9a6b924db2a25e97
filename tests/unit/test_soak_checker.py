"""The soak's independent checker (bench/soak_checker.py) on synthetic event sequences: each
category is detected, and what the product documents as intended is not counted."""

from __future__ import annotations

import ipaddress
import sys
from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from soak_checker import (
    Blocked,
    Checker,
    DurationError,
    FinalState,
    ManualDeletion,
    Observation,
    Policy,
    canonical_host_cidr,
    parse_go_duration,
)

T0 = 1_800_000_000.0  # epoch seconds of the synthetic runs
POLICY = Policy(reserve_time=20.0, max_reserve_time=40.0)
STS = "statefulset.kubernetes.io/pod-name"


def iso(t: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Story:
    """Builds observations with increasing resourceVersions at chosen times."""

    def __init__(self) -> None:
        self.obs: list[Observation] = []
        self.rv = 100
        self.entries: list[str] = []
        self.manual: list[ManualDeletion] = []
        self.blocked: list[Blocked] = []
        self.add("namespace", "ADDED", 0, {"metadata": {"name": "apps", "labels": {"ip-reserve": "enabled"}}})
        self.add("namespace", "ADDED", 0, {"metadata": {"name": "plain", "labels": {}}})

    def add(self, kind: str, etype: str, at: float, obj: dict[str, Any]) -> None:
        self.rv += 1
        self.obs.append(Observation(self.rv, T0 + at, kind, etype, obj))

    def pod(
        self,
        at: float,
        uid: str,
        ip: str | None,
        *,
        name: str | None = None,
        ns: str = "apps",
        phase: str = "Running",
        deleting: bool = False,
        etype: str = "MODIFIED",
        annotations: dict[str, str] | None = None,
        stateful: bool = True,
    ) -> None:
        name = name or uid
        meta: dict[str, Any] = {
            "name": name,
            "namespace": ns,
            "uid": uid,
            "labels": {STS: name} if stateful else {},
            "annotations": annotations or {},
        }
        if deleting:
            meta["deletionTimestamp"] = iso(T0 + at)
        status: dict[str, Any] = {"phase": phase}
        if ip:
            status["podIPs"] = [{"ip": ip}]
        self.add("pod", etype, at, {"metadata": meta, "status": status})

    def calico(self, at: float, *entries: str) -> None:
        self.entries = list(entries)
        self.add(
            "calico",
            "MODIFIED",
            at,
            {"metadata": {"name": "capo-reserved-ips"}, "spec": {"reservedCIDRs": list(entries)}},
        )

    def record(
        self,
        at: float,
        ip: str,
        uid: str,
        *,
        reserved_at: float,
        expires_at: float | None,
        releasing: str | None = None,
        etype: str = "ADDED",
        name: str | None = None,
        deleting_since: float | None = None,
    ) -> None:
        meta: dict[str, Any] = {"name": ip, "uid": f"rec-{ip}"}
        if releasing:
            meta["annotations"] = {"capo.io/releasing": releasing}
        if deleting_since is not None:  # deleted, kept by the finalizer until the leader released it
            meta["deletionTimestamp"] = iso(T0 + deleting_since)
            meta["finalizers"] = ["capo.io/release"]
        spec = {
            "ip": ip,
            "pod": {"namespace": "apps", "name": name or uid, "uid": uid},
            "trigger": "delete",
            "reservedAt": iso(T0 + reserved_at),
            "expiresAt": None if expires_at is None else iso(T0 + expires_at),
        }
        self.add("record", etype, at, {"metadata": meta, "spec": spec})

    def released_event(self, at: float, ip: str, pod: str, *, uid: str = "ev-1", count: int = 1) -> None:
        self.add(
            "event",
            "ADDED" if count == 1 else "MODIFIED",
            at,
            {
                "metadata": {"uid": uid},
                "reason": "IPReleased",
                "count": count,
                "involvedObject": {"kind": "ReservedIP", "name": ip},
                "message": f"Released {ip} of pod {pod} (expired) after 0:00:20",
            },
        )

    def reserve_on_delete(self, at: float, uid: str, ip: str, hold: float = 20.0) -> None:
        """What the webhook does for a deletion: Calico entry first, record next; pod gone at +0.3 s."""
        self.pod(at, uid, ip, deleting=True)
        self.calico(at + 0.05, *self.entries, f"{ip}/32")
        self.record(at + 0.1, ip, uid, reserved_at=at, expires_at=at + hold)
        self.pod(at + 0.3, uid, ip, deleting=True, etype="DELETED")

    def release(self, at: float, ip: str, uid: str, reserved_at: float, hold: float = 20.0) -> None:
        """What the leader does: mark, remove from Calico, delete the record, post an Event."""
        self.record(
            at,
            ip,
            uid,
            reserved_at=reserved_at,
            expires_at=reserved_at + hold,
            releasing="expired",
            etype="MODIFIED",
        )
        self.calico(at + 0.01, *[e for e in self.entries if e != f"{ip}/32"])
        self.record(
            at + 0.02,
            ip,
            uid,
            reserved_at=reserved_at,
            expires_at=reserved_at + hold,
            releasing="expired",
            etype="DELETED",
        )
        self.released_event(at + 0.03, ip, f"apps/{uid}", uid=f"ev-{ip}-{at}")

    def check(self, final: FinalState | None = None, policy: Policy = POLICY) -> dict[str, Any]:
        checker = Checker(policy, manual=self.manual, blocked=self.blocked)
        return checker.run(self.obs, final)


def counts(result: dict[str, Any]) -> dict[str, int]:
    return {k: v for k, v in result["counts"].items() if v}


def test_a_clean_reserve_and_release_counts_nothing() -> None:
    s = Story()
    s.pod(0, "redis-0", "10.0.0.1", etype="ADDED")
    s.reserve_on_delete(5, "redis-0", "10.0.0.1")
    s.pod(6, "redis-0b", "10.0.0.2", name="redis-0", etype="ADDED")  # recreated: the next free IP
    s.release(25.5, "10.0.0.1", "redis-0", reserved_at=5)
    s.pod(26, "other", "10.0.0.1", etype="ADDED")  # after the release the IP may be reused
    result = s.check(FinalState((), ()))
    assert counts(result) == {}
    assert result["stats"]["reservations"] == 1
    assert result["stats"]["releases"] == 1
    assert result["stats"]["release_events"] == 1
    assert result["stats"]["unprotected"] == 0


def test_an_ip_handed_out_while_held_is_lost() -> None:
    s = Story()
    s.pod(0, "redis-0", "10.0.0.1", etype="ADDED")
    s.reserve_on_delete(5, "redis-0", "10.0.0.1")
    s.calico(8)  # the entry vanished without a release: the record still holds the IP
    s.pod(9, "intruder", "10.0.0.1", etype="ADDED")
    result = s.check()
    assert counts(result) == {"lost": 1}
    lost = result["violations"][0]
    assert lost["ip"] == "10.0.0.1" and lost["pod"] == "apps/intruder"
    assert lost["evidence"]["hold"]["pod"] == "apps/redis-0"
    assert lost["evidence"]["hold"]["in_calico"] is False
    assert result["stats"]["entry_dropped_while_held"] == 1


def test_order_is_the_resource_version_not_the_arrival_time() -> None:
    # The pod's status arrived (t) before the Calico removal was received, but was written after it.
    s = Story()
    s.pod(0, "redis-0", "10.0.0.1", etype="ADDED")
    s.reserve_on_delete(5, "redis-0", "10.0.0.1")
    s.release(25.5, "10.0.0.1", "redis-0", reserved_at=5)
    s.pod(25.0, "next", "10.0.0.1", etype="ADDED")  # higher rv, earlier arrival
    assert counts(s.check()) == {}
    late = Story()
    late.pod(0, "redis-0", "10.0.0.1", etype="ADDED")
    late.reserve_on_delete(5, "redis-0", "10.0.0.1")
    late.pod(26, "next", "10.0.0.1", etype="ADDED")  # lower rv than the release: during the hold
    late.calico(8)
    late.obs.sort(key=lambda o: o.t)
    assert counts(late.check()) == {"lost": 1}


def test_release_before_the_hold_time_is_early() -> None:
    s = Story()
    s.pod(0, "redis-0", "10.0.0.1", etype="ADDED")
    s.reserve_on_delete(5, "redis-0", "10.0.0.1")
    s.release(15, "10.0.0.1", "redis-0", reserved_at=5)
    result = s.check()
    assert counts(result) == {"early": 1}
    assert result["violations"][0]["evidence"]["early_by_s"] >= 9


def test_release_before_the_records_own_expiry_is_early() -> None:
    s = Story()
    s.pod(0, "redis-0", "10.0.0.1", etype="ADDED")
    s.reserve_on_delete(5, "redis-0", "10.0.0.1", hold=60)  # e.g. expiresAt edited by a person
    s.release(30, "10.0.0.1", "redis-0", reserved_at=5, hold=60)
    assert counts(s.check()) == {"early": 1}


def test_annotation_hold_times_as_documented() -> None:
    def run(annotation: str, released_after: float) -> dict[str, int]:
        s = Story()
        s.pod(0, "p", "10.0.0.1", etype="ADDED", annotations={"capo.io/reserve-time": annotation})
        s.pod(5, "p", "10.0.0.1", deleting=True, annotations={"capo.io/reserve-time": annotation})
        s.calico(5.05, "10.0.0.1/32")
        s.record(5.1, "10.0.0.1", "p", reserved_at=5, expires_at=5 + released_after)
        s.pod(5.3, "p", "10.0.0.1", etype="DELETED", annotations={"capo.io/reserve-time": annotation})
        s.release(5 + released_after, "10.0.0.1", "p", reserved_at=5, hold=released_after)
        return counts(s.check())

    assert run("8s", 8.1) == {}  # a shorter hold by annotation is not early
    assert run("8s", 4) == {"early": 1}
    assert run("90s", 40.5) == {}  # clamped to maxIPReserveTime
    assert run("90s", 30) == {"early": 1}
    assert run("soon", 20.5) == {}  # invalid: ipReserveTime
    assert run("soon", 8) == {"early": 1}
    assert run("1m", 30) == {"early": 1}


def test_release_while_the_pod_still_runs_is_early() -> None:
    s = Story()
    s.pod(0, "redis-0", "10.0.0.1", etype="ADDED")
    s.pod(5, "redis-0", "10.0.0.1")  # e.g. an eviction refused: the pod stays
    s.calico(5.05, "10.0.0.1/32")
    s.record(5.1, "10.0.0.1", "redis-0", reserved_at=5, expires_at=25)
    s.release(26, "10.0.0.1", "redis-0", reserved_at=5)
    result = s.check()
    assert counts(result) == {"early": 1}
    assert "still ran" in result["violations"][0]["detail"]


def test_the_clock_starts_when_a_surviving_pod_goes() -> None:
    def run(release_at: float) -> dict[str, int]:
        s = Story()
        s.pod(0, "redis-0", "10.0.0.1", etype="ADDED")
        s.calico(5.05, "10.0.0.1/32")  # reserved at 5, but the pod lived on until 30
        s.record(5.1, "10.0.0.1", "redis-0", reserved_at=5, expires_at=25)
        s.record(15.5, "10.0.0.1", "redis-0", reserved_at=5, expires_at=None, etype="MODIFIED")
        s.pod(30, "redis-0", "10.0.0.1", etype="DELETED")
        s.record(30.2, "10.0.0.1", "redis-0", reserved_at=30, expires_at=50, etype="MODIFIED")
        s.release(release_at, "10.0.0.1", "redis-0", reserved_at=30)
        return counts(s.check())

    assert run(50.5) == {}
    assert run(40) == {"early": 1}


def test_a_pod_gone_within_the_grace_is_held_from_its_reservation() -> None:
    # Documented: the clock only stops when the pod is alive ten seconds after the reservation.
    s = Story()
    s.pod(0, "redis-0", "10.0.0.1", etype="ADDED")
    s.pod(5, "redis-0", "10.0.0.1", deleting=True)
    s.calico(5.05, "10.0.0.1/32")
    s.record(5.1, "10.0.0.1", "redis-0", reserved_at=5, expires_at=25)
    s.pod(9, "redis-0", "10.0.0.1", etype="DELETED")  # a slow graceful shutdown, within 10 s
    s.release(25.2, "10.0.0.1", "redis-0", reserved_at=5)
    assert counts(s.check()) == {}


def test_a_manual_record_deletion_is_an_intended_early_release() -> None:
    s = Story()
    s.pod(0, "redis-0", "10.0.0.1", etype="ADDED")
    s.reserve_on_delete(5, "redis-0", "10.0.0.1")
    s.manual.append(ManualDeletion("10.0.0.1", T0 + 7))
    s.record(7.01, "10.0.0.1", "redis-0", reserved_at=5, expires_at=25, etype="DELETED")
    s.calico(7.5)
    s.pod(8, "next", "10.0.0.1", etype="ADDED")
    result = s.check()
    assert counts(result) == {}
    assert result["stats"]["manual_releases"] == 1


def test_a_manual_deletion_kept_by_the_finalizer_is_released_before_the_record_goes() -> None:
    """The record turns Terminating, the leader removes the entry (the IP may be handed out at once)
    and only then drops the finalizer: a manual release, not a lost IP."""
    s = Story()
    s.pod(0, "redis-0", "10.0.0.1", etype="ADDED")
    s.reserve_on_delete(5, "redis-0", "10.0.0.1")
    s.manual.append(ManualDeletion("10.0.0.1", T0 + 7))
    s.record(7.01, "10.0.0.1", "redis-0", reserved_at=5, expires_at=25, etype="MODIFIED", deleting_since=7)
    s.calico(7.5)
    s.pod(7.6, "next", "10.0.0.1", etype="ADDED")
    s.record(7.7, "10.0.0.1", "redis-0", reserved_at=5, expires_at=25, etype="DELETED", deleting_since=7)
    result = s.check()
    assert counts(result) == {}
    assert result["stats"]["manual_releases"] == 1


def test_an_unmarked_record_deletion_nobody_asked_for_is_judged() -> None:
    s = Story()
    s.pod(0, "redis-0", "10.0.0.1", etype="ADDED")
    s.reserve_on_delete(5, "redis-0", "10.0.0.1")
    s.record(7.01, "10.0.0.1", "redis-0", reserved_at=5, expires_at=25, etype="DELETED")
    s.calico(7.5)
    assert counts(s.check()) == {"early": 1}


def test_two_release_events_for_one_hold_are_double() -> None:
    s = Story()
    s.pod(0, "redis-0", "10.0.0.1", etype="ADDED")
    s.reserve_on_delete(5, "redis-0", "10.0.0.1")
    s.release(25.5, "10.0.0.1", "redis-0", reserved_at=5)
    s.released_event(26, "10.0.0.1", "apps/redis-0", uid="ev-again")
    result = s.check()
    assert counts(result) == {"double": 1}
    assert "twice" in result["violations"][0]["detail"]


def test_a_repeated_event_count_is_double_too() -> None:
    s = Story()
    s.pod(0, "redis-0", "10.0.0.1", etype="ADDED")
    s.reserve_on_delete(5, "redis-0", "10.0.0.1")
    s.release(25.5, "10.0.0.1", "redis-0", reserved_at=5)
    s.released_event(26, "10.0.0.1", "apps/redis-0", uid="ev-10.0.0.1-25.5", count=2)
    assert counts(s.check()) == {"double": 1}


def test_a_release_event_without_a_hold_is_double() -> None:
    s = Story()
    s.released_event(3, "10.0.0.9", "apps/ghost")
    result = s.check()
    assert counts(result) == {"double": 1}
    assert "without a hold" in result["violations"][0]["detail"]


def test_holds_of_one_ip_in_turn_each_get_their_own_event() -> None:
    s = Story()
    s.pod(0, "a", "10.0.0.1", name="redis-0", etype="ADDED")
    s.reserve_on_delete(5, "a", "10.0.0.1")
    s.release(25.5, "10.0.0.1", "a", reserved_at=5)
    s.pod(26, "b", "10.0.0.1", name="redis-0", etype="ADDED")
    s.reserve_on_delete(30, "b", "10.0.0.1")
    s.release(50.5, "10.0.0.1", "b", reserved_at=30)
    result = s.check()
    assert counts(result) == {}
    assert result["stats"]["releases"] == 2 and result["stats"]["release_events"] == 2


def test_blocked_deletions_are_counted_with_their_reason() -> None:
    s = Story()
    s.blocked.append(Blocked("delete", "apps/redis-0", T0 + 3, "HTTP 400: admission webhook denied"))
    result = s.check()
    assert counts(result) == {"blocked": 1}
    assert "denied" in result["violations"][0]["detail"]


def test_any_non_canonical_calico_entry_is_invalid() -> None:
    s = Story()
    s.calico(1, "10.0.0.1/32", "fd00::1/128")
    bad = ("10.0.0.2", "10.0.0.0/24", "FD00::2/128", "fd00:0::3/128")
    s.calico(2, "10.0.0.1/32", "fd00::1/128", *bad, "10.0.0.5/32")
    s.calico(3, "10.0.0.1/32", "fd00::1/128", *bad, "10.0.0.5/32", "10.0.0.6/32")  # seen again: once
    result = s.check()
    assert counts(result) == {"invalid": 4}
    assert {v["ip"] for v in result["violations"]} == {
        "10.0.0.2",
        "10.0.0.0/24",
        "FD00::2/128",
        "fd00:0::3/128",
    }


def test_drift_at_the_end_both_ways() -> None:
    s = Story()
    result = s.check(FinalState(("10.0.0.1/32", "10.0.0.2/32"), ("10.0.0.2", "10.0.0.3")))
    assert counts(result) == {"drift": 2}
    details = sorted(v["detail"] for v in result["violations"])
    assert "Calico entry 10.0.0.1 has no record" in details[0]
    assert "record 10.0.0.3 has no Calico entry" in details[1]


def test_a_reuse_before_any_reservation_is_noted_not_counted() -> None:
    s = Story()
    s.pod(0, "redis-0", "10.0.0.1", etype="ADDED")
    s.pod(5, "redis-0", "10.0.0.1", phase="Failed")  # kubelet eviction: the IP is freed at once
    s.pod(5.5, "other", "10.0.0.1", etype="ADDED")
    result = s.check()
    assert counts(result) == {}
    assert result["stats"]["unprotected"] == 1
    assert result["noted"][0]["category"] == "unprotected"


def test_reuse_of_an_unselected_pods_ip_is_not_noted() -> None:
    s = Story()
    s.pod(0, "optout", "10.0.0.1", etype="ADDED", annotations={"capo.io/reserve": "false"})
    s.pod(1, "optout", "10.0.0.1", etype="DELETED", annotations={"capo.io/reserve": "false"})
    s.pod(0, "plain", "10.0.0.2", ns="plain", etype="ADDED")
    s.pod(1, "plain", "10.0.0.2", ns="plain", etype="DELETED")
    s.pod(0, "web", "10.0.0.3", etype="ADDED", stateful=False)
    s.pod(1, "web", "10.0.0.3", etype="DELETED", stateful=False)
    for i, ip in enumerate(("10.0.0.1", "10.0.0.2", "10.0.0.3")):
        s.pod(2, f"new-{i}", ip, etype="ADDED")
    result = s.check()
    assert result["stats"]["unprotected"] == 0


def test_the_webhook_path_with_a_late_record_is_clean() -> None:
    # The record follows the Calico write asynchronously and may come after the pod is gone.
    s = Story()
    s.pod(0, "redis-0", "10.0.0.1", etype="ADDED")
    s.pod(5, "redis-0", "10.0.0.1", deleting=True)
    s.calico(5.05, "10.0.0.1/32")
    s.pod(5.3, "redis-0", "10.0.0.1", etype="DELETED")
    s.pod(5.4, "redis-0b", "10.0.0.2", name="redis-0", etype="ADDED")
    s.record(7, "10.0.0.1", "redis-0", reserved_at=5, expires_at=25)
    s.release(25.5, "10.0.0.1", "redis-0", reserved_at=5)
    assert counts(s.check()) == {}


# -- reserveAhead: the leader holds running selected pods' IPs before any deletion ----------------

AHEAD = Policy(reserve_time=20.0, max_reserve_time=40.0, reserve_ahead=True)


def test_reserve_ahead_a_clean_life_counts_nothing() -> None:
    s = Story()
    s.pod(0, "redis-0", "10.0.0.1", etype="ADDED")
    s.calico(0.3, "10.0.0.1/32")  # reserved ahead while the pod runs
    s.pod(2, "kafka-0", "10.0.0.2", etype="ADDED")
    s.calico(2.3, "10.0.0.1/32", "10.0.0.2/32")
    s.pod(30, "redis-0", "10.0.0.1", deleting=True)  # the review writes nothing
    s.pod(30.3, "redis-0", "10.0.0.1", deleting=True, etype="DELETED")
    s.record(31, "10.0.0.1", "redis-0", reserved_at=30, expires_at=50)  # the follower's record
    s.release(50.5, "10.0.0.1", "redis-0", reserved_at=30)
    result = s.check(FinalState(("10.0.0.2/32",), ()), policy=AHEAD)
    assert counts(result) == {}  # kafka-0 runs: its entry has no record and needs none
    assert result["stats"]["reserved_ahead"] == 2
    assert result["stats"]["releases"] == 1
    # Without reserveAhead the same end state is drift: an entry nobody's record explains.
    assert counts(s.check(FinalState(("10.0.0.2/32",), ()))) == {"drift": 1}


def test_reserve_ahead_the_hold_runs_from_the_pods_going_not_from_the_entry() -> None:
    def run(release_at: float) -> dict[str, int]:
        s = Story()
        s.pod(0, "redis-0", "10.0.0.1", etype="ADDED")
        s.calico(0.3, "10.0.0.1/32")
        s.pod(8, "redis-0", "10.0.0.1", etype="DELETED")  # webhook down: no review, no record yet
        s.calico(release_at)  # released without a record ever seen
        return counts(s.check(policy=AHEAD))

    assert run(28.5) == {}
    # 20 s after the entry but 12 s after the pod went: early. Counted from the first sighting (as
    # a deletion's own entry is), the pod gone within 10 s of it would have let this pass.
    assert run(20.5) == {"early": 1}


def test_reserve_ahead_an_entry_removed_while_its_pod_runs_selected_is_early() -> None:
    s = Story()
    s.pod(0, "redis-0", "10.0.0.1", etype="ADDED")
    s.calico(0.3, "10.0.0.1/32")
    s.calico(40)
    result = s.check(policy=AHEAD)
    assert counts(result) == {"early": 1}
    assert "still ran" in result["violations"][0]["detail"]


def test_reserve_ahead_an_entry_withdrawn_from_a_deselected_running_pod_is_not_counted() -> None:
    s = Story()
    s.pod(0, "redis-0", "10.0.0.1", etype="ADDED")
    s.calico(0.3, "10.0.0.1/32")
    s.add("namespace", "MODIFIED", 10, {"metadata": {"name": "apps", "labels": {}}})  # unlabelled
    s.calico(11)
    result = s.check(FinalState((), ()), policy=AHEAD)
    assert counts(result) == {}
    assert result["stats"]["ahead_withdrawn"] == 1


def test_reserve_ahead_a_reviewed_running_pod_keeps_its_hold() -> None:
    # An eviction refused after its review: the record exists, the pod runs; removing the entry now
    # is early even if the pod was deselected meanwhile.
    s = Story()
    s.pod(0, "redis-0", "10.0.0.1", etype="ADDED")
    s.calico(0.3, "10.0.0.1/32")
    s.record(5, "10.0.0.1", "redis-0", reserved_at=5, expires_at=25)
    s.add("namespace", "MODIFIED", 10, {"metadata": {"name": "apps", "labels": {}}})
    s.release(26, "10.0.0.1", "redis-0", reserved_at=5)
    assert counts(s.check(policy=AHEAD)) == {"early": 1}


def test_reserve_ahead_an_ip_held_ahead_and_handed_out_is_lost() -> None:
    s = Story()
    s.pod(0, "redis-0", "10.0.0.1", etype="ADDED")
    s.calico(0.3, "10.0.0.1/32")
    s.pod(8, "redis-0", "10.0.0.1", etype="DELETED")
    s.pod(9, "intruder", "10.0.0.1", etype="ADDED")
    result = s.check(policy=AHEAD)
    assert counts(result) == {"lost": 1}
    assert result["violations"][0]["evidence"]["hold"]["ahead"] is True


def test_reserve_ahead_a_running_selected_pod_without_an_entry_at_the_end_is_drift() -> None:
    s = Story()
    s.pod(0, "redis-0", "10.0.0.1", etype="ADDED")  # selected, never reserved ahead
    s.pod(0, "optout", "10.0.0.2", etype="ADDED", annotations={"capo.io/reserve": "false"})
    s.pod(0, "plain", "10.0.0.3", ns="plain", etype="ADDED")
    s.pod(0, "gone", "10.0.0.4", etype="ADDED")
    s.pod(1, "gone", "10.0.0.4", etype="DELETED")
    result = s.check(FinalState(("10.0.0.2/32",), ()), policy=AHEAD)
    assert counts(result) == {"drift": 2}
    details = {v["ip"]: v["detail"] for v in result["violations"]}
    assert "10.0.0.1 of running selected pod apps/redis-0 has no Calico entry" in details["10.0.0.1"]
    assert "Calico entry 10.0.0.2 has no record" in details["10.0.0.2"]  # not selected: not ahead


@given(
    st.lists(st.tuples(st.integers(0, 999), st.sampled_from(["h", "m", "s", "ms"])), min_size=1, max_size=4)
)
def test_go_durations_sum_their_parts(parts: list[tuple[int, str]]) -> None:
    text = "".join(f"{n}{unit}" for n, unit in parts)
    scale = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    assert abs(parse_go_duration(text) - sum(n * scale[u] for n, u in parts)) < 1e-6


@given(st.text(alphabet="abc xyz-+.", min_size=1, max_size=6))
def test_garbage_durations_are_refused(text: str) -> None:
    try:
        parse_go_duration(text)
    except DurationError:
        return
    raise AssertionError(f"{text!r} was accepted")


@given(st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)), st.integers(0, 127))
def test_only_canonical_host_cidrs_are_valid(
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address, prefix: int
) -> None:
    host = f"{ip}/{ip.max_prefixlen}"
    assert canonical_host_cidr(host) == str(ip)
    assert canonical_host_cidr(str(ip)) is None  # a bare IP is not a CIDR entry
    if prefix < ip.max_prefixlen:
        assert canonical_host_cidr(f"{ip}/{prefix}") is None
    assert canonical_host_cidr(host + " ") is None
    if ip.version == 6 and any(c.isalpha() for c in host):
        assert canonical_host_cidr(host.upper()) is None
