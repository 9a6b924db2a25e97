"""RBAC authorization from the stored Roles, ClusterRoles, RoleBindings and ClusterRoleBindings.

Follows ``plugin/pkg/auth/authorizer/rbac/rbac.go`` and ``pkg/apis/rbac/v1/evaluation_helpers.go``:
ClusterRoleBindings are visited first, then the RoleBindings of the request's namespace; a
RoleBinding may grant a Role of its namespace or a ClusterRole (then only within that namespace);
the first rule that allows wins. ``system:masters`` is allowed everything before RBAC is asked, as
the real server's privileged-group authorizer does. A binding whose role is missing grants nothing
and its error becomes the denial's reason (``RBAC: role.rbac.authorization.k8s.io "x" not found``).

Speed: the rules that apply to one (user, groups, namespace) are compiled once and cached; the
cache is dropped whenever any RBAC object changes (a store listener).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .context import UserInfo
from .requestinfo import RequestInfo

if TYPE_CHECKING:
    from .store import Key, Store, WatchEvent

log = logging.getLogger("kube_emulator.rbac")

GROUP = "rbac.authorization.k8s.io"
ROLES: Key = (GROUP, "roles")
CLUSTER_ROLES: Key = (GROUP, "clusterroles")
ROLE_BINDINGS: Key = (GROUP, "rolebindings")
CLUSTER_ROLE_BINDINGS: Key = (GROUP, "clusterrolebindings")
RBAC_KEYS = (ROLES, CLUSTER_ROLES, ROLE_BINDINGS, CLUSTER_ROLE_BINDINGS)
MASTERS = "system:masters"
SA_PREFIX = "system:serviceaccount:"
_CACHE_LIMIT = 10_000


@dataclass(frozen=True)
class Rule:
    """One PolicyRule, with its lists as sets (``None`` = the rule lists ``*``)."""

    verbs: frozenset[str] | None
    groups: frozenset[str] | None
    resources: tuple[str, ...]
    names: frozenset[str]
    urls: tuple[str, ...]

    @classmethod
    def from_obj(cls, rule: dict[str, Any]) -> Rule:
        def star_set(key: str) -> frozenset[str] | None:
            values = [str(v) for v in rule.get(key) or []]
            return None if "*" in values else frozenset(values)

        return cls(
            verbs=star_set("verbs"),
            groups=star_set("apiGroups"),
            resources=tuple(str(r) for r in rule.get("resources") or []),
            names=frozenset(str(n) for n in rule.get("resourceNames") or []),
            urls=tuple(str(u) for u in rule.get("nonResourceURLs") or []),
        )

    def allows(self, info: RequestInfo) -> bool:
        if self.verbs is not None and info.verb not in self.verbs:
            return False
        if not info.is_resource:
            return _url_matches(self.urls, info.path)
        if self.groups is not None and info.api_group not in self.groups:
            return False
        if not _resource_matches(self.resources, info.resource, info.subresource):
            return False
        return not self.names or info.name in self.names


def _resource_matches(resources: tuple[str, ...], resource: str, subresource: str) -> bool:
    combined = f"{resource}/{subresource}" if subresource else resource
    for rule_resource in resources:
        if rule_resource in ("*", combined):
            return True
        # ``*/status`` covers every resource's status subresource (and nothing without one).
        if subresource and rule_resource == f"*/{subresource}":
            return True
    return False


def _url_matches(urls: tuple[str, ...], path: str) -> bool:
    for url in urls:
        if url in ("*", path):
            return True
        if url.endswith("*") and path.startswith(url.rstrip("*")):
            return True
    return False


@dataclass(frozen=True)
class Grant:
    """A rule reached through one binding, with the text the real server gives as the reason."""

    rule: Rule
    source: str


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str = ""


def _describe_subject(subject: dict[str, Any], binding_namespace: str) -> str:
    kind, name = subject.get("kind"), subject.get("name")
    if kind == "ServiceAccount":
        return f'{kind} "{name}/{subject.get("namespace") or binding_namespace}"'
    return f'{kind} "{name}"'


def _applies(subject: dict[str, Any], user: UserInfo, binding_namespace: str) -> bool:
    kind, name = subject.get("kind"), subject.get("name")
    if kind == "User":
        return user.username == name
    if kind == "Group":
        return name in user.groups
    if kind == "ServiceAccount":
        namespace = subject.get("namespace") or binding_namespace
        return bool(namespace) and user.username == f"{SA_PREFIX}{namespace}:{name}"
    return False


class Authorizer:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._cache: dict[tuple[str, tuple[str, ...], str], tuple[list[Grant], list[str]]] = {}
        store.listeners.append(self._on_event)

    def _on_event(self, key: Key, event: WatchEvent) -> None:
        if key in RBAC_KEYS:
            self._cache.clear()

    def _rules(self, key: Key, namespace: str | None, name: str) -> list[Rule] | None:
        role = self.store.get(key, namespace, name)
        if role is None:
            return None
        return [Rule.from_obj(r) for r in role.get("rules") or [] if isinstance(r, dict)]

    def _compile(self, user: UserInfo, namespace: str) -> tuple[list[Grant], list[str]]:
        grants: list[Grant] = []
        errors: list[str] = []
        bindings = [("ClusterRoleBinding", b, "") for b in self.store.list(CLUSTER_ROLE_BINDINGS)]
        if namespace:
            bindings += [("RoleBinding", b, namespace) for b in self.store.list(ROLE_BINDINGS, namespace)]
        for kind, binding, ns in bindings:
            subjects = [s for s in binding.get("subjects") or [] if isinstance(s, dict)]
            subject = next((s for s in subjects if _applies(s, user, ns)), None)
            if subject is None:
                continue
            ref = binding.get("roleRef") or {}
            ref_kind, ref_name = str(ref.get("kind", "")), str(ref.get("name", ""))
            if ref_kind == "ClusterRole":
                rules = self._rules(CLUSTER_ROLES, None, ref_name)
                missing = f'clusterrole.{GROUP} "{ref_name}" not found'
            elif ref_kind == "Role" and ns:
                rules = self._rules(ROLES, ns, ref_name)
                missing = f'role.{GROUP} "{ref_name}" not found'
            else:
                rules, missing = None, f'unsupported role reference kind: "{ref_kind}"'
            if rules is None:
                errors.append(missing)
                continue
            bname = binding["metadata"]["name"] + (f"/{ns}" if ns else "")
            source = f'{kind} "{bname}" of {ref_kind} "{ref_name}" to {_describe_subject(subject, ns)}'
            grants.extend(Grant(rule, source) for rule in rules)
        return grants, errors

    def authorize(self, user: UserInfo, info: RequestInfo) -> Decision:
        if MASTERS in user.groups:
            return Decision(True)
        key = (user.username, user.groups, info.namespace)
        compiled = self._cache.get(key)
        if compiled is None:
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            compiled = self._cache[key] = self._compile(user, info.namespace)
        grants, errors = compiled
        for grant in grants:
            if grant.rule.allows(info):
                return Decision(True, f"RBAC: allowed by {grant.source}")
        return Decision(False, f"RBAC: {_aggregate(errors)}" if errors else "")


def _aggregate(errors: list[str]) -> str:
    # k8s.io/apimachinery's aggregate error: one message alone, several in brackets.
    return errors[0] if len(errors) == 1 else "[" + ", ".join(errors) + "]"


def forbidden_message(user: UserInfo, info: RequestInfo, reason: str = "") -> str:
    """The text of the real server's 403 (``endpoints/handlers/responsewriters/errors.go``)."""
    who = user.username
    if not info.is_resource:
        text = f'User "{who}" cannot {info.verb} path "{info.path}"'
    else:
        resource = f"{info.resource}/{info.subresource}" if info.subresource else info.resource
        text = f'User "{who}" cannot {info.verb} resource "{resource}" in API group "{info.api_group}"'
        text += f' in the namespace "{info.namespace}"' if info.namespace else " at the cluster scope"
    if reason:
        text += f": {reason}"
    if not info.is_resource:
        return f"forbidden: {text}"
    qualified = f"{info.resource}.{info.api_group}" if info.api_group else info.resource
    if info.name:
        return f'{qualified} "{info.name}" is forbidden: {text}'
    return f"{qualified} is forbidden: {text}"


