"""The exposed metric names: Capo's four exactly as Capo exposed them, ours with the capo_ prefix."""

from __future__ import annotations

from datetime import timedelta

from fakes import DummyApi, make_record
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from capo_operator.decisions.record import PodRef, Record
from capo_operator.metrics import TRIGGERS, Metrics


def exposition(metrics: Metrics) -> dict[str, tuple[str, list[tuple[str, dict[str, str], float]]]]:
    """family name -> (type, samples)"""
    text = generate_latest(metrics.registry).decode()
    return {
        family.name: (family.type, [(s.name, dict(s.labels), s.value) for s in family.samples])
        for family in text_string_to_metric_families(text)
    }


def sample_names(metrics: Metrics) -> set[str]:
    return {name for _, samples in exposition(metrics).values() for name, _, _ in samples}


def serving(records: list[Record], limit: int = 1000) -> Metrics:
    m = Metrics()
    m.watch_records(lambda: records, lambda: limit)
    return m


def test_capo_names_are_exposed_exactly() -> None:
    m = serving([make_record(f"10.0.0.{i}") for i in range(7)])
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
    assert releases == {
        "expired",
        "cap",
        "manual",
        "owner-deleted",
        "namespace-deleted",
        "reclaimed",
        "scaled-down",
        "kept-cap",
    }
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
    m.watch_records(lambda: [make_record("10.0.0.1")], lambda: 10)

    assert sample_names(m) <= m.exposed_names()
    assert {"ip_reserve_evictions_count", "capo_reservations_total"} <= m.exposed_names()
    assert "ip_reserve_evictions_count_total" not in m.exposed_names()


def info_samples(m: Metrics) -> list[tuple[str, dict[str, str], float]]:
    return exposition(m)["capo_reserved_ip_info"][1]


def test_held_ips_are_read_from_the_store_at_each_scrape() -> None:
    records = [make_record("10.0.0.1", trigger="delete", pod=PodRef("db", "db-0", "u0", "n1"))]
    m = serving(records)
    assert m.registry.get_sample_value("ip_reserve_count") == 1

    records.append(make_record("fd00::2", trigger="eviction", pod=None))
    records.append(make_record("10.0.0.3", trigger="eviction"))

    assert m.registry.get_sample_value("ip_reserve_count") == 3
    by_trigger = {labels["trigger"]: v for _, labels, v in exposition(m)["capo_reserved_ips"][1]}
    assert by_trigger["eviction"] == 2 and by_trigger["delete"] == 1
    assert set(TRIGGERS) <= set(by_trigger)  # every trigger present, zeros included
    assert sum(by_trigger.values()) == 3
    info = {labels["ip"]: (labels, value) for _, labels, value in info_samples(m)}
    assert info["10.0.0.1"] == (
        {"ip": "10.0.0.1", "namespace": "db", "pod": "db-0", "node": "n1", "trigger": "delete"},
        records[0].reserved_at.timestamp(),
    )
    assert info["fd00::2"][0] == {
        "ip": "fd00::2",
        "namespace": "",
        "pod": "",
        "node": "",
        "trigger": "eviction",
    }

    records.clear()  # released: the series go away with the records
    assert m.registry.get_sample_value("ip_reserve_count") == 0
    assert info_samples(m) == []


def test_per_ip_info_is_bounded_to_the_newest_and_the_rest_is_counted() -> None:
    records = [make_record(f"10.0.{i // 256}.{i % 256}", age=timedelta(seconds=i)) for i in range(2000)]
    m = serving(records, limit=50)

    shown = {labels["ip"] for _, labels, _ in info_samples(m)}

    assert shown == {r.ip for r in records[:50]}  # the 50 youngest holds
    assert m.registry.get_sample_value("capo_reserved_ip_info_omitted") == 1950
    assert m.registry.get_sample_value("ip_reserve_count") == 2000  # totals count every record


@given(
    ages=st.lists(st.integers(min_value=0, max_value=50), max_size=40),
    limit=st.integers(min_value=0, max_value=45),
)
def test_info_bound_properties(ages: list[int], limit: int) -> None:
    records = [make_record(f"10.1.0.{i}", age=timedelta(seconds=a)) for i, a in enumerate(ages)]
    m = serving(records, limit)

    shown = [labels["ip"] for _, labels, _ in info_samples(m)]

    assert len(shown) == min(limit, len(records)) == len(set(shown))
    omitted = m.registry.get_sample_value("capo_reserved_ip_info_omitted")
    assert omitted == len(records) - len(shown)
    # Nothing hidden is newer than anything shown.
    newest_hidden = max((r.reserved_at for r in records if r.ip not in shown), default=None)
    oldest_shown = min((r.reserved_at for r in records if r.ip in shown), default=None)
    if newest_hidden is not None and oldest_shown is not None:
        assert newest_hidden <= oldest_shown


def test_a_limit_change_applies_at_the_next_scrape() -> None:
    limit = [5]
    m = Metrics()
    m.watch_records(lambda: [make_record(f"10.0.0.{i}") for i in range(10)], lambda: limit[0])
    assert len(info_samples(m)) == 5
    limit[0] = 0
    assert info_samples(m) == []
    assert m.registry.get_sample_value("capo_reserved_ip_info_omitted") == 10


def test_without_a_store_nothing_is_held() -> None:
    m = Metrics()
    assert m.registry.get_sample_value("ip_reserve_count") == 0
    assert info_samples(m) == []


def test_each_metrics_object_has_its_own_registry() -> None:
    a, b = Metrics(), Metrics()
    a.reserve_count_max.set(5)
    assert b.registry.get_sample_value("ip_reserve_count_max") == 0


def test_events_beyond_the_queue_are_dropped_and_counted() -> None:
    from capo_operator.kube.events import EventRecorder, ObjectRef

    metrics = Metrics()
    recorder = EventRecorder(DummyApi(), host="capo-0", max_queue=2, on_drop=metrics.events_dropped.inc)  # type: ignore[arg-type]
    for i in range(5):
        recorder.post(ObjectRef("Pod", f"db-{i}", "db"), "IPReserved", "reserved")
    assert metrics.registry.get_sample_value("capo_events_dropped_total") == 3
