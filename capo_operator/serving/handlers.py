"""Kopf handlers: login, the two validating admission handlers (reserve on delete and on eviction)
and the sticky-IP mutating handler. Nothing else: Kopf watches nothing.

Pods, namespaces and records are cached by the operator's own informers (`watchers`): Kopf's
per-object streams made start-up O(n^2) in the number of pods. Handlers stay short; the decisions
live in `policy`, the writes in `reserver`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import jsonpatch
import kopf

from capo_operator.decisions.policy import PodFacts
from capo_operator.flows import admission
from capo_operator.flows.admission import Admission
from capo_operator.flows.sticky import StickyIPs
from capo_operator.kube.credentials import Credentials

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Memo:
    """What Kopf hands every handler as `memo` (Kopf gives each a shallow copy: the parts are
    shared). Only what the handlers use: the admission flow, the sticky-IP claims and the
    credentials Kopf logs in with."""

    admission: Admission
    sticky: StickyIPs
    credentials: Credentials


# -- credentials ------------------------------------------------------------------------------


@kopf.on.login()
async def login(memo: Memo, **_: Any) -> kopf.ConnectionInfo:
    """Kopf uses the operator's own endpoint and credentials, re-read from their source each time:
    Kopf logs in again after a 401 and before a token's expiry, and then gets the rotated token."""
    return await memo.credentials.connection_info()


# -- admission (every replica; paths are the handler ids) --------------------------------------


@kopf.on.validate("pods", id="reserve-on-delete", operations=["DELETE"])
async def reserve_on_delete(
    *, dryrun: bool, warnings: list[str], memo: Memo, old: kopf.Body | None = None, **_: Any
) -> None:
    if old is None:
        return
    try:
        pod = PodFacts.from_pod(old)
    except Exception as exc:  # an unreadable pod never blocks its own deletion
        warnings.append(f"capo-operator could not read this pod: {exc}")
        return
    await memo.admission.review(pod, operation="delete", dry_run=dryrun, warnings=warnings)


@kopf.on.validate("pods", id="reserve-on-eviction", subresource="eviction", operations=["CREATE"])
async def reserve_on_eviction(
    *, body: kopf.Body, dryrun: bool, warnings: list[str], memo: Memo, **_: Any
) -> None:
    # The body is the Eviction; the pod comes from the pod cache (or one GET).
    namespace, name = body.metadata.namespace or "", body.metadata.name or ""
    try:
        pod = await memo.admission.pod_facts(namespace, name)
    except Exception as exc:
        warnings.append(f"capo-operator could not read pod {namespace}/{name}: {exc}")
        memo.admission.metrics.webhook_requests.labels(operation="eviction", outcome="error").inc()
        return
    if pod is None:
        return
    dry_run = dryrun or admission.eviction_dry_run(body)
    await memo.admission.review(pod, operation="eviction", dry_run=dry_run, warnings=warnings)


@kopf.on.mutate("pods", id="sticky-ip", operations=["CREATE"])
async def sticky_ip(
    *, body: kopf.Body, dryrun: bool, warnings: list[str], patch: kopf.Patch, memo: Memo, **_: Any
) -> None:
    """Give a recreated sticky pod its held IP (Calico's ipAddrs annotation); never blocks a create."""
    ops = await memo.sticky.on_create(body, dry_run=dryrun, warnings=warnings)
    if ops:
        # Kopf diffs the body before and after its patch functions into the JSON patch it answers.
        patch.fns.append(lambda raw: jsonpatch.apply_patch(raw, ops, in_place=True))
