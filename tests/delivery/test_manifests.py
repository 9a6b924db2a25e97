"""kustomize manifests: freshness of install.yaml, schema validity, and the contract of
docs/architecture.md (names, webhook rules, RBAC, Deployment)."""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest
import yaml
from conftest import Doc, find

from capo_operator.kube.ledger import MAX_SHARDS as LEDGER_MAX_SHARDS

NS = "capo-system"


def test_install_yaml_and_chart_copies_are_fresh(tools: Any) -> None:
    assert tools.stale_outputs() == [], "run `make manifests`"


def test_install_yaml_is_the_default_overlay(tools: Any, default_docs: list[Doc]) -> None:
    assert tools.load_docs(tools.INSTALL_YAML.read_text()) == default_docs


@pytest.mark.parametrize("overlay", ["default", "certmanager", "prometheus"])
def test_every_object_validates_against_kubernetes_schemas(tools: Any, overlay: str) -> None:
    assert tools.validate_docs(tools.load_docs(tools.kustomize(overlay))) == []


def test_validation_catches_a_broken_object(tools: Any, default_docs: list[Doc]) -> None:
    deployment = find(default_docs, "Deployment", "capo-operator")
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    broken["spec"]["replicas"] = "three"
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["paht"] = "/x"
    assert len(tools.validate_docs([broken])) == 1


# -- CRD ----------------------------------------------------------------------------------------------


def _crd(default_docs: list[Doc]) -> Doc:
    return find(default_docs, "CustomResourceDefinition", "reservedips.capo.io")


def test_crd_names_scope_and_printer_columns(default_docs: list[Doc]) -> None:
    crd = _crd(default_docs)
    spec = crd["spec"]
    assert spec["group"] == "capo.io" and spec["scope"] == "Cluster"
    assert spec["names"] | {} == {
        "kind": "ReservedIP",
        "listKind": "ReservedIPList",
        "plural": "reservedips",
        "singular": "reservedip",
        "shortNames": ["rip"],
    }
    (version,) = spec["versions"]
    assert version["name"] == "v1" and version["served"] and version["storage"]
    columns = [(c["name"], c["jsonPath"], c["type"]) for c in version["additionalPrinterColumns"]]
    assert columns == [
        ("IP", ".spec.ip", "string"),
        ("NAMESPACE", ".spec.pod.namespace", "string"),
        ("POD", ".spec.pod.name", "string"),
        ("TRIGGER", ".spec.trigger", "string"),
        ("EXPIRES", ".spec.expiresAt", "date"),
        ("AGE", ".metadata.creationTimestamp", "date"),
    ]


def _openapi_to_jsonschema(node: Any) -> Any:
    """OpenAPI v3 `nullable` is not JSON Schema: turn it into a type union, recursively."""
    if isinstance(node, dict):
        out = {k: _openapi_to_jsonschema(v) for k, v in node.items() if k != "nullable"}
        if node.get("nullable"):
            out["type"] = [node["type"], "null"]
        return out
    if isinstance(node, list):
        return [_openapi_to_jsonschema(v) for v in node]
    return node


RECORD = {
    "apiVersion": "capo.io/v1",
    "kind": "ReservedIP",
    "metadata": {"name": "10.244.1.7"},
    "spec": {
        "ip": "10.244.1.7",
        "pod": {"namespace": "ns", "name": "redis-0", "uid": "u-1", "node": "node-1"},
        "owner": {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "redis", "uid": "u-2"},
        "trigger": "delete",
        "reservedAt": "2026-01-01T00:00:00Z",
        "expiresAt": "2026-01-01T00:40:00Z",
        "holdSeconds": 2400,
        "policy": "ipReserveTime=40m",
    },
}


