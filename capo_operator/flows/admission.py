"""The webhook's work for one review: decide, reserve within the deadline, never block on our own trouble."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any

import kopf
from kubernetes.aio import client as k8s

from capo_operator.config import LiveConfig
from capo_operator.decisions import policy
from capo_operator.decisions.policy import NamespaceFacts, PodFacts, Skip
from capo_operator.flows.reserver import Reserver
from capo_operator.flows.safety_net import SafetyNet
from capo_operator.flows.state import RecentUIDs
from capo_operator.kube.caches import Views
from capo_operator.kube.events import EventRecorder, ObjectRef
from capo_operator.kube.slim import CoreV1
from capo_operator.metrics import Metrics

logger = logging.getLogger(__name__)

# Skips worth an Event: the pod was selected, yet its IP is not reserved.
_NOTABLE_SKIPS = frozenset({Skip.HOST_NETWORK, Skip.NO_IP, Skip.TERMINAL, Skip.IP_REUSED})


def eviction_dry_run(eviction: Mapping[str, Any]) -> bool:
    """`kubectl drain --dry-run=server` sends the dry run inside the Eviction, not in the review."""
    options = eviction.get("deleteOptions") or {}
    return bool(options.get("dryRun"))


class Admission:
    """What the two admission handlers do; every replica runs one."""

    def __init__(
        self,
        *,
        views: Views,
        api: k8s.ApiClient,
        config: LiveConfig,
        recent: RecentUIDs,
        reserver: Reserver,
        safety_net: SafetyNet,
        metrics: Metrics,
        events: EventRecorder,
    ) -> None:
        self.views = views
        self.api = api  # a GET when the caches have not seen the pod or namespace yet
        self.config = config
        self.recent = recent  # written here: the repeated admissions of one deletion cost nothing
        self.reserver = reserver
        self.safety_net = safety_net
        self.metrics = metrics
        self.events = events

    def repeated(self, request: Mapping[str, Any]) -> bool:
        """A pods DELETE review (not a dry run) of a pod this replica reserved already: the same
        deletion's next call, answered "allowed" with nothing to do (outcome repeated), before any
        handler dispatch. `request` is a checked review's request (serving/reviews.py)."""
        if (
            request.get("operation") != "DELETE"
            or request.get("dryRun")
            or request.get("subResource")
            or (request.get("resource") or {}).get("resource") != "pods"
        ):
            return False
        uid = ((request.get("oldObject") or {}).get("metadata") or {}).get("uid")
        if not uid or uid not in self.recent:
            return False
        self.metrics.webhook_requests.labels(operation="delete", outcome="repeated").inc()
        self.metrics.webhook_duration.labels(operation="delete").observe(0.0)
        return True

    async def namespace_facts(self, name: str) -> NamespaceFacts | None:
        cached = self.views.namespace(name)
        if cached is not None:
            return cached
        try:  # created a moment ago: the watch may not have delivered it yet
            ns = await CoreV1(self.api).read_namespace(name)
        except k8s.ApiException as exc:
            if exc.status == 404:
                return None
            raise
        raw = self.api.sanitize_for_serialization(ns)
        labels = (raw.get("metadata") or {}).get("labels") or {}
        if not self.config.current.namespace_selector.matches(labels):
            return None  # outside namespaceSelector: unknown to this operator, as in its cache
        return NamespaceFacts.from_namespace(raw)

    async def pod_facts(self, namespace: str, name: str) -> PodFacts | None:
        cached = self.views.pod(namespace, name)
        # A copy without IPs may predate the IP assignment (the watch lags a little): ask the API.
        if cached is not None and cached.ips:
            return cached
        try:
            pod = await CoreV1(self.api).read_namespaced_pod(name, namespace)
        except k8s.ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return PodFacts.from_pod(self.api.sanitize_for_serialization(pod))

    async def review(
        self,
        pod: PodFacts,
        *,
        operation: str,
        dry_run: bool,
        warnings: list[str],
    ) -> None:
        """Reserve the pod's IPs if policy says so. Raises kopf.AdmissionError only in strict mode."""
        started = time.monotonic()
        metrics = self.metrics
        outcome = "error"
        try:
            if not dry_run and pod.uid in self.recent:
                outcome = "repeated"  # a real apiserver calls 2-3 times per deletion, kubelet once more
                return
            namespace = await self.namespace_facts(pod.namespace)
            holders = self.views.ip_holders(pod.ips, except_uid=pod.uid)
            decision = policy.decide(pod, namespace, self.config.current, ip_holders=holders, dry_run=dry_run)
            if decision.reused:
                metrics.reservations_lost.inc(len(decision.reused))
            if decision.skip is not None or decision.hold is None:
                outcome = "dry-run" if decision.skip is Skip.DRY_RUN else "skipped"
                reason = decision.skip.value if decision.skip else "none"
                metrics.webhook_skips.labels(reason=reason).inc()
                if decision.skip in _NOTABLE_SKIPS:
                    self.events.post(
                        ObjectRef("Pod", pod.name, pod.namespace, pod.uid), "IPNotReserved", decision.detail
                    )
                logger.debug("not reserving pod %s/%s: %s", pod.namespace, pod.name, decision.detail)
                return
            if decision.hold.warning:
                warnings.append(decision.hold.warning)
            trigger = "eviction" if operation == "eviction" else "delete"
            deadline = self.config.current.webhook_deadline.total_seconds()
            # One write is awaited, the Calico append (shared with concurrent reviews); the records follow.
            write = asyncio.ensure_future(
                self.reserver.reserve(pod, decision.ips, decision.hold, trigger, records_later=True)
            )
            # Past the deadline nobody awaits it: consume its outcome (the safety net has the retry).
            write.add_done_callback(lambda done: done.cancelled() or done.exception())
            try:
                # shield: past the deadline the write goes on in the background; the safety net checks it.
                done = await asyncio.wait_for(asyncio.shield(write), deadline)
            except Exception as exc:
                what = "timed out" if isinstance(exc, TimeoutError) else f"failed: {exc}"
                logger.warning(
                    "reserving %s of pod %s/%s %s", ",".join(decision.ips), pod.namespace, pod.name, what
                )
                self.safety_net.retry(pod, decision.ips, decision.hold, trigger)
                if self.config.current.strict_mode:
                    outcome = "denied"
                    raise kopf.AdmissionError(
                        f"capo-operator could not reserve IP {', '.join(decision.ips)} ({what}); "
                        "strict mode refuses the deletion, retry shortly",
                        code=503,
                    ) from exc
                warnings.append(
                    f"capo-operator could not reserve IP {', '.join(decision.ips)} yet ({what}); "
                    "it will keep trying in the background"
                )
                return
            self.recent.add(pod.uid)
            # "reserved-ahead": the IPs were in the IPReservation already (reserveAhead), no write.
            outcome = "reserved" if done.wrote else "reserved-ahead"
        except kopf.AdmissionError:
            raise
        except Exception as exc:  # our own trouble never blocks a deletion (unless strict mode)
            logger.exception("admission review of pod %s/%s failed", pod.namespace, pod.name)
            if self.config.current.strict_mode:
                outcome = "denied"
                raise kopf.AdmissionError(f"capo-operator failed: {exc}", code=503) from exc
            warnings.append(f"capo-operator could not check this pod's IP reservation: {exc}")
        finally:
            metrics.webhook_requests.labels(operation=operation, outcome=outcome).inc()
            metrics.webhook_duration.labels(operation=operation).observe(time.monotonic() - started)
