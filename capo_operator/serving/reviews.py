"""The AdmissionReview envelope, checked before Kopf sees it.

kube-apiserver always sends well-formed reviews, but the webhook port answers whatever reaches it,
and Kopf indexes into a review without checking it (a wrong type there is an HTTP 500). So:
- a review that is not JSON, not an `admission.k8s.io/v1` AdmissionReview, or has a field of the
  wrong type where Kopf or the handlers read it, is answered 400 with the path and the reason;
- a well-formed review whose pod (DELETE) or Eviction is malformed is allowed at once with a
  warning and reserves nothing (never block a deletion; never reserve from a body we cannot read);
- whatever else goes wrong inside is answered "allowed" with a warning, and an answer is always
  given within `answer_within` seconds: our own trouble never blocks a deletion.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp.web
from kopf._core.engines.admission import WebhookError  # Kopf's refusals of a review (not exported)

logger = logging.getLogger(__name__)

API_VERSION = "admission.k8s.io/v1"
KIND = "AdmissionReview"
OPERATIONS = ("CREATE", "UPDATE", "DELETE", "CONNECT")
# A pod may reach etcd's ~1.5 MB object limit and an UPDATE review carries two objects; the
# apiserver accepts request bodies of up to 3 MB. Larger is not a review kube-apiserver sends.
MAX_BODY_BYTES = 8 * 1024 * 1024
ANSWER_WITHIN = 4.0  # seconds; below the shipped webhook timeoutSeconds (5)


class ReviewError(ValueError):
    """The review (or the object in it) does not have the shape Kubernetes gives it."""


_TYPES: dict[type, str] = {str: "a string", bool: "a boolean", dict: "an object", list: "a list"}


def _field(parent: Mapping[str, Any], key: str, path: str, kind: type, *, required: bool = False) -> Any:
    value = parent.get(key)
    if value is None:
        if required:
            raise ReviewError(f"{path}.{key}: required")
        return None
    expected = Mapping if kind is dict else kind
    if not isinstance(value, expected) or (kind is not bool and isinstance(value, bool)):
        raise ReviewError(f"{path}.{key}: expected {_TYPES[kind]}, got {type(value).__name__}")
    if kind is str and required and not value:
        raise ReviewError(f"{path}.{key}: must not be empty")
    return value


def _string_map(parent: Mapping[str, Any], key: str, path: str) -> None:
    values = _field(parent, key, path, dict)
    for name, value in (values or {}).items():
        if not isinstance(value, str):
            raise ReviewError(f"{path}.{key}[{name!r}]: expected a string, got {type(value).__name__}")


def check_review(data: Any) -> Mapping[str, Any]:
    """The review's `request`, or ReviewError: what Kopf and our handlers index into."""
    if not isinstance(data, Mapping):
        raise ReviewError(f"expected an AdmissionReview object, got {type(data).__name__}")
    if data.get("apiVersion") != API_VERSION or data.get("kind") != KIND:
        raise ReviewError(f"expected apiVersion {API_VERSION} and kind {KIND}")
    request = _field(data, "request", "", dict, required=True)
    _field(request, "uid", "request", str, required=True)
    for name in ("kind", "requestKind"):
        kind = _field(request, name, "request", dict)
        for key in ("group", "version", "kind"):
            _field(kind or {}, key, f"request.{name}", str)
    for name in ("resource", "requestResource"):
        resource = _field(request, name, "request", dict, required=name == "resource")
        for key in ("group", "version", "resource"):
            _field(
                resource or {}, key, f"request.{name}", str, required=name == "resource" and key != "group"
            )
    operation = _field(request, "operation", "request", str, required=True)
    if operation not in OPERATIONS:
        raise ReviewError(f"request.operation: {operation!r} is not one of {', '.join(OPERATIONS)}")
    for name in ("name", "namespace", "subResource", "requestSubResource"):
        _field(request, name, "request", str)
    _field(request, "userInfo", "request", dict, required=True)
    _field(request, "dryRun", "request", bool)
    _field(request, "options", "request", dict)
    new = _field(request, "object", "request", dict)
    old = _field(request, "oldObject", "request", dict)
    if new is None and old is None:
        raise ReviewError("request: neither object nor oldObject is set")
    checked: Mapping[str, Any] = request
    return checked


