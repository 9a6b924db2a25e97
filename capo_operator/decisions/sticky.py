"""Sticky IPs: which pods want their IP back, under which release policy, and which held IP a new
pod may claim (pure).

A held IP is handed back through Calico's explicit request annotation
(`cni.projectcalico.org/ipAddrs`), which Calico's CNI assigns with AssignIP: reservations do not
block it, an address in use or outside every pool is refused. Identity follows Galaxy's float-IP
semantics: a StatefulSet pod gets back the IP of the pod of the same namespace and name; a pod of
any other controller may take a hold of the same top-level owner (a pool per workload). A claim is
written on the record (with a resourceVersion precondition) before the pod is admitted, so one
hold goes to one pod. A mutating webhook on CREATE runs before the API server assigns the pod's
uid (and, with generateName, its name), so a claim is identified by a token that the webhook also
puts on the pod (annotation `capo.io/sticky-claim`).
"""

from __future__ import annotations

import enum
import json
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from capo_operator.config import Config
from capo_operator.decisions.addresses import AddressError, ip_of

STICKY_ANNOTATION = "capo.io/sticky"
RELEASE_POLICY_ANNOTATION = "capo.io/release-policy"
CLAIM_ANNOTATION = "capo.io/sticky-claim"  # on the pod: the claim token written by the webhook
IP_ADDRS_ANNOTATION = "cni.projectcalico.org/ipAddrs"
IP_ADDRS_V6_ANNOTATION = "cni.projectcalico.org/ipv6Addrs"  # never set by us; its presence means "hands off"


class ReleasePolicy(enum.StrEnum):
    TTL = "ttl"  # the hold time (ipReserveTime or capo.io/reserve-time), as for any reservation
    IMMUTABLE = "immutable"  # until the workload is deleted or scaled below the pod's ordinal
    NEVER = "never"  # until its record is deleted


KEPT_POLICIES = frozenset({ReleasePolicy.IMMUTABLE, ReleasePolicy.NEVER})


@dataclass(frozen=True)
class Choice:
    sticky: bool
    policy: ReleasePolicy
    warning: str | None = None  # the annotation was invalid; set when the fallback applied


def _flag(value: str | None) -> bool | None:
    if value is None:
        return None
    return {"true": True, "false": False}.get(value.strip().lower())


def sticky_opt_in(annotations: Mapping[str, str]) -> bool | None:
    """The capo.io/sticky annotation: True, False, or None (absent or not a boolean)."""
    return _flag(annotations.get(STICKY_ANNOTATION))


def choose(annotations: Mapping[str, str], config: Config, *, selected: bool) -> Choice:
    """Whether a pod is sticky, and its release policy.

    Sticky when annotated `capo.io/sticky: "true"`, or when `sticky.default` is on and the pod is
    `selected` (its IPs are reserved) and not annotated `"false"`. The policy comes from
    `capo.io/release-policy` (ttl, immutable, never; case and spaces ignored); anything else falls
    back to ttl with a warning. A pod that is not sticky always gets ttl.
    """
    raw_sticky = annotations.get(STICKY_ANNOTATION)
    opt = _flag(raw_sticky)
    sticky = opt if opt is not None else (config.sticky.default and selected)
    warnings: list[str] = []
    if raw_sticky is not None and opt is None:
        warnings.append(
            f'invalid {STICKY_ANNOTATION} annotation {_short(raw_sticky)!r}: expected "true" or "false"'
        )
    if not sticky:
        return Choice(False, ReleasePolicy.TTL, "; ".join(warnings) or None)
    policy = ReleasePolicy.TTL
    raw_policy = annotations.get(RELEASE_POLICY_ANNOTATION)
    if raw_policy is not None:
        try:
            policy = ReleasePolicy(raw_policy.strip().lower())
        except ValueError:
            warnings.append(
                f"invalid {RELEASE_POLICY_ANNOTATION} annotation {_short(raw_policy)!r}: "
                "expected ttl, immutable or never; using ttl"
            )
    return Choice(True, policy, "; ".join(warnings) or None)


def _short(text: str, limit: int = 64) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


# -- identity ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Identity:
    """Who may have a held IP back: the same StatefulSet pod, or any pod of the same workload."""

    namespace: str
    kind: str  # "StatefulSet" (then `name` is the pod's name) or the top-level owner's kind
    name: str  # the pod's name (StatefulSet) or the top-level owner's name

    def __str__(self) -> str:
        if self.kind == "StatefulSet":
            return f"StatefulSet pod {self.namespace}/{self.name}"
        return f"{self.kind} {self.namespace}/{self.name}"


