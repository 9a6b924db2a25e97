"""What the operator must be allowed to do, checked at start-up, and every refusal made loud.

A missing RBAC rule must never turn into an operator that silently does nothing: at start the
operator asks the API server (SelfSubjectAccessReview, allowed to every authenticated user) about
each permission it needs and logs the missing ones with the rule to add; a missing permission that
reservations depend on keeps readiness false. At run time every 403 any call receives is logged
with the server's own message (it names user, verb, resource and scope) and counted.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from aiohttp.helpers import get_env_proxy_for_url
from kubernetes.aio import client as k8s
from yarl import URL

from capo_operator.kube.slim import AuthorizationV1

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Permission:
    verb: str
    group: str
    resource: str
    why: str
    subresource: str = ""
    namespace: str | None = None
    name: str | None = None
    # Without it no reservation can be made or kept: the replica must not claim to be ready.
    critical: bool = False

    def describe(self) -> str:
        what = self.resource + (f"/{self.subresource}" if self.subresource else "")
        if self.group:
            what += f".{self.group}"
        if self.name:
            what += f' "{self.name}"'
        where = f' in namespace "{self.namespace}"' if self.namespace is not None else " (cluster-wide)"
        return f"{self.verb} {what}{where}"


@dataclass(frozen=True)
class Names:
    """The object names the shipped RBAC grants by `resourceNames` (from the configuration)."""

    namespace: str
    calico_group: str
    ip_reservation: str
    lease: str
    lease_namespace: str
    ledger: str
    config_map: str | None
    builtin_certs: bool = False
    cert_secret: str = ""
    webhook_config: str = ""


def required(n: Names) -> list[Permission]:
    """Every permission the operator uses, with the reason (docs/rbac.md explains each rule)."""
    ns, cg = n.namespace, n.calico_group
    perms = [
        Permission("list", "", "pods", "the pod cache (webhook, safety net, releaser)", critical=True),
        Permission("watch", "", "pods", "the pod cache (webhook, safety net, releaser)", critical=True),
        Permission("get", "", "pods", "an eviction names a pod the cache has not seen yet"),
        Permission("list", "", "namespaces", "the namespace cache (ip-reserve label)", critical=True),
        Permission("watch", "", "namespaces", "the namespace cache (ip-reserve label)", critical=True),
        Permission("get", "", "namespaces", "a namespace created a moment ago"),
        Permission("patch", cg, "ipreservations", "reserving IPs", name=n.ip_reservation, critical=True),
        Permission(
            "get", cg, "ipreservations", "reading the reserved IPs", name=n.ip_reservation, critical=True
        ),
        Permission("update", cg, "ipreservations", "releasing IPs", name=n.ip_reservation, critical=True),
        # Without these the leader reads the object every pass instead of watching it.
        Permission("list", cg, "ipreservations", "the IPReservation cache", name=n.ip_reservation),
        Permission("watch", cg, "ipreservations", "the IPReservation cache", name=n.ip_reservation),
        Permission("list", "capo.io", "reservedips", "the record cache", critical=True),
        Permission("watch", "capo.io", "reservedips", "the record cache", critical=True),
        Permission("create", "capo.io", "reservedips", "one record per reserved IP", critical=True),
        Permission("patch", "capo.io", "reservedips", "starting a hold's clock, marking a release"),
        Permission("delete", "capo.io", "reservedips", "releasing IPs"),
        Permission("get", "apps", "statefulsets", "releasing when the owner was deleted"),
        Permission("get", "apps", "replicasets", "releasing when the owner was deleted"),
        Permission("get", "apps", "deployments", "releasing when the owner was deleted"),
        Permission("get", "apps", "daemonsets", "releasing when the owner was deleted"),
        Permission("create", "", "events", "Events about reservations and releases"),
        Permission("create", "coordination.k8s.io", "leases", "leader election", namespace=n.lease_namespace),
        Permission(
            "update",
            "coordination.k8s.io",
            "leases",
            "leader election",
            namespace=n.lease_namespace,
            name=n.lease,
        ),
        Permission("get", "", "configmaps", "the restart ledger", namespace=ns, name=n.ledger),
        Permission("update", "", "configmaps", "the restart ledger", namespace=ns, name=n.ledger),
        # Its shards are named <ledger>-0, -1, ...: the first stands for all of them.
        Permission("get", "", "configmaps", "the restart ledger", namespace=ns, name=f"{n.ledger}-0"),
        Permission("update", "", "configmaps", "the restart ledger", namespace=ns, name=f"{n.ledger}-0"),
    ]
    if n.config_map:
        perms += [
            Permission("list", "", "configmaps", "live configuration", namespace=ns, name=n.config_map),
            Permission("watch", "", "configmaps", "live configuration", namespace=ns, name=n.config_map),
        ]
    if n.builtin_certs:
        perms += [
            Permission(
                "get", "", "secrets", "built-in certificates", namespace=ns, name=n.cert_secret, critical=True
            ),
            Permission(
                "patch",
                "admissionregistration.k8s.io",
                "validatingwebhookconfigurations",
                "built-in certificates: the caBundle",
                name=n.webhook_config,
                critical=True,
            ),
            Permission(
                "patch",
                "admissionregistration.k8s.io",
                "mutatingwebhookconfigurations",
                "built-in certificates: the caBundle of the sticky-IP webhook",
                name=n.webhook_config,
            ),
        ]
    return perms


CHECK_CONCURRENCY = 4


async def missing(api: k8s.ApiClient, perms: Iterable[Permission]) -> list[Permission] | None:
    """The permissions the API server says this identity lacks; None if it cannot tell us."""
    authz = AuthorizationV1(api)
    # A few at a time: every concurrent request opens a TLS connection that stays in the pool
    # (~300 KB each, its read buffer included), and the check asks about 30 questions at start.
    bound = asyncio.Semaphore(CHECK_CONCURRENCY)

    async def allowed(p: Permission) -> bool:
        attrs = k8s.V1ResourceAttributes(
            verb=p.verb,
            group=p.group,
            resource=p.resource,
            subresource=p.subresource or None,
            namespace=p.namespace,
            name=p.name,
        )
        review = k8s.V1SelfSubjectAccessReview(
            spec=k8s.V1SelfSubjectAccessReviewSpec(resource_attributes=attrs)
        )
        async with bound:
            answer = await authz.create_self_subject_access_review(review)
        return bool(answer.status and answer.status.allowed)

    perms = list(perms)
    try:
        results = await asyncio.gather(*(allowed(p) for p in perms))
    except Exception as exc:  # an old or locked-down server: the run-time 403 logging still applies
        logger.warning("cannot check the operator's permissions (SelfSubjectAccessReview): %s", exc)
        return None
    return [p for p, ok in zip(perms, results, strict=True) if not ok]


def report_missing(gaps: list[Permission], user: str) -> None:
    for p in gaps:
        logger.error(
            "missing permission: %s %s is not allowed to %s (needed for %s)%s; add it to its RBAC",
            "critical:" if p.critical else "",
            user or "this ServiceAccount",
            p.describe(),
            p.why,
            ", so this replica stays unready" if p.critical else "",
        )


class ForbiddenLog:
    """Logs and counts every 403 the operator's client receives. The server's message names the
    user, the verb, the resource and the scope, which is exactly what a person needs to fix RBAC."""

    def __init__(self, count: Callable[[str, str], Any]) -> None:
        self._count = count

    def forbidden(self, method: str, url: str, message: str) -> None:
        verb, resource = verb_and_resource(method, url)
        self._count(verb, resource)
        logger.error("forbidden by RBAC: %s %s: %s", method, _path(url), message or "403 Forbidden")


def resolve_proxy_once(configuration: k8s.Configuration) -> None:
    """Read the proxy environment once, not on every call.

    `kubernetes.aio` opens its aiohttp session with `trust_env=True`, and aiohttp then looks up the
    proxy variables and ~/.netrc in a worker thread on every request: two thread hops on each API
    call, the webhook's Calico write included (measured on the delete path). The proxy
    (HTTPS_PROXY/NO_PROXY, as client-go's ProxyFromEnvironment reads them) is resolved here for the
    API server's address and passed explicitly; netrc is not consulted (no Kubernetes client does;
    credentials come from the kubeconfig or the ServiceAccount)."""
    if not configuration.proxy and configuration.host:
        try:
            proxy, auth = get_env_proxy_for_url(URL(configuration.host))
        except LookupError:
            pass  # no proxy for this address
        else:
            configuration.proxy = str(proxy)
            if auth is not None:
                configuration.proxy_headers = {"Proxy-Authorization": auth.encode()}
    extra = dict(getattr(configuration, "client_session_kwargs", None) or {})
    extra["trust_env"] = False
    configuration.client_session_kwargs = extra


class ObservedApiClient(k8s.ApiClient):
    """`kubernetes.aio`'s client, reporting each 403 to a `ForbiddenLog` before raising as usual,
    and answering a 401 by reloading the credentials (`relogin`) and retrying once: a rotated
    token is then in use at once, not only at the next periodic refresh."""

    def __init__(
        self,
        configuration: k8s.Configuration,
        forbidden: ForbiddenLog | None = None,
        relogin: Callable[[], Awaitable[bool]] | None = None,
    ) -> None:
        resolve_proxy_once(configuration)
        super().__init__(configuration)
        self.forbidden_log = forbidden
        self.relogin = relogin

    async def call_api(
        self,
        method: str,
        url: str,
        header_params: dict[str, str] | None = None,
        body: Any = None,
        post_params: Any = None,
        _request_timeout: Any = None,
        _preload_content: bool = True,
    ) -> Any:
        call = functools.partial(
            super().call_api, method, url, body=body, post_params=post_params,
            _request_timeout=_request_timeout, _preload_content=_preload_content,
        )  # fmt: skip
        response = await call(header_params=header_params)
        if response.status == 401 and self.relogin is not None and await self.relogin():
            response.response.release()
            headers = dict(header_params or {})
            fresh = await self.configuration.get_api_key_with_prefix("BearerToken", "authorization")
            if fresh:
                headers["authorization"] = fresh
            logger.info("the API server refused the credentials (401); retrying with reloaded ones")
            response = await call(header_params=headers)
        if response.status == 403 and self.forbidden_log is not None:
            message = ""
            if _preload_content:  # a stream's body belongs to its reader
                message = _status_message(await response.read())
            self.forbidden_log.forbidden(method, url, message)
        return response


def _status_message(body: bytes) -> str:
    try:
        doc = json.loads(body)
    except ValueError:
        return body[:300].decode(errors="replace")
    return str(doc.get("message", "")) if isinstance(doc, dict) else ""


def _path(url: str) -> str:
    rest = url.split("://", 1)[-1]
    return "/" + rest.split("/", 1)[1] if "/" in rest else "/"


def verb_and_resource(method: str, url: str) -> tuple[str, str]:
    """The RBAC verb and resource of a request, as kube-apiserver's RequestInfo derives them
    (bounded label values: the resource plural, never a name)."""
    path, _sep, query = _path(url).partition("?")
    parts = [p for p in path.split("/") if p]
    if parts[:1] == ["api"] and len(parts) >= 3:
        rest = parts[2:]
    elif parts[:1] == ["apis"] and len(parts) >= 4:
        rest = parts[3:]
    else:
        return method.lower(), "nonresource"
    if len(rest) > 2 and rest[0] == "namespaces":
        rest = rest[2:]  # namespaced: /namespaces/NS/RESOURCE[/NAME[/SUBRESOURCE]]
    resource = "/".join([rest[0], *rest[2:3]])
    named = len(rest) >= 2
    method = method.upper()
    if method == "GET":
        verb = "watch" if "watch=true" in query or "watch=1" in query else ("get" if named else "list")
    elif method == "DELETE":
        verb = "delete" if named else "deletecollection"
    else:
        verb = {"POST": "create", "PUT": "update", "PATCH": "patch"}.get(method, method.lower())
    return verb, resource