def check_pod(pod: Mapping[str, Any], path: str) -> None:
    """The pod fields the operator reads, with the types the API gives them."""
    metadata = _field(pod, "metadata", path, dict, required=True)
    meta = f"{path}.metadata"
    for key in ("name", "namespace", "uid"):
        _field(metadata, key, meta, str, required=True)
    _field(metadata, "deletionTimestamp", meta, str)
    _string_map(metadata, "labels", meta)
    _string_map(metadata, "annotations", meta)
    for i, ref in enumerate(_field(metadata, "ownerReferences", meta, list) or ()):
        if not isinstance(ref, Mapping):
            raise ReviewError(f"{meta}.ownerReferences[{i}]: expected an object, got {type(ref).__name__}")
        for key in ("apiVersion", "kind", "name", "uid"):
            _field(ref, key, f"{meta}.ownerReferences[{i}]", str)
        _field(ref, "controller", f"{meta}.ownerReferences[{i}]", bool)
    spec = _field(pod, "spec", path, dict) or {}
    _field(spec, "nodeName", f"{path}.spec", str)
    _field(spec, "hostNetwork", f"{path}.spec", bool)
    status = _field(pod, "status", path, dict) or {}
    for key in ("phase", "reason", "podIP"):
        _field(status, key, f"{path}.status", str)
    for i, item in enumerate(_field(status, "podIPs", f"{path}.status", list) or ()):
        if not isinstance(item, Mapping):
            raise ReviewError(f"{path}.status.podIPs[{i}]: expected an object, got {type(item).__name__}")
        _field(item, "ip", f"{path}.status.podIPs[{i}]", str)


def check_eviction(eviction: Mapping[str, Any], path: str) -> None:
    metadata = _field(eviction, "metadata", path, dict, required=True)
    for key in ("name", "namespace"):
        _field(metadata, key, f"{path}.metadata", str, required=True)
    options = _field(eviction, "deleteOptions", path, dict) or {}
    dry_run = _field(options, "dryRun", f"{path}.deleteOptions", list) or ()
    if not all(isinstance(item, str) for item in dry_run):
        raise ReviewError(f"{path}.deleteOptions.dryRun: expected a list of strings")


def check_subject(request: Mapping[str, Any]) -> None:
    """The object our handlers read: the pod of a pods DELETE, the Eviction of an eviction."""
    resource = request.get("resource") or {}
    if resource.get("resource") != "pods":
        return
    if request.get("subResource") == "eviction":
        if request.get("object") is not None:
            check_eviction(request["object"], "request.object")
    elif request.get("operation") == "DELETE" and request.get("oldObject") is not None:
        check_pod(request["oldObject"], "request.oldObject")


def allowed(uid: Any, warning: str) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "response": {"uid": uid, "allowed": True, "warnings": [warning]},
    }


# Answers a checked review's `request` at once (True: allowed, nothing to say), or passes (False).
Shortcut = Callable[[Mapping[str, Any]], bool]


async def serve(
    fn: Any,
    request: aiohttp.web.Request,
    *,
    answer_within: float = ANSWER_WITHIN,
    shortcut: Shortcut | None = None,
) -> aiohttp.web.Response:
    """Serve one review through Kopf's `fn` (kopf.WebhookFn), with the guarantees above. A review
    that `shortcut` answers does not reach Kopf: the repeated calls of one deletion (kube-apiserver
    calls the webhook at each of a pod deletion's two writes) cost no handler dispatch."""
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise aiohttp.web.HTTPBadRequest(reason=f"request body over {MAX_BODY_BYTES} bytes")
    try:
        raw = await request.read()
    except aiohttp.web.HTTPRequestEntityTooLarge:
        raise aiohttp.web.HTTPBadRequest(reason=f"request body over {MAX_BODY_BYTES} bytes") from None
    try:
        data = json.loads(raw)
        review = check_review(data)
    # JSONDecodeError, UnicodeDecodeError (not UTF-8) and ReviewError are ValueErrors.
    except (ValueError, RecursionError) as exc:
        raise aiohttp.web.HTTPBadRequest(reason=f"not a valid AdmissionReview: {exc}"[:300]) from None
    uid = review["uid"]
    try:
        check_subject(review)
    except ReviewError as exc:
        logger.warning("admission review %s has a malformed object, reserving nothing: %s", uid, exc)
        return aiohttp.web.json_response(allowed(uid, f"capo-operator reserved nothing: malformed {exc}"))
    if shortcut is not None and shortcut(review):
        return aiohttp.web.json_response(
            {"apiVersion": API_VERSION, "kind": KIND, "response": {"uid": uid, "allowed": True}}
        )
    headers = dict(request.headers)
    sslpeer = request.transport.get_extra_info("peercert") if request.transport else None
    webhook = request.match_info.get("id")
    handling = asyncio.ensure_future(fn(data, webhook=webhook, sslpeer=sslpeer, headers=headers))
    # Past the deadline the handler goes on unobserved (it queues its own retries): consume its outcome.
    handling.add_done_callback(lambda done: done.cancelled() or done.exception())
    try:
        response = await asyncio.wait_for(asyncio.shield(handling), answer_within)
    except WebhookError as exc:  # e.g. a resource no handler serves: the caller's mistake
        raise aiohttp.web.HTTPBadRequest(reason=str(exc)[:300] or None) from None
    except Exception as exc:
        what = "timed out" if isinstance(exc, TimeoutError) else f"failed: {exc!r}"
        logger.warning("admission review %s %s; allowing", uid, what)
        return aiohttp.web.json_response(allowed(uid, f"capo-operator could not check this request ({what})"))
    return aiohttp.web.json_response(response)
