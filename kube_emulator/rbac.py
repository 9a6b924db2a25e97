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
from .errors import ApiError, FieldError, forbidden
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


# Defaults and validation of the RBAC objects (pkg/apis/rbac/v1 defaults, pkg/apis/rbac/validation).


def _rule_errors(rule: Any, path: str, namespaced: bool) -> list[FieldError]:
    if not isinstance(rule, dict):
        return [FieldError(path, "FieldValueInvalid", "must be an object")]
    errs = []
    if not rule.get("verbs"):
        errs.append(
            FieldError(
                f"{path}.verbs", "FieldValueRequired", "Required value: verbs must contain at least one value"
            )
        )
    urls = rule.get("nonResourceURLs") or []
    if urls:
        shown = "[" + " ".join(str(u) for u in urls) + "]"
        if namespaced:
            errs.append(
                FieldError(
                    f"{path}.nonResourceURLs",
                    "FieldValueInvalid",
                    f"Invalid value: {shown}: namespaced rules cannot apply to non-resource URLs",
                )
            )
        if rule.get("apiGroups") or rule.get("resources") or rule.get("resourceNames"):
            errs.append(
                FieldError(
                    f"{path}.nonResourceURLs",
                    "FieldValueInvalid",
                    f"Invalid value: {shown}: "
                    "rules cannot apply to both regular resources and non-resource URLs",
                )
            )
        return errs
    if not rule.get("apiGroups"):
        errs.append(
            FieldError(
                f"{path}.apiGroups",
                "FieldValueRequired",
                "Required value: resource rules must supply at least one api group",
            )
        )
    if not rule.get("resources"):
        errs.append(
            FieldError(
                f"{path}.resources",
                "FieldValueRequired",
                "Required value: resource rules must supply at least one resource",
            )
        )
    return errs


def _role_ref_text(ref: dict[str, Any]) -> str:
    group, kind, name = ref.get("apiGroup", ""), ref.get("kind", ""), ref.get("name", "")
    return f'rbac.RoleRef{{APIGroup:"{group}", Kind:"{kind}", Name:"{name}"}}'


def _binding_errors(obj: dict[str, Any], namespaced: bool) -> list[FieldError]:
    errs = []
    ref = obj.get("roleRef")
    if not isinstance(ref, dict):
        return [FieldError("roleRef", "FieldValueRequired", "Required value")]
    if ref.get("apiGroup") != GROUP:
        errs.append(
            FieldError(
                "roleRef.apiGroup",
                "FieldValueNotSupported",
                f'Unsupported value: "{ref.get("apiGroup", "")}": supported values: "{GROUP}"',
            )
        )
    kinds = ("Role", "ClusterRole") if namespaced else ("ClusterRole",)
    if ref.get("kind") not in kinds:
        supported = ", ".join(f'"{k}"' for k in kinds)
        errs.append(
            FieldError(
                "roleRef.kind",
                "FieldValueNotSupported",
                f'Unsupported value: "{ref.get("kind", "")}": supported values: {supported}',
            )
        )
    if not ref.get("name"):
        errs.append(FieldError("roleRef.name", "FieldValueRequired", "Required value"))
    for i, subject in enumerate(obj.get("subjects") or []):
        path = f"subjects[{i}]"
        if not isinstance(subject, dict):
            errs.append(FieldError(path, "FieldValueInvalid", "must be an object"))
            continue
        kind, group = subject.get("kind"), subject.get("apiGroup", "")
        if not subject.get("name"):
            errs.append(FieldError(f"{path}.name", "FieldValueRequired", "Required value"))
        if kind == "ServiceAccount":
            if group:
                errs.append(
                    FieldError(
                        f"{path}.apiGroup",
                        "FieldValueNotSupported",
                        f'Unsupported value: "{group}": supported values: ""',
                    )
                )
            if not namespaced and not subject.get("namespace"):
                errs.append(FieldError(f"{path}.namespace", "FieldValueRequired", "Required value"))
        elif kind in ("User", "Group"):
            if group != GROUP:
                errs.append(
                    FieldError(
                        f"{path}.apiGroup",
                        "FieldValueNotSupported",
                        f'Unsupported value: "{group}": supported values: "{GROUP}"',
                    )
                )
        else:
            errs.append(
                FieldError(
                    f"{path}.kind",
                    "FieldValueNotSupported",
                    f'Unsupported value: "{kind or ""}": supported values: "ServiceAccount", "User", "Group"',
                )
            )
    return errs


def default_and_validate(plural: str, obj: dict[str, Any], old: dict[str, Any] | None) -> list[FieldError]:
    """Apply the v1 defaults to an RBAC object in place and return its validation errors."""
    if plural in ("rolebindings", "clusterrolebindings"):
        ref = obj.get("roleRef")
        if isinstance(ref, dict) and not ref.get("apiGroup"):
            ref["apiGroup"] = GROUP
        for subject in obj.get("subjects") or []:
            if (
                isinstance(subject, dict)
                and "apiGroup" not in subject
                and subject.get("kind") in ("User", "Group")
            ):
                subject["apiGroup"] = GROUP
        errs = _binding_errors(obj, plural == "rolebindings")
        if old is not None and isinstance(ref, dict) and ref != old.get("roleRef"):
            errs.append(
                FieldError(
                    "roleRef",
                    "FieldValueInvalid",
                    f"Invalid value: {_role_ref_text(ref)}: cannot change roleRef",
                )
            )
        return errs
    errs = []
    for i, rule in enumerate(obj.get("rules") or []):
        errs += _rule_errors(rule, f"rules[{i}]", plural == "roles")
    return errs


