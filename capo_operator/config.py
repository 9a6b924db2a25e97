"""The Capo-compatible configuration file (`apiVersion: config.capo.io/v1`, `kind: CapoConfig`)."""

from __future__ import annotations

import difflib
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml

from capo_operator.decisions.durations import DurationError, format_duration, parse_duration
from capo_operator.decisions.selector import (
    DEFAULT_SELECTOR,
    AnySelector,
    NamespaceSelector,
    SelectorError,
    dns1123_subdomain_error,
)

API_VERSION = "config.capo.io/v1"
KIND = "CapoConfig"
CALICO_API_GROUPS = ("auto", "crd.projectcalico.org", "projectcalico.org")
MIN_RELEASE_PERIOD = timedelta(milliseconds=100)
WEBHOOK_DEADLINE_RANGE = (timedelta(milliseconds=100), timedelta(seconds=9))
DEFAULT_MAX_IP_RESERVE_TIME = timedelta(hours=24)
# Calico IPAM lists every reservation on every assignment: a huge object slows all pod starts.
LARGE_MAX_COUNT = 10_000
# client-go's leaderelection.JitterFactor: renewDeadline must exceed retryPeriod * 1.2.
_LEADER_JITTER = 1.2

# Keys of controller-runtime's ControllerManagerConfigurationSpec (which Capo embedded) that
# capo-operator accepts for compatibility and does not use.
_IGNORED = {
    "": {"syncPeriod", "cacheNamespace", "gracefulShutDown", "controller", "metadata"},
    "health": {"readinessEndpointName", "livenessEndpointName"},
    "webhook": {"host", "certDir"},
    "leaderElection": {"resourceLock"},
}
_KNOWN = {
    "": {
        "apiVersion",
        "kind",
        "health",
        "metrics",
        "webhook",
        "leaderElection",
        "ipReserveMaxCount",
        "ipReserveTime",
        "ipReleasePeriod",
        "labelSelector",
        "namespaceSelector",
        "ipReservationName",
        "calicoAPIGroup",
        "maxIPReserveTime",
        "strictMode",
        "webhookDeadline",
        "releaseOnOwnerDeletion",
        "reserveAhead",
        "sticky",
    }
    | _IGNORED[""],
    "sticky": {"default", "nodeAffinityWeight", "maxKeptHolds", "claimTimeout"},
    "health": {"healthProbeBindAddress"} | _IGNORED["health"],
    "metrics": {"bindAddress", "ipInfoLimit"},
    "webhook": {"port"} | _IGNORED["webhook"],
    "leaderElection": {
        "leaderElect",
        "resourceName",
        "resourceNamespace",
        "leaseDuration",
        "renewDeadline",
        "retryPeriod",
    }
    | _IGNORED["leaderElection"],
}


