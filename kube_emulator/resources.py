"""Resource types served by the emulator: built-ins and the ones CRDs declare."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

ALL_VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")
NO_COLLECTION_DELETE = ("create", "delete", "get", "list", "patch", "update", "watch")
STATUS_VERBS = ("get", "patch", "update")


@dataclass(frozen=True)
class Subresource:
    name: str
    kind: str
    verbs: tuple[str, ...]
    group: str | None = None  # set when the subresource's kind lives in another group (pods/eviction)
    version: str | None = None


@dataclass
class ResourceType:
    group: str
    version: str
    plural: str
    singular: str
    kind: str
    namespaced: bool
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    verbs: tuple[str, ...] = ALL_VERBS
    subresources: tuple[Subresource, ...] = ()
    # Names of most resources are DNS-1123 subdomains; namespaces and services use labels.
    name_rule: str = "subdomain"
    # Whether metadata.generation is maintained (bumped when anything but metadata/status changes).
    generation: bool = False
    schema: dict[str, Any] | None = None  # openAPIV3Schema of a CRD version
    crd_name: str | None = None
    printer_columns: list[dict[str, Any]] = field(default_factory=list)

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def key(self) -> tuple[str, str]:
        """Storage key: every version of a group's resource shares the same objects."""
        return (self.group, self.plural)

    @property
    def has_status(self) -> bool:
        return any(s.name == "status" for s in self.subresources)

    def subresource(self, name: str) -> Subresource | None:
        for sub in self.subresources:
            if sub.name == name:
                return sub
        return None


def _status(kind: str) -> Subresource:
    return Subresource("status", kind, STATUS_VERBS)


def builtin_types() -> list[ResourceType]:
    pod_subresources = (
        _status("Pod"),
        Subresource("eviction", "Eviction", ("create",), group="policy", version="v1"),
        Subresource("binding", "Binding", ("create",)),
    )
    return [
        ResourceType(
            "",
            "v1",
            "namespaces",
            "namespace",
            "Namespace",
            False,
            ("ns",),
            verbs=NO_COLLECTION_DELETE,
            subresources=(_status("Namespace"), Subresource("finalize", "Namespace", ("update",))),
            name_rule="label",
        ),
        ResourceType(
            "",
            "v1",
            "pods",
            "pod",
            "Pod",
            True,
            ("po",),
            ("all",),
            subresources=pod_subresources,
            generation=True,
        ),
        ResourceType("", "v1", "nodes", "node", "Node", False, ("no",), subresources=(_status("Node"),)),
        ResourceType("", "v1", "configmaps", "configmap", "ConfigMap", True, ("cm",)),
        ResourceType("", "v1", "secrets", "secret", "Secret", True),
        ResourceType(
            "",
            "v1",
            "services",
            "service",
            "Service",
            True,
            ("svc",),
            ("all",),
            verbs=ALL_VERBS,
            subresources=(_status("Service"),),
            name_rule="label",
        ),
        ResourceType(
            "",
            "v1",
            "serviceaccounts",
            "serviceaccount",
            "ServiceAccount",
            True,
            ("sa",),
            subresources=(
                Subresource(
                    "token", "TokenRequest", ("create",), group="authentication.k8s.io", version="v1"
                ),
            ),
        ),
        ResourceType("", "v1", "events", "event", "Event", True, ("ev",)),
        ResourceType(
            "apps",
            "v1",
            "statefulsets",
            "statefulset",
            "StatefulSet",
            True,
            ("sts",),
            ("all",),
            subresources=(_status("StatefulSet"),),
            generation=True,
        ),
        ResourceType(
            "apps",
            "v1",
            "deployments",
            "deployment",
            "Deployment",
            True,
            ("deploy",),
            ("all",),
            subresources=(_status("Deployment"),),
            generation=True,
        ),
        ResourceType(
            "apps",
            "v1",
            "replicasets",
            "replicaset",
            "ReplicaSet",
            True,
            ("rs",),
            ("all",),
            subresources=(_status("ReplicaSet"),),
            generation=True,
        ),
        ResourceType(
            "apps",
            "v1",
            "daemonsets",
            "daemonset",
            "DaemonSet",
            True,
            ("ds",),
            ("all",),
            subresources=(_status("DaemonSet"),),
            generation=True,
        ),
        ResourceType("coordination.k8s.io", "v1", "leases", "lease", "Lease", True),
        ResourceType("events.k8s.io", "v1", "events", "event", "Event", True, ("ev",)),
        ResourceType(
            "policy",
            "v1",
            "poddisruptionbudgets",
            "poddisruptionbudget",
            "PodDisruptionBudget",
            True,
            ("pdb",),
            subresources=(_status("PodDisruptionBudget"),),
            generation=True,
        ),
        ResourceType(
            "admissionregistration.k8s.io",
            "v1",
            "validatingwebhookconfigurations",
            "validatingwebhookconfiguration",
            "ValidatingWebhookConfiguration",
            False,
            generation=True,
        ),
        ResourceType(
            "admissionregistration.k8s.io",
            "v1",
            "mutatingwebhookconfigurations",
            "mutatingwebhookconfiguration",
            "MutatingWebhookConfiguration",
            False,
            generation=True,
        ),
        *rbac_types(),
        ResourceType(
            "authentication.k8s.io",
            "v1",
            "selfsubjectreviews",
            "selfsubjectreview",
            "SelfSubjectReview",
            False,
            verbs=("create",),
        ),
        ResourceType(
            "authorization.k8s.io",
            "v1",
            "selfsubjectaccessreviews",
            "selfsubjectaccessreview",
            "SelfSubjectAccessReview",
            False,
            verbs=("create",),
        ),
        ResourceType(
            "apiextensions.k8s.io",
            "v1",
            "customresourcedefinitions",
            "customresourcedefinition",
            "CustomResourceDefinition",
            False,
            ("crd", "crds"),
            subresources=(_status("CustomResourceDefinition"),),
            generation=True,
        ),
    ]


