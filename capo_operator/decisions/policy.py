"""What to reserve: the skip rules of the webhook and the safety net, as pure functions of facts."""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from capo_operator.config import Config
from capo_operator.decisions.addresses import AddressError, ip_of
from capo_operator.decisions.durations import DurationError, format_duration, parse_duration
from capo_operator.decisions.sticky import sticky_opt_in

NAMESPACE_LABEL = "ip-reserve"
NAMESPACE_LABEL_VALUES = frozenset({"enabled", "enable"})
RESERVE_ANNOTATION = "capo.io/reserve"
RESERVE_TIME_ANNOTATION = "capo.io/reserve-time"


class Skip(enum.StrEnum):
    DRY_RUN = "dry-run"
    NAMESPACE_NOT_ENABLED = "namespace-not-enabled"
    NAMESPACE_TERMINATING = "namespace-terminating"
    SELECTOR_MISMATCH = "selector-mismatch"
    OPTED_OUT = "opted-out"
    HOST_NETWORK = "host-network"
    NO_IP = "no-ip"
    TERMINAL = "terminal"
    IP_REUSED = "ip-held-by-other-pod"


@dataclass(frozen=True, slots=True)
class Owner:
    api_version: str
    kind: str
    name: str
    uid: str


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _string_map(value: object) -> dict[str, str]:
    return {k: v for k, v in _mapping(value).items() if isinstance(k, str) and isinstance(v, str)}


def canonical_ips(candidates: Iterable[object]) -> tuple[str, ...]:
    """The distinct canonical IPs among `candidates`, in order; non-strings and non-IPs are skipped."""
    ips: list[str] = []
    for candidate in candidates:
        if not isinstance(candidate, str):
            continue
        try:
            ip = ip_of(candidate)
        except AddressError:
            continue
        if ip not in ips:
            ips.append(ip)
    return tuple(ips)


@dataclass(frozen=True, slots=True)  # slots: one per cached pod (20,000 and more)
class PodFacts:
    namespace: str
    name: str
    uid: str
    node: str | None
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    ips: tuple[str, ...]  # canonical IPs from status.podIPs (or status.podIP), deduplicated, order kept
    host_network: bool
    phase: str | None
    reason: str | None  # status.reason, e.g. "Evicted"
    deleting: bool  # metadata.deletionTimestamp is set
    owner: Owner | None  # the controller ownerReference

    @property
    def terminal(self) -> bool:
        return self.phase in ("Failed", "Succeeded")

    @property
    def ref(self) -> str:
        """The pod as namespace/name, for messages."""
        return f"{self.namespace}/{self.name}"

    @classmethod
    def from_pod(cls, pod: Mapping[str, Any]) -> PodFacts:
        """From a raw pod dict (camelCase, as the API serves it). Tolerates missing fields;
        invalid IP strings in status are dropped."""
        metadata = _mapping(pod.get("metadata"))
        spec = _mapping(pod.get("spec"))
        status = _mapping(pod.get("status"))
        candidates: list[object] = [_mapping(item).get("ip") for item in status.get("podIPs") or ()]
        candidates.append(status.get("podIP"))
        owner = None
        for item in metadata.get("ownerReferences") or ():
            ref = _mapping(item)
            if ref.get("controller") is True:
                owner = Owner(
                    api_version=_str(ref.get("apiVersion")) or "",
                    kind=_str(ref.get("kind")) or "",
                    name=_str(ref.get("name")) or "",
                    uid=_str(ref.get("uid")) or "",
                )
                break
        return cls(
            namespace=_str(metadata.get("namespace")) or "",
            name=_str(metadata.get("name")) or "",
            uid=_str(metadata.get("uid")) or "",
            node=_str(spec.get("nodeName")) or None,
            labels=_string_map(metadata.get("labels")),
            annotations=_string_map(metadata.get("annotations")),
            ips=canonical_ips(candidates),
            host_network=spec.get("hostNetwork") is True,
            phase=_str(status.get("phase")),
            reason=_str(status.get("reason")),
            deleting=metadata.get("deletionTimestamp") is not None,
            owner=owner,
        )


