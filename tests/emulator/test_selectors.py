"""Label and field selectors, parsed and applied as the real server does."""

from __future__ import annotations

import pytest

from kube_emulator.errors import ApiError
from kube_emulator.selectors import from_label_selector, matches, parse_label_selector

from .conftest import Http, pod


@pytest.mark.parametrize(
    ("selector", "labels", "expected"),
    [
        ("a=1", {"a": "1"}, True),
        ("a==1", {"a": "1"}, True),
        ("a=1", {"a": "2"}, False),
        ("a!=1", {}, True),  # a missing key satisfies !=
        ("a!=1", {"a": "1"}, False),
        ("a in (1, 2)", {"a": "2"}, True),
        ("a in (1,2)", {}, False),
        ("a notin (1,2)", {}, True),
        ("a notin (1,2)", {"a": "1"}, False),
        ("a", {"a": ""}, True),
        ("!a", {"a": "x"}, False),
        ("!a", {}, True),
        ("a=1,b", {"a": "1"}, False),
        ("a=1,b,!c", {"a": "1", "b": "x"}, True),
        ("example.com/key=v", {"example.com/key": "v"}, True),
        ("", {"anything": "x"}, True),
    ],
)
def test_label_selector_semantics(selector: str, labels: dict[str, str], expected: bool) -> None:
    assert matches(parse_label_selector(selector), labels) is expected


@pytest.mark.parametrize("bad", ["a in 1", "a in (1", "=x", "a=b=c", "a b"])
def test_label_selector_syntax_errors(bad: str) -> None:
    with pytest.raises(ApiError) as info:
        parse_label_selector(bad)
    assert info.value.code == 400


def test_structured_selector() -> None:
    sel = from_label_selector(
        {"matchLabels": {"a": "1"}, "matchExpressions": [{"key": "b", "operator": "NotIn", "values": ["x"]}]}
    )
    assert sel is not None
    assert matches(sel, {"a": "1"}) and not matches(sel, {"a": "1", "b": "x"})
    assert from_label_selector(None) is None
    assert from_label_selector({}) == ()


async def test_list_with_selectors(http: Http) -> None:
    base = "/api/v1/namespaces/default/pods"
    await http.post(base, pod("p1", {"app": "x", "tier": "web"}, schedulerName="none"))
    await http.post(base, pod("p2", {"app": "y"}, nodeName="node-2"))
    await http.post(base, pod("p3", {"app": "x"}, schedulerName="none"))

    async def names(query: str, path: str = base) -> list[str]:
        s, body, _ = await http.get(f"{path}?{query}")
        assert s == 200, body
        return [i["metadata"]["name"] for i in body["items"]]

    assert await names("labelSelector=app%3Dx") == ["p1", "p3"]
    assert await names("labelSelector=app%3Dx,tier") == ["p1"]
    assert await names("labelSelector=app%20notin%20(x)") == ["p2"]
    assert await names("labelSelector=!tier") == ["p2", "p3"]
    assert await names("fieldSelector=spec.nodeName%3Dnode-2") == ["p2"]
    assert await names("fieldSelector=spec.nodeName%3D") == ["p1", "p3"]
    assert await names("fieldSelector=metadata.name!%3Dp1,spec.schedulerName%3Dnone") == ["p3"]
    assert await names("fieldSelector=metadata.namespace%3Ddefault", "/api/v1/pods") == ["p1", "p2", "p3"]


async def test_event_field_selectors(http: Http) -> None:
    path = "/api/v1/namespaces/default/events"
    for name, reason in (("e1", "Reserved"), ("e2", "Released")):
        await http.post(
            path,
            {
                "metadata": {"name": name},
                "reason": reason,
                "involvedObject": {"kind": "Pod", "name": "p", "namespace": "default", "uid": "u1"},
            },
        )
    s, body, _ = await http.get(f"{path}?fieldSelector=reason%3DReleased,involvedObject.uid%3Du1")
    assert s == 200 and [i["metadata"]["name"] for i in body["items"]] == ["e2"]
