"""Validating admission webhooks, evaluated and called the way kube-apiserver (v1) does it.

Matching: rules (operations, apiGroups, apiVersions, resources with subresources, scope), then
namespaceSelector (the namespace's labels; cluster-scoped objects other than namespaces always
match), then objectSelector (matches if the new *or* the old object's labels match; an absent
object never matches, so for pods/eviction it is evaluated against the Eviction alone).
Calls go over HTTPS with the certificate verified against ``caBundle`` (the system roots when
empty) and the hostname checked (the URL host, or ``<service>.<namespace>.svc``). Webhooks are called
concurrently; a denial or (with failurePolicy Fail) an error rejects the request.
Connections are kept alive and reused, as kube-apiserver's webhook ClientManager does: one client
per distinct clientConfig (the webhook's name aside; an LRU of 200), HTTP/1.1, idle connections
kept for 90 s. A changed caBundle, URL or service is a new client, hence new connections.
MutatingWebhookConfigurations are called on CREATE (see ``mutate``), before the object is validated
and before the validating webhooks, in the order kube-apiserver uses: configurations sorted by name,
webhooks in their order, one at a time, each seeing the previous one's patch. A response's ``patch``
must be a JSONPatch (``patchType: JSONPatch``); a patch that does not decode or apply rejects the
request whatever the failurePolicy (kube-apiserver answers InternalError), while a call failure, a
timeout or an invalid response is ignored under ``failurePolicy: Ignore``. ``reinvocationPolicy:
IfNeeded`` webhooks are called once more, after the first round, when a webhook called after them
changed the object (at most one reinvocation).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import ssl
import time
import uuid
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiohttp
import jsonpatch

from .context import RequestContext, UserInfo
from .errors import ApiError, not_found
from .schema import copy_json
from .selectors import from_label_selector, matches

if TYPE_CHECKING:
    from .faults import Faults
    from .store import Store

log = logging.getLogger("kube_emulator.admission")

Obj = dict[str, Any]
WEBHOOK_KEY = ("admissionregistration.k8s.io", "validatingwebhookconfigurations")
MUTATING_KEY = ("admissionregistration.k8s.io", "mutatingwebhookconfigurations")
# kube-apiserver (k8s.io/apiserver/pkg/util/webhook ClientManager and client-go's transport): an LRU of
# 200 webhook clients, idle connections closed after 90 s (utilnet.SetTransportDefaults).
CLIENT_CACHE_SIZE = 200
IDLE_TIMEOUT = 90.0


@dataclass
class Attributes:
    resource: dict[str, str]  # group, version, resource
    kind: dict[str, str]  # group, version, kind of the object sent (Eviction for pods/eviction)
    subresource: str
    operation: str  # CREATE, UPDATE, DELETE, CONNECT
    namespace: str
    name: str
    obj: Obj | None
    old: Obj | None
    user: UserInfo
    dry_run: bool
    options: Obj | None
    namespaced: bool


class WebhookCallError(Exception):
    pass


@dataclass
class ServiceMap:
    """Where a Service (clientConfig.service) really listens: (namespace, name, port) -> base URL."""

    targets: dict[tuple[str, str, int | None], str] = field(default_factory=dict)

    def set(self, namespace: str, name: str, port: int | None, url: str) -> None:
        self.targets[(namespace, name, port)] = url.rstrip("/")

    def lookup(self, namespace: str, name: str, port: int) -> str | None:
        return self.targets.get((namespace, name, port)) or self.targets.get((namespace, name, None))


class Admission:
    def __init__(self, store: Store, faults: Faults, services: ServiceMap) -> None:
        self.store = store
        self.faults = faults
        self.services = services
        self.log: list[dict[str, Any]] = []
        self._ssl: dict[str, ssl.SSLContext] = {}
        self._clients: OrderedDict[str, aiohttp.ClientSession] = OrderedDict()
        self._retired: set[asyncio.Task[None]] = set()

    async def close(self) -> None:
        sessions = list(self._clients.values())
        self._clients.clear()
        for session in sessions:
            await session.close()
        if self._retired:
            await asyncio.gather(*self._retired, return_exceptions=True)

    @property
    def clients(self) -> int:
        """Webhook clients (connection pools) held; for tests."""
        return len(self._clients)

    def _http(self, client_config: Mapping[str, Any]) -> aiohttp.ClientSession:
        """The cached client for a clientConfig: its keep-alive connections are reused across calls."""
        key = json.dumps(client_config, sort_keys=True, default=str)
        session = self._clients.get(key)
        if session is not None and not session.closed:
            self._clients.move_to_end(key)
            return session
        # No connection limit: Go's transport has none per host either (only on idle ones).
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=IDLE_TIMEOUT)
        session = aiohttp.ClientSession(connector=connector)
        self._clients[key] = session
        while len(self._clients) > CLIENT_CACHE_SIZE:
            _, old = self._clients.popitem(last=False)
            task = asyncio.ensure_future(old.close())
            self._retired.add(task)
            task.add_done_callback(self._retired.discard)
        return session

    # Matching --------------------------------------------------------------------------------

    def matching(self, attrs: Attributes, key: tuple[str, str] = WEBHOOK_KEY) -> list[tuple[str, Obj]]:
        found: list[tuple[str, Obj]] = []
        if key not in self.store.buckets:
            return found
        configs = sorted(self.store.list(key), key=lambda c: str(c["metadata"]["name"]))
        for config in configs:
            for hook in config.get("webhooks") or []:
                if self._matches(hook, attrs):
                    found.append((config["metadata"]["name"], hook))
        return found

    def _matches(self, hook: Mapping[str, Any], attrs: Attributes) -> bool:
        if not any(_rule_matches(rule, attrs) for rule in hook.get("rules") or []):
            return False
        if not self._namespace_matches(hook, attrs):
            return False
        selector = from_label_selector(hook.get("objectSelector"))
        if selector:
            return any(
                o is not None and matches(selector, (o.get("metadata") or {}).get("labels"))
                for o in (attrs.obj, attrs.old)
            )
        return True

    def _namespace_matches(self, hook: Mapping[str, Any], attrs: Attributes) -> bool:
        is_namespace = attrs.resource["group"] == "" and attrs.resource["resource"] == "namespaces"
        if not attrs.namespace and not is_namespace:
            return True  # cluster-scoped resources are never exempted
        selector = from_label_selector(hook.get("namespaceSelector"))
        if not selector:
            return True
        if is_namespace and not attrs.subresource and attrs.operation in ("CREATE", "UPDATE"):
            labels = ((attrs.obj or {}).get("metadata") or {}).get("labels")
        else:
            ns = self.store.get(("", "namespaces"), None, attrs.namespace)
            if ns is None:
                raise not_found("namespaces", "", attrs.namespace)
            labels = (ns.get("metadata") or {}).get("labels")
        return matches(selector, labels)

    # Calling ---------------------------------------------------------------------------------

    async def mutate(self, attrs: Attributes, ctx: RequestContext) -> Obj | None:
        """Run the matching mutating webhooks on ``attrs.obj``; return the (possibly patched) object."""
        if attrs.resource["group"] == "" and attrs.resource["resource"] == "namespaces":
            attrs.namespace = attrs.name or attrs.namespace
        hooks = [hook for _config, hook in self.matching(attrs, MUTATING_KEY)]
        if not hooks:
            return attrs.obj
        if attrs.dry_run:
            for hook in hooks:
                if hook.get("sideEffects", "Unknown") not in ("None", "NoneOnDryRun"):
                    name = hook.get("name", "")
                    self._record(name, attrs, "error", "does not support dry run")
                    raise ApiError(400, f'admission webhook "{name}" does not support dry run')
        # kube-apiserver's webhookReinvokeContext: an IfNeeded webhook is reinvoked (once) when an
        # object change happened after its own invocation.
        invoked_reinvocable: list[int] = []
        to_reinvoke: set[int] = set()
        for index, hook in enumerate(hooks):
            changed = await self._call_mutating(hook, attrs, ctx)
            if changed:
                to_reinvoke.update(invoked_reinvocable)
                invoked_reinvocable.clear()
            if hook.get("reinvocationPolicy", "Never") == "IfNeeded":
                invoked_reinvocable.append(index)
        for index, hook in enumerate(hooks):
            if index in to_reinvoke:
                await self._call_mutating(hook, attrs, ctx)
        return attrs.obj

    def _review(self, attrs: Attributes) -> tuple[str, dict[str, Any]]:
        """A fresh AdmissionReview for one webhook call, and its request uid."""
        request_uid = str(uuid.uuid4())
        return request_uid, {
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": self._request(attrs, request_uid),
        }

    async def _call_mutating(self, hook: Mapping[str, Any], attrs: Attributes, ctx: RequestContext) -> bool:
        """Call one mutating webhook; apply its patch to ``attrs.obj``; True if the object changed."""
        name = str(hook.get("name", ""))
        policy = hook.get("failurePolicy", "Fail")
        timeout = float(hook.get("timeoutSeconds") or 10)
        request_uid, review = self._review(attrs)
        started = time.monotonic()
        try:
            try:
                body = await asyncio.wait_for(self._post(hook, name, review, timeout), timeout)
            except TimeoutError as exc:
                raise WebhookCallError(
                    f'failed to call webhook: Post "{self._url(hook, timeout)}": context deadline exceeded'
                ) from exc
            except WebhookCallError as exc:
                raise WebhookCallError(f"failed to call webhook: {exc}") from exc
            try:
                allowed, status, warnings, patch = _parse_response(body, request_uid, mutating=True)
            except WebhookCallError as exc:
                raise WebhookCallError(f"received invalid webhook response: {exc}") from exc
        except WebhookCallError as exc:
            message = f'failed calling webhook "{name}": {exc}'
            if policy == "Ignore":
                log.warning("Failed calling webhook, failing open %s: %s", name, message)
                self._record(name, attrs, "ignored", message, started)
                return False
            log.warning("Failed calling webhook, failing closed %s: %s", name, message)
            self._record(name, attrs, "error", message, started)
            raise ApiError(
                500,
                f"Internal error occurred: {message}",
                reason="InternalError",
                details={"causes": [{"message": message}]},
            ) from exc
        ctx.warnings.extend(warnings)
        if not allowed:
            reason_text = status.get("message") or ""
            message = (
                f'admission webhook "{name}" denied the request: {reason_text}'
                if reason_text
                else f'admission webhook "{name}" denied the request without explanation'
            )
            code = max(int(status.get("code") or 403), 400)
            self._record(name, attrs, "denied", message, started, warnings)
            raise ApiError(
                code,
                message,
                reason=status.get("reason") or ("Forbidden" if code == 403 else None),
                details=status.get("details"),
            )
        if not patch:
            self._record(name, attrs, "allowed", status.get("message", ""), started, warnings)
            return False
        try:
            ops = json.loads(patch)
            if not isinstance(ops, list):
                raise ValueError("a JSON patch is a list of operations")
            patched = jsonpatch.JsonPatch(ops).apply(copy_json(attrs.obj), in_place=True)
            if not isinstance(patched, dict):
                raise ValueError("the patched document is not an object")
        except (
            ValueError,
            jsonpatch.JsonPatchException,
            jsonpatch.JsonPointerException,
            KeyError,
            IndexError,
            TypeError,
        ) as exc:
            message = f"Internal error occurred: {exc}"
            self._record(name, attrs, "error", message, started, warnings)
            raise ApiError(500, message, reason="InternalError") from exc
        changed = patched != attrs.obj
        attrs.obj = patched
        self._record(name, attrs, "patched" if changed else "allowed", "", started, warnings)
        return changed

    async def admit(self, attrs: Attributes, ctx: RequestContext) -> None:
        if attrs.resource["group"] == "" and attrs.resource["resource"] == "namespaces":
            attrs.namespace = attrs.name or attrs.namespace  # the server files a namespace under itself
        hooks = self.matching(attrs)
        if not hooks:
            return
        if attrs.dry_run:
            for _config, hook in hooks:
                if hook.get("sideEffects", "Unknown") not in ("None", "NoneOnDryRun"):
                    name = hook.get("name", "")
                    self._record(name, attrs, "error", "does not support dry run")
                    raise ApiError(400, f'admission webhook "{name}" does not support dry run')
        results = await asyncio.gather(*(self._call(hook, attrs) for _config, hook in hooks))
        failure: ApiError | None = None
        for error, warnings in results:
            ctx.warnings.extend(warnings)
            if error is not None and failure is None:
                failure = error
        if failure is not None:
            raise failure

    async def _call(self, hook: Mapping[str, Any], attrs: Attributes) -> tuple[ApiError | None, list[str]]:
        name = str(hook.get("name", ""))
        policy = hook.get("failurePolicy", "Fail")
        timeout = float(hook.get("timeoutSeconds") or 10)
        request_uid, review = self._review(attrs)
        started = time.monotonic()
        try:
            response = await asyncio.wait_for(self._post(hook, name, review, timeout), timeout)
        except (WebhookCallError, TimeoutError) as exc:
            why = (
                str(exc)
                if isinstance(exc, WebhookCallError)
                else f'Post "{self._url(hook, timeout)}": context deadline exceeded'
            )
            message = f'failed calling webhook "{name}": failed to call webhook: {why}'
            if policy == "Ignore":
                log.warning("Failed calling webhook, failing open %s: %s", name, message)
                self._record(name, attrs, "ignored", message, started)
                return None, []
            log.warning("Failed calling webhook, failing closed %s: %s", name, message)
            self._record(name, attrs, "error", message, started)
            return ApiError(
                500,
                f"Internal error occurred: {message}",
                reason="InternalError",
                details={"causes": [{"message": message}]},
            ), []
        try:
            allowed, status, warnings, _patch = _parse_response(response, request_uid)
        except WebhookCallError as exc:
            message = f'failed calling webhook "{name}": received invalid webhook response: {exc}'
            if policy == "Ignore":
                self._record(name, attrs, "ignored", message, started)
                return None, []
            self._record(name, attrs, "error", message, started)
            return ApiError(500, f"Internal error occurred: {message}", reason="InternalError"), []
        if allowed:
            self._record(name, attrs, "allowed", status.get("message", ""), started, warnings)
            return None, warnings
        reason_text = status.get("message") or ""
        message = (
            f'admission webhook "{name}" denied the request: {reason_text}'
            if reason_text
            else f'admission webhook "{name}" denied the request without explanation'
        )
        code = int(status.get("code") or 403)
        if code < 400:
            code = 400
        self._record(name, attrs, "denied", message, started, warnings)
        return ApiError(
            code,
            message,
            reason=status.get("reason") or ("Forbidden" if code == 403 else None),
            details=status.get("details"),
        ), warnings

    def _request(self, attrs: Attributes, request_uid: str) -> Obj:
        req: Obj = {
            "uid": request_uid,
            "kind": attrs.kind,
            "resource": attrs.resource,
            "requestKind": attrs.kind,
            "requestResource": attrs.resource,
            "operation": attrs.operation,
            "userInfo": attrs.user.to_dict(),
            "object": attrs.obj,
            "oldObject": attrs.old,
            "dryRun": attrs.dry_run,
            "options": attrs.options,
        }
        if attrs.subresource:
            req["subResource"] = attrs.subresource
            req["requestSubResource"] = attrs.subresource
        if attrs.name:
            req["name"] = attrs.name
        if attrs.namespace:
            req["namespace"] = attrs.namespace
        return req

    def _url(self, hook: Mapping[str, Any], timeout: float) -> str:
        cc = hook.get("clientConfig") or {}
        suffix = f"?timeout={int(timeout)}s"
        if cc.get("url"):
            return str(cc["url"]) + suffix
        svc = cc.get("service") or {}
        return (
            f"https://{svc.get('name')}.{svc.get('namespace')}.svc:{svc.get('port', 443)}"
            f"{svc.get('path') or ''}{suffix}"
        )

    async def _post(self, hook: Mapping[str, Any], name: str, review: Obj, limit: float) -> Any:
        cc = hook.get("clientConfig") or {}
        shown = self._url(hook, limit)
        suffix = f"?timeout={int(limit)}s"
        server_hostname: str | None = None
        if cc.get("url"):
            url = str(cc["url"]) + suffix
        elif cc.get("service"):
            svc = cc["service"]
            port = int(svc.get("port", 443))
            base = self.services.lookup(svc.get("namespace", ""), svc.get("name", ""), port)
            if base is None:
                raise WebhookCallError(f'Post "{shown}": service "{svc.get("name")}" not found')
            url = base + (svc.get("path") or "") + suffix
            server_hostname = f"{svc.get('name')}.{svc.get('namespace')}.svc"
        else:
            raise WebhookCallError("no clientConfig.url or clientConfig.service")
        fault = self.faults.webhook_fault(name)
        status_override = None
        if fault is not None:
            if fault.latency:
                await asyncio.sleep(fault.latency)
            if fault.status == 0:
                raise WebhookCallError(
                    f'Post "{shown}": dial tcp: connect: connection refused'
                    + (f" ({fault.message})" if fault.message else "")
                )
            status_override = fault.status
        if status_override is not None:
            raise WebhookCallError(
                f'Post "{shown}": the server responded with the status code {status_override}'
            )
        ssl_ctx: ssl.SSLContext | bool = False
        if url.startswith("https://"):
            ssl_ctx = self._ssl_context(str(cc.get("caBundle") or ""))
        try:
            async with self._http(cc).post(
                url,
                json=review,
                ssl=ssl_ctx,
                server_hostname=server_hostname if ssl_ctx else None,
                headers={"Accept": "application/json, */*"},
            ) as resp:
                text = await resp.text()
                if resp.status != 200:
                    raise WebhookCallError(
                        f'Post "{shown}": the server responded with the status code {resp.status}: '
                        f"{text[:200]}"
                    )
                try:
                    return json.loads(text)
                except ValueError as exc:
                    raise WebhookCallError(f'Post "{shown}": invalid JSON in response: {exc}') from exc
        except aiohttp.ClientConnectorCertificateError as exc:
            raise WebhookCallError(
                f'Post "{shown}": tls: failed to verify certificate: {exc.certificate_error}'
            ) from exc
        except aiohttp.ClientSSLError as exc:
            raise WebhookCallError(f'Post "{shown}": tls: {exc}') from exc
        except aiohttp.ClientError as exc:
            raise WebhookCallError(f'Post "{shown}": {exc}') from exc
        except ssl.SSLError as exc:
            raise WebhookCallError(f'Post "{shown}": tls: {exc}') from exc

    def _ssl_context(self, ca_bundle: str) -> ssl.SSLContext:
        ctx = self._ssl.get(ca_bundle)
        if ctx is None:
            if ca_bundle:
                try:
                    pem = base64.b64decode(ca_bundle).decode()
                    ctx = ssl.create_default_context(cadata=pem)
                except (ValueError, ssl.SSLError) as exc:
                    raise WebhookCallError(f"invalid caBundle: {exc}") from exc
            else:
                ctx = ssl.create_default_context()
            self._ssl[ca_bundle] = ctx
        return ctx

    def _record(
        self,
        webhook: str,
        attrs: Attributes,
        outcome: str,
        message: str,
        started: float | None = None,
        warnings: list[str] | None = None,
    ) -> None:
        entry = {
            "time": time.time(),
            "webhook": webhook,
            "operation": attrs.operation,
            "resource": attrs.resource["resource"],
            "subResource": attrs.subresource,
            "namespace": attrs.namespace,
            "name": attrs.name,
            "dryRun": attrs.dry_run,
            "user": attrs.user.username,
            "outcome": outcome,
            "message": message,
            "warnings": warnings or [],
            "duration": round(time.monotonic() - started, 4) if started is not None else 0.0,
        }
        log.info(
            "admission %s %s %s/%s%s by %s: %s %s",
            webhook,
            attrs.operation,
            attrs.namespace,
            attrs.name,
            f" ({attrs.subresource})" if attrs.subresource else "",
            attrs.user.username,
            outcome,
            message,
        )
        self.log.append(entry)
        if len(self.log) > 10000:
            del self.log[:1000]


def _rule_matches(rule: Mapping[str, Any], attrs: Attributes) -> bool:
    scope = rule.get("scope", "*")
    if scope == "Cluster" and attrs.namespaced:
        return False
    if scope == "Namespaced" and not attrs.namespaced:
        return False
    ops = rule.get("operations") or []
    if "*" not in ops and attrs.operation not in ops:
        return False
    groups = rule.get("apiGroups") or []
    if "*" not in groups and attrs.resource["group"] not in groups:
        return False
    versions = rule.get("apiVersions") or []
    if "*" not in versions and attrs.resource["version"] not in versions:
        return False
    for item in rule.get("resources") or []:
        # "pods" is (pods, ""), "pods/*" is (pods, *): like the server, "*" in the subresource part also
        # matches the main resource, while "*" alone matches no subresource.
        res, _, sub = str(item).partition("/")
        if (res == "*" or res == attrs.resource["resource"]) and (sub == "*" or sub == attrs.subresource):
            return True
    return False


def _parse_response(
    body: Any, request_uid: str, *, mutating: bool = False
) -> tuple[bool, Obj, list[str], bytes]:
    if not isinstance(body, dict):
        raise WebhookCallError("the response is not a JSON object")
    if body.get("apiVersion") != "admission.k8s.io/v1" or body.get("kind") != "AdmissionReview":
        raise WebhookCallError(
            f"expected webhook response of admission.k8s.io/v1, Kind=AdmissionReview, got "
            f"{body.get('apiVersion')}, Kind={body.get('kind')}"
        )
    response = body.get("response")
    if not isinstance(response, dict):
        raise WebhookCallError("webhook response was absent")
    if response.get("uid") != request_uid:
        raise WebhookCallError(f"expected response.uid={request_uid}, got {response.get('uid')}")
    raw_patch = response.get("patch")
    patch_type = response.get("patchType")
    patch = b""
    if not mutating:
        if raw_patch is not None or patch_type is not None:
            raise WebhookCallError("validating webhook may not return response.patch or response.patchType")
    elif raw_patch:
        # response.patch is []byte in Go: base64 in JSON.
        try:
            patch = base64.b64decode(str(raw_patch), validate=True)
        except ValueError as exc:
            raise WebhookCallError(f"illegal base64 data in response.patch: {exc}") from exc
        if patch_type is None:
            raise WebhookCallError("webhook returned response.patch but not response.patchType")
        if patch_type != "JSONPatch":
            raise WebhookCallError(f'webhook returned invalid response.patchType of "{patch_type}"')
    status = response.get("status") or {}
    warnings = [str(w) for w in response.get("warnings") or []]
    return bool(response.get("allowed")), status if isinstance(status, dict) else {}, warnings, patch