# The bootstrap policy the real server reconciles at start (``plugin/pkg/auth/authorizer/rbac/
# bootstrappolicy``), limited to the roles that matter to a client of this emulator.
_BOOTSTRAP_META: dict[str, Any] = {
    "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"},
    "annotations": {"rbac.authorization.kubernetes.io/autoupdate": "true"},
}

BOOTSTRAP_CLUSTER_ROLES: list[dict[str, Any]] = [
    {
        "name": "cluster-admin",
        "rules": [
            {"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]},
            {"nonResourceURLs": ["*"], "verbs": ["*"]},
        ],
    },
    {
        "name": "system:discovery",
        "rules": [
            {
                "nonResourceURLs": [
                    "/api",
                    "/api/*",
                    "/apis",
                    "/apis/*",
                    "/healthz",
                    "/livez",
                    "/openapi",
                    "/openapi/*",
                    "/readyz",
                    "/version",
                    "/version/",
                ],
                "verbs": ["get"],
            }
        ],
    },
    {
        "name": "system:basic-user",
        "rules": [
            {
                "apiGroups": ["authorization.k8s.io"],
                "resources": ["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
                "verbs": ["create"],
            },
            {
                "apiGroups": ["authentication.k8s.io"],
                "resources": ["selfsubjectreviews"],
                "verbs": ["create"],
            },
        ],
    },
    {
        "name": "system:public-info-viewer",
        "rules": [
            {
                "nonResourceURLs": ["/healthz", "/livez", "/readyz", "/version", "/version/"],
                "verbs": ["get"],
            }
        ],
    },
]

BOOTSTRAP_CLUSTER_ROLE_BINDINGS: list[dict[str, Any]] = [
    {"name": "cluster-admin", "role": "cluster-admin", "groups": ["system:masters"]},
    {"name": "system:discovery", "role": "system:discovery", "groups": ["system:authenticated"]},
    {"name": "system:basic-user", "role": "system:basic-user", "groups": ["system:authenticated"]},
    {
        "name": "system:public-info-viewer",
        "role": "system:public-info-viewer",
        "groups": ["system:authenticated", "system:unauthenticated"],
    },
]


def bootstrap_objects() -> list[tuple[str, dict[str, Any]]]:
    """(plural, object) of the bootstrap ClusterRoles and ClusterRoleBindings."""
    out: list[tuple[str, dict[str, Any]]] = []
    for role in BOOTSTRAP_CLUSTER_ROLES:
        meta = {"name": role["name"], **_BOOTSTRAP_META}
        out.append(("clusterroles", {"metadata": meta, "rules": role["rules"]}))
    for binding in BOOTSTRAP_CLUSTER_ROLE_BINDINGS:
        meta = {"name": binding["name"], **_BOOTSTRAP_META}
        subjects = [{"kind": "Group", "apiGroup": GROUP, "name": g} for g in binding["groups"]]
        body = {
            "metadata": meta,
            "roleRef": {"apiGroup": GROUP, "kind": "ClusterRole", "name": binding["role"]},
            "subjects": subjects,
        }
        out.append(("clusterrolebindings", body))
    return out
