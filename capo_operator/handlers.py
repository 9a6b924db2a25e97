"""Kopf handlers: admission, the in-memory indices, and the watches behind the safety net.

Handlers stay short; the decisions live in `policy`/`planner`, the writes in `reserver`/`releaser`.
Only index and event handlers are used for watched resources, so Kopf never writes to pods.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

from capo_operator import admission
from capo_operator.policy import NamespaceFacts, PodFacts
from capo_operator.records import (
    GROUP,
    PLURAL,
    RELEASING_ANNOTATION,
    VERSION,
    Record,
    RecordError,
    belongs_to,
)
from capo_operator.runtime import Runtime

logger = logging.getLogger(__name__)

# Annotations the policy reads; the pod index keeps only these (last-applied configs can be huge).
_KEPT_ANNOTATIONS = ("capo.io/",)


def _slim(pod: kopf.Body) -> PodFacts:
    facts = PodFacts.from_pod(pod)
    annotations = {k: v for k, v in facts.annotations.items() if k.startswith(_KEPT_ANNOTATIONS)}
    return PodFacts(**{**facts.__dict__, "annotations": annotations})


# -- credentials ------------------------------------------------------------------------------


@kopf.on.login()
async def login(memo: Runtime, **_: Any) -> kopf.ConnectionInfo:
    """Kopf uses the operator's own endpoint and credentials, re-read from their source each time:
    Kopf logs in again after a 401 and before a token's expiry, and then gets the rotated token."""
    return await memo.credentials.connection_info()


# -- indices (every replica) ------------------------------------------------------------------


@kopf.index("pods")
def pods_by_key(
    namespace: str | None, name: str, body: kopf.Body, **_: Any
) -> dict[tuple[str, str], PodFacts]:
    return {(namespace or "", name): _slim(body)}


@kopf.index("pods")
def pod_ips(body: kopf.Body, **_: Any) -> dict[str, str] | None:
    """IP -> uid, for live pods only: a terminal pod's IP is free and may be someone else's."""
    facts = PodFacts.from_pod(body)
    if facts.terminal or facts.host_network:
        return None
    return {ip: facts.uid for ip in facts.ips}


@kopf.index("namespaces")
def namespaces_by_name(name: str, body: kopf.Body, **_: Any) -> dict[str, NamespaceFacts]:
    return {name: NamespaceFacts.from_namespace(body)}


@kopf.index(GROUP, VERSION, PLURAL)
def records_by_name(name: str, body: kopf.Body, memo: Runtime, **_: Any) -> dict[str, Record] | None:
    if not belongs_to(body.metadata.labels, memo.records.reservation):
        return None  # another installation's record
    try:
        return {name: Record.from_body(body)}
    except RecordError as exc:
        logger.warning("ignoring unreadable ReservedIP %s: %s", name, exc)
        return None


# -- watches ----------------------------------------------------------------------------------


@kopf.on.event("namespaces")
def caches_synced(memo: Runtime, **kwargs: Any) -> None:
    """Kopf calls event handlers only after every index is filled from its initial list, and some
    namespace always exists: the first call here means the caches are synced."""
    if not memo.views.synced.is_set():
        memo.views.attach(
            pods=kwargs["pods_by_key"],
            ips=kwargs["pod_ips"],
            namespaces=kwargs["namespaces_by_name"],
            records=kwargs["records_by_name"],
        )
        logger.info("caches synced: %d records", len(memo.views.records()))


@kopf.on.event("pods")
def pod_event(event: kopf.RawEvent, body: kopf.Body, memo: Runtime, **_: Any) -> None:
    kind = event.get("type")  # None: the initial listing
    uid = body.metadata.uid or ""
    phase = (body.get("status") or {}).get("phase")
    turned_terminal = phase in ("Failed", "Succeeded") and uid not in memo.terminal_uids
    if turned_terminal:
        memo.terminal_uids.add(uid)
    if kind == "DELETED":
        memo.terminal_uids.discard(uid)
    if kind not in ("DELETED", "MODIFIED"):
        return  # listing and creations: nothing was freed (the ledger covers the time we were away)
    namespace = memo.views.namespace(body.metadata.namespace or "")
    if namespace is None or not namespace.enabled:
        return
    pod = _slim(body)
    if kind == "DELETED":
        memo.safety_net.pod_gone(pod)
    elif turned_terminal and pod.ips:
        memo.safety_net.pod_terminated(pod)


@kopf.on.event(GROUP, VERSION, PLURAL)
def record_event(event: kopf.RawEvent, body: kopf.Body, memo: Runtime, **_: Any) -> None:
    if not belongs_to(body.metadata.labels, memo.records.reservation):
        return
    pod_uid = ((body.get("spec") or {}).get("pod") or {}).get("uid")
    if isinstance(pod_uid, str) and pod_uid:
        memo.reserved_uids.add(pod_uid)
    if event.get("type") != "DELETED" or not memo.leading:
        return
    if RELEASING_ANNOTATION in (body.metadata.annotations or {}):
        return  # the releaser's own deletion
    ip = (body.get("spec") or {}).get("ip")
    if isinstance(ip, str):
        logger.info("record %s was deleted by someone: releasing %s now", body.metadata.name, ip)
        memo.manual_releases.add(ip)


# -- admission (every replica; paths are the handler ids) --------------------------------------


@kopf.on.validate("pods", id="reserve-on-delete", operations=["DELETE"])
async def reserve_on_delete(
    *, dryrun: bool, warnings: list[str], memo: Runtime, old: kopf.Body | None = None, **_: Any
) -> None:
    if old is None:
        return
    try:
        pod = PodFacts.from_pod(old)
    except Exception as exc:  # an unreadable pod never blocks its own deletion
        warnings.append(f"capo-operator could not read this pod: {exc}")
        return
    await admission.review(memo, pod, operation="delete", dry_run=dryrun, warnings=warnings)


@kopf.on.validate("pods", id="reserve-on-eviction", subresource="eviction", operations=["CREATE"])
async def reserve_on_eviction(
    *, body: kopf.Body, dryrun: bool, warnings: list[str], memo: Runtime, **_: Any
) -> None:
    # The body is the Eviction; the pod comes from the index (or one GET).
    namespace, name = body.metadata.namespace or "", body.metadata.name or ""
    try:
        pod = await admission.pod_facts(memo, namespace, name)
    except Exception as exc:
        warnings.append(f"capo-operator could not read pod {namespace}/{name}: {exc}")
        memo.metrics.webhook_requests.labels(operation="eviction", outcome="error").inc()
        return
    if pod is None:
        return
    dry_run = dryrun or admission.eviction_dry_run(body)
    await admission.review(memo, pod, operation="eviction", dry_run=dry_run, warnings=warnings)
