"""The operator's identity in a test cluster, as users run it: the shipped ServiceAccount with
exactly the RBAC rendered from `manifests/default`, and a token from the TokenRequest API.

On a real cluster the names a run must not share with other runs (cluster-scoped ClusterRoles and
bindings, the IPReservation and the webhook configuration named in `resourceNames`) get the run's
suffix; nothing else is changed, so a rule missing from the manifests is missing here too.
"""

from __future__ import annotations

import copy
import functools
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from capo_testkit.kube import Obj, path_for

if TYPE_CHECKING:
    from capo_testkit.cluster import Cluster

ROOT = Path(__file__).resolve().parents[1]
SERVICE_ACCOUNT = "capo-operator"
SHIPPED_NAMESPACE = "capo-system"
RBAC_KINDS = ("ServiceAccount", "Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding")
# Long enough for any test; the rotation test issues new ones itself.
TOKEN_SECONDS = 3600

_PATHS = {
    "ServiceAccount": ("", "v1", "serviceaccounts"),
    "Role": ("rbac.authorization.k8s.io", "v1", "roles"),
    "ClusterRole": ("rbac.authorization.k8s.io", "v1", "clusterroles"),
    "RoleBinding": ("rbac.authorization.k8s.io", "v1", "rolebindings"),
    "ClusterRoleBinding": ("rbac.authorization.k8s.io", "v1", "clusterrolebindings"),
}


@functools.cache
def rendered_rbac() -> tuple[Obj, ...]:
    """The ServiceAccount and RBAC objects of `kubectl kustomize manifests/default`."""
    out = subprocess.run(
        ["kubectl", "kustomize", str(ROOT / "manifests" / "default")],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    return tuple(d for d in yaml.safe_load_all(out) if d and d.get("kind") in RBAC_KINDS)


def rbac_for(cluster: Cluster) -> list[Obj]:
    """The shipped RBAC, placed in the cluster's operator namespace (and renamed per run on a real
    cluster); a deep copy the caller may change (e.g. drop a rule)."""
    docs = [copy.deepcopy(d) for d in rendered_rbac()]
    if cluster.is_emulator:
        return docs
    suffix = f"-test-{cluster.run_id}"
    renamed_names = {
        "capo-reserved-ips": cluster.reservation_name,
        "capo-operator": cluster.webhook_config_name,  # the webhook configuration's caBundle
    }
    for doc in docs:
        meta = doc["metadata"]
        if "namespace" in meta:
            meta["namespace"] = cluster.operator_namespace
        if doc["kind"] in ("ClusterRole", "ClusterRoleBinding"):
            meta["name"] += suffix
        if doc["kind"] == "ClusterRoleBinding" or doc["kind"] == "RoleBinding":
            if doc["roleRef"]["kind"] == "ClusterRole":
                doc["roleRef"]["name"] += suffix
            for subject in doc.get("subjects") or []:
                if subject.get("namespace") == SHIPPED_NAMESPACE:
                    subject["namespace"] = cluster.operator_namespace
        if doc["kind"] == "ClusterRole":
            for rule in doc.get("rules") or []:
                if rule.get("resourceNames"):
                    rule["resourceNames"] = [renamed_names.get(n, n) for n in rule["resourceNames"]]
    return docs


def without_rule(docs: list[Obj], kind: str, name: str, match: Callable[[Obj], bool]) -> list[Obj]:
    """A copy of `docs` with the rules of `kind`/`name` that `match` removed (at least one)."""
    out = copy.deepcopy(docs)
    for doc in out:
        if doc["kind"] == kind and doc["metadata"]["name"].startswith(name):
            kept = [r for r in doc.get("rules") or [] if not match(r)]
            assert len(kept) < len(doc.get("rules") or []), f"no rule of {kind} {name} matched"
            doc["rules"] = kept
    return out


async def apply_rbac(cluster: Cluster, docs: list[Obj]) -> None:
    """Create or replace each object (a replaced Role takes effect at once)."""
    for doc in docs:
        group, version, plural = _PATHS[doc["kind"]]
        namespace = (
            doc["metadata"].get("namespace")
            if doc["kind"] in ("ServiceAccount", "Role", "RoleBinding")
            else None
        )
        base = path_for(group, version, plural, namespace)
        existing = await cluster.kube.get_or_none(f"{base}/{doc['metadata']['name']}")
        if existing is None:
            await cluster.kube.create(base, doc)
        elif doc["kind"] != "ServiceAccount":
            body = {
                **doc,
                "metadata": {**doc["metadata"], "resourceVersion": existing["metadata"]["resourceVersion"]},
            }
            await cluster.kube.replace(f"{base}/{doc['metadata']['name']}", body)


async def delete_rbac(cluster: Cluster, docs: list[Obj]) -> None:
    """Remove the cluster-scoped objects (the namespaced ones go with the namespace)."""
    for doc in docs:
        if doc["kind"] in ("ClusterRole", "ClusterRoleBinding"):
            group, version, plural = _PATHS[doc["kind"]]
            await cluster.kube.delete(
                path_for(group, version, plural, name=doc["metadata"]["name"]), missing_ok=True
            )


async def request_token(cluster: Cluster, seconds: int = TOKEN_SECONDS) -> str:
    """A ServiceAccount token from the TokenRequest API, as the kubelet projects one."""
    path = path_for("", "v1", "serviceaccounts", cluster.operator_namespace, SERVICE_ACCOUNT, "token")
    body = {
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenRequest",
        "spec": {"expirationSeconds": seconds},
    }
    resp = await cluster.kube.call("POST", path, body)
    token: str = resp.body["status"]["token"]
    return token


def token_kubeconfig(admin_kubeconfig: Path, token_file: Path, path: Path) -> Path:
    """A kubeconfig for the same server and CA as the admin one, authenticating with the token in
    `token_file` (re-read by the operator, so rewriting the file rotates the token)."""
    admin: dict[str, Any] = yaml.safe_load(admin_kubeconfig.read_text())
    current = admin.get("current-context")
    context = next(c for c in admin["contexts"] if c["name"] == current)["context"]
    cluster_entry = next(c for c in admin["clusters"] if c["name"] == context["cluster"])
    cluster_cfg = dict(cluster_entry["cluster"])
    for key in ("certificate-authority",):  # a relative path must stay valid next to the new file
        if key in cluster_cfg and not Path(cluster_cfg[key]).is_absolute():
            cluster_cfg[key] = str((admin_kubeconfig.parent / cluster_cfg[key]).resolve())
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "test", "cluster": cluster_cfg}],
        "users": [{"name": SERVICE_ACCOUNT, "user": {"tokenFile": str(token_file)}}],
        "contexts": [{"name": "operator", "context": {"cluster": "test", "user": SERVICE_ACCOUNT}}],
        "current-context": "operator",
    }
    path.write_text(yaml.safe_dump(doc))
    return path
