"""Sticky IPs, the I/O side: the claim made by the mutating webhook on pod CREATE, and the leader's
hand-over (a claimed hold ends once its pod runs with the IP). Decisions live in decisions/sticky.py.

The webhook never blocks a create: any trouble (a timeout, an API error, a lost race) answers
"allowed" without a patch, so the pod gets an automatically assigned IP and the hold stays.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from kubernetes.aio import client as k8s

from capo_operator.config import LiveConfig
from capo_operator.decisions import policy, sticky
from capo_operator.decisions.policy import PodFacts
from capo_operator.decisions.record import KIND, Record
from capo_operator.kube.caches import Views
from capo_operator.kube.calico import CalicoStore
from capo_operator.kube.events import EventRecorder, ObjectRef
from capo_operator.kube.records import RecordStore
from capo_operator.kube.slim import AppsV1
from capo_operator.metrics import Metrics

logger = logging.getLogger(__name__)

# Outcomes of capo_sticky_claims_total: the webhook's (claimed ... error; "conflict": every hold it
# tried was taken by another claim meanwhile) and the hand-over's.
CLAIM_OUTCOMES = ("claimed", "no-hold", "conflict", "skipped", "dry-run", "error")
HAND_OVER_OUTCOMES = tuple(o.value for o in sticky.Outcome)
MAX_CLAIM_ATTEMPTS = 4  # a claim that met a changed record looks again (within the deadline)
MAX_DEADLINE = 2.5  # seconds; the shipped MutatingWebhookConfiguration waits 3
RETRY_DELAY = 0.2  # seconds: a record changed or created meanwhile reaches this replica's cache


def _now() -> datetime:
    return datetime.now(UTC)


def _record_ref(name: str) -> ObjectRef:
    return ObjectRef(KIND, name, api_version="capo.io/v1")


def _namespace(body: Mapping[str, Any]) -> str:
    meta = body.get("metadata")
    return str(meta.get("namespace") or "") if isinstance(meta, Mapping) else ""


class StickyIPs:
    """The claim made by the mutating webhook (every replica) and the leader's hand-over."""

    def __init__(
        self,
        *,
        api: k8s.ApiClient,
        views: Views,
        calico: CalicoStore,
        records: RecordStore,
        events: EventRecorder,
        metrics: Metrics,
        config: LiveConfig,
    ) -> None:
        self.api = api
        self.views = views
        self.calico = calico
        self.records = records
        self.events = events
        self.metrics = metrics
        self.config = config

    async def on_create(
        self, body: Mapping[str, Any], *, dry_run: bool, warnings: list[str]
    ) -> list[dict[str, Any]]:
        """The JSON patch for a pod being created: empty unless a held IP is claimed for it."""
        started = time.monotonic()
        outcome = "error"
        try:
            # Within the shipped timeoutSeconds (3 s) whatever webhookDeadline says: an answer the API
            # server no longer waits for would leave a claim no pod carries (it lapses, but later).
            deadline = min(self.config.current.webhook_deadline.total_seconds(), MAX_DEADLINE)
            ops, outcome = await asyncio.wait_for(self._claim(body, dry_run=dry_run), deadline)
            return ops
        except Exception as exc:  # never block a create: the pod starts with a fresh IP
            what = "timed out" if isinstance(exc, TimeoutError) else f"failed: {exc}"
            logger.warning("sticky IP claim for a pod in %s %s", _namespace(body), what)
            warnings.append(f"capo-operator could not give this pod its held IP ({what}); it gets a new one")
            return []
        finally:
            self.metrics.sticky_claims.labels(outcome=outcome).inc()
            self.metrics.webhook_duration.labels(operation="create").observe(time.monotonic() - started)

    async def _claim(self, body: Mapping[str, Any], *, dry_run: bool) -> tuple[list[dict[str, Any]], str]:
        pod = PodFacts.from_pod(body)
        config = self.config.current
        namespace = self.views.namespace(pod.namespace)
        if namespace is None or not namespace.enabled or namespace.terminating:
            return [], "skipped"
        choice = sticky.choose(pod.annotations, config, selected=policy.selected(pod, config))
        if not choice.sticky or pod.host_network:
            return [], "skipped"
        if sticky.hands_off(pod.annotations):
            return [], "skipped"
        identity = sticky.identity_of(
            pod.namespace,
            pod.name,
            pod.owner.kind if pod.owner else None,
            pod.owner.name if pod.owner else None,
        )
        if identity is None:
            return [], "skipped"
        excluded: set[str] = set()
        lost: set[frozenset[str]] = set()
        pending_checked = False
        for _attempt in range(MAX_CLAIM_ATTEMPTS):
            records = {
                r.name: r
                for r in self.views.records()
                if r.releasing is None
                and not r.deleting
                and r.identity == identity
                and r.name not in excluded
            }
            holds = [h for h in (r.held() for r in records.values()) if h is not None]
            in_use = self._in_use(identity, holds)
            now = _now()
            chosen = sticky.pick(
                holds, identity, now=now, in_use=in_use, claim_timeout=config.sticky.claim_timeout
            )
            new_records: dict[str, Record] = {}
            if chosen is None and not pending_checked:
                # The old pod's records may still be on their way (the delete webhook writes them after
                # answering, and this replica's cache lags a little): its reservation, with the record's
                # details, is already in the IPReservation.
                pending_checked = True
                new_records = await self._pending_records(identity, excluded)
                holds = [h for h in (r.held() for r in new_records.values()) if h is not None]
                in_use = self._in_use(identity, holds)
                chosen = sticky.pick(
                    holds, identity, now=now, in_use=in_use, claim_timeout=config.sticky.claim_timeout
                )
            if chosen is None:
                return [], "conflict" if lost else "no-hold"
            token = uuid.uuid4().hex
            ops = sticky.patch_for(body, chosen, token, affinity_weight=config.sticky.node_affinity_weight)
            if dry_run:
                return ops, "dry-run"  # sideEffects NoneOnDryRun: show the patch, claim nothing
            claim = sticky.Claim(token=token, at=now, pod=pod.name)
            if new_records:
                won = await self._create_claimed([new_records[h.name] for h in chosen.holds], claim)
            else:
                won = await self._write_claims([records[h.name] for h in chosen.holds], claim)
            if won:
                who = pod.name or f"a new pod of {identity}"
                for hold in chosen.holds:
                    self.events.post(
                        _record_ref(hold.name),
                        "StickyIPClaimed",
                        f"{hold.ip} given back to {pod.namespace}/{who} (claim {token[:8]})",
                    )
                logger.info("sticky: %s given to %s (%s)", ",".join(chosen.ips), identity, token[:8])
                return ops, "claimed"
            # The record changed under us: another pod's claim, or only the leader's bookkeeping (its
            # clock, a finalizer). Look again once the cache has the change; a hold lost twice is
            # passed over (the cache may lag behind the winning claim).
            names = frozenset(h.name for h in chosen.holds)
            if names in lost:
                excluded.update(names)
            lost.add(names)
            pending_checked = False
            await asyncio.sleep(RETRY_DELAY)
        return [], "conflict"

    def _in_use(self, identity: sticky.Identity, holds: list[sticky.Held]) -> set[str]:
        """The held IPs a live pod uses now. A StatefulSet pod's own name does not count: the API server
        admits a pod of that name only once the old one is gone (else the create fails AlreadyExists
        and the claim lapses), so a cached pod of that name is the old incarnation, not yet dropped
        from this replica's cache."""
        holders = self.views.ip_holders(tuple(h.ip for h in holds))
        if identity.kind == "StatefulSet":
            previous = self.views.pod(identity.namespace, identity.name)
            if previous is not None:
                return {ip for ip, uid in holders.items() if uid != previous.uid}
        return set(holders)

    async def _pending_records(self, identity: sticky.Identity, excluded: set[str]) -> dict[str, Record]:
        """Sticky reservations of this identity in the IPReservation whose records are not in the
        cache yet, as the records they will be (their details ride in the pending annotations)."""
        snapshot = await self.calico.read()
        found: dict[str, Record] = {}
        for ip, announced in snapshot.pending.items():
            if (
                not announced.sticky
                or ip not in snapshot.ips
                or announced.name in excluded
                or self.views.record(announced.name) is not None
            ):
                continue
            record = dataclasses.replace(announced, resource_version=None, claim=None)
            if record.identity == identity:
                found[record.name] = record
        return found

    async def _create_claimed(self, records: list[Record], claim: sticky.Claim) -> bool:
        """Create the records (as the delete webhook's follower would) with the claim on them. A record
        that exists already (the follower was first) is a lost race: the caller retries via the cache."""
        won: list[Record] = []
        for record in records:
            if not await self.records.create(dataclasses.replace(record, claim=claim)):
                for taken in won:
                    await self.records.clear_claim(taken.name, claim.token)
                return False
            won.append(record)
        return True

    async def _write_claims(self, records: list[Record], claim: sticky.Claim) -> bool:
        """Claim every record of one former pod, each with its resourceVersion as a precondition. If
        one is lost to another claim, the ones won are given back: a pod gets all or none."""
        won: list[Record] = []
        for record in records:
            if record.resource_version is None or not await self.records.claim(
                record.name, claim, resource_version=record.resource_version
            ):
                for taken in won:
                    await self.records.clear_claim(taken.name, claim.token)
                return False
            won.append(record)
        return True

    # -- the leader's hand-over ------------------------------------------------------------------

    def claimants(self) -> dict[str, list[sticky.ClaimantView]]:
        """Claim token -> the pods carrying it (the informer keeps only capo.io/ annotations: this one
        is among them)."""
        found: dict[str, list[sticky.ClaimantView]] = {}
        for pod in self.views.pods():
            token = pod.annotations.get(sticky.CLAIM_ANNOTATION)
            if token:
                found.setdefault(token, []).append(sticky.ClaimantView(pod.name, pod.ips, pod.terminal))
        return found

    async def settle_claims(self, records: Mapping[str, Record], now: datetime) -> frozenset[str]:
        """Decide each claimed hold's fate; clear the claims that failed (the hold stays as it was) and
        return the names of the records whose pod runs with the IP (the release pass ends them,
        reason `reclaimed`, Calico entry first)."""
        claimed = [
            h
            for h in (r.held() for r in records.values() if r.claim is not None and r.releasing is None)
            if h is not None
        ]
        if not claimed:
            return frozenset()
        results = sticky.hand_over(
            claimed, self.claimants(), now=now, claim_timeout=self.config.current.sticky.claim_timeout
        )
        reclaimed: set[str] = set()
        for result in results:
            record = records[result.name]
            assert record.claim is not None
            self.metrics.sticky_claims.labels(outcome=result.outcome.value).inc()
            if result.outcome is sticky.Outcome.RECLAIMED:
                reclaimed.add(result.name)
                continue
            try:
                cleared = await self.records.clear_claim(result.name, record.claim.token)
            except k8s.ApiException as exc:
                logger.warning("could not clear the claim on %s (retrying next pass): %s", result.name, exc)
                continue
            if cleared:
                message = {
                    sticky.Outcome.OTHER_IP: "the claiming pod came up with another IP",
                    sticky.Outcome.POD_GONE: "the claiming pod ended before it got an IP",
                    sticky.Outcome.LAPSED: "no pod carried the claim within sticky.claimTimeout",
                }[result.outcome]
                self.events.post(
                    _record_ref(result.name),
                    "StickyClaimCleared",
                    f"Claim on {record.ip} cleared: {message}; hold kept",
                )
                logger.info("sticky: claim on %s cleared (%s)", record.ip, result.outcome.value)
        return frozenset(reclaimed)

    async def statefulset_replicas(self, records: Mapping[str, Record]) -> dict[str, int]:
        """owner uid -> spec.replicas of the StatefulSets that own immutable holds (a recreated
        StatefulSet, another uid, is not counted: the owner check handles the deleted one)."""
        owners = {
            (r.pod.namespace, r.owner.name, r.owner.uid)
            for r in records.values()
            if r.sticky
            and r.release_policy is sticky.ReleasePolicy.IMMUTABLE
            and r.pod is not None
            and r.owner is not None
            and r.owner.kind == "StatefulSet"
            and r.owner.uid
        }
        replicas: dict[str, int] = {}
        apps = AppsV1(self.api)
        for namespace, name, uid in owners:
            try:
                found = await apps.read_namespaced_stateful_set(name, namespace)
            except k8s.ApiException as exc:
                if exc.status != 404:
                    logger.warning("could not read StatefulSet %s/%s: %s", namespace, name, exc)
                continue
            if found.metadata is not None and found.metadata.uid == uid and found.spec.replicas is not None:
                replicas[uid] = int(found.spec.replicas)
        return replicas
