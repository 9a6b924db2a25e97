"""Every metric the operator exports, in one registry per process (no global default registry).

Capo's four metrics keep their exposed names exactly. prometheus-client appends `_total` to
Counters, and Capo's Go counter was exposed as plain `ip_reserve_evictions_count`, so that one is
served by a small collector as an untyped, monotonic sample under the exact old name.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from capo_operator import __version__

RELEASE_REASONS = ("expired", "cap", "manual", "owner-deleted", "namespace-deleted")
TRIGGERS = ("delete", "eviction", "kubelet-eviction", "terminated", "safety-net", "recovered", "imported")
WEBHOOK_OUTCOMES = ("reserved", "skipped", "repeated", "dry-run", "error", "denied")

HOLD_BUCKETS = (60, 300, 600, 1200, 1800, 2400, 3600, 7200, 14400, 43200, 86400, 259200)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


class _PlainCounter(Collector):
    """A monotonic value exposed without the `_total` suffix (Capo's `ip_reserve_evictions_count`)."""

    def __init__(self, name: str, documentation: str) -> None:
        self.name = name
        self.documentation = documentation
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        if amount < 0:
            raise ValueError("a counter only goes up")
        self.value += amount

    def collect(self) -> Iterator[Metric]:
        metric = Metric(self.name, self.documentation, "unknown")
        metric.add_sample(self.name, {}, self.value)
        yield metric


@dataclass(frozen=True)
class IPInfo:
    ip: str
    namespace: str
    pod: str
    node: str
    trigger: str
    reserved_at: float  # unix seconds


class _IPInfoCollector(Collector):
    """Per-IP info, rebuilt from the records view; bounded because the records are (by the cap)."""

    def __init__(self) -> None:
        self.rows: tuple[IPInfo, ...] = ()

    def collect(self) -> Iterator[Metric]:
        metric = Metric(
            "capo_reserved_ip_info",
            "One series per reserved IP; the value is when the reservation was made (unix seconds).",
            "gauge",
        )
        for row in self.rows:
            labels = {
                "ip": row.ip,
                "namespace": row.namespace,
                "pod": row.pod,
                "node": row.node,
                "trigger": row.trigger,
            }
            metric.add_sample("capo_reserved_ip_info", labels, row.reserved_at)
        yield metric


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=lambda: CollectorRegistry(auto_describe=True))

    def __post_init__(self) -> None:
        # `_created` series only double the scrape size; Capo's dashboards never used them.
        disable_created_metrics()
        r = self.registry
        # Capo's names.
        self.reserve_count = Gauge("ip_reserve_count", "Number of IPs reserved now", registry=r)
        self.reserve_count_max = Gauge("ip_reserve_count_max", "The ipReserveMaxCount cap", registry=r)
        self.evictions = _PlainCounter(
            "ip_reserve_evictions_count",
            "Number of IP addresses released forcibly because the number of held IP addresses "
            "reached the retention threshold",
        )
        r.register(self.evictions)
        self.leader = Gauge(
            "leader_election_master_status",
            "1 if this process is the leader of the named lease, 0 if it is a standby",
            ["name"],
            registry=r,
        )
        # capo-operator's own.
        self.reservations = Counter(
            "capo_reservations", "IP reservations made, by trigger", ["trigger"], registry=r
        )
        self.releases = Counter(
            "capo_releases", "IP reservations released, by reason", ["reason"], registry=r
        )
        self.hold_seconds = Histogram(
            "capo_reservation_hold_seconds",
            "How long a reservation was held when it was released",
            buckets=HOLD_BUCKETS,
            registry=r,
        )
        self.webhook_duration = Histogram(
            "capo_webhook_duration_seconds",
            "Time to answer an admission review",
            ["operation"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.webhook_requests = Counter(
            "capo_webhook_requests",
            "Admission reviews answered, by outcome",
            ["operation", "outcome"],
            registry=r,
        )
        self.webhook_skips = Counter(
            "capo_webhook_skips", "Admission reviews that reserved nothing, by reason", ["reason"], registry=r
        )
        self.calico_write_errors = Counter(
            "capo_calico_write_errors", "Failed writes to the Calico IPReservation", ["operation"], registry=r
        )
        self.malformed_entries = Counter(
            "capo_calico_malformed_entries",
            "Entries found in the Calico IPReservation that Calico cannot parse (each counted once; "
            "the leader removes them)",
            registry=r,
        )
        self.safety_net_catches = Counter(
            "capo_safety_net_catches",
            "Reservations made by the safety net (the webhook did not record them)",
            ["trigger"],
            registry=r,
        )
        self.reservations_lost = Counter(
            "capo_reservations_lost",
            "IPs of vanished pods that another pod already held when they were found",
            registry=r,
        )
        self.config_reloads = Counter(
            "capo_config_reloads", "Configuration reloads, by result", ["result"], registry=r
        )
        self.config_last_reload_ok = Gauge(
            "capo_config_last_reload_successful",
            "1 if the last configuration reload was accepted",
            registry=r,
        )
        self.events_dropped = Counter(
            "capo_events_dropped",
            "Kubernetes Events not posted because too many were queued (they are paced at 50/s)",
            registry=r,
        )
        self.cert_expiry = Gauge(
            "capo_webhook_certificate_expiry_timestamp_seconds",
            "When the serving certificate of the webhook expires (unix seconds)",
            registry=r,
        )
        self.api_forbidden = Counter(
            "capo_api_forbidden",
            "API requests refused with 403 Forbidden (a missing RBAC rule), by verb and resource",
            ["verb", "resource"],
            registry=r,
        )
        self.missing_permissions = Gauge(
            "capo_missing_permissions",
            "Permissions the start-up check found missing; critical ones keep the replica unready",
            ["critical"],
            registry=r,
        )
        self.build_info = Gauge("capo_build_info", "Build information", ["version"], registry=r)
        self.build_info.labels(version=__version__).set(1)
        self.ip_info = _IPInfoCollector()
        r.register(self.ip_info)
        # Pre-create labelled children so dashboards and alerts see zeros rather than gaps.
        for reason in RELEASE_REASONS:
            self.releases.labels(reason=reason)
        for trigger in TRIGGERS:
            self.reservations.labels(trigger=trigger)
        for result in ("success", "failure"):
            self.config_reloads.labels(result=result)
        self.config_last_reload_ok.set(1)
        for critical in ("true", "false"):
            self.missing_permissions.labels(critical=critical)

    def set_leader(self, name: str, leading: bool) -> None:
        self.leader.labels(name=name).set(1 if leading else 0)

    def set_ip_info(self, rows: Iterable[IPInfo]) -> None:
        self.ip_info.rows = tuple(rows)

    def exposed_names(self) -> frozenset[str]:
        """Every series name this registry can expose, used or not yet (for checking dashboards and rules)."""
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}
        names: set[str] = set()
        for metric in self.registry.collect():
            if metric.name == "ip_reserve_evictions_count" or metric.type not in suffixes:
                names.add(metric.name)
            else:
                names.update(metric.name + suffix for suffix in suffixes[metric.type])
        return frozenset(names)