class ConfigError(ValueError):
    """A configuration value that is refused. `field` is the dotted path ("leaderElection.leaseDuration")."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"config field '{field}': {reason}")
        self.field = field
        self.reason = reason


@dataclass(frozen=True)
class LeaderElection:
    leader_elect: bool = True
    resource_name: str = "capo"
    resource_namespace: str | None = None  # None: the operator's own namespace
    lease_duration: timedelta = timedelta(seconds=15)
    renew_deadline: timedelta = timedelta(seconds=10)
    retry_period: timedelta = timedelta(seconds=2)


@dataclass(frozen=True)
class Sticky:
    """Sticky IPs: a recreated pod gets its held IP back (README, Sticky IPs)."""

    default: bool = False  # selected pods without a capo.io/sticky annotation are sticky
    node_affinity_weight: int = 100  # preferred node affinity to the IP's old node; 0 = none
    max_kept_holds: int = 1000  # the cap of immutable/never holds (they ignore ipReserveMaxCount)
    claim_timeout: timedelta = timedelta(minutes=2)  # a claim whose pod never appeared lapses


@dataclass(frozen=True)
class Config:
    # Capo's keys, Capo's defaults.
    ip_reserve_max_count: int = 300
    ip_reserve_time: timedelta = timedelta(minutes=40)
    ip_release_period: timedelta = timedelta(seconds=5)
    label_selector: AnySelector = DEFAULT_SELECTOR
    # Namespaces the operator acts in at all (besides ip-reserve=enabled); read at start.
    namespace_selector: NamespaceSelector = field(default_factory=NamespaceSelector)
    leader_election: LeaderElection = field(default_factory=LeaderElection)
    health_probe_bind_address: str = ":8081"
    metrics_bind_address: str = ":8080"
    metrics_ip_info_limit: int = 1000  # the most capo_reserved_ip_info series (the newest holds)
    webhook_port: int = 9443
    # capo-operator's own keys.
    ip_reservation_name: str = "capo-reserved-ips"
    calico_api_group: str = "auto"  # "auto" | "crd.projectcalico.org" | "projectcalico.org"
    # When the file does not set it: the larger of 24h and ipReserveTime (so a Capo file with a long
    # ipReserveTime stays valid).
    max_ip_reserve_time: timedelta = DEFAULT_MAX_IP_RESERVE_TIME
    strict_mode: bool = False
    webhook_deadline: timedelta = timedelta(seconds=3)
    release_on_owner_deletion: bool = True
    # Reserve selected running pods' IPs ahead of their deletion (the leader, in batches): a deletion
    # then waits for no write. Off: Capo's behaviour, the IP is written when the deletion is reviewed.
    reserve_ahead: bool = False
    sticky: Sticky = field(default_factory=Sticky)
    # Non-fatal remarks found while parsing (e.g. "labelSelector matches no pod"), for the log.
    warnings: tuple[str, ...] = ()


class LiveConfig:
    """The configuration in force: `current` is replaced whole (a `Config` is immutable) when a
    reload is accepted, so every part that holds this object reads the new one on its next use."""

    def __init__(self, config: Config) -> None:
        self.current = config


def _join(parent: str, key: object) -> str:
    return f"{parent}.{key}" if parent else str(key)


def _describe(value: object) -> str:
    names = {bool: "boolean", int: "integer", float: "number", str: "string", list: "list", dict: "mapping"}
    return f"{names.get(type(value), type(value).__name__)} {value!r}"


class _Document:
    """The parsed YAML with the line of every field, so errors can point into the file."""

    def __init__(self, text: str) -> None:
        self.lines: dict[str, int] = {}
        self.warnings: list[str] = []
        if not isinstance(text, str):
            raise ConfigError("<document>", f"expected YAML text, got {type(text).__name__}")
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            if node is None:
                raise ConfigError("<document>", "empty document: expected a CapoConfig mapping")
            self._walk(node, "")
            self.data: object = loader.construct_document(node)
        except yaml.MarkedYAMLError as error:
            raise ConfigError("<document>", _yaml_problem(error)) from None
        except yaml.YAMLError as error:
            raise ConfigError("<document>", f"YAML error: {error}") from None
        finally:
            loader.dispose()

    def _walk(self, node: yaml.Node, path: str) -> None:
        # Duplicate keys are refused: PyYAML would silently keep the last one, Go's strict decoding not.
        if path:
            self.lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            seen: dict[object, int] = {}
            for key_node, value_node in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = key_node.value if isinstance(key_node, yaml.ScalarNode) else repr(key_node.value)
                line = key_node.start_mark.line + 1
                if key in seen:
                    raise ConfigError(
                        _join(path, key), f"duplicate key at line {line} (first at line {seen[key]})"
                    )
                seen[key] = line
                self._walk(value_node, _join(path, key))
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                self._walk(item, f"{path}[{index}]")

    def error(self, path: str, reason: str) -> ConfigError:
        line = self.lines.get(path)
        return ConfigError(path, f"{reason} (line {line})" if line else reason)


def _yaml_problem(error: yaml.MarkedYAMLError) -> str:
    mark = error.problem_mark or error.context_mark
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    text = f"YAML syntax error{where}: {error.problem or error.context or 'invalid YAML'}"
    # The context often says where the broken construct began ("while scanning a quoted scalar").
    if error.problem and error.context:
        started = f" started at line {error.context_mark.line + 1}" if error.context_mark else ""
        text += f" ({error.context}{started})"
    return text


def _suggest(key: object, known: set[str]) -> str:
    if not isinstance(key, str):
        return ""
    for candidate in sorted(known):
        if candidate.lower() == key.lower():
            return f"; did you mean '{candidate}'?"
    close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.75)
    return f"; did you mean '{close[0]}'?" if close else ""


class _Parser:
    def __init__(self, doc: _Document) -> None:
        self.doc = doc

    def fail(self, path: str, reason: str) -> ConfigError:
        return self.doc.error(path, reason)

    def section(self, data: Mapping[Any, Any], section: str) -> Mapping[Any, Any]:
        """The mapping at `section` ("" for the top) after refusing unknown keys; {} when absent/null."""
        value = data.get(section) if section else data
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            where = section or "<document>"
            raise self.fail(where, f"must be a mapping, got {_describe(value)}")
        known = _KNOWN[section]
        for key in value:
            if key not in known:
                raise self.fail(_join(section, key), "unknown field" + _suggest(key, known))
        for key in sorted(_IGNORED.get(section, set()) & set(value)):
            self.doc.warnings.append(
                f"{_join(section, key)} is accepted for Capo compatibility and has no effect"
            )
        return value

    def boolean(self, data: Mapping[Any, Any], key: str, path: str, default: bool) -> bool:
        value = data.get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self.fail(path, f"must be a boolean (true or false), got {_describe(value)}")
        return value

    def string(self, data: Mapping[Any, Any], key: str, path: str, default: str) -> str:
        value = data.get(key)
        if value is None:
            return default
        if not isinstance(value, str):
            raise self.fail(path, f"must be a string, got {_describe(value)}")
        return value

    def integer(self, data: Mapping[Any, Any], key: str, path: str, default: int) -> int:
        value = data.get(key)
        if value is None:
            return default
        # bool is an int subclass in Python; YAML `true` is not a count.
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(path, f"must be an integer, got {_describe(value)}")
        return value

    def duration(self, data: Mapping[Any, Any], key: str, path: str, default: timedelta) -> timedelta:
        value = data.get(key)
        if value is None:
            return default
        if not isinstance(value, str):
            raise self.fail(path, f'must be a duration string such as "40m" or "5s", got {_describe(value)}')
        try:
            parsed = parse_duration(value)
        except DurationError as error:
            raise self.fail(path, str(error)) from None
        if parsed < timedelta(0):
            raise self.fail(path, f"must be positive, got negative duration {value!r}")
        if parsed == timedelta(0):
            raise self.fail(path, f"must be greater than zero, got {value!r}")
        return parsed

    def port(self, data: Mapping[Any, Any], key: str, path: str, default: int) -> int:
        value = self.integer(data, key, path, default)
        if not 1 <= value <= 65535:
            raise self.fail(path, f"port must be between 1 and 65535, got {value}")
        return value

    def bind_address(self, data: Mapping[Any, Any], key: str, path: str, default: str) -> str:
        value = self.string(data, key, path, default)
        if value == "0":
            raise self.fail(path, 'disabling the server with "0" is not supported: capo-operator needs it')
        host, colon, port = value.rpartition(":")
        if not colon:
            raise self.fail(path, f'must be "host:port" (host may be empty, e.g. ":8080"), got {value!r}')
        if not (port.isascii() and port.isdigit()) or not 1 <= int(port) <= 65535:
            raise self.fail(path, f"bad port {port!r} in {value!r}: must be a number from 1 to 65535")
        if host.startswith("["):
            inner = host[1:-1] if host.endswith("]") else None
            try:
                ipaddress.IPv6Address(inner or "")
            except ValueError:
                raise self.fail(path, f"bad IPv6 host {host!r} in {value!r}") from None
        elif ":" in host:
            raise self.fail(path, f'an IPv6 host must be in brackets ("[::1]:8080"), got {value!r}')
        elif host:
            try:
                ipaddress.IPv4Address(host)
            except ValueError:
                if dns1123_subdomain_error(host.lower()) is not None:
                    raise self.fail(path, f"bad host {host!r} in {value!r}: not an IP or host name") from None
        return value


def _port_of(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


def _same_listener(a: tuple[str, int], b: tuple[str, int]) -> bool:
    wildcard = ("", "0.0.0.0", "[::]")
    return a[1] == b[1] and (a[0] == b[0] or a[0] in wildcard or b[0] in wildcard)


def parse_config(text: str) -> Config:
    """Parse and validate a CapoConfig YAML document. Raises ConfigError naming the field and reason.

    A key set to null is treated as absent (Go's decoding leaves the default in place). Warnings
    (empty selector, keys accepted but ignored, ...) are returned in Config.warnings.
    """
    doc = _Document(text)
    p = _Parser(doc)
    if not isinstance(doc.data, Mapping):
        raise ConfigError("<document>", f"must be a mapping of CapoConfig fields, got {_describe(doc.data)}")
    top = p.section(doc.data, "")

    for key, expected in (("apiVersion", API_VERSION), ("kind", KIND)):
        value = top.get(key)
        if value is not None and value != expected:
            raise p.fail(key, f"must be {expected!r}, got {_describe(value)}")

    max_count = p.integer(top, "ipReserveMaxCount", "ipReserveMaxCount", 300)
    if max_count < 1:
        raise p.fail("ipReserveMaxCount", f"must be at least 1, got {max_count}")
    if max_count > LARGE_MAX_COUNT:
        doc.warnings.append(
            f"ipReserveMaxCount={max_count} is large: Calico IPAM reads every reservation on each "
            "IP assignment, which slows pod starts"
        )

    reserve_time = p.duration(top, "ipReserveTime", "ipReserveTime", timedelta(minutes=40))
    release_period = p.duration(top, "ipReleasePeriod", "ipReleasePeriod", timedelta(seconds=5))
    if release_period < MIN_RELEASE_PERIOD:
        raise p.fail(
            "ipReleasePeriod",
            f"must be at least {format_duration(MIN_RELEASE_PERIOD)}, got {format_duration(release_period)}",
        )
    if release_period > reserve_time:
        raise p.fail(
            "ipReleasePeriod",
            f"must not exceed ipReserveTime ({format_duration(reserve_time)}), "
            f"got {format_duration(release_period)}",
        )
    max_reserve_time = p.duration(
        top, "maxIPReserveTime", "maxIPReserveTime", max(DEFAULT_MAX_IP_RESERVE_TIME, reserve_time)
    )
    if max_reserve_time < reserve_time:
        raise p.fail(
            "maxIPReserveTime",
            f"must be at least ipReserveTime ({format_duration(reserve_time)}), "
            f"got {format_duration(max_reserve_time)}",
        )

    selector = DEFAULT_SELECTOR
    if "labelSelector" in top:
        raw_selector = top["labelSelector"]
        if raw_selector is None:
            doc.warnings.append("labelSelector is null: using the default selector")
        else:
            if not isinstance(raw_selector, Mapping):
                raise p.fail("labelSelector", f"must be a mapping, got {_describe(raw_selector)}")
            try:
                selector = AnySelector.from_dict(raw_selector)
            except SelectorError as error:
                path = "labelSelector" if error.field == "<selector>" else f"labelSelector.{error.field}"
                raise p.fail(path, error.reason) from None
            if not selector.requirements:
                doc.warnings.append(
                    "labelSelector is empty: it matches no pod, so only pods annotated "
                    "capo.io/reserve=true are reserved"
                )

    namespace_selector = NamespaceSelector()
    raw_ns_selector = top.get("namespaceSelector")
    if raw_ns_selector is not None:
        if not isinstance(raw_ns_selector, Mapping):
            raise p.fail("namespaceSelector", f"must be a mapping, got {_describe(raw_ns_selector)}")
        try:
            namespace_selector = NamespaceSelector.from_dict(raw_ns_selector)
        except SelectorError as error:
            path = "namespaceSelector" if error.field == "<selector>" else f"namespaceSelector.{error.field}"
            raise p.fail(path, error.reason) from None

    reservation_name = p.string(top, "ipReservationName", "ipReservationName", "capo-reserved-ips")
    problem = dns1123_subdomain_error(reservation_name)
    if problem:
        raise p.fail("ipReservationName", problem)

    api_group = p.string(top, "calicoAPIGroup", "calicoAPIGroup", "auto")
    if api_group not in CALICO_API_GROUPS:
        raise p.fail("calicoAPIGroup", f"must be one of {', '.join(CALICO_API_GROUPS)}, got {api_group!r}")

    strict_mode = p.boolean(top, "strictMode", "strictMode", False)
    release_on_owner_deletion = p.boolean(top, "releaseOnOwnerDeletion", "releaseOnOwnerDeletion", True)
    reserve_ahead = p.boolean(top, "reserveAhead", "reserveAhead", False)
    deadline = p.duration(top, "webhookDeadline", "webhookDeadline", timedelta(seconds=3))
    low, high = WEBHOOK_DEADLINE_RANGE
    if not low <= deadline <= high:
        raise p.fail(
            "webhookDeadline",
            f"must be between {format_duration(low)} and {format_duration(high)} "
            f"(the API server waits at most 10s), got {format_duration(deadline)}",
        )

    health = p.section(top, "health")
    health_address = p.bind_address(
        health, "healthProbeBindAddress", "health.healthProbeBindAddress", ":8081"
    )
    metrics = p.section(top, "metrics")
    metrics_address = p.bind_address(metrics, "bindAddress", "metrics.bindAddress", ":8080")
    ip_info_limit = p.integer(metrics, "ipInfoLimit", "metrics.ipInfoLimit", 1000)
    if ip_info_limit < 0:
        raise p.fail("metrics.ipInfoLimit", f"must be 0 or more, got {ip_info_limit}")
    webhook = p.section(top, "webhook")
    webhook_port = p.port(webhook, "port", "webhook.port", 9443)
    # Two servers on one port cannot both bind: blame the one the file sets (the other is a default).
    listeners = [
        ("health.healthProbeBindAddress", health_address, _port_of(health_address)),
        ("metrics.bindAddress", metrics_address, _port_of(metrics_address)),
        ("webhook.port", str(webhook_port), ("", webhook_port)),
    ]
    for i, (name_a, text_a, where_a) in enumerate(listeners):
        for name_b, text_b, where_b in listeners[i + 1 :]:
            if _same_listener(where_a, where_b):
                if name_b in doc.lines:
                    raise p.fail(name_b, f"{text_b} uses the same port as {name_a} ({text_a})")
                raise p.fail(name_a, f"{text_a} uses the same port as {name_b} ({text_b})")

    leader = _leader_election(p, top)
    sticky = _sticky(p, top)

    return Config(
        ip_reserve_max_count=max_count,
        ip_reserve_time=reserve_time,
        ip_release_period=release_period,
        label_selector=selector,
        namespace_selector=namespace_selector,
        leader_election=leader,
        health_probe_bind_address=health_address,
        metrics_bind_address=metrics_address,
        metrics_ip_info_limit=ip_info_limit,
        webhook_port=webhook_port,
        ip_reservation_name=reservation_name,
        calico_api_group=api_group,
        max_ip_reserve_time=max_reserve_time,
        strict_mode=strict_mode,
        webhook_deadline=deadline,
        release_on_owner_deletion=release_on_owner_deletion,
        reserve_ahead=reserve_ahead,
        sticky=sticky,
        warnings=tuple(doc.warnings),
    )


def _sticky(p: _Parser, top: Mapping[Any, Any]) -> Sticky:
    d = Sticky()
    section = p.section(top, "sticky")
    default = p.boolean(section, "default", "sticky.default", d.default)
    weight = p.integer(section, "nodeAffinityWeight", "sticky.nodeAffinityWeight", d.node_affinity_weight)
    if not 0 <= weight <= 100:
        # Kubernetes accepts preferred-term weights 1..100; 0 turns the term off.
        raise p.fail("sticky.nodeAffinityWeight", f"must be between 0 (off) and 100, got {weight}")
    kept = p.integer(section, "maxKeptHolds", "sticky.maxKeptHolds", d.max_kept_holds)
    if kept < 0:
        raise p.fail("sticky.maxKeptHolds", f"must be 0 or more, got {kept}")
    claim = p.duration(section, "claimTimeout", "sticky.claimTimeout", d.claim_timeout)
    if claim < timedelta(seconds=10):
        raise p.fail(
            "sticky.claimTimeout",
            f"must be at least 10s (a pod needs time to be scheduled), got {format_duration(claim)}",
        )
    return Sticky(default=default, node_affinity_weight=weight, max_kept_holds=kept, claim_timeout=claim)


def _leader_election(p: _Parser, top: Mapping[Any, Any]) -> LeaderElection:
    d = LeaderElection()
    section = p.section(top, "leaderElection")
    prefix = "leaderElection."
    elect = p.boolean(section, "leaderElect", prefix + "leaderElect", d.leader_elect)
    name = p.string(section, "resourceName", prefix + "resourceName", d.resource_name)
    problem = dns1123_subdomain_error(name)
    if problem:
        raise p.fail(prefix + "resourceName", problem)
    namespace: str | None = None
    if section.get("resourceNamespace") is not None:
        namespace = p.string(section, "resourceNamespace", prefix + "resourceNamespace", "")
        problem = dns1123_subdomain_error(namespace)
        if problem is None and (len(namespace) > 63 or "." in namespace):
            problem = f"{namespace!r} is not a namespace name (a DNS-1123 label of at most 63 characters)"
        if problem:
            raise p.fail(prefix + "resourceNamespace", problem)
    lock = section.get("resourceLock")
    if lock is not None and lock != "leases":
        p.doc.warnings.append(
            f"leaderElection.resourceLock={lock!r} is ignored: capo-operator always uses a Lease"
        )
    lease = p.duration(section, "leaseDuration", prefix + "leaseDuration", d.lease_duration)
    renew = p.duration(section, "renewDeadline", prefix + "renewDeadline", d.renew_deadline)
    retry = p.duration(section, "retryPeriod", prefix + "retryPeriod", d.retry_period)
    # The same checks as client-go's leaderelection.NewLeaderElector.
    if lease <= renew:
        raise p.fail(
            prefix + "leaseDuration",
            f"must be greater than renewDeadline ({format_duration(renew)}), got {format_duration(lease)}",
        )
    if renew <= retry * _LEADER_JITTER:
        raise p.fail(
            prefix + "renewDeadline",
            f"must be greater than {_LEADER_JITTER} x retryPeriod "
            f"({format_duration(retry * _LEADER_JITTER)}), got {format_duration(renew)}",
        )
    return LeaderElection(
        leader_elect=elect,
        resource_name=name,
        resource_namespace=namespace,
        lease_duration=lease,
        renew_deadline=renew,
        retry_period=retry,
    )


def load_config(path: str | Path) -> Config:
    """Read and parse a file; a missing or unreadable file is a ConfigError on field '<file>'."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("<file>", f"{path}: no such file") from None
    except IsADirectoryError:
        raise ConfigError("<file>", f"{path}: is a directory, not a file") from None
    except UnicodeDecodeError as error:
        raise ConfigError(
            "<file>", f"{path}: not UTF-8 text ({error.reason} at byte {error.start})"
        ) from None
    except OSError as error:
        raise ConfigError("<file>", f"{path}: cannot read: {error.strerror or error}") from None
    return parse_config(text)