def top_owner(kind: str, name: str) -> tuple[str, str]:
    """The top-level owner of a pod's controller: a ReplicaSet `<deployment>-<hash>` belongs to the
    Deployment (its pods keep their pool across rollouts); other controllers are their own top."""
    if kind == "ReplicaSet" and "-" in name:
        return "Deployment", name.rsplit("-", 1)[0]
    return kind, name


def identity_of(
    namespace: str, pod_name: str, owner_kind: str | None, owner_name: str | None
) -> Identity | None:
    """None for a pod without a controller (nothing outlives it), or a StatefulSet pod without a name."""
    if not owner_kind or not owner_name or not namespace:
        return None
    if owner_kind == "StatefulSet":
        return Identity(namespace, "StatefulSet", pod_name) if pod_name else None
    kind, name = top_owner(owner_kind, owner_name)
    return Identity(namespace, kind, name)


def ordinal(pod_name: str) -> int | None:
    """A StatefulSet pod's ordinal (`redis-2` -> 2)."""
    _, dash, tail = pod_name.rpartition("-")
    if not dash or not tail.isascii() or not tail.isdigit():
        return None
    return int(tail)


# -- claims --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Claim:
    token: str
    at: datetime
    pod: str = ""  # the claiming pod's name when known (not for generateName pods)

    def stale(self, now: datetime, timeout: timedelta) -> bool:
        return now - self.at > timeout


@dataclass(frozen=True)
class Held:
    """A live sticky hold, as the claim logic needs it."""

    name: str  # record name
    ip: str
    identity: Identity
    pod_uid: str  # the pod that held the IP (the IPs of one pod go back together)
    node: str | None
    reserved_at: datetime
    claim: Claim | None = None


@dataclass(frozen=True)
class Pick:
    holds: tuple[Held, ...]  # at most one IPv4 and one IPv6, of one former pod
    node: str | None  # the node that held the IPs (for the preferred affinity)

    @property
    def ips(self) -> tuple[str, ...]:
        return tuple(h.ip for h in self.holds)


def _version(ip: str) -> int:
    return 6 if ":" in ip else 4


def pick(
    holds: Iterable[Held],
    identity: Identity,
    *,
    now: datetime,
    in_use: Collection[str],
    claim_timeout: timedelta,
) -> Pick | None:
    """The held IPs a new pod of `identity` may claim, or None.

    Only holds of that identity whose IP no live pod uses (`in_use`: canonical IPs of live pods) and
    which carry no claim younger than `claim_timeout`. The IPs of one former pod go together: a
    former pod with one IP claimed and another not is passed over (a dual-stack pod must not get
    half of two pods' addresses). Among former pods: the most recently reserved first for a
    StatefulSet pod (its latest incarnation), the oldest first for a workload pool (fair reuse).
    """
    by_pod: dict[str, list[Held]] = {}
    for hold in holds:
        if hold.identity == identity:
            by_pod.setdefault(hold.pod_uid or hold.name, []).append(hold)
    groups: list[list[Held]] = []
    for group in by_pod.values():
        if any(h.ip in in_use for h in group):
            continue
        if any(h.claim is not None and not h.claim.stale(now, claim_timeout) for h in group):
            continue
        groups.append(sorted(group, key=lambda h: (h.reserved_at, h.name)))
    if not groups:
        return None
    newest_first = identity.kind == "StatefulSet"
    groups.sort(key=lambda g: (max(h.reserved_at for h in g), g[0].name), reverse=newest_first)
    chosen: dict[int, Held] = {}
    for hold in reversed(groups[0]):  # the newest hold of each family
        chosen.setdefault(_version(hold.ip), hold)
    ordered = tuple(chosen[v] for v in sorted(chosen))
    node = next((h.node for h in ordered if h.node), None)
    return Pick(ordered, node)


# -- the pod patch -------------------------------------------------------------------------------


