"""The dashboard and the alerts query only metrics the operator really exports, cover what an
operator of the system needs, and every alert has a runbook."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import yaml

from capo_operator.metrics import Metrics

# Series written by Prometheus itself for every scrape target (not by the operator).
PROMETHEUS_SERIES = {"up"}
FUNCTIONS = {
    "abs",
    "absent",
    "absent_over_time",
    "avg",
    "avg_over_time",
    "bottomk",
    "ceil",
    "changes",
    "clamp",
    "clamp_max",
    "clamp_min",
    "count",
    "count_over_time",
    "count_values",
    "delta",
    "deriv",
    "exp",
    "floor",
    "group",
    "histogram_quantile",
    "idelta",
    "increase",
    "irate",
    "label_join",
    "label_replace",
    "ln",
    "max",
    "max_over_time",
    "min",
    "min_over_time",
    "quantile",
    "quantile_over_time",
    "rate",
    "resets",
    "round",
    "scalar",
    "sort",
    "sort_desc",
    "stddev",
    "stdvar",
    "sum",
    "sum_over_time",
    "time",
    "timestamp",
    "topk",
    "vector",
    "last_over_time",
}
KEYWORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "inf",
    "nan",
}


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers that are not functions, keywords, label names
    in matchers or grouping clauses, durations, strings or Grafana variables."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    e = re.sub(r"\{[^{}]*\}", "", e)  # label matchers
    e = re.sub(r"\[[^\]]*\]", "", e)  # range selectors
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    e = re.sub(r"\$\{?\w+\}?", " ", e)  # Grafana variables
    idents = set(re.findall(r"(?<![\w.])[a-zA-Z_:][a-zA-Z0-9_:]*", e))
    return {i for i in idents if i.lower() not in FUNCTIONS | KEYWORDS}


def dashboard_exprs(tools: Any) -> list[tuple[str, str]]:
    dash = json.loads(tools.DASHBOARD_SOURCE.read_text())
    out = []
    for panel in dash["panels"]:
        for target in panel.get("targets", []):
            out.append((panel["title"], target["expr"]))
    return out


def alert_rules(tools: Any) -> list[dict[str, Any]]:
    rule = yaml.safe_load(tools.RULES_SOURCE.read_text())
    return [r for g in rule["spec"]["groups"] for r in g["rules"]]


def test_the_extractor_finds_metrics_and_nothing_else() -> None:
    expr = (
        "histogram_quantile(0.99, sum by (le, operation) (rate(capo_webhook_duration_seconds_bucket"
        '{outcome=~"error|x"}[$__rate_interval]))) / on (pod) group_left max(up{job="a b"}) or vector(0)'
    )
    assert metric_names(expr) == {"capo_webhook_duration_seconds_bucket", "up"}
    assert metric_names("max(ip_reserve_count) > 0.8 * max(ip_reserve_count_max)") == {
        "ip_reserve_count",
        "ip_reserve_count_max",
    }


def test_every_query_uses_only_exported_metrics(tools: Any) -> None:
    exported = Metrics().exposed_names() | PROMETHEUS_SERIES
    exprs = dashboard_exprs(tools) + [(r["alert"], r["expr"]) for r in alert_rules(tools)]
    assert len(exprs) > 20
    unknown = {(where, name) for where, expr in exprs for name in metric_names(expr) if name not in exported}
    assert unknown == set()
    # And the names really exist in a scrape of the operator's registry (not only in the helper).
    from prometheus_client import generate_latest

    scrape = generate_latest(Metrics().registry).decode()
    for name in (
        "ip_reserve_count",
        "ip_reserve_count_max",
        "ip_reserve_evictions_count",
        "capo_reservations_total",
        "capo_releases_total",
        "capo_config_last_reload_successful",
    ):
        assert re.search(rf"^{name}[{{ ]", scrape, re.M), name


def test_a_misspelled_metric_would_be_caught(tools: Any) -> None:
    exported = Metrics().exposed_names()
    assert "capo_reservations" not in exported  # the Python name, not the exposed counter name
    assert metric_names("sum(rate(capo_reservations[5m]))") - exported == {"capo_reservations"}


def test_dashboard_shows_what_the_issue_asks_for(tools: Any) -> None:
    dash = json.loads(tools.DASHBOARD_SOURCE.read_text())
    all_exprs = " ".join(expr for _, expr in dashboard_exprs(tools))
    for needed in (
        "ip_reserve_count",
        "ip_reserve_count_max",
        "capo_reservations_total",
        "capo_releases_total",
        "capo_reservation_hold_seconds_bucket",
        "capo_webhook_duration_seconds_bucket",
        "capo_webhook_requests_total",
        "capo_safety_net_catches_total",
        "leader_election_master_status",
        "capo_reserved_ip_info",
    ):
        assert needed in all_exprs, needed
    by_trigger = [e for _, e in dashboard_exprs(tools) if "capo_reservations_total" in e]
    assert any("by (trigger)" in e for e in by_trigger)
    assert any("by (reason)" in e for _, e in dashboard_exprs(tools) if "capo_releases_total" in e)
    (table,) = [p for p in dash["panels"] if p["type"] == "table"]
    renamed = table["transformations"][0]["options"]["renameByName"]
    assert {renamed[k] for k in ("ip", "namespace", "pod", "node")} == {"IP", "Namespace", "Pod", "Node"}
    assert renamed["Value"] == "Age"
    assert "by (ip, namespace, pod, node" in table["targets"][0]["expr"]
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    assert dash["templating"]["list"][0]["type"] == "datasource"


def test_webhook_row_shows_reserve_ahead_without_overlapping_panels(tools: Any) -> None:
    dash = json.loads(tools.DASHBOARD_SOURCE.read_text())
    rows = sorted((p["gridPos"]["y"], p["title"]) for p in dash["panels"] if p["type"] == "row")
    (start,) = [y for y, title in rows if title == "Webhook"]
    end = min((y for y, _ in rows if y > start), default=10**6)
    row = [p for p in dash["panels"] if p["type"] != "row" and start < p["gridPos"]["y"] < end]
    exprs = " ".join(t["expr"] for p in row for t in p["targets"])
    assert "capo_reserved_ahead_ips" in exprs
    assert 'outcome="reserved-ahead"' in exprs  # the share of reviews answered without a write
    cells = set()
    for p in row:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24, p["title"]
        here = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & here, f"{p['title']} overlaps another panel"
        cells |= here


REQUIRED_ALERTS = {
    "CapoOperatorTooFewReplicas",
    "CapoOperatorNoLeader",
    "CapoReservedIPsNearCap",
    "CapoWebhookErrors",
    "CapoSafetyNetCatchingDeletions",
    "CapoConfigReloadFailed",
}


def _anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to dashes."""
    return {
        re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
        for h in re.findall(r"^#{1,6} (.+)$", markdown, re.M)
    }


def test_every_alert_has_a_runbook_section(tools: Any) -> None:
    rules = alert_rules(tools)
    assert {r["alert"] for r in rules} >= REQUIRED_ALERTS
    anchors = _anchors((tools.ROOT / "docs" / "runbooks.md").read_text())
    for r in rules:
        url = r["annotations"]["runbook_url"]
        page, _, anchor = url.partition("#")
        assert page.endswith("/docs/runbooks.md"), url
        assert anchor == r["alert"].lower() and anchor in anchors, url
        assert r["labels"]["severity"] in {"warning", "critical"}
        assert r["annotations"]["summary"]


@pytest.mark.parametrize("alert", sorted(REQUIRED_ALERTS))
def test_alert_expressions_are_valid_promql_shape(tools: Any, alert: str) -> None:
    (rule,) = [r for r in alert_rules(tools) if r["alert"] == alert]
    expr = rule["expr"]
    assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}")
    assert re.search(r"[<>]=?|==", expr), "an alert expression compares against a threshold"