def rbac_types() -> list[ResourceType]:
    group = "rbac.authorization.k8s.io"
    return [
        # RBAC names are path segments ("system:discovery"), not DNS subdomains.
        ResourceType(group, "v1", "clusterroles", "clusterrole", "ClusterRole", False, name_rule="path"),
        ResourceType(
            group,
            "v1",
            "clusterrolebindings",
            "clusterrolebinding",
            "ClusterRoleBinding",
            False,
            name_rule="path",
        ),
        ResourceType(group, "v1", "roles", "role", "Role", True, name_rule="path"),
        ResourceType(group, "v1", "rolebindings", "rolebinding", "RoleBinding", True, name_rule="path"),
    ]


def types_from_crd(crd: dict[str, Any]) -> list[ResourceType]:
    """The resource types a CustomResourceDefinition serves (one per served version)."""
    spec = crd.get("spec") or {}
    names = spec.get("names") or {}
    kind = names["kind"]
    plural = names["plural"]
    result = []
    for ver in spec.get("versions") or []:
        if not ver.get("served", True):
            continue
        subs: list[Subresource] = []
        declared = ver.get("subresources") or {}
        if "status" in declared:
            subs.append(_status(kind))
        if "scale" in declared:
            subs.append(Subresource("scale", "Scale", STATUS_VERBS, group="autoscaling", version="v1"))
        result.append(
            ResourceType(
                group=spec["group"],
                version=ver["name"],
                plural=plural,
                singular=names.get("singular") or kind.lower(),
                kind=kind,
                namespaced=spec.get("scope") == "Namespaced",
                short_names=tuple(names.get("shortNames") or ()),
                categories=tuple(names.get("categories") or ()),
                subresources=tuple(subs),
                generation=True,
                schema=(ver.get("schema") or {}).get("openAPIV3Schema"),
                crd_name=crd["metadata"]["name"],
                printer_columns=list(ver.get("additionalPrinterColumns") or []),
            )
        )
    return result


class Registry:
    """Which (group, version, plural) are served right now."""

    def __init__(self) -> None:
        self._types: dict[tuple[str, str, str], ResourceType] = {}
        self._group_order: list[str] = []

    def add(self, rt: ResourceType) -> None:
        self._types[(rt.group, rt.version, rt.plural)] = rt
        if rt.group not in self._group_order:
            self._group_order.append(rt.group)

    def remove_crd(self, crd_name: str) -> list[ResourceType]:
        gone = [rt for rt in self._types.values() if rt.crd_name == crd_name]
        for rt in gone:
            del self._types[(rt.group, rt.version, rt.plural)]
        return gone

    def get(self, group: str, version: str, plural: str) -> ResourceType | None:
        return self._types.get((group, version, plural))

    def find(self, group: str, plural: str) -> ResourceType | None:
        """Any served version of a group's resource (the first one declared)."""
        for rt in self._types.values():
            if rt.group == group and rt.plural == plural:
                return rt
        return None

    def all(self) -> list[ResourceType]:
        return list(self._types.values())

    def groups(self) -> dict[str, list[str]]:
        """Group -> versions, in registration order (first version is the preferred one)."""
        result: dict[str, list[str]] = {}
        for group in self._group_order:
            versions = []
            for rt in self._types.values():
                if rt.group == group and rt.version not in versions:
                    versions.append(rt.version)
            if versions:
                result[group] = versions
        return result

    def in_group_version(self, group: str, version: str) -> list[ResourceType]:
        return [rt for rt in self._types.values() if rt.group == group and rt.version == version]
