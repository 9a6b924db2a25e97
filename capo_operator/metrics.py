"""Every metric the operator exports, in one registry per process (no global default registry).

Capo's four metrics keep their exposed names exactly. prometheus-client appends `_total` to
Counters, and Capo's Go counter was exposed as plain `ip_reserve_evictions_count`, so that one is
served by a small collector as an untyped, monotonic sample under the exact old name.

What describes the held IPs (`ip_reserve_count`, `capo_reserved_ips{trigger}`, the per-IP info) is
computed from the record store when Prometheus scrapes (`RecordsCollector`), not kept up to date
per record event: a scrape costs O(records), an event costs nothing.
"""

from __future__ import annotations

import heapq
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from capo_operator import __version__

if TYPE_CHECKING:
    from capo_operator.decisions.record import Record
    from capo_operator.kube.caches import InformerState

RELEASE_REASONS = (
    "expired",
    "cap",
    "manual",
    "owner-deleted",
    "namespace-deleted",
    "reclaimed",
    "scaled-down",
    "kept-cap",
)
# capo_sticky_claims_total{outcome}: the webhook's claims, then the hand-over's results.
STICKY_OUTCOMES = (
    "claimed",
    "no-hold",
    "conflict",
    "skipped",
    "dry-run",
    "error",
    "reclaimed",
    "other-ip",
    "pod-gone",
    "lapsed",
)
TRIGGERS = ("delete", "eviction", "kubelet-eviction", "terminated", "safety-net", "recovered", "imported")
WEBHOOK_OUTCOMES = ("reserved", "skipped", "repeated", "dry-run", "error", "denied")

HOLD_BUCKETS = (60, 300, 600, 1200, 1800, 2400, 3600, 7200, 14400, 43200, 86400, 259200)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
DEFAULT_IP_INFO_LIMIT = 1000


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


def _no_records() -> Iterable[Record]:
    return ()


class RecordsCollector(Collector):
    """The held IPs, computed from the record store at scrape time.

    `records` gives the current records (the records cache); `info_limit` the most per-IP info
    series to expose. Those are the newest holds (by reservedAt, then IP for a stable choice): the
    ones a person looks up while an incident is fresh. The count of the others is exposed as
    `capo_reserved_ip_info_omitted`, and the totals (`ip_reserve_count`, `capo_reserved_ips`)
    always cover every record. Bounding keeps a scrape small at any record count: one info series
    is ~120 bytes of exposition and an extra series in Prometheus for as long as the hold lasts.
    """

    def __init__(
        self,
        records: Callable[[], Iterable[Record]] = _no_records,
        info_limit: Callable[[], int] = lambda: DEFAULT_IP_INFO_LIMIT,
    ) -> None:
        self.records = records
        self.info_limit = info_limit

    def describe(self) -> Iterator[Metric]:
        # Families without samples: registering must not read the store (it may not be synced).
        yield from self._families([], 0)

    def collect(self) -> Iterator[Metric]:
        records = list(self.records())
        limit = max(0, self.info_limit())
        if len(records) <= limit:
            shown = records
        else:
            shown = heapq.nlargest(limit, records, key=lambda r: (r.reserved_at, r.ip))
        yield from self._families(records, len(shown), shown)

    @staticmethod
    def _families(records: list[Record], n_shown: int, shown: Iterable[Record] = ()) -> Iterator[Metric]:
        count = Metric("ip_reserve_count", "Number of IPs reserved now", "gauge")
        count.add_sample("ip_reserve_count", {}, float(len(records)))
        yield count

        by_trigger = Tally(r.trigger for r in records)
        per_trigger = Metric(
            "capo_reserved_ips", "IPs reserved now, by the trigger that reserved them", "gauge"
        )
        for trigger in (*TRIGGERS, *sorted(set(by_trigger) - set(TRIGGERS))):
            per_trigger.add_sample("capo_reserved_ips", {"trigger": trigger}, float(by_trigger[trigger]))
        yield per_trigger

        info = Metric(
            "capo_reserved_ip_info",
            "One series per reserved IP, the newest holds up to metrics.ipInfoLimit; the value is "
            "when the reservation was made (unix seconds).",
            "gauge",
        )
        for r in shown:  # labels built directly: this loop is most of a scrape's cost
            pod = r.pod
            labels = {
                "ip": r.ip,
                "namespace": pod.namespace if pod else "",
                "pod": pod.name if pod else "",
                "node": (pod.node or "") if pod else "",
                "trigger": r.trigger,
            }
            info.add_sample("capo_reserved_ip_info", labels, r.reserved_at.timestamp())
        yield info

        omitted = Metric(
            "capo_reserved_ip_info_omitted",
            "Reserved IPs without a capo_reserved_ip_info series (beyond metrics.ipInfoLimit)",
            "gauge",
        )
        omitted.add_sample("capo_reserved_ip_info_omitted", {}, float(len(records) - n_shown))
        yield omitted

        sticky = Metric(
            "capo_sticky_holds",
            "Sticky holds now, by release policy (immutable and never: kept holds)",
            "gauge",
        )
        by_policy = Tally(str(r.release_policy) for r in records if r.sticky)
        for name in ("ttl", "immutable", "never"):
            sticky.add_sample("capo_sticky_holds", {"policy": name}, float(by_policy[name]))
        yield sticky