@dataclass(frozen=True)
class NamespaceFacts:
    name: str
    enabled: bool  # label ip-reserve in NAMESPACE_LABEL_VALUES
    terminating: bool  # deletionTimestamp set or status.phase == Terminating

    @classmethod
    def from_namespace(cls, ns: Mapping[str, Any]) -> NamespaceFacts:
        metadata = _mapping(ns.get("metadata"))
        labels = _string_map(metadata.get("labels"))
        return cls(
            name=_str(metadata.get("name")) or "",
            enabled=labels.get(NAMESPACE_LABEL) in NAMESPACE_LABEL_VALUES,
            terminating=metadata.get("deletionTimestamp") is not None
            or _mapping(ns.get("status")).get("phase") == "Terminating",
        )


@dataclass(frozen=True)
class Hold:
    length: timedelta
    policy: str  # human text for the record: "ipReserveTime=40m", "annotation capo.io/reserve-time=2h", ...
    warning: str | None = None  # set when the annotation was invalid or clamped


@dataclass(frozen=True)
class Decision:
    ips: tuple[str, ...]  # IPs to reserve now; empty when skipped
    skip: Skip | None  # why nothing is reserved; None when ips is non-empty
    detail: str  # one human sentence: what was decided and why
    hold: Hold | None  # set when ips is non-empty
    reused: tuple[str, ...] = ()  # IPs not reserved because another live pod holds them now


def opt_in(pod: PodFacts) -> bool | None:
    """The capo.io/reserve annotation: True ("true"), False ("false"), None (absent or any other value).
    Without it, `capo.io/sticky: "true"` opts in too: a sticky IP must be held to be given back."""
    value = pod.annotations.get(RESERVE_ANNOTATION)
    if value is None:
        return True if sticky_opt_in(pod.annotations) else None
    return {"true": True, "false": False}.get(value.strip().lower())


def selected(pod: PodFacts, config: Config) -> bool:
    """The pod opted in by annotation, or matches the selector and did not opt out."""
    choice = opt_in(pod)
    if choice is not None:
        return choice
    return config.label_selector.matches(pod.labels)


def _shorten(text: str, limit: int = 64) -> str:
    # Annotation values are user text of any length; keep Events and records readable.
    return text if len(text) <= limit else text[:limit] + "..."


def hold_for(pod: PodFacts, config: Config) -> Hold:
    """ipReserveTime, or the pod's capo.io/reserve-time annotation bounded by maxIPReserveTime."""
    default = Hold(config.ip_reserve_time, f"ipReserveTime={format_duration(config.ip_reserve_time)}")
    raw = pod.annotations.get(RESERVE_TIME_ANNOTATION)
    if raw is None:
        return default
    text = raw.strip()
    try:
        length = parse_duration(text)
    except DurationError as error:
        problem = str(error)
    else:
        problem = "" if length > timedelta(0) else "the hold time must be greater than zero"
    if problem:
        return Hold(
            default.length,
            default.policy,
            warning=f"invalid {RESERVE_TIME_ANNOTATION} annotation {_shorten(text)!r} "
            f"({_shorten(problem, 120)}); "
            f"using {default.policy}",
        )
    if length > config.max_ip_reserve_time:
        maximum = format_duration(config.max_ip_reserve_time)
        return Hold(
            config.max_ip_reserve_time,
            f"annotation {RESERVE_TIME_ANNOTATION}={text} clamped to maxIPReserveTime={maximum}",
            warning=f"{RESERVE_TIME_ANNOTATION}={text} exceeds maxIPReserveTime; holding for {maximum}",
        )
    return Hold(length, f"annotation {RESERVE_TIME_ANNOTATION}={text}")


def _skip(skip: Skip, detail: str, reused: tuple[str, ...] = ()) -> Decision:
    return Decision(ips=(), skip=skip, detail=detail, hold=None, reused=reused)


