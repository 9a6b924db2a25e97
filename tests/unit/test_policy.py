"""What gets reserved: pod facts, opt-in/out, hold time and the ordered skip rules."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest

from capo_operator.config import Config, parse_config
from capo_operator.decisions.policy import (
    Decision,
    NamespaceFacts,
    Owner,
    PodFacts,
    Skip,
    decide,
    hold_for,
    selected,
    terminal_trigger,
)
from capo_operator.decisions.selector import NamespaceSelector

CONFIG = Config()
ENABLED = NamespaceFacts("db", enabled=True, terminating=False)


def raw_pod(**overrides: Any) -> dict[str, Any]:
    pod: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "namespace": "db",
            "name": "redis-0",
            "uid": "uid-redis-0",
            "labels": {"statefulset.kubernetes.io/pod-name": "redis-0", "app": "redis"},
            "annotations": {},
            "ownerReferences": [
                {"apiVersion": "v1", "kind": "ConfigMap", "name": "not-controller", "uid": "x"},
                {
                    "apiVersion": "apps/v1",
                    "kind": "StatefulSet",
                    "name": "redis",
                    "uid": "uid-sts",
                    "controller": True,
                },
            ],
        },
        "spec": {"nodeName": "node-1", "containers": [{"name": "redis", "image": "redis"}]},
        "status": {
            "phase": "Running",
            "podIP": "10.244.1.7",
            "podIPs": [{"ip": "10.244.1.7"}, {"ip": "fd00::7"}],
        },
    }
    for path, value in overrides.items():
        section, key = path.split("__")
        pod[section][key] = value
    return pod


def pod_facts(**overrides: Any) -> PodFacts:
    return PodFacts.from_pod(raw_pod(**overrides))


def annotated(pod: PodFacts, annotations: dict[str, str]) -> PodFacts:
    return replace(pod, annotations=annotations)


def test_from_pod_reads_the_facts() -> None:
    pod = pod_facts()
    assert (pod.namespace, pod.name, pod.uid, pod.node) == ("db", "redis-0", "uid-redis-0", "node-1")
    assert pod.ips == ("10.244.1.7", "fd00::7")
    assert pod.labels["app"] == "redis"
    assert pod.owner == Owner("apps/v1", "StatefulSet", "redis", "uid-sts")
    assert pod.phase == "Running"
    assert not pod.host_network and not pod.deleting and not pod.terminal


def test_from_pod_tolerates_a_bare_pod() -> None:
    pod = PodFacts.from_pod({})
    assert pod.ips == () and pod.owner is None and pod.node is None and pod.phase is None
    assert dict(pod.labels) == {} and not pod.deleting


def test_from_pod_tolerates_nulls() -> None:
    pod = PodFacts.from_pod(
        {
            "metadata": {"labels": None, "annotations": None, "ownerReferences": None},
            "spec": None,
            "status": {"podIPs": None, "podIP": None},
        }
    )
    assert pod.ips == () and pod.owner is None


def test_from_pod_ips_are_canonical_deduplicated_and_valid() -> None:
    pod = pod_facts(
        status__podIP="10.244.1.7",
        status__podIPs=[
            {"ip": "FD00:0::7"},
            {"ip": "10.244.1.7"},
            {"ip": "not-an-ip"},
            {"ip": "10.0.0.0/24"},
            {"ip": "fd00::7"},
            {},
            "junk",
            {"ip": 7},
        ],
    )
    assert pod.ips == ("fd00::7", "10.244.1.7")


def test_from_pod_falls_back_to_pod_ip() -> None:
    assert pod_facts(status__podIPs=[], status__podIP="10.1.2.3").ips == ("10.1.2.3",)


def test_from_pod_other_fields() -> None:
    pod = pod_facts(
        metadata__deletionTimestamp="2026-01-01T00:00:00Z",
        spec__hostNetwork=True,
        status__phase="Failed",
        status__reason="Evicted",
        metadata__ownerReferences=[{"kind": "ReplicaSet", "name": "x", "uid": "u"}],
        metadata__labels={"a": "b", "n": 1},
    )
    assert pod.deleting and pod.host_network and pod.terminal and pod.reason == "Evicted"
    assert pod.owner is None  # no controller reference
    assert dict(pod.labels) == {"a": "b"}


@pytest.mark.parametrize(
    ("ns", "enabled", "terminating"),
    [
        ({"metadata": {"name": "db", "labels": {"ip-reserve": "enabled"}}}, True, False),
        ({"metadata": {"name": "db", "labels": {"ip-reserve": "enable"}}}, True, False),
        ({"metadata": {"name": "db", "labels": {"ip-reserve": "Enabled"}}}, False, False),
        ({"metadata": {"name": "db", "labels": {"ip-reserve": "true"}}}, False, False),
        ({"metadata": {"name": "db"}}, False, False),
        ({"metadata": {"name": "db", "deletionTimestamp": "2026-01-01T00:00:00Z"}}, False, True),
        (
            {
                "metadata": {"name": "db", "labels": {"ip-reserve": "enabled"}},
                "status": {"phase": "Terminating"},
            },
            True,
            True,
        ),
    ],
)
def test_namespace_facts(ns: dict[str, Any], enabled: bool, terminating: bool) -> None:
    facts = NamespaceFacts.from_namespace(ns)
    assert (facts.name, facts.enabled, facts.terminating) == ("db", enabled, terminating)


@pytest.mark.parametrize(
    ("labels", "annotation", "expected"),
    [
        ({"app": "web"}, None, False),
        ({"brokerId": "1"}, None, True),
        ({"app": "web"}, "true", True),
        ({"app": "web"}, "TRUE", True),
        ({"app": "web"}, " True ", True),
        ({"brokerId": "1"}, "false", False),
        ({"brokerId": "1"}, "False", False),
        ({"brokerId": "1"}, "no", True),  # unknown values have no effect
        ({"app": "web"}, "yes", False),
        ({"app": "web"}, "", False),
    ],
)
def test_selected(labels: dict[str, str], annotation: str | None, expected: bool) -> None:
    annotations = {} if annotation is None else {"capo.io/reserve": annotation}
    pod = replace(pod_facts(), labels=labels, annotations=annotations)
    assert selected(pod, CONFIG) is expected


def test_hold_default() -> None:
    hold = hold_for(pod_facts(), CONFIG)
    assert hold.length == timedelta(minutes=40)
    assert hold.policy == "ipReserveTime=40m"
    assert hold.warning is None


def test_hold_follows_the_configured_default() -> None:
    hold = hold_for(pod_facts(), parse_config("ipReserveTime: 1h30m"))
    assert (hold.length, hold.policy) == (timedelta(minutes=90), "ipReserveTime=1h30m")


def test_hold_from_annotation() -> None:
    hold = hold_for(annotated(pod_facts(), {"capo.io/reserve-time": "2h"}), CONFIG)
    assert hold.length == timedelta(hours=2)
    assert hold.policy == "annotation capo.io/reserve-time=2h"
    assert hold.warning is None


def test_hold_annotation_can_be_shorter_than_the_default() -> None:
    hold = hold_for(annotated(pod_facts(), {"capo.io/reserve-time": "90s"}), CONFIG)
    assert hold.length == timedelta(seconds=90)


def test_hold_annotation_is_clamped_to_the_maximum() -> None:
    config = parse_config("maxIPReserveTime: 6h")
    hold = hold_for(annotated(pod_facts(), {"capo.io/reserve-time": "48h"}), config)
    assert hold.length == timedelta(hours=6)
    assert "clamped" in hold.policy and "6h" in hold.policy and "48h" in hold.policy
    assert hold.warning is not None and "6h" in hold.warning


def test_hold_annotation_equal_to_the_maximum_is_not_clamped() -> None:
    config = parse_config("maxIPReserveTime: 6h")
    hold = hold_for(annotated(pod_facts(), {"capo.io/reserve-time": "360m"}), config)
    assert hold.length == timedelta(hours=6) and hold.warning is None


@pytest.mark.parametrize("value", ["2", "forever", "", "-1h", "0", "0s", "1d", "x" * 500])
def test_invalid_hold_annotation_falls_back_with_a_warning(value: str) -> None:
    hold = hold_for(annotated(pod_facts(), {"capo.io/reserve-time": value}), CONFIG)
    assert hold.length == CONFIG.ip_reserve_time
    assert hold.policy == "ipReserveTime=40m"
    assert hold.warning is not None and "capo.io/reserve-time" in hold.warning
    assert len(hold.warning) < 300  # a huge annotation does not flood Events


def check_skip(decision: Decision, skip: Skip) -> None:
    assert decision.skip is skip
    assert decision.ips == () and decision.hold is None
    assert decision.detail.endswith(".") and decision.detail.count(". ") == 0


def test_reserves_a_selected_pod() -> None:
    decision = decide(pod_facts(), ENABLED, CONFIG)
    assert decision.skip is None
    assert decision.ips == ("10.244.1.7", "fd00::7")
    assert decision.hold is not None and decision.hold.length == timedelta(minutes=40)
    assert "db/redis-0" in decision.detail and "10.244.1.7" in decision.detail and "40m" in decision.detail


# Each case breaks one more rule than the one below it, so the first rule in the documented order wins.
ORDER: list[tuple[Skip, dict[str, Any]]] = [
    (Skip.DRY_RUN, {"dry_run": True}),
    (Skip.NAMESPACE_NOT_ENABLED, {"namespace": NamespaceFacts("db", enabled=False, terminating=True)}),
    (Skip.NAMESPACE_TERMINATING, {"namespace": NamespaceFacts("db", enabled=True, terminating=True)}),
    (Skip.OPTED_OUT, {"annotations": {"capo.io/reserve": "false"}}),
    (Skip.SELECTOR_MISMATCH, {"labels": {"app": "web"}}),
    (Skip.HOST_NETWORK, {"host_network": True}),
    (Skip.NO_IP, {"ips": ()}),
    (Skip.TERMINAL, {"phase": "Succeeded"}),
    (Skip.IP_REUSED, {"ip_holders": {"10.244.1.7": "other", "fd00::7": "other2"}}),
]


@pytest.mark.parametrize("index", range(len(ORDER)))
def test_skip_rules_apply_in_the_documented_order(index: int) -> None:
    pod = pod_facts()
    kwargs: dict[str, Any] = {"namespace": ENABLED}
    for _, change in reversed(ORDER[index:]):  # the earlier rule's setting wins
        change = dict(change)
        for key in ("dry_run", "namespace", "ip_holders"):
            if key in change:
                kwargs[key] = change.pop(key)
        pod = replace(pod, **change)
    namespace = kwargs.pop("namespace")
    check_skip(decide(pod, namespace, CONFIG, **kwargs), ORDER[index][0])


def test_unknown_namespace_is_not_enabled() -> None:
    decision = decide(pod_facts(), None, CONFIG)
    check_skip(decision, Skip.NAMESPACE_NOT_ENABLED)
    assert "unknown" in decision.detail
    scoped = replace(CONFIG, namespace_selector=NamespaceSelector.from_dict({"matchLabels": {"team": "db"}}))
    assert "outside namespaceSelector team in (db)" in decide(pod_facts(), None, scoped).detail


def test_opt_in_overrides_the_selector() -> None:
    pod = replace(pod_facts(), labels={"app": "web"}, annotations={"capo.io/reserve": "true"})
    assert decide(pod, ENABLED, CONFIG).ips == pod.ips


def test_opt_in_does_not_override_other_rules() -> None:
    pod = replace(pod_facts(), annotations={"capo.io/reserve": "true"}, host_network=True)
    check_skip(decide(pod, ENABLED, CONFIG), Skip.HOST_NETWORK)
    check_skip(decide(pod, NamespaceFacts("db", False, False), CONFIG), Skip.NAMESPACE_NOT_ENABLED)


def test_empty_selector_reserves_only_opted_in_pods() -> None:
    config = parse_config("labelSelector: {}")
    check_skip(decide(pod_facts(), ENABLED, config), Skip.SELECTOR_MISMATCH)
    pod = annotated(pod_facts(), {"capo.io/reserve": "true"})
    assert decide(pod, ENABLED, config).ips


def test_terminal_pod_is_reserved_on_a_fresh_transition() -> None:
    pod = pod_facts(status__phase="Failed", status__reason="Evicted")
    check_skip(decide(pod, ENABLED, CONFIG), Skip.TERMINAL)
    assert decide(pod, ENABLED, CONFIG, terminal_transition=True).ips == pod.ips


def test_deleting_pod_is_still_reserved() -> None:
    pod = pod_facts(metadata__deletionTimestamp="2026-01-01T00:00:00Z")
    assert decide(pod, ENABLED, CONFIG).ips == pod.ips


def test_ip_held_by_the_same_pod_is_not_reused() -> None:
    holders = {"10.244.1.7": "uid-redis-0", "fd00:0::7": "uid-redis-0"}
    assert decide(pod_facts(), ENABLED, CONFIG, ip_holders=holders).ips == ("10.244.1.7", "fd00::7")


def test_partially_reused_reserves_the_rest() -> None:
    holders = {"FD00::7": "uid-new-pod", "10.9.9.9": "someone", "garbage": "x"}
    decision = decide(pod_facts(), ENABLED, CONFIG, ip_holders=holders)
    assert decision.skip is None
    assert decision.ips == ("10.244.1.7",)
    assert decision.reused == ("fd00::7",)
    assert "fd00::7" in decision.detail


def test_fully_reused_is_skipped_and_reported() -> None:
    holders = {"10.244.1.7": "a", "fd00::7": "b"}
    decision = decide(pod_facts(), ENABLED, CONFIG, ip_holders=holders)
    check_skip(decision, Skip.IP_REUSED)
    assert decision.reused == ("10.244.1.7", "fd00::7")


def test_decision_carries_the_annotation_hold() -> None:
    pod = annotated(pod_facts(), {"capo.io/reserve-time": "3h"})
    decision = decide(pod, ENABLED, CONFIG)
    assert decision.hold is not None and decision.hold.length == timedelta(hours=3)
    assert "3h" in decision.detail


@pytest.mark.parametrize(
    ("reason", "trigger"),
    [
        ("Evicted", "kubelet-eviction"),
        (None, "terminated"),
        ("OOMKilled", "terminated"),
        ("evicted", "terminated"),
    ],
)
def test_terminal_trigger(reason: str | None, trigger: str) -> None:
    assert terminal_trigger(replace(pod_facts(), phase="Failed", reason=reason)) == trigger
