"""Capo's any-of label selector and Kubernetes-compatible validation of it."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from capo_operator.decisions.selector import DEFAULT_SELECTOR, AnySelector, Requirement, SelectorError

STS_POD = {"statefulset.kubernetes.io/pod-name": "redis-0", "app": "redis"}
KAFKA_POD = {"brokerId": "3", "app": "kafka"}
WEB_POD = {"app": "web", "pod-template-hash": "abc"}


@pytest.mark.parametrize(
    ("labels", "expected"),
    [(STS_POD, True), (KAFKA_POD, True), (WEB_POD, False), ({}, False)],
)
def test_default_selector_matches_statefulset_pods_or_brokers(labels: dict[str, str], expected: bool) -> None:
    assert DEFAULT_SELECTOR.matches(labels) is expected


def test_one_matching_requirement_is_enough() -> None:
    # Kubernetes would AND these; Capo ORs them.
    selector = AnySelector.from_dict(
        {
            "matchExpressions": [
                {"key": "app", "operator": "In", "values": ["redis"]},
                {"key": "tier", "operator": "Exists"},
            ]
        }
    )
    assert selector.matches({"app": "redis"})
    assert selector.matches({"tier": "db", "app": "web"})
    assert not selector.matches({"app": "web"})


def test_match_labels_are_in_requirements() -> None:
    selector = AnySelector.from_dict({"matchLabels": {"app": "redis", "team": "data"}})
    assert selector.matches({"app": "redis"})
    assert selector.matches({"team": "data"})
    assert not selector.matches({"app": "redis-exporter", "team": "web"})


@pytest.mark.parametrize(
    ("requirement", "labels", "expected"),
    [
        (Requirement("app", "In", ("a", "b")), {"app": "b"}, True),
        (Requirement("app", "In", ("a", "b")), {"app": "c"}, False),
        (Requirement("app", "In", ("a",)), {}, False),
        (Requirement("app", "NotIn", ("a",)), {"app": "b"}, True),
        (Requirement("app", "NotIn", ("a",)), {"app": "a"}, False),
        (Requirement("app", "NotIn", ("a",)), {}, True),  # as in Kubernetes: absent label is "not in"
        (Requirement("app", "Exists"), {"app": ""}, True),
        (Requirement("app", "Exists"), {"apps": "x"}, False),
        (Requirement("app", "DoesNotExist"), {}, True),
        (Requirement("app", "DoesNotExist"), {"app": "x"}, False),
        (Requirement("app", "In", ("",)), {"app": ""}, True),
    ],
)
def test_requirement_semantics(requirement: Requirement, labels: dict[str, str], expected: bool) -> None:
    assert requirement.matches(labels) is expected


@pytest.mark.parametrize("data", [{}, None, {"matchExpressions": []}, {"matchLabels": {}}])
def test_empty_selector_matches_no_pod(data: Any) -> None:
    selector = AnySelector.from_dict(data)
    assert selector.requirements == ()
    assert not selector.matches(STS_POD)
    assert not selector.matches({})


def test_valid_keys_and_values_are_accepted() -> None:
    selector = AnySelector.from_dict(
        {
            "matchExpressions": [
                {"key": "example.com/" + "n" * 63, "operator": "Exists"},
                {"key": "a" * 63, "operator": "In", "values": ["v" * 63, "", "A-b_c.9"]},
                {"key": ("a" * 61 + ".") * 4 + "b/x", "operator": "DoesNotExist", "values": []},
                {"key": "Upper_Case.Name", "operator": "NotIn", "values": ["x"]},
            ]
        }
    )
    assert len(selector.requirements) == 4
    assert selector.requirements[1].values == ("v" * 63, "", "A-b_c.9")


def _expr(**item: Any) -> dict[str, Any]:
    return {"matchExpressions": [{"key": "ok", "operator": "Exists"}, item]}


@pytest.mark.parametrize(
    ("data", "field", "reason"),
    [
        ([], "<selector>", "must be a mapping"),
        ({"matchLabel": {}}, "matchLabel", "unknown field"),
        ({"matchLabels": ["a"]}, "matchLabels", "must be a mapping"),
        ({"matchLabels": {"app": 3}}, "matchLabels.app", "must be a string"),
        ({"matchLabels": {"app": True}}, "matchLabels.app", "bool True"),
        ({"matchLabels": {"-app": "x"}}, "matchLabels.-app", "starting and ending"),
        ({"matchLabels": {"app": "x y"}}, "matchLabels.app", "label value"),
        ({"matchExpressions": {"key": "a"}}, "matchExpressions", "must be a list"),
        ({"matchExpressions": ["a"]}, "matchExpressions[0]", "must be a mapping"),
        (_expr(operator="Exists"), "matchExpressions[1].key", "is required"),
        (_expr(key="a"), "matchExpressions[1].operator", "is required"),
        (_expr(key="a", operator="exists"), "matchExpressions[1].operator", "got 'exists'"),
        (_expr(key="a", operator="Gt", values=["1"]), "matchExpressions[1].operator", "must be one of"),
        (_expr(key="a", operator="In"), "matchExpressions[1].values", "non-empty when operator is In"),
        (_expr(key="a", operator="NotIn", values=[]), "matchExpressions[1].values", "non-empty"),
        (_expr(key="a", operator="Exists", values=["x"]), "matchExpressions[1].values", "must be empty"),
        (
            _expr(key="a", operator="DoesNotExist", values=["x"]),
            "matchExpressions[1].values",
            "must be empty",
        ),
        (_expr(key="a", operator="In", values="x"), "matchExpressions[1].values", "must be a list"),
        (_expr(key="a", operator="In", values=[1]), "matchExpressions[1].values[0]", "must be a string"),
        (_expr(key="a", operator="In", values=["v" * 64]), "matchExpressions[1].values[0]", "at most 63"),
        (_expr(key="a", operator="In", values=["x", "-x"]), "matchExpressions[1].values[1]", "label value"),
        (_expr(key="a" * 64, operator="Exists"), "matchExpressions[1].key", "at most 63"),
        (_expr(key="", operator="Exists"), "matchExpressions[1].key", "empty name"),
        (_expr(key="Example.com/a", operator="Exists"), "matchExpressions[1].key", "DNS-1123"),
        (_expr(key="/a", operator="Exists"), "matchExpressions[1].key", "empty prefix"),
        (_expr(key="a/", operator="Exists"), "matchExpressions[1].key", "empty name"),
        (_expr(key="a/b/c", operator="Exists"), "matchExpressions[1].key", "DNS-1123"),
        (_expr(key=("a" * 63 + ".") * 4 + "/x", operator="Exists"), "matchExpressions[1].key", "253"),
        (_expr(key=3, operator="Exists"), "matchExpressions[1].key", "must be a string"),
        (_expr(key="a", operator="Exists", value=["x"]), "matchExpressions[1].value", "unknown field"),
    ],
)
def test_invalid_selectors_name_the_field(data: Any, field: str, reason: str) -> None:
    with pytest.raises(SelectorError) as error:
        AnySelector.from_dict(data)
    assert error.value.field == field
    assert reason in error.value.reason


label_names = st.from_regex(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,8}[A-Za-z0-9])?", fullmatch=True)
keys = st.one_of(
    label_names,
    st.builds(lambda p, n: f"{p}.io/{n}", st.from_regex(r"[a-z]{1,8}", fullmatch=True), label_names),
)
requirements = st.one_of(
    st.builds(
        Requirement,
        keys,
        st.sampled_from(["In", "NotIn"]),
        st.lists(label_names, min_size=1, max_size=3).map(tuple),
    ),
    st.builds(Requirement, keys, st.sampled_from(["Exists", "DoesNotExist"])),
)
label_sets = st.dictionaries(
    st.sampled_from(["a", "b", "x.io/c", "d"]), st.sampled_from(["", "1", "2", "v"]), max_size=4
)


@settings(max_examples=100)
@given(st.lists(requirements, max_size=5))
def test_to_dict_round_trips(reqs: list[Requirement]) -> None:
    selector = AnySelector(tuple(reqs))
    assert AnySelector.from_dict(selector.to_dict()) == selector


@settings(max_examples=200)
@given(
    st.lists(
        st.one_of(
            st.builds(
                Requirement,
                st.sampled_from(["a", "b", "d"]),
                st.sampled_from(["In", "NotIn"]),
                st.lists(st.sampled_from(["1", "2"]), min_size=1, max_size=2).map(tuple),
            ),
            st.builds(
                Requirement, st.sampled_from(["a", "x.io/c"]), st.sampled_from(["Exists", "DoesNotExist"])
            ),
        ),
        max_size=4,
    ),
    requirements,
    label_sets,
)
def test_adding_a_requirement_never_unselects_a_pod(
    reqs: list[Requirement], extra: Requirement, labels: dict[str, str]
) -> None:
    before = AnySelector(tuple(reqs)).matches(labels)
    after = AnySelector((*reqs, extra)).matches(labels)
    assert after >= before
    assert after == (before or extra.matches(labels))