def test_the_documented_record_fits_the_schema_and_bad_ones_do_not(default_docs: list[Doc]) -> None:
    schema = _openapi_to_jsonschema(_crd(default_docs)["spec"]["versions"][0]["schema"]["openAPIV3Schema"])
    jsonschema.validate(RECORD, schema)
    alive = {**RECORD, "spec": {**RECORD["spec"], "expiresAt": None}}  # clock not started
    jsonschema.validate(alive, schema)
    for bad in ({"trigger": "exploded"}, {"holdSeconds": -1}, {"pod": {"name": "x"}}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate({**RECORD, "spec": {**RECORD["spec"], **bad}}, schema)


# -- webhook ------------------------------------------------------------------------------------------


def test_webhook_configuration_is_exactly_the_documented_one(default_docs: list[Doc]) -> None:
    vwc = find(default_docs, "ValidatingWebhookConfiguration", "capo-operator")
    hooks = {h["name"]: h for h in vwc["webhooks"]}
    assert set(hooks) == {"reserve-on-delete.capo.io", "reserve-on-eviction.capo.io"}
    expected = {
        "reserve-on-delete.capo.io": ("/reserve-on-delete", "DELETE", "pods"),
        "reserve-on-eviction.capo.io": ("/reserve-on-eviction", "CREATE", "pods/eviction"),
    }
    for name, (path, op, resource) in expected.items():
        h = hooks[name]
        assert h["clientConfig"]["service"] == {
            "name": "capo-webhook",
            "namespace": NS,
            "path": path,
            "port": 443,
        }
        assert h["rules"] == [
            {
                "apiGroups": [""],
                "apiVersions": ["v1"],
                "operations": [op],
                "resources": [resource],
                "scope": "Namespaced",
            }
        ]
        assert h["admissionReviewVersions"] == ["v1"]
        assert h["sideEffects"] == "NoneOnDryRun"
        assert h["failurePolicy"] == "Ignore"
        assert h["timeoutSeconds"] == 5
        assert h["matchPolicy"] == "Equivalent"
        assert "objectSelector" not in h
        assert h["namespaceSelector"] == {
            "matchExpressions": [
                {"key": "ip-reserve", "operator": "In", "values": ["enabled", "enable"]},
                {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["kube-system", NS]},
            ]
        }
    service = find(default_docs, "Service", "capo-webhook")
    assert service["spec"]["ports"] == [
        {"name": "webhook", "port": 443, "targetPort": "webhook", "protocol": "TCP"}
    ]
    metrics = find(default_docs, "Service", "capo-metrics")
    assert metrics["spec"]["ports"][0]["port"] == 8080


# -- RBAC ---------------------------------------------------------------------------------------------


def _rules(docs: list[Doc]) -> list[tuple[str, str, dict[str, Any]]]:
    """(kind, namespace, rule) for every rule bound to the operator's ServiceAccount."""
    bound: set[tuple[str, str]] = set()
    for d in docs:
        if d["kind"] in ("RoleBinding", "ClusterRoleBinding"):
            for s in d["subjects"]:
                if s == {"kind": "ServiceAccount", "name": "capo-operator", "namespace": NS}:
                    bound.add((d["roleRef"]["kind"], d["roleRef"]["name"]))
    out = []
    for d in docs:
        if d["kind"] in ("Role", "ClusterRole") and (d["kind"], d["metadata"]["name"]) in bound:
            out.extend((d["kind"], d["metadata"].get("namespace", ""), r) for r in d["rules"])
    return out


def allowed(
    docs: list[Doc], group: str, resource: str, verb: str, *, namespace: str = "", name: str | None = None
) -> bool:
    """A small model of RBAC authorization for one request of the operator's ServiceAccount."""
    for kind, ns, rule in _rules(docs):
        if kind == "Role" and ns != namespace:
            continue
        if group not in rule["apiGroups"] or resource not in rule["resources"] or verb not in rule["verbs"]:
            continue
        names = rule.get("resourceNames")
        if names and (name is None or name not in names):
            continue
        return True
    return False


# Every call of docs/architecture.md "Kubernetes API calls": (group, resource, verb, namespace, name).
CALLS = [
    *[("", r, v, "", None) for r in ("pods", "namespaces") for v in ("get", "list", "watch")],
    *[
        ("capo.io", "reservedips", v, "", None)
        for v in ("get", "list", "watch", "create", "update", "patch", "delete")
    ],
    *[(g, "ipreservations", "create", "", None) for g in ("crd.projectcalico.org", "projectcalico.org")],
    *[(g, "ipreservations", "list", "", None) for g in ("crd.projectcalico.org", "projectcalico.org")],
    *[
        (g, "ipreservations", v, "", "capo-reserved-ips")
        for g in ("crd.projectcalico.org", "projectcalico.org")
        for v in ("get", "list", "watch", "update", "patch")
    ],
    *[("apps", r, "get", "", None) for r in ("statefulsets", "replicasets", "deployments", "daemonsets")],
    ("coordination.k8s.io", "leases", "create", NS, None),
    *[("coordination.k8s.io", "leases", v, NS, "capo") for v in ("get", "update", "patch")],
    ("", "configmaps", "create", NS, None),
    *[("", "configmaps", v, NS, "capo-ledger") for v in ("get", "update", "patch")],
    *[
        ("", "configmaps", v, NS, f"capo-ledger-{i}")
        for i in range(LEDGER_MAX_SHARDS)
        for v in ("get", "update", "patch", "delete")
    ],
    *[("", "configmaps", v, NS, "capo-config") for v in ("get", "list", "watch")],
    *[(g, "events", v, "", None) for g in ("", "events.k8s.io") for v in ("create", "patch")],
]
BUILTIN_CERT_CALLS = [
    ("", "secrets", "create", NS, None),
    *[("", "secrets", v, NS, "capo-webhook-tls") for v in ("get", "update", "patch")],
    *[
        ("admissionregistration.k8s.io", "validatingwebhookconfigurations", v, "", "capo-operator")
        for v in ("get", "patch")
    ],
]


@pytest.mark.parametrize("call", CALLS + BUILTIN_CERT_CALLS, ids=lambda c: "/".join(str(x) for x in c))
def test_rbac_allows_every_documented_call(default_docs: list[Doc], call: tuple[Any, ...]) -> None:
    group, resource, verb, ns, name = call
    assert allowed(default_docs, group, resource, verb, namespace=ns, name=name)


@pytest.mark.parametrize(
    "call",
    [
        ("", "secrets", "get", NS, "some-other-secret"),
        ("", "secrets", "list", NS, None),
        ("", "secrets", "get", "default", "capo-webhook-tls"),
        ("", "configmaps", "update", NS, "kube-root-ca.crt"),
        ("", "configmaps", "update", NS, "capo-config"),
        ("", "configmaps", "delete", NS, "capo-ledger"),
        ("", "configmaps", "update", NS, f"capo-ledger-{LEDGER_MAX_SHARDS}"),
        ("", "configmaps", "list", NS, None),
        ("coordination.k8s.io", "leases", "update", NS, "someone-elses-lease"),
        ("crd.projectcalico.org", "ipreservations", "update", "", "another-teams-reservation"),
        ("crd.projectcalico.org", "ipreservations", "watch", "", None),
        ("projectcalico.org", "ipreservations", "watch", "", "another-teams-reservation"),
        ("crd.projectcalico.org", "ippools", "list", "", None),
        ("admissionregistration.k8s.io", "validatingwebhookconfigurations", "patch", "", "other-webhook"),
        ("", "pods", "delete", "", None),
        ("", "pods/eviction", "create", "", None),
        ("capo.io", "reservedips", "deletecollection", "", None),
        # Kopf only hosts the webhook: it scans discovery once and watches no CRDs.
        ("apiextensions.k8s.io", "customresourcedefinitions", "list", "", None),
        ("apiextensions.k8s.io", "customresourcedefinitions", "watch", "", None),
    ],
    ids=lambda c: "/".join(str(x) for x in c),
)
def test_rbac_denies_what_the_operator_does_not_need(default_docs: list[Doc], call: tuple[Any, ...]) -> None:
    group, resource, verb, ns, name = call
    assert not allowed(default_docs, group, resource, verb, namespace=ns, name=name)


@pytest.mark.parametrize("overlay", ["default", "certmanager"])
def test_rbac_has_no_wildcards(tools: Any, overlay: str) -> None:
    for _, _, rule in _rules(tools.load_docs(tools.kustomize(overlay))):
        for field in ("apiGroups", "resources", "verbs", "resourceNames"):
            assert "*" not in rule.get(field, []), rule


def test_cert_manager_mode_needs_no_secret_or_webhook_access(certmanager_docs: list[Doc]) -> None:
    for call in BUILTIN_CERT_CALLS:
        group, resource, verb, ns, name = call
        assert not allowed(certmanager_docs, group, resource, verb, namespace=ns, name=name), call
    for call in CALLS:
        group, resource, verb, ns, name = call
        assert allowed(certmanager_docs, group, resource, verb, namespace=ns, name=name), call


# -- Deployment ---------------------------------------------------------------------------------------


def _container(docs: list[Doc]) -> tuple[Doc, Doc]:
    deployment = find(docs, "Deployment", "capo-operator")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    return pod, container


def test_deployment_is_hardened_and_highly_available(default_docs: list[Doc]) -> None:
    deployment = find(default_docs, "Deployment", "capo-operator")
    assert deployment["metadata"]["namespace"] == NS
    assert deployment["spec"]["replicas"] == 3
    pod, c = _container(default_docs)
    assert pod["serviceAccountName"] == "capo-operator"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 65532
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    anti = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]
    assert (
        anti["podAffinityTerm"]["labelSelector"]["matchLabels"]
        == deployment["spec"]["selector"]["matchLabels"]
    )
    assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]
    pdb = find(default_docs, "PodDisruptionBudget", "capo-operator")
    assert pdb["spec"]["selector"] == deployment["spec"]["selector"]
    assert pdb["spec"]["maxUnavailable"] == 1


