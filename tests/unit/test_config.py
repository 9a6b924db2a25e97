"""The CapoConfig file: Capo's files must load unchanged; every mistake names its field and reason."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from capo_operator.config import Config, ConfigError, LeaderElection, load_config, parse_config
from capo_operator.decisions.selector import DEFAULT_SELECTOR, AnySelector, Requirement

DATA = Path(__file__).parent / "data"
SAMPLE = (DATA / "capo_config.yaml").read_text()


def error_of(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        parse_config(text)
    return caught.value


def test_capo_sample_file_loads_with_its_values() -> None:
    config = load_config(DATA / "capo_config.yaml")
    assert config.ip_reserve_max_count == 300
    assert config.ip_reserve_time == timedelta(minutes=40)
    assert config.ip_release_period == timedelta(seconds=5)
    assert config.label_selector == DEFAULT_SELECTOR
    assert config.leader_election.leader_elect is True
    assert config.leader_election.resource_name == "ip-reserve"
    assert config.leader_election.resource_namespace == "ip-reserve"
    assert config.health_probe_bind_address == ":8081"
    assert config.metrics_bind_address == ":8080"
    assert config.webhook_port == 9443
    assert config.warnings == ()


@pytest.mark.parametrize(
    "text", ["{}", "apiVersion: config.capo.io/v1\nkind: CapoConfig\n", "ipReserveTime: null"]
)
def test_absent_keys_take_capo_defaults(text: str) -> None:
    assert parse_config(text) == Config()


def test_new_keys_are_read() -> None:
    config = parse_config(
        """
ipReserveTime: 2h
ipReservationName: tenant-a.reserved
calicoAPIGroup: projectcalico.org
maxIPReserveTime: 72h
strictMode: true
webhookDeadline: 1500ms
releaseOnOwnerDeletion: false
metrics:
  ipInfoLimit: 0
leaderElection:
  leaderElect: false
  leaseDuration: 30s
  renewDeadline: 20s
  retryPeriod: 4s
labelSelector:
  matchLabels: {app: redis}
  matchExpressions:
    - {key: tier, operator: NotIn, values: [web]}
"""
    )
    assert config.ip_reserve_time == timedelta(hours=2)
    assert config.ip_reservation_name == "tenant-a.reserved"
    assert config.calico_api_group == "projectcalico.org"
    assert config.max_ip_reserve_time == timedelta(hours=72)
    assert config.strict_mode is True
    assert config.webhook_deadline == timedelta(milliseconds=1500)
    assert config.release_on_owner_deletion is False
    assert config.metrics_ip_info_limit == 0
    assert config.leader_election == LeaderElection(
        leader_elect=False,
        lease_duration=timedelta(seconds=30),
        renew_deadline=timedelta(seconds=20),
        retry_period=timedelta(seconds=4),
    )
    assert config.label_selector == AnySelector(
        (Requirement("app", "In", ("redis",)), Requirement("tier", "NotIn", ("web",)))
    )


def test_reserve_ahead_is_off_unless_asked_for() -> None:
    # Off by default: Capo's behaviour, each deletion's IPs are written when it is reviewed.
    assert parse_config(SAMPLE).reserve_ahead is False
    assert parse_config("reserveAhead: false").reserve_ahead is False
    assert parse_config("reserveAhead:").reserve_ahead is False
    config = parse_config(SAMPLE + "reserveAhead: true\n")
    assert config.reserve_ahead is True
    assert config.ip_reserve_max_count == 300 and config.warnings == ()


def test_controller_runtime_keys_are_accepted_with_a_warning() -> None:
    extra = (
        "syncPeriod: 10h\ncacheNamespace: ''\ngracefulShutDown: 30s\n"
        "controller:\n  groupKindConcurrency: {Pod: 4}\n"
    )
    config = parse_config(SAMPLE + extra)
    assert config.ip_reserve_max_count == 300
    assert any("syncPeriod" in w and "no effect" in w for w in config.warnings)
    assert any("controller" in w for w in config.warnings)


def test_nested_controller_runtime_keys_are_accepted() -> None:
    config = parse_config(
        """