def decide(
    pod: PodFacts,
    namespace: NamespaceFacts | None,
    config: Config,
    *,
    ip_holders: Mapping[str, str] | None = None,
    dry_run: bool = False,
    terminal_transition: bool = False,
) -> Decision:
    """Decide whether (and which of) the pod's IPs to reserve.

    Checks, in order: dry run; namespace unknown/not enabled; namespace terminating; opted out;
    selector mismatch (unless opted in); hostNetwork; no IP; terminal phase (unless
    `terminal_transition`: the safety net saw the pod turn terminal just now, so its IP was only
    freed now); IPs held by another live pod (`ip_holders` maps IP -> uid of the live pod holding
    it; an IP held by this very pod's uid is not "reused"). Partially reused: reserve the rest.
    """
    who = f"pod {pod.ref}"
    if dry_run:
        return _skip(Skip.DRY_RUN, f"Dry-run request for {who}: nothing is reserved.")
    if namespace is None:
        scope = config.namespace_selector
        why = ""
        if scope.requirements:
            why = f" (not seen yet, or outside namespaceSelector {scope.describe()})"
        return _skip(
            Skip.NAMESPACE_NOT_ENABLED,
            f"Namespace {pod.namespace} is unknown to the operator{why}, "
            f"so the IPs of {who} are not reserved.",
        )
    if not namespace.enabled:
        return _skip(
            Skip.NAMESPACE_NOT_ENABLED,
            f"Namespace {namespace.name} is not labelled {NAMESPACE_LABEL}=enabled, "
            f"so the IPs of {who} are not reserved.",
        )
    if namespace.terminating:
        return _skip(
            Skip.NAMESPACE_TERMINATING,
            f"Namespace {namespace.name} is being deleted, so the IPs of {who} are not reserved.",
        )
    choice = opt_in(pod)
    if choice is False:
        return _skip(
            Skip.OPTED_OUT, f"The IPs of {who} are not reserved: it is annotated {RESERVE_ANNOTATION}=false."
        )
    if choice is None and not config.label_selector.matches(pod.labels):
        return _skip(
            Skip.SELECTOR_MISMATCH,
            f"The IPs of {who} are not reserved: its labels match no requirement of labelSelector.",
        )
    if pod.host_network:
        return _skip(
            Skip.HOST_NETWORK,
            f"The IP of {who} is not reserved: the pod uses the host network, so its IP is the node's.",
        )
    if not pod.ips:
        return _skip(Skip.NO_IP, f"Nothing is reserved for {who}: it has no IP.")
    if pod.terminal and not terminal_transition:
        return _skip(
            Skip.TERMINAL,
            f"The IPs of {who} are not reserved: the pod is already {pod.phase}, so they were freed "
            "when it stopped and may belong to another pod now.",
        )
    holders: dict[str, str] = {}
    for ip, uid in (ip_holders or {}).items():
        try:
            holders[ip_of(ip)] = uid
        except AddressError:
            continue
    reused = tuple(ip for ip in pod.ips if ip in holders and holders[ip] != pod.uid)
    ips = tuple(ip for ip in pod.ips if ip not in reused)
    if not ips:
        return _skip(
            Skip.IP_REUSED,
            f"The IPs {', '.join(reused)} of {who} are not reserved: another live pod holds them now.",
            reused,
        )
    hold = hold_for(pod, config)
    detail = f"Reserving {', '.join(ips)} of {who} for {format_duration(hold.length)} ({hold.policy})"
    if reused:
        detail += f"; {', '.join(reused)} not reserved: another live pod holds it now"
    return Decision(ips=ips, skip=None, detail=detail + ".", hold=hold, reused=reused)


def terminal_trigger(pod: PodFacts) -> str:
    """Trigger name for a pod that turned terminal without an API call: kubelet-eviction or terminated."""
    return "kubelet-eviction" if pod.reason == "Evicted" else "terminated"