# InformerStats field -> (exposed counter name without _total, help).
_INFORMER_COUNTERS = {
    "lists": ("capo_informer_lists", "Complete LISTs of a resource: the first one and every relist"),
    "expired": (
        "capo_informer_relists",
        "Relists forced by 410 Gone: a watch gap the API server could not replay",
    ),
    "watches": ("capo_informer_watches", "WATCH requests made"),
    "events": ("capo_informer_events", "Watch events applied (bookmarks excluded)"),
    "errors": ("capo_informer_errors", "Failed LIST/WATCH attempts, each followed by a backoff"),
    "skipped": ("capo_informer_skipped", "Objects left out of the cache because they could not be read"),
    "handler_errors": ("capo_informer_handler_errors", "Informer handler calls that raised"),
}


class InformersCollector(Collector):
    """The informers' own statistics, read at scrape time (no bookkeeping on the event path)."""

    def __init__(self, states: Callable[[], Iterable[InformerState]] = lambda: ()) -> None:
        self.states = states

    def describe(self) -> Iterator[Metric]:
        yield from self._families(())

    def collect(self) -> Iterator[Metric]:
        yield from self._families(list(self.states()))

    @staticmethod
    def _families(states: Iterable[InformerState]) -> Iterator[Metric]:
        states = list(states)
        objects = Metric("capo_informer_objects", "Objects in the informer's cache, by resource", "gauge")
        synced = Metric("capo_informer_synced", "1 once the informer's first list is complete", "gauge")
        for s in states:
            objects.add_sample("capo_informer_objects", {"resource": s.resource}, float(s.objects))
            synced.add_sample("capo_informer_synced", {"resource": s.resource}, float(s.synced))
        yield objects
        yield synced
        for attr, (name, doc) in _INFORMER_COUNTERS.items():
            family = Metric(name, doc, "counter")
            for s in states:
                family.add_sample(name + "_total", {"resource": s.resource}, float(getattr(s.stats, attr)))
            yield family


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=lambda: CollectorRegistry(auto_describe=True))

    def __post_init__(self) -> None:
        # `_created` series only double the scrape size; Capo's dashboards never used them.
        disable_created_metrics()
        r = self.registry
        # Capo's names.
        self.held = RecordsCollector()
        r.register(self.held)
        self.informers = InformersCollector()
        r.register(self.informers)
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
        self.sticky_claims = Counter(
            "capo_sticky_claims",
            "Sticky IP claims by outcome: the webhook's (claimed, no-hold, conflict, skipped, dry-run, "
            "error) and the hand-over's (reclaimed, other-ip, pod-gone, lapsed)",
            ["outcome"],
            registry=r,
        )
        self.reserved_ahead = Gauge(
            "capo_reserved_ahead_ips",
            "reserveAhead: IPs of running selected pods that the IPReservation holds before their "
            "deletion (the leader's count; 0 when reserveAhead is off)",
            registry=r,
        )
        self.kept_holds_max = Gauge(
            "capo_kept_holds_max", "The sticky.maxKeptHolds cap (immutable and never holds)", registry=r
        )
        for outcome in STICKY_OUTCOMES:
            self.sticky_claims.labels(outcome=outcome)
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

    def watch_records(self, records: Callable[[], Iterable[Record]], info_limit: Callable[[], int]) -> None:
        """Where the held-IP metrics are read from at each scrape (the records cache, the config)."""
        self.held.records = records
        self.held.info_limit = info_limit

    def watch_informers(self, states: Callable[[], Iterable[InformerState]]) -> None:
        """Where the informer metrics are read from at each scrape."""
        self.informers.states = states

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
