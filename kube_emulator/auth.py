"""Authentication, impersonation and authorization of every API request, as kube-apiserver does it.

Authentication (``pkg/kubeapiserver/authenticator``): a client certificate verified against the
emulator's CA (user = CN, groups = O), else a bearer token issued by the TokenRequest API (a
ServiceAccount), else, when no credentials were sent, ``system:anonymous`` in
``system:unauthenticated``. Credentials that fail (an unknown, expired or revoked token, a token
whose ServiceAccount or bound object is gone) are a 401, never anonymous. Authenticated users also
get ``system:authenticated``.
Impersonation (``endpoints/filters/impersonation.go``): ``Impersonate-*`` headers need the
``impersonate`` verb on users/groups/serviceaccounts/uids/userextras.
Authorization: :mod:`kube_emulator.rbac` on the attributes of :mod:`kube_emulator.requestinfo`.
Also here: the TokenRequest subresource, SelfSubjectReview and SelfSubjectAccessReview.
"""

from __future__ import annotations

import base64
import copy
import json
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from aiohttp import web
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from . import errors as E
from .context import RequestContext, UserInfo, now, rfc3339
from .http_api import USER_KEY, Target, error_response
from .rbac import SA_PREFIX, Authorizer, EscalationCheck, forbidden_message
from .requestinfo import RequestInfo, parse
from .store import Obj

if TYPE_CHECKING:
    from .server import Cluster

log = logging.getLogger("kube_emulator.auth")

AUTHENTICATED = "system:authenticated"
UNAUTHENTICATED = "system:unauthenticated"
ANONYMOUS = UserInfo("system:anonymous", (UNAUTHENTICATED,))
ISSUER = "https://kubernetes.default.svc.cluster.local"
API_AUDIENCES = (ISSUER,)
# TokenRequest bounds and default (pkg/apis/authentication/validation, v1 defaults).
MIN_EXPIRATION = 600
MAX_EXPIRATION = 1 << 32
DEFAULT_EXPIRATION = 3600
# kubelet asks for 3607 s pod-bound tokens; the server honours them for a year (a migration aid).
EXTENDED_REQUEST = 3607
EXTENDED_VALIDITY = timedelta(days=365)
# The real token validator (go-jose) accepts a token up to a minute after its ``exp``.
EXPIRY_LEEWAY = timedelta(seconds=60)
SA_KEY = ("", "serviceaccounts")
_BOUND_KINDS = {"Pod": ("", "pods"), "Secret": ("", "secrets")}


def unauthorized() -> E.ApiError:
    return E.ApiError(401, "Unauthorized")


class ForbiddenError(E.ApiError):
    """A 403 shaped as the real one: ``details`` always present (empty for a non-resource path)."""

    def __init__(self, user: UserInfo, info: RequestInfo, reason: str = "") -> None:
        details: dict[str, Any] = {}
        if info.is_resource:
            details = {"name": info.name, "group": info.api_group, "kind": info.resource}
            details = {k: v for k, v in details.items() if v}
        super().__init__(403, forbidden_message(user, info, reason), "Forbidden", details)

    def status(self) -> dict[str, Any]:
        body = super().status()
        body["details"] = self.details or {}
        body["code"] = body.pop("code")  # keep the real key order: details before code
        return body


def service_account_user(namespace: str, name: str, uid: str = "") -> UserInfo:
    groups = ("system:serviceaccounts", f"system:serviceaccounts:{namespace}", AUTHENTICATED)
    return UserInfo(f"{SA_PREFIX}{namespace}:{name}", groups, uid)


@dataclass
class IssuedToken:
    namespace: str
    name: str
    sa_uid: str
    expires: datetime
    bound: tuple[tuple[str, str], str, str, str] | None = None  # (key, namespace, name, uid)
    revoked: bool = False


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class Tokens:
    """ServiceAccount tokens issued by TokenRequest: signed JWTs, remembered until they expire."""

    key: ec.EllipticCurvePrivateKey = field(default_factory=lambda: ec.generate_private_key(ec.SECP256R1()))
    issued: dict[str, IssuedToken] = field(default_factory=dict)
    clock: Callable[[], datetime] = now

    def issue(self, claims: dict[str, Any], record: IssuedToken) -> str:
        header = {"alg": "ES256", "kid": "kube-emulator"}
        signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        der = self.key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        token = f"{signing_input}.{_b64url(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"
        self._forget_expired()
        self.issued[token] = record
        return token

    def _forget_expired(self) -> None:
        limit = self.clock() - EXPIRY_LEEWAY
        for token in [t for t, rec in self.issued.items() if rec.expires < limit]:
            del self.issued[token]

    def expire(self, namespace: str, name: str) -> int:
        count = 0
        for rec in self.issued.values():
            if rec.namespace == namespace and rec.name == name and not rec.revoked:
                rec.revoked = True
                count += 1
        return count


