"""The Helm chart renders (with Helm's own engine, offline) to the same objects as kustomize, keeps
Capo's values, validates its values, and lints clean."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from conftest import find

from capo_operator.config import parse_config

pytest.importorskip("helm_python", reason="helm-python-sdk (Helm's engine) is not installed")

MONITORING = {"serviceMonitor": {"enabled": True}, "prometheusRule": {"enabled": True}}


@pytest.mark.parametrize(
    ("overlay", "values"),
    [
        ("default", {"createNamespace": True}),
        ("certmanager", {"createNamespace": True, "certManager": {"enabled": True}}),
        ("prometheus", {"createNamespace": True, **MONITORING}),
    ],
)
def test_chart_renders_the_same_objects_as_kustomize(
    tools: Any, overlay: str, values: dict[str, Any]
) -> None:
    want = tools.by_key(tools.load_docs(tools.kustomize(overlay)))
    got = tools.by_key(tools.render_chart(values))
    assert sorted(got) == sorted(want)
    for k in want:
        assert got[k] == want[k], k


def test_default_values_are_capos(tools: Any) -> None:
    values = yaml.safe_load((tools.CHART / "values.yaml").read_text())
    assert values["replicaCount"] == 3
    assert values["config"] | {} == values["config"]
    capo = {
        "leaderElectionEnable": True,
        "healthProbeBindAddress": ":8081",
        "webhookPort": 9443,
        "metricsBindAddress": ":8080",
        "ipReserveMaxCount": 300,
        "ipReserveTime": "40m",
        "ipReleasePeriod": "5s",
    }
    assert {k: values["config"][k] for k in capo} == capo
    for key in (
        "namespace",
        "image",
        "nameOverride",
        "fullnameOverride",
        "podAnnotations",
        "podSecurityContext",
        "securityContext",
        "service",
        "resources",
        "autoscaling",
        "nodeSelector",
        "tolerations",
        "affinity",
    ):
        assert key in values
    assert set(values["image"]) >= {"repository", "pullPolicy", "pullSecrets", "tag"}
    assert set(values["service"]) == {"type", "port"}


def test_capo_values_change_what_they_meant_in_capo(tools: Any) -> None:
    docs = tools.render_chart(
        {
            "replicaCount": 5,
            "namespace": "infra",
            "config": {
                "ipReserveMaxCount": 100,
                "ipReserveTime": "2h",
                "ipReleasePeriod": "10s",
                "leaderElectionEnable": False,
                "metricsBindAddress": ":9090",
                "healthProbeBindAddress": ":9091",
                "webhookPort": 10443,
            },
            "image": {"repository": "registry.example/capo", "tag": "v9", "pullSecrets": ["regcred"]},
            "service": {"port": 8443},
            "webhook": {"failurePolicy": "Fail"},
            "nodeSelector": {"pool": "system"},
            "podAnnotations": {"a": "b"},
        },
        namespace="infra",
    )
    deployment = find(docs, "Deployment", "capo-operator")
    pod = deployment["spec"]["template"]["spec"]
    assert deployment["metadata"]["namespace"] == "infra" and deployment["spec"]["replicas"] == 5
    assert pod["containers"][0]["image"] == "registry.example/capo:v9"
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["nodeSelector"] == {"pool": "system"}
    assert deployment["spec"]["template"]["metadata"]["annotations"] == {"a": "b"}
    assert {p["name"]: p["containerPort"] for p in pod["containers"][0]["ports"]} == {
        "webhook": 10443,
        "metrics": 9090,
        "probes": 9091,
    }
    config = yaml.safe_load(find(docs, "ConfigMap", "capo-config")["data"]["capo_config.yaml"])
    assert (config["ipReserveMaxCount"], config["ipReserveTime"], config["ipReleasePeriod"]) == (
        100,
        "2h",
        "10s",
    )
    assert config["leaderElection"] == {
        "leaderElect": False,
        "resourceName": "capo",
        "resourceNamespace": "infra",
    }
    assert config["webhook"]["port"] == 10443
    vwc = find(docs, "ValidatingWebhookConfiguration", "capo-operator")
    for hook in vwc["webhooks"]:
        assert hook["failurePolicy"] == "Fail"
        assert hook["clientConfig"]["service"]["namespace"] == "infra"
        assert hook["clientConfig"]["service"]["port"] == 8443
        assert hook["namespaceSelector"]["matchExpressions"][1]["values"] == ["kube-system", "infra"]
    assert find(docs, "Service", "capo-webhook")["spec"]["ports"][0]["port"] == 8443
    role = find(docs, "Role", "capo-operator")
    assert role["metadata"]["namespace"] == "infra"


def test_reserve_ahead_and_namespace_selector_reach_the_operator(tools: Any) -> None:
    def config_of(values: dict[str, Any]) -> str:
        return str(find(tools.render_chart(values), "ConfigMap", "capo-config")["data"]["capo_config.yaml"])

    text = config_of({})
    assert "namespaceSelector" not in text  # every namespace, as without the key
    default = parse_config(text)
    assert default.reserve_ahead is False and default.namespace_selector.query() is None
    chosen = parse_config(
        config_of(
            {
                "config": {
                    "reserveAhead": True,
                    "namespaceSelector": {
                        "matchLabels": {"team": "payments"},
                        "matchExpressions": [{"key": "tier", "operator": "Exists"}],
                    },
                }
            }
        )
    )
    assert chosen.reserve_ahead is True
    assert chosen.namespace_selector.query() == "team in (payments),tier"
    assert "reserveAhead is on" in tools.render_notes({"config": {"reserveAhead": True}})
    assert "reserveAhead" not in tools.render_notes({})


def test_renamed_reservation_is_what_rbac_allows(tools: Any) -> None:
    docs = tools.render_chart({"config": {"ipReservationName": "tenant-a-held"}})
    rules = find(docs, "ClusterRole", "capo-operator")["rules"]
    assert any(r.get("resourceNames") == ["tenant-a-held"] for r in rules)


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"config": {"ipReserveTime": "forty minutes"}}, "ipReserveTime"),
        ({"config": {"ipReserveMaxCount": 0}}, "ipReserveMaxCount"),
        ({"config": {"calicoAPIGroup": "calico"}}, "calicoAPIGroup"),
        (
            {"config": {"labelSelector": {"matchExpressions": [{"key": "a", "operator": "Matches"}]}}},
            "operator",
        ),
        ({"webhook": {"failurePolicy": "Deny"}}, "failurePolicy"),
        ({"replicaCount": "3"}, "replicaCount"),
        ({"cofnig": {}}, "cofnig"),
        ({"config": {"reserveAhead": "yes"}}, "reserveAhead"),
        ({"config": {"namespaceSelector": {"matchLabel": {"team": "a"}}}}, "matchLabel"),
    ],
)
def test_values_schema_rejects_mistakes(tools: Any, values: dict[str, Any], field: str) -> None:
    from helm_python.errors import HelmError

    with pytest.raises(HelmError) as caught:
        tools.render_chart(values)
    assert field in str(caught.value)


def test_capos_autoscaling_values_are_accepted_with_a_warning(tools: Any) -> None:
    docs = tools.render_chart({"autoscaling": {"enabled": True, "minReplicas": 2, "maxReplicas": 4}})
    assert not [d for d in docs if d["kind"] == "HorizontalPodAutoscaler"]
    assert "autoscaling.enabled is accepted" in tools.render_notes({"autoscaling": {"enabled": True}})
    assert "WARNING" not in tools.render_notes({})


def test_dashboard_and_rules_toggles(tools: Any) -> None:
    docs = tools.render_chart(
        {
            "grafanaDashboard": {"enabled": True},
            **MONITORING,
            "prometheusRule": {"enabled": True, "runbookURL": "https://wiki.example/capo"},
        }
    )
    cm = find(docs, "ConfigMap", "capo-operator-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["data"]["capo-operator.json"] == tools.DASHBOARD_SOURCE.read_text().rstrip("\n")
    rule = find(docs, "PrometheusRule", "capo-operator")
    urls = [r["annotations"]["runbook_url"] for g in rule["spec"]["groups"] for r in g["rules"]]
    assert urls and all(u.startswith("https://wiki.example/capo#") for u in urls)
    assert "{{ $value }}" in str(rule["spec"])  # Prometheus templates survive Helm untouched


def test_chart_crd_is_the_kustomize_crd(tools: Any) -> None:
    assert (tools.CHART / "crds" / tools.CRD_SOURCE.name).read_text() == tools.CRD_SOURCE.read_text()


def test_chart_lints_clean(tools: Any) -> None:
    for values in (
        {},
        {"certManager": {"enabled": True}, "grafanaDashboard": {"enabled": True}, **MONITORING},
    ):
        report = tools.lint_chart(values)
        problems = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
        assert problems == [], problems


def test_chart_variants_validate_against_kubernetes_schemas(tools: Any) -> None:
    values = {
        "certManager": {"enabled": True},
        "grafanaDashboard": {"enabled": True},
        "createNamespace": True,
        **MONITORING,
    }
    assert tools.validate_docs(tools.render_chart(values)) == []