def test_deployment_runs_the_documented_command_ports_and_probes(default_docs: list[Doc]) -> None:
    pod, c = _container(default_docs)
    assert c["args"][0] == "run"
    assert "--config=/etc/capo/capo_config.yaml" in c["args"]
    assert "--certs=builtin" in c["args"]
    env = {e["name"]: e for e in c["env"]}
    assert env["POD_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {
        "webhook": 9443,
        "metrics": 8080,
        "probes": 8081,
    }
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "probes"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "probes"}
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    # Read-only root filesystem: every writable path is an emptyDir.
    assert "emptyDir" in volumes[mounts["/tmp"]]
    assert "emptyDir" in volumes[mounts["/tmp/k8s-webhook-server/serving-certs"]]
    assert volumes[mounts["/etc/capo"]]["configMap"]["name"] == "capo-config"


def test_config_map_is_capos_format_with_capos_defaults(default_docs: list[Doc]) -> None:
    cm = find(default_docs, "ConfigMap", "capo-config")
    config = yaml.safe_load(cm["data"]["capo_config.yaml"])
    assert config["apiVersion"] == "config.capo.io/v1" and config["kind"] == "CapoConfig"
    assert config["health"] == {"healthProbeBindAddress": ":8081"}
    assert config["metrics"] == {"bindAddress": ":8080", "ipInfoLimit": 1000}
    assert config["webhook"] == {"port": 9443}
    assert config["leaderElection"] == {"leaderElect": True, "resourceName": "capo", "resourceNamespace": NS}
    assert (config["ipReserveMaxCount"], config["ipReserveTime"], config["ipReleasePeriod"]) == (
        300,
        "40m",
        "5s",
    )
    assert config["labelSelector"]["matchExpressions"] == [
        {"key": "statefulset.kubernetes.io/pod-name", "operator": "Exists"},
        {"key": "brokerId", "operator": "Exists"},
    ]
    assert config["ipReservationName"] == "capo-reserved-ips"
    assert config["maxIPReserveTime"] == "24h" and config["strictMode"] is False
    assert config["reserveAhead"] is False  # opt-in: deletions write as with Capo


def test_cert_manager_overlay_mounts_the_issued_secret_and_injects_the_ca(
    certmanager_docs: list[Doc],
) -> None:
    pod, c = _container(certmanager_docs)
    assert "--certs=files" in c["args"] and "--certs=builtin" not in c["args"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["webhook-certs"] == {
        "name": "webhook-certs",
        "secret": {"secretName": "capo-webhook-tls", "defaultMode": 0o440},
    }
    cert = find(certmanager_docs, "Certificate", "capo-webhook-cert")
    assert cert["spec"]["secretName"] == "capo-webhook-tls"
    assert set(cert["spec"]["dnsNames"]) == {
        "capo-webhook",
        "capo-webhook.capo-system",
        "capo-webhook.capo-system.svc",
        "capo-webhook.capo-system.svc.cluster.local",
    }
    vwc = find(certmanager_docs, "ValidatingWebhookConfiguration", "capo-operator")
    assert vwc["metadata"]["annotations"] == {
        "cert-manager.io/inject-ca-from": "capo-system/capo-webhook-cert"
    }
    assert (
        cert["spec"]["issuerRef"]["name"]
        == find(certmanager_docs, "Issuer", "capo-selfsigned-issuer")["metadata"]["name"]
    )