class Auth:
    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.authorizer = Authorizer(cluster.store)
        self.tokens = Tokens()
        cluster.api.write_checks.append(EscalationCheck(self.authorizer))

    # Authentication ---------------------------------------------------------------------------

    def authenticate(self, request: web.Request) -> UserInfo:
        user = self._from_certificate(request)
        if user is not None:
            return user
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.strip().partition(" ")
        token = token.strip()
        if scheme.lower() == "bearer" and token:
            return self._from_token(token)
        return ANONYMOUS  # nothing (or no bearer token) was presented

    @staticmethod
    def _from_certificate(request: web.Request) -> UserInfo | None:
        transport = request.transport
        cert = transport.get_extra_info("peercert") if transport is not None else None
        if not cert:
            return None  # ssl only shows a certificate it verified against the CA
        cn = ""
        orgs: list[str] = []
        for rdn in cert.get("subject", ()):
            for attr, value in rdn:
                if attr == "commonName":
                    cn = value
                elif attr == "organizationName":
                    orgs.append(value)
        if not cn:
            return None  # no user in it: the real x509 authenticator passes on to the next one
        groups = [*orgs, AUTHENTICATED] if AUTHENTICATED not in orgs else orgs
        return UserInfo(cn, tuple(groups))

    def _from_token(self, token: str) -> UserInfo:
        rec = self.tokens.issued.get(token)
        if rec is None:
            log.info("authentication failed: unknown bearer token")
            raise unauthorized()
        if rec.revoked or self.tokens.clock() > rec.expires + EXPIRY_LEEWAY:
            log.info("authentication failed: token of %s/%s has expired", rec.namespace, rec.name)
            raise unauthorized()
        sa = self.cluster.store.get(SA_KEY, rec.namespace, rec.name)
        if sa is None or sa["metadata"].get("uid") != rec.sa_uid:
            log.info("authentication failed: service account %s/%s has been deleted", rec.namespace, rec.name)
            raise unauthorized()
        if rec.bound is not None:
            key, ns, name, uid = rec.bound
            obj = self.cluster.store.get(key, ns, name)
            if obj is None or obj["metadata"].get("uid") != uid:
                log.info("authentication failed: the object a token of %s/%s is bound to is gone", ns, name)
                raise unauthorized()
        return service_account_user(rec.namespace, rec.name, rec.sa_uid)

    # Impersonation ----------------------------------------------------------------------------

    def impersonate(self, request: web.Request, actor: UserInfo) -> UserInfo:
        headers = request.headers
        username = headers.get("Impersonate-User", "")
        groups = list(headers.getall("Impersonate-Group", []))
        uid = headers.get("Impersonate-Uid", "")
        extras = {
            k[len("Impersonate-Extra-") :]: v
            for k, v in headers.items()
            if k.lower().startswith("impersonate-extra-")
        }
        if not username:
            if groups or uid or extras:
                raise E.bad_request(
                    "requested impersonation of groups, extras or a uid without impersonating a user"
                )
            return actor
        checks: list[RequestInfo] = []
        if username.startswith(SA_PREFIX) and username.count(":") == 3:
            _, _, sa_ns, sa_name = username.split(":")
            checks.append(
                RequestInfo(True, "", "impersonate", "", "v1", sa_ns, "serviceaccounts", "", sa_name)
            )
            if not groups:
                groups = ["system:serviceaccounts", f"system:serviceaccounts:{sa_ns}"]
        else:
            checks.append(RequestInfo(True, "", "impersonate", "", "v1", "", "users", "", username))
        for group in headers.getall("Impersonate-Group", []):
            checks.append(RequestInfo(True, "", "impersonate", "", "v1", "", "groups", "", group))
        if uid:
            checks.append(
                RequestInfo(True, "", "impersonate", "authentication.k8s.io", "v1", "", "uids", "", uid)
            )
        for key, value in extras.items():
            checks.append(
                RequestInfo(
                    True, "", "impersonate", "authentication.k8s.io", "v1", "", "userextras", key, value
                )
            )
        for info in checks:
            decision = self.authorizer.authorize(actor, info)
            if not decision.allowed:
                self._log_refusal(actor, info)
                raise ForbiddenError(actor, info, decision.reason)
        if username == ANONYMOUS.username:
            if UNAUTHENTICATED not in groups:
                groups.append(UNAUTHENTICATED)
        elif AUTHENTICATED not in groups and UNAUTHENTICATED not in groups:
            groups.append(AUTHENTICATED)
        return UserInfo(username, tuple(groups), uid)

    # Authorization ----------------------------------------------------------------------------

    @staticmethod
    def _log_refusal(user: UserInfo, info: RequestInfo) -> None:
        if info.is_resource:
            what = f"{info.resource}/{info.subresource}" if info.subresource else info.resource
            group = f".{info.api_group}" if info.api_group else ""
            where = f" in namespace {info.namespace}" if info.namespace else ""
            name = f" {info.name!r}" if info.name else ""
            log.info(
                "forbidden: user=%s verb=%s resource=%s%s%s%s",
                user.username,
                info.verb,
                what,
                group,
                name,
                where,
            )
        else:
            log.info("forbidden: user=%s verb=%s path=%s", user.username, info.verb, info.path)

    @web.middleware
    async def middleware(
        self, request: web.Request, handler: Callable[[web.Request], Any]
    ) -> web.StreamResponse:
        if request.path.startswith("/_emulator/"):
            response: web.StreamResponse = await handler(request)
            return response
        try:
            user = self.impersonate(request, self.authenticate(request))
            info = parse(request.method, request.path, request.query)
            decision = self.authorizer.authorize(user, info)
            if not decision.allowed:
                self._log_refusal(user, info)
                raise ForbiddenError(user, info, decision.reason)
        except E.ApiError as exc:
            return error_response(exc)
        request[USER_KEY] = user
        response = await handler(request)
        return response

    # TokenRequest -----------------------------------------------------------------------------

    async def token_request(self, t: Target, body: Any, ctx: RequestContext) -> Obj:
        """``pkg/registry/core/serviceaccount/storage/token.go``, in the same order of checks."""
        namespace, name = t.namespace or "", t.name or ""
        if not isinstance(body, dict):
            raise E.bad_request("the body of the request is not a JSON object")
        for key, expected in (("apiVersion", "authentication.k8s.io/v1"), ("kind", "TokenRequest")):
            if body.get(key) and body[key] != expected:
                raise E.bad_request(f"the {key} in the data ({body[key]}) does not match {expected}")
        meta = dict(body.get("metadata") or {})
        for field_name, value, what in (("name", name, "name"), ("namespace", namespace, "namespace")):
            if meta.get(field_name) and meta[field_name] != value:
                raise E.invalid(
                    "TokenRequest",
                    "authentication.k8s.io",
                    name,
                    [
                        E.FieldError(
                            f"metadata.{field_name}",
                            "FieldValueInvalid",
                            f'Invalid value: "{meta[field_name]}": must match the service account {what} '
                            "if specified",
                        )
                    ],
                )
        sa = self.cluster.store.get(SA_KEY, namespace, name)
        if sa is None:
            raise E.not_found("serviceaccounts", "", name)
        sa_uid = str(sa["metadata"].get("uid"))
        spec = dict(body.get("spec") or {})
        audiences = [str(a) for a in spec.get("audiences") or []] or list(API_AUDIENCES)
        seconds = spec.get("expirationSeconds")
        seconds = DEFAULT_EXPIRATION if seconds is None else seconds
        if not isinstance(seconds, int) or isinstance(seconds, bool):
            raise E.bad_request("spec.expirationSeconds must be an integer")
        errs = []
        if seconds < MIN_EXPIRATION:
            why = "may not specify a duration less than 10 minutes"
            errs.append(
                E.FieldError(
                    "spec.expirationSeconds", "FieldValueInvalid", f"Invalid value: {seconds}: {why}"
                )
            )
        if seconds > MAX_EXPIRATION:
            why = "may not specify a duration larger than 2^32 seconds"
            errs.append(
                E.FieldError(
                    "spec.expirationSeconds", "FieldValueInvalid", f"Invalid value: {seconds}: {why}"
                )
            )
        if errs:
            raise E.invalid("TokenRequest", "authentication.k8s.io", "", errs)  # the real one names no object
        issued_at = self.tokens.clock()
        bound: tuple[tuple[str, str], str, str, str] | None = None
        claims_k8s: dict[str, Any] = {"namespace": namespace, "serviceaccount": {"name": name, "uid": sa_uid}}
        ref = spec.get("boundObjectRef")
        if isinstance(ref, dict) and ref:
            kind, ref_name = str(ref.get("kind", "")), str(ref.get("name", ""))
            api_version = str(ref.get("apiVersion", ""))
            bound_key = _BOUND_KINDS.get(kind) if "/" not in api_version else None
            if bound_key is None:
                group, _, version = api_version.rpartition("/")
                raise E.bad_request(f"cannot bind token to object of type {group}/{version}, Kind={kind}")
            obj = self.cluster.store.get(bound_key, namespace, ref_name)
            if obj is None:
                raise E.not_found(bound_key[1], "", ref_name)
            if kind == "Pod" and (obj.get("spec") or {}).get("serviceAccountName") != name:
                raise E.bad_request(
                    f'cannot bind token for serviceaccount "{name}" to pod running with different '
                    "serviceaccount name."
                )
            uid = str(obj["metadata"]["uid"])
            if ref.get("uid") and ref["uid"] != uid:
                raise E.conflict(
                    kind,
                    "",
                    ref_name,
                    f"the UID in the bound object reference ({ref['uid']}) does not match the UID in record. "
                    "The object might have been deleted and then recreated",
                )
            bound = (bound_key, namespace, ref_name, uid)
            claims_k8s[kind.lower()] = {"name": ref_name, "uid": uid}
        expires = issued_at + timedelta(seconds=seconds)
        valid_until = expires
        pod_bound = bound is not None and bound[0] == ("", "pods")
        if pod_bound and seconds == EXTENDED_REQUEST and set(audiences) <= set(API_AUDIENCES):
            # kubelet's projected tokens: reported as 1h7s, honoured for a year
            # (--service-account-extend-token-expiration, on by default).
            valid_until = issued_at + EXTENDED_VALIDITY
        status: dict[str, Any] = {"token": "", "expirationTimestamp": rfc3339(expires)}
        result: Obj = {
            "kind": "TokenRequest",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "uid": sa_uid,
                "creationTimestamp": rfc3339(issued_at),
            },
            "spec": {
                "audiences": audiences,
                "expirationSeconds": seconds,
                "boundObjectRef": ref if isinstance(ref, dict) and ref else None,
            },
            "status": status,
        }
        if ctx.dry_run:
            return result
        claims = {
            "aud": audiences,
            "exp": int(valid_until.timestamp()),
            "iat": int(issued_at.timestamp()),
            "nbf": int(issued_at.timestamp()),
            "iss": ISSUER,
            "jti": str(uuid.uuid4()),
            "kubernetes.io": claims_k8s,
            "sub": f"{SA_PREFIX}{namespace}:{name}",
        }
        if valid_until != expires:
            claims_k8s["warnafter"] = int(expires.timestamp())
        record = IssuedToken(namespace, name, sa_uid, valid_until, bound)
        status["token"] = self.tokens.issue(claims, record)
        return result

    def expire_tokens(self, namespace: str, name: str) -> int:
        """Every token issued so far for this ServiceAccount stops working now (kubelet rotation)."""
        count = self.tokens.expire(namespace, name)
        log.info("expired %d token(s) of service account %s/%s", count, namespace, name)
        return count

    # SelfSubjectReview (kubectl auth whoami) and SelfSubjectAccessReview ----------------------

    async def self_subject_review(self, t: Target, body: Any, ctx: RequestContext) -> Obj:
        if not isinstance(body, dict):
            raise E.bad_request("the body of the request is not a JSON object")
        return {
            "kind": "SelfSubjectReview",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"creationTimestamp": rfc3339()},
            "status": {"userInfo": ctx.user.to_dict()},
        }

    async def self_subject_access_review(self, t: Target, body: Any, ctx: RequestContext) -> Obj:
        if not isinstance(body, dict):
            raise E.bad_request("the body of the request is not a JSON object")
        review = copy.deepcopy(body)
        spec = review.get("spec") or {}
        res, nonres = spec.get("resourceAttributes"), spec.get("nonResourceAttributes")
        if (res is None) == (nonres is None):
            field_name, why = (
                ("nonResourceAttributes", "cannot be specified in combination with resourceAttributes")
                if res is not None
                else (
                    "resourceAttributes",
                    "exactly one of nonResourceAttributes or resourceAttributes must be specified",
                )
            )
            raise E.invalid(
                "SelfSubjectAccessReview",
                "authorization.k8s.io",
                "",
                [E.FieldError(f"spec.{field_name}", "FieldValueInvalid", f'Invalid value: "null": {why}')],
            )
        if not isinstance(res if res is not None else nonres, dict):
            raise E.bad_request("spec.resourceAttributes and spec.nonResourceAttributes must be objects")
        if isinstance(res, dict):
            info = RequestInfo(
                True,
                "",
                str(res.get("verb") or ""),
                str(res.get("group") or ""),
                str(res.get("version") or ""),
                str(res.get("namespace") or ""),
                str(res.get("resource") or ""),
                str(res.get("subresource") or ""),
                str(res.get("name") or ""),
            )
        elif isinstance(nonres, dict):
            info = RequestInfo(False, str(nonres.get("path") or ""), str(nonres.get("verb") or ""))
        decision = self.authorizer.authorize(ctx.user, info)
        status: dict[str, Any] = {"allowed": decision.allowed}
        if decision.reason:
            status["reason"] = decision.reason
        review["apiVersion"] = "authorization.k8s.io/v1"
        review["kind"] = "SelfSubjectAccessReview"
        review["metadata"] = {"creationTimestamp": None, **(review.get("metadata") or {})}
        review["status"] = status
        return review