# Escalation prevention (pkg/registry/rbac/escalation_check.go, validation.Covers/ConfirmNoEscalation):
# a caller may only write a role, or bind one, whose permissions it holds itself, unless it may
# ``escalate`` (roles) or ``bind`` (bindings) or is in system:masters.

Atom = tuple[str, str, str, str, str]  # (group, resource, name, url, verb)


def _atoms(rule: dict[str, Any]) -> list[Atom]:
    verbs = [str(v) for v in rule.get("verbs") or []]
    urls = [str(u) for u in rule.get("nonResourceURLs") or []]
    if urls:
        return [("", "", "", url, verb) for url in urls for verb in verbs]
    names = [str(n) for n in rule.get("resourceNames") or []] or [""]
    return [
        (str(g), str(r), n, "", v)
        for g in rule.get("apiGroups") or []
        for r in rule.get("resources") or []
        for n in names
        for v in verbs
    ]


def _covers(owner: Rule, atom: Atom) -> bool:
    group, resource, name, url, verb = atom
    if owner.verbs is not None and verb not in owner.verbs:
        return False
    if url:
        return _url_matches(owner.urls, url)
    if owner.groups is not None and group not in owner.groups:
        return False
    sub = resource.split("/", 1)[1] if "/" in resource else ""
    if not ("*" in owner.resources or resource in owner.resources or (sub and f"*/{sub}" in owner.resources)):
        return False
    return not owner.names or (bool(name) and name in owner.names)


def _compact(atoms: list[Atom]) -> list[str]:
    """The real message's one line per missing rule, verbs of the same target merged."""
    verbs: dict[tuple[str, str, str, str], list[str]] = {}
    for group, resource, name, url, verb in atoms:
        verbs.setdefault((group, resource, name, url), []).append(verb)

    def q(values: list[str]) -> str:
        return "[" + " ".join(f'"{v}"' for v in values) + "]"

    lines = set()
    for (group, resource, name, url), vs in verbs.items():
        if url:
            lines.add(f"{{NonResourceURLs:{q([url])}, Verbs:{q(vs)}}}")
            continue
        names = f", ResourceNames:{q([name])}" if name else ""
        lines.add(f"{{APIGroups:{q([group])}, Resources:{q([resource])}{names}, Verbs:{q(vs)}}}")
    return sorted(lines)


class EscalationCheck:
    def __init__(self, authorizer: Authorizer) -> None:
        self.authorizer = authorizer

    def __call__(self, rt: Any, new: dict[str, Any], old: dict[str, Any] | None, ctx: Any) -> None:
        if rt.group != GROUP or rt.crd_name is not None:
            return
        user: UserInfo = ctx.user
        if MASTERS in user.groups:
            return
        meta = new.get("metadata") or {}
        namespace, name = str(meta.get("namespace") or ""), str(meta.get("name") or "")
        if rt.plural in ("roles", "clusterroles"):
            if old is not None and (old.get("rules") or []) == (new.get("rules") or []):
                return  # rules unchanged (labels, finalizers...): nothing granted
            escalate = RequestInfo(True, "", "escalate", GROUP, "v1", namespace, rt.plural, "", name)
            if self.authorizer.authorize(user, escalate).allowed:
                return
            self._confirm(user, namespace, list(new.get("rules") or []), rt.plural, name)
        elif rt.plural in ("rolebindings", "clusterrolebindings"):
            ref = new.get("roleRef") or {}
            if old is not None and old.get("subjects") == new.get("subjects"):
                return
            ref_kind, ref_name = str(ref.get("kind", "")), str(ref.get("name", ""))
            role_plural = "roles" if ref_kind == "Role" else "clusterroles"
            bind = RequestInfo(True, "", "bind", GROUP, "v1", namespace, role_plural, "", ref_name)
            if self.authorizer.authorize(user, bind).allowed:
                return
            key = ROLES if ref_kind == "Role" else CLUSTER_ROLES
            role = self.authorizer.store.get(key, namespace if ref_kind == "Role" else None, ref_name)
            if role is None:
                singular = "role" if ref_kind == "Role" else "clusterrole"
                raise _forbidden(rt.plural, name, f'{singular}.{GROUP} "{ref_name}" not found')
            self._confirm(user, namespace, list(role.get("rules") or []), rt.plural, name)

    def _confirm(self, user: UserInfo, namespace: str, rules: list[Any], plural: str, name: str) -> None:
        grants, _ = self.authorizer._compile(user, namespace)
        owner = [g.rule for g in grants]
        missing = [
            atom
            for rule in rules
            if isinstance(rule, dict)
            for atom in _atoms(rule)
            if not any(_covers(o, atom) for o in owner)
        ]
        if missing:
            groups = "[" + " ".join(f'"{g}"' for g in user.groups) + "]"
            raise _forbidden(
                plural,
                name,
                f'user "{user.username}" (groups={groups}) is attempting to grant RBAC permissions not '
                "currently held:\n" + "\n".join(_compact(missing)),
            )


def _forbidden(plural: str, name: str, why: str) -> ApiError:
    return forbidden(plural, GROUP, name, why)