health: {healthProbeBindAddress: ":9081", readinessEndpointName: /readyz, livenessEndpointName: /healthz}
webhook: {port: 9444, host: 0.0.0.0, certDir: /tmp/certs}
leaderElection: {resourceLock: leases}
"""
    )
    assert config.health_probe_bind_address == ":9081"
    assert config.webhook_port == 9444
    assert len(config.warnings) == 5


def test_other_resource_lock_is_warned_about() -> None:
    config = parse_config("leaderElection: {resourceLock: configmapsleases}")
    assert any("Lease" in w for w in config.warnings)


def test_empty_label_selector_matches_nothing_with_a_warning() -> None:
    config = parse_config("labelSelector: {}")
    assert config.label_selector.requirements == ()
    assert not config.label_selector.matches({"statefulset.kubernetes.io/pod-name": "redis-0"})
    assert any("matches no pod" in w for w in config.warnings)


def test_null_label_selector_keeps_the_default_with_a_warning() -> None:
    config = parse_config("labelSelector:")
    assert config.label_selector == DEFAULT_SELECTOR
    assert config.warnings


def test_max_reserve_time_default_grows_with_a_long_reserve_time() -> None:
    # A Capo file with a hold longer than our 24h default maximum must still load.
    config = parse_config("ipReserveTime: 48h")
    assert config.max_ip_reserve_time == timedelta(hours=48)


def test_large_cap_is_warned_about() -> None:
    config = parse_config("ipReserveMaxCount: 50000")
    assert config.ip_reserve_max_count == 50000
    assert any("Calico" in w for w in config.warnings)


@pytest.mark.parametrize(
    ("text", "field", "reason"),
    [
        # Unknown keys, with suggestions.
        ("ipReserveTim: 40m", "ipReserveTim", "did you mean 'ipReserveTime'"),
        ("ipreservemaxcount: 3", "ipreservemaxcount", "did you mean 'ipReserveMaxCount'"),
        ("labelselector: {}", "labelselector", "did you mean 'labelSelector'"),
        ("reserveAhaed: true", "reserveAhaed", "did you mean 'reserveAhead'"),
        ("completelyDifferent: 1", "completelyDifferent", "unknown field"),
        (
            "leaderElection: {leaseDuraton: 20s}",
            "leaderElection.leaseDuraton",
            "did you mean 'leaseDuration'",
        ),
        ("metrics: {bindAdress: ':8080'}", "metrics.bindAdress", "did you mean 'bindAddress'"),
        ("health: {port: 1}", "health.port", "unknown field"),
        ("webhook: {Port: 1}", "webhook.Port", "did you mean 'port'"),
        ("1: x", "1", "unknown field"),
        # Document shape.
        ("", "<document>", "empty document"),
        ("# only a comment\n", "<document>", "empty document"),
        ("- a\n- b\n", "<document>", "must be a mapping"),
        ("just text", "<document>", "must be a mapping"),
        ("---\na: 1\n---\nb: 2\n", "<document>", "YAML syntax error"),
        ("metrics: [", "<document>", "YAML syntax error at line 1"),
        (
            "ipReserveTime: 40m\nmetrics:\n  bindAddress: ':8080\n",
            "<document>",
            "quoted scalar started at line 3",
        ),
        ("ipReserveTime: 40m\n\tmetrics: {}\n", "<document>", "line 2"),
        (
            "ipReserveTime: 40m\nipReserveTime: 50m\n",
            "ipReserveTime",
            "duplicate key at line 2 (first at line 1)",
        ),
        ("metrics: 8080", "metrics", "must be a mapping"),
        ("leaderElection: true", "leaderElection", "must be a mapping"),
        # apiVersion / kind.
        ("apiVersion: v1", "apiVersion", "must be 'config.capo.io/v1'"),
        ("kind: Config", "kind", "must be 'CapoConfig'"),
        # ipReserveMaxCount.
        ("ipReserveMaxCount: 0", "ipReserveMaxCount", "at least 1, got 0"),
        ("ipReserveMaxCount: -3", "ipReserveMaxCount", "at least 1, got -3"),
        ("ipReserveMaxCount: true", "ipReserveMaxCount", "must be an integer, got boolean True"),
        ("ipReserveMaxCount: '300'", "ipReserveMaxCount", "must be an integer, got string '300'"),
        ("ipReserveMaxCount: 1.5", "ipReserveMaxCount", "must be an integer, got number 1.5"),
        # Durations.
        ("ipReserveTime: 40", "ipReserveTime", 'duration string such as "40m"'),
        ("ipReserveTime: '40'", "ipReserveTime", 'missing unit in duration "40"'),
        ("ipReserveTime: 40x", "ipReserveTime", 'unknown unit "x" in duration "40x"'),
        ("ipReserveTime: ''", "ipReserveTime", "empty duration"),
        ("ipReserveTime: -5m", "ipReserveTime", "must be positive"),
        ("ipReserveTime: 0s", "ipReserveTime", "greater than zero"),
        ("ipReserveTime: '0'", "ipReserveTime", "greater than zero"),
        ("ipReleasePeriod: 50ms", "ipReleasePeriod", "at least 100ms, got 50ms"),
        ("ipReleasePeriod: 1h", "ipReleasePeriod", "must not exceed ipReserveTime (40m)"),
        ("maxIPReserveTime: 30m", "maxIPReserveTime", "at least ipReserveTime (40m)"),
        ("webhookDeadline: 50ms", "webhookDeadline", "between 100ms and 9s"),
        ("webhookDeadline: 10s", "webhookDeadline", "between 100ms and 9s"),
        # Strings and choices.
        ("ipReservationName: Capo_Reserved", "ipReservationName", "DNS-1123"),
        ("ipReservationName: ''", "ipReservationName", "must not be empty"),
        ("ipReservationName: 7", "ipReservationName", "must be a string"),
        ("calicoAPIGroup: crd.projectcalico.org/v1", "calicoAPIGroup", "must be one of auto"),
        ("strictMode: 'true'", "strictMode", "must be a boolean"),
        ("releaseOnOwnerDeletion: 1", "releaseOnOwnerDeletion", "must be a boolean"),
        ("reserveAhead: 'yes'", "reserveAhead", "must be a boolean (true or false), got string 'yes'"),
        ("reserveAhead: 1", "reserveAhead", "must be a boolean (true or false), got integer 1"),
        # Ports and addresses.
        ("webhook: {port: 0}", "webhook.port", "between 1 and 65535"),
        ("webhook: {port: 70000}", "webhook.port", "between 1 and 65535"),
        ("webhook: {port: '9443'}", "webhook.port", "must be an integer"),
        ("metrics: {bindAddress: '8080'}", "metrics.bindAddress", '"host:port"'),
        ("metrics: {bindAddress: ':http'}", "metrics.bindAddress", "bad port 'http'"),
        ("metrics: {bindAddress: ':99999'}", "metrics.bindAddress", "bad port '99999'"),
        ("metrics: {bindAddress: ':'}", "metrics.bindAddress", "bad port ''"),
        ("metrics: {bindAddress: '0'}", "metrics.bindAddress", "not supported"),
        ("metrics: {bindAddress: '::1:8080'}", "metrics.bindAddress", "in brackets"),
        ("metrics: {bindAddress: '[::1:8080'}", "metrics.bindAddress", "bad IPv6 host"),
        ("metrics: {bindAddress: '[nope]:8080'}", "metrics.bindAddress", "bad IPv6 host"),
        ("metrics: {ipInfoLimit: -1}", "metrics.ipInfoLimit", "must be 0 or more, got -1"),
        ("metrics: {ipInfoLimit: '50'}", "metrics.ipInfoLimit", "must be an integer"),
        ("metrics: {bindAddress: 'bad_host:8080'}", "metrics.bindAddress", "bad host 'bad_host'"),
        ("metrics: {bindAddress: 8080}", "metrics.bindAddress", "must be a string, got integer 8080"),
        (
            "health: {healthProbeBindAddress: ':8080'}",
            "health.healthProbeBindAddress",
            "same port as metrics",
        ),
        ("metrics: {bindAddress: ':8081'}", "metrics.bindAddress", "same port as health"),
        ("webhook: {port: 8080}", "webhook.port", "same port as metrics.bindAddress"),
        (
            "health: {healthProbeBindAddress: ':9443'}",
            "health.healthProbeBindAddress",
            "same port as webhook",
        ),
        # Leader election.
        ("leaderElection: {leaderElect: 'yes please'}", "leaderElection.leaderElect", "must be a boolean"),
        ("leaderElection: {resourceName: Capo}", "leaderElection.resourceName", "DNS-1123"),
        ("leaderElection: {resourceNamespace: a.b}", "leaderElection.resourceNamespace", "DNS-1123 label"),
        (
            "leaderElection: {leaseDuration: 5s}",
            "leaderElection.leaseDuration",
            "greater than renewDeadline (10s)",
        ),
        (
            "leaderElection: {renewDeadline: 15s}",
            "leaderElection.leaseDuration",
            "greater than renewDeadline",
        ),
        ("leaderElection: {retryPeriod: 9s}", "leaderElection.renewDeadline", "1.2 x retryPeriod"),
        (
            "leaderElection: {leaseDuration: 15s, renewDeadline: 12s, retryPeriod: 10s}",
            "leaderElection.renewDeadline",
            "got 12s",
        ),
        ("leaderElection: {retryPeriod: 0s}", "leaderElection.retryPeriod", "greater than zero"),
        ("leaderElection: {leaseDuration: 15}", "leaderElection.leaseDuration", "duration string"),
        # Label selector, with the path inside it.
        ("labelSelector: []", "labelSelector", "must be a mapping"),
        (
            "labelSelector:\n  matchExpressions:\n"
            "    - {key: a, operator: Exists}\n    - {key: b, operator: exists}\n",
            "labelSelector.matchExpressions[1].operator",
            "got 'exists'",
        ),
        (
            "labelSelector: {matchExpressions: [{key: a, operator: In}]}",
            "labelSelector.matchExpressions[0].values",
            "non-empty",
        ),
        (
            "labelSelector: {matchLabels: {brokerId: 3}}",
            "labelSelector.matchLabels.brokerId",
            "must be a string",
        ),
        ("labelSelector: {matchLabel: {}}", "labelSelector.matchLabel", "unknown field"),
    ],
)
def test_invalid_values_name_the_field_and_reason(text: str, field: str, reason: str) -> None:
    error = error_of(text)
    assert error.field == field
    assert reason in error.reason
    assert field in str(error) and reason in str(error)


def test_errors_point_at_the_line() -> None:
    error = error_of(SAMPLE.replace("ipReleasePeriod: 5s", "ipReleasePeriod: 5"))
    expected = SAMPLE.splitlines().index("ipReleasePeriod: 5s") + 1
    assert error.reason.endswith(f"(line {expected})")


def test_leader_timings_equal_to_the_limit_are_refused() -> None:
    # client-go requires strictly greater values.
    assert error_of("leaderElection: {leaseDuration: 10s}").field == "leaderElection.leaseDuration"
    ok = parse_config("leaderElection: {leaseDuration: 3s, renewDeadline: 2500ms, retryPeriod: 2s}")
    assert ok.leader_election.renew_deadline == timedelta(milliseconds=2500)
    assert error_of("leaderElection: {renewDeadline: 2400ms, leaseDuration: 3s}").field == (
        "leaderElection.renewDeadline"
    )


@pytest.mark.parametrize(
    "address",
    [
        ":8080",
        "0.0.0.0:8080",
        "127.0.0.1:8080",
        "[::]:8080",
        "[::1]:8080",
        "localhost:8080",
        "metrics.local:1",
    ],
)
def test_bind_addresses_accepted(address: str) -> None:
    assert parse_config(f"metrics: {{bindAddress: '{address}'}}").metrics_bind_address == address


def test_release_period_bounds_are_inclusive() -> None:
    assert parse_config("ipReleasePeriod: 100ms").ip_release_period == timedelta(milliseconds=100)
    config = parse_config("ipReserveTime: 5m\nipReleasePeriod: 5m")
    assert config.ip_release_period == config.ip_reserve_time


def test_yaml_merge_keys_are_read() -> None:
    config = parse_config(
        "leaderElection:\n  <<: {leaseDuration: 30s, renewDeadline: 5s}\n  renewDeadline: 20s\n"
    )
    assert config.leader_election.lease_duration == timedelta(seconds=30)
    assert config.leader_election.renew_deadline == timedelta(seconds=20)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.field == "<file>"
    assert str(path) in caught.value.reason


def test_directory_and_binary_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="directory"):
        load_config(tmp_path)
    binary = tmp_path / "config.yaml"
    binary.write_bytes(b"ipReserveTime: \xff\xfe")
    with pytest.raises(ConfigError, match="UTF-8"):
        load_config(binary)


def test_load_reads_the_file(tmp_path: Path) -> None:
    path = tmp_path / "capo_config.yaml"
    path.write_text("ipReserveMaxCount: 12\n")
    assert load_config(str(path)).ip_reserve_max_count == 12


def test_namespace_selector_is_a_kubernetes_selector_sent_to_the_server() -> None:
    assert parse_config("ipReserveTime: 40m").namespace_selector.query() is None  # every namespace
    config = parse_config(
        "namespaceSelector:\n"
        "  matchLabels: {capo.io/test-run: a1b2c3}\n"
        "  matchExpressions:\n"
        "    - {key: team, operator: NotIn, values: [qa, dev]}\n"
        "    - {key: tier, operator: Exists}\n"
        "    - {key: legacy, operator: DoesNotExist}\n"
    )
    selector = config.namespace_selector
    assert selector.query() == "capo.io/test-run in (a1b2c3),team notin (qa,dev),tier,!legacy"
    # ALL requirements must match (Kubernetes semantics, unlike labelSelector's ANY).
    assert selector.matches({"capo.io/test-run": "a1b2c3", "tier": "db"})
    assert not selector.matches({"capo.io/test-run": "a1b2c3"})
    assert not selector.matches({"capo.io/test-run": "other", "tier": "db"})
    assert not selector.matches({"capo.io/test-run": "a1b2c3", "tier": "db", "legacy": "1"})


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("namespaceSelector: [a]", "namespaceSelector"),
        ("namespaceSelector: {matchLabels: {'bad key!': x}}", "namespaceSelector.matchLabels.bad key!"),
        ("namespaceSelector: {matchExpressions: [{key: a, operator: in, values: [b]}]}", "operator"),
        ("namespaceSelector: {selector: {}}", "namespaceSelector.selector"),
    ],
)
def test_a_bad_namespace_selector_is_refused(text: str, where: str) -> None:
    assert where in str(error_of(text))