def _pointer(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


def hands_off(annotations: Mapping[str, str]) -> str | None:
    """Why the webhook must not touch a pod's addressing, or None: the pod already asks Calico for
    particular addresses, pools or a floating IP (the user's choice wins)."""
    for key in (
        IP_ADDRS_ANNOTATION,
        IP_ADDRS_V6_ANNOTATION,
        "cni.projectcalico.org/ipAddrsNoIpam",
        "cni.projectcalico.org/ipv4pools",
        "cni.projectcalico.org/ipv6pools",
    ):
        if key in annotations:
            return f"the pod already sets {key}"
    return None


def patch_for(
    pod: Mapping[str, Any], pick_: Pick, token: str, *, affinity_weight: int
) -> list[dict[str, Any]]:
    """The JSON patch that makes Calico assign exactly the picked IPs: `ipAddrs` (one JSON list,
    IPv4 and IPv6 together, as Calico's CNI reads it), the claim token, and (weight > 0, old node
    known) a preferred node affinity to the node that held the IPs."""
    metadata = pod.get("metadata") if isinstance(pod.get("metadata"), Mapping) else {}
    assert isinstance(metadata, Mapping)
    adds = {IP_ADDRS_ANNOTATION: json.dumps(list(pick_.ips)), CLAIM_ANNOTATION: token}
    ops: list[dict[str, Any]] = []
    if not isinstance(metadata.get("annotations"), Mapping):
        ops.append({"op": "add", "path": "/metadata/annotations", "value": adds})
    else:
        ops.extend(
            {"op": "add", "path": f"/metadata/annotations/{_pointer(k)}", "value": v} for k, v in adds.items()
        )
    if affinity_weight > 0 and pick_.node:
        ops.extend(_affinity_ops(pod, pick_.node, affinity_weight))
    return ops


def _affinity_ops(pod: Mapping[str, Any], node: str, weight: int) -> list[dict[str, Any]]:
    term = {
        "weight": weight,
        "preference": {
            "matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}]
        },
    }
    spec = pod.get("spec") if isinstance(pod.get("spec"), Mapping) else {}
    assert isinstance(spec, Mapping)
    affinity = spec.get("affinity")
    if not isinstance(affinity, Mapping):
        return [{"op": "add", "path": "/spec/affinity", "value": {"nodeAffinity": {_PREFERRED: [term]}}}]
    node_affinity = affinity.get("nodeAffinity")
    if not isinstance(node_affinity, Mapping):
        return [{"op": "add", "path": "/spec/affinity/nodeAffinity", "value": {_PREFERRED: [term]}}]
    if not isinstance(node_affinity.get(_PREFERRED), list):
        return [{"op": "add", "path": f"/spec/affinity/nodeAffinity/{_PREFERRED}", "value": [term]}]
    return [{"op": "add", "path": f"/spec/affinity/nodeAffinity/{_PREFERRED}/-", "value": term}]


_PREFERRED = "preferredDuringSchedulingIgnoredDuringExecution"


# -- hand-over -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClaimantView:
    """The pod that carries a claim token, as the informer sees it."""

    name: str
    ips: tuple[str, ...]
    terminal: bool


class Outcome(enum.StrEnum):
    RECLAIMED = "reclaimed"  # the pod runs with the held IP: the hold ends
    OTHER_IP = "other-ip"  # the pod came up with another IP: claim cleared, hold kept
    POD_GONE = "pod-gone"  # the claiming pod ended before it got an IP: claim cleared
    LAPSED = "lapsed"  # no pod carries the token after claimTimeout (the create failed)


@dataclass(frozen=True)
class HandOver:
    name: str  # record name
    outcome: Outcome


def hand_over(
    claimed: Iterable[Held],
    claimants: Mapping[str, Sequence[ClaimantView]],
    *,
    now: datetime,
    claim_timeout: timedelta,
) -> tuple[HandOver, ...]:
    """What becomes of each claimed hold: `claimants` maps a claim token to the live pods carrying
    it (normally one). Holds still waiting (pod pending without IP, claim young) are not listed."""
    results: list[HandOver] = []
    for hold in claimed:
        claim = hold.claim
        if claim is None:
            continue
        pods = claimants.get(claim.token) or ()
        outcome: Outcome | None = None
        running = [p for p in pods if not p.terminal]
        canonical = _canonical(hold.ip)
        if any(canonical in {_canonical(ip) for ip in p.ips} for p in running):
            outcome = Outcome.RECLAIMED
        elif any(p.ips for p in running):
            outcome = Outcome.OTHER_IP
        elif pods and not running:
            outcome = Outcome.POD_GONE
        elif not pods and claim.stale(now, claim_timeout):
            outcome = Outcome.LAPSED
        if outcome is not None:
            results.append(HandOver(hold.name, outcome))
    return tuple(sorted(results, key=lambda h: h.name))


def _canonical(ip: str) -> str:
    try:
        return ip_of(ip)
    except AddressError:
        return ip
