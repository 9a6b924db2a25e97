"""The exposed metric names: Capo's four exactly as Capo exposed them, ours with the capo_ prefix."""

from __future__ import annotations

from fakes import DummyApi
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from capo_operator.metrics import IPInfo, Metrics


def exposition(metrics: Metrics) -> dict[str, tuple[str, list[tuple[str, dict[str, str], float]]]]:
    """family name -> (type, samples)"""
    text = generate_latest(metrics.registry).decode()
    return {
        family.name: (family.type, [(s.name, dict(s.labels), s.value) for s in family.samples])
        for family in text_string_to_metric_families(text)
    }


def sample_names(metrics: Metrics) -> set[str]:
    return {name for _, samples in exposition(metrics).values() for name, _, _ in samples}


def test_capo_names_are_exposed_exactly() -> None:
    m = Metrics()
    m.reserve_count.set(7)
    m.reserve_count_max.set(300)
    m.evictions.inc()
    m.evictions.inc(2)
    m.set_leader("capo", True)

    families = exposition(m)

    assert families["ip_reserve_count"] == ("gauge", [("ip_reserve_count", {}, 7.0)])
    assert families["ip_reserve_count_max"] == ("gauge", [("ip_reserve_count_max", {}, 300.0)])
    assert families["ip_reserve_evictions_count"][1] == [("ip_reserve_evictions_count", {}, 3.0)]
    assert families["ip_reserve_evictions_count"][0] != "counter"  # a counter would add _total
    assert families["leader_election_master_status"] == (
        "gauge",
        [("leader_election_master_status", {"name": "capo"}, 1.0)],
    )
    names = sample_names(m)
    assert "ip_reserve_evictions_count_total" not in names
    assert not any(name.endswith("_created") for name in names)


def test_leader_status_follows_leadership() -> None:
    m = Metrics()
    m.set_leader("capo", True)
    m.set_leader("capo", False)
    assert m.registry.get_sample_value("leader_election_master_status", {"name": "capo"}) == 0


def test_eviction_counter_only_goes_up() -> None:
    m = Metrics()
    try:
        m.evictions.inc(-1)
    except ValueError:
        pass
    else:
        raise AssertionError("a negative increment was accepted")
    assert m.registry.get_sample_value("ip_reserve_evictions_count") == 0


def test_new_metrics_carry_the_capo_prefix_and_documented_names() -> None:
    m = Metrics()
    m.webhook_requests.labels(operation="delete", outcome="reserved").inc()
    m.webhook_duration.labels(operation="delete").observe(0.004)
    m.webhook_skips.labels(reason="dry-run").inc()
    m.calico_write_errors.labels(operation="append").inc()
    m.safety_net_catches.labels(trigger="safety-net").inc()
    m.reservations_lost.inc()
    m.hold_seconds.observe(120)
    m.cert_expiry.set(1.8e9)

    names = sample_names(m)

    for expected in (
        "capo_reservations_total",
        "capo_releases_total",
        "capo_reservation_hold_seconds_bucket",
        "capo_webhook_duration_seconds_bucket",
        "capo_webhook_requests_total",
        "capo_webhook_skips_total",
        "capo_calico_write_errors_total",
        "capo_safety_net_catches_total",
        "capo_reservations_lost_total",
        "capo_config_reloads_total",
        "capo_config_last_reload_successful",
        "capo_webhook_certificate_expiry_timestamp_seconds",
        "capo_build_info",
    ):
        assert expected in names, expected
    capo = {"ip_reserve_count", "ip_reserve_count_max", "ip_reserve_evictions_count"}
    capo.add("leader_election_master_status")
    assert all(name.startswith("capo_") or name in capo for name in names)


def test_labelled_series_exist_before_first_use() -> None:
    families = exposition(Metrics())

    releases = {labels["reason"] for _, labels, _ in families["capo_releases"][1]}
    assert releases == {"expired", "cap", "manual", "owner-deleted", "namespace-deleted"}
    triggers = {labels["trigger"] for _, labels, _ in families["capo_reservations"][1]}
    assert {"delete", "eviction", "kubelet-eviction", "safety-net", "recovered"} <= triggers
    assert Metrics().registry.get_sample_value("capo_config_last_reload_successful") == 1


def test_exposed_names_match_the_exposition() -> None:
    m = Metrics()
    m.webhook_duration.labels(operation="delete").observe(0.01)
    m.webhook_requests.labels(operation="delete", outcome="reserved").inc()
    m.webhook_skips.labels(reason="no-ip").inc()
    m.calico_write_errors.labels(operation="remove").inc()
    m.safety_net_catches.labels(trigger="terminated").inc()
    m.set_leader("capo", True)
    m.set_ip_info([IPInfo("10.0.0.1", "db", "db-0", "n1", "delete", 1.7e9)])

    assert sample_names(m) <= m.exposed_names()
    assert {"ip_reserve_evictions_count", "capo_reservations_total"} <= m.exposed_names()
    assert "ip_reserve_evictions_count_total" not in m.exposed_names()


def test_per_ip_info_is_replaced_not_accumulated() -> None:
    m = Metrics()
    m.set_ip_info([IPInfo("10.0.0.1", "db", "db-0", "n1", "delete", 1.7e9)])
    m.set_ip_info([IPInfo("10.0.0.2", "db", "db-1", "", "eviction", 1.8e9)])

    samples = exposition(m)["capo_reserved_ip_info"][1]

    assert samples == [
        (
            "capo_reserved_ip_info",
            {"ip": "10.0.0.2", "namespace": "db", "pod": "db-1", "node": "", "trigger": "eviction"},
            1.8e9,
        )
    ]


def test_each_metrics_object_has_its_own_registry() -> None:
    a, b = Metrics(), Metrics()
    a.reserve_count.set(5)
    assert b.registry.get_sample_value("ip_reserve_count") == 0


def test_events_beyond_the_queue_are_dropped_and_counted() -> None:
    from capo_operator.events import EventRecorder, ObjectRef

    metrics = Metrics()
    recorder = EventRecorder(DummyApi(), host="capo-0", max_queue=2, on_drop=metrics.events_dropped.inc)  # type: ignore[arg-type]
    for i in range(5):
        recorder.post(ObjectRef("Pod", f"db-{i}", "db"), "IPReserved", "reserved")
    assert metrics.registry.get_sample_value("capo_events_dropped_total") == 3
