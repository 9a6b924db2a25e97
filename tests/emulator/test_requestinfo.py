"""RequestInfo parsing and RBAC rule evaluation, as pure functions (kube-apiserver's semantics)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from kube_emulator.context import UserInfo
from kube_emulator.rbac import Rule, forbidden_message
from kube_emulator.requestinfo import RequestInfo, parse

names = st.from_regex(r"[a-z0-9]([a-z0-9.-]{0,20}[a-z0-9])?", fullmatch=True).filter(
    lambda n: n not in ("namespaces", "watch", "proxy")
)
VERBS = {"GET": "get", "PUT": "update", "PATCH": "patch", "DELETE": "delete", "POST": "create"}


def test_examples() -> None:
    assert parse("GET", "/api", {}) == RequestInfo(False, "/api", "get")
    assert parse("GET", "/apis/apps/v1", {}) == RequestInfo(False, "/apis/apps/v1", "get")
    assert parse("GET", "/api/v1", {}).is_resource is False
    assert parse("POST", "/healthz", {}) == RequestInfo(False, "/healthz", "post")
    pods = parse("GET", "/api/v1/namespaces/ns/pods", {})
    assert (pods.verb, pods.namespace, pods.resource, pods.name) == ("list", "ns", "pods", "")
    assert parse("GET", "/api/v1/namespaces/ns/pods", {"watch": "true"}).verb == "watch"
    assert parse("GET", "/api/v1/namespaces/ns/pods", {"watch": "false"}).verb == "list"
    assert parse("DELETE", "/api/v1/namespaces/ns/pods", {}).verb == "deletecollection"
    evict = parse("POST", "/api/v1/namespaces/ns/pods/p/eviction", {})
    assert (evict.verb, evict.resource, evict.subresource, evict.name) == ("create", "pods", "eviction", "p")
    # A namespace is in itself; its status and finalize are subresources of it.
    ns = parse("GET", "/api/v1/namespaces/ns", {})
    assert (ns.namespace, ns.resource, ns.name) == ("ns", "namespaces", "ns")
    fin = parse("PUT", "/api/v1/namespaces/ns/finalize", {})
    assert (fin.namespace, fin.resource, fin.name, fin.subresource) == ("ns", "namespaces", "ns", "finalize")
    crd = parse("PATCH", "/apis/crd.projectcalico.org/v1/ipreservations/r", {})
    assert (crd.api_group, crd.api_version, crd.resource, crd.name, crd.namespace) == (
        "crd.projectcalico.org",
        "v1",
        "ipreservations",
        "r",
        "",
    )
    legacy = parse("GET", "/api/v1/watch/namespaces/ns/pods", {})
    assert (legacy.verb, legacy.namespace, legacy.resource) == ("watch", "ns", "pods")


@given(names, names, names, st.sampled_from(["", "status", "eviction"]), st.sampled_from(sorted(VERBS)))
def test_named_paths(ns: str, resource: str, name: str, sub: str, method: str) -> None:
    path = f"/api/v1/namespaces/{ns}/{resource}/{name}" + (f"/{sub}" if sub else "")
    info = parse(method, path, {"fieldSelector": "metadata.name=zzz"})
    assert info == RequestInfo(True, path, VERBS[method], "", "v1", ns, resource, sub, name)


@given(names, st.one_of(st.none(), names), names)
def test_name_field_selector_names_a_list(resource: str, ns: str | None, selected: str) -> None:
    base = f"/apis/g.example/v1/namespaces/{ns}/{resource}" if ns else f"/apis/g.example/v1/{resource}"
    for selector in (f"metadata.name={selected}", f"metadata.name=={selected},spec.x=y"):
        info = parse("GET", base, {"fieldSelector": selector})
        assert (info.verb, info.name, info.namespace) == ("list", selected, ns or "")
    assert parse("GET", base, {"fieldSelector": f"metadata.name!={selected}"}).name == ""
    assert parse("GET", base, {"fieldSelector": "metadata.name=a/b"}).name == ""  # not a path segment
    # A DELETE is never named by a selector: it stays a deletecollection.
    assert parse("DELETE", base, {"fieldSelector": f"metadata.name={selected}"}).verb == "deletecollection"


words = st.sampled_from(["get", "list", "watch", "create", "update", "patch", "delete", "impersonate"])
resources = st.sampled_from(["pods", "secrets", "nodes", "leases"])
subresources = st.sampled_from(["", "status", "eviction"])


def request(verb: str, resource: str, sub: str = "", name: str = "", group: str = "") -> RequestInfo:
    return RequestInfo(True, "", verb, group, "v1", "ns", resource, sub, name)


@given(words, resources, subresources, st.text(max_size=5))
def test_star_rule_allows_every_resource_request(verb: str, resource: str, sub: str, name: str) -> None:
    rule = Rule.from_obj({"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]})
    assert rule.allows(request(verb, resource, sub, name, group="any.group"))
    assert not rule.allows(RequestInfo(False, "/api", verb))  # resource rules never allow a path


@given(words, words, resources, subresources)
def test_verb_must_be_listed(listed: str, asked: str, resource: str, sub: str) -> None:
    combined = f"{resource}/{sub}" if sub else resource
    rule = Rule.from_obj({"apiGroups": [""], "resources": [combined], "verbs": [listed]})
    assert rule.allows(request(asked, resource, sub)) == (listed == asked)


@given(resources, subresources, subresources)
def test_subresource_matching(resource: str, granted: str, asked: str) -> None:
    exact = Rule.from_obj({"apiGroups": [""], "resources": [resource], "verbs": ["get"]})
    assert exact.allows(request("get", resource, asked)) == (asked == "")
    if granted:
        star = Rule.from_obj({"apiGroups": [""], "resources": [f"*/{granted}"], "verbs": ["get"]})
        assert star.allows(request("get", resource, asked)) == (asked == granted)


@given(st.lists(st.sampled_from(["a", "b", "c"]), max_size=3), st.sampled_from(["a", "b", "c", ""]))
def test_resource_names(listed: list[str], asked: str) -> None:
    rule = Rule.from_obj(
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get"], "resourceNames": listed}
    )
    assert rule.allows(request("get", "pods", name=asked)) == (not listed or asked in listed)


@given(
    st.sampled_from(["/api", "/apis/*", "/healthz", "*", "/apis"]),
    st.sampled_from(["/api", "/apis", "/apis/apps/v1", "/healthz", "/healthz/etcd"]),
)
def test_non_resource_urls(url: str, path: str) -> None:
    rule = Rule.from_obj({"nonResourceURLs": [url], "verbs": ["get"]})
    expected = url == "*" or url == path or (url.endswith("*") and path.startswith(url[:-1]))
    assert rule.allows(RequestInfo(False, path, "get")) == expected
    assert not rule.allows(request("get", "pods"))


def test_forbidden_message_forms() -> None:
    u = UserInfo("u")
    assert (
        forbidden_message(u, RequestInfo(False, "/api", "get"))
        == 'forbidden: User "u" cannot get path "/api"'
    )
    assert forbidden_message(u, RequestInfo(True, "", "list", "apps", "v1", "", "deployments")) == (
        'deployments.apps is forbidden: User "u" cannot list resource "deployments" in API group "apps" '
        "at the cluster scope"
    )
    assert forbidden_message(
        u, RequestInfo(True, "", "create", "", "v1", "n", "pods", "eviction", "p"), "why"
    ) == (
        'pods "p" is forbidden: User "u" cannot create resource "pods/eviction" in API group "" '
        'in the namespace "n": why'
    )
