"""Discovery documents have the real server's shape."""

from __future__ import annotations

from .conftest import Http


async def test_core_discovery(http: Http) -> None:
    s, api, _ = await http.get("/api")
    assert s == 200 and api["kind"] == "APIVersions" and api["versions"] == ["v1"]
    s, v1, _ = await http.get("/api/v1")
    assert v1["kind"] == "APIResourceList" and v1["groupVersion"] == "v1"
    by_name = {r["name"]: r for r in v1["resources"]}
    assert by_name["pods"] == {
        "name": "pods",
        "singularName": "pod",
        "namespaced": True,
        "kind": "Pod",
        "verbs": ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"],
        "shortNames": ["po"],
        "categories": ["all"],
    }
    assert by_name["pods/status"]["verbs"] == ["get", "patch", "update"]
    assert by_name["pods/eviction"]["kind"] == "Eviction" and by_name["pods/eviction"]["group"] == "policy"
    assert by_name["namespaces"]["namespaced"] is False
    assert "deletecollection" not in by_name["namespaces"]["verbs"]


async def test_group_discovery_and_crds(http: Http) -> None:
    s, groups, _ = await http.get("/apis")
    assert groups["kind"] == "APIGroupList"
    names = {g["name"]: g for g in groups["groups"]}
    for expected in (
        "apps",
        "coordination.k8s.io",
        "events.k8s.io",
        "policy",
        "admissionregistration.k8s.io",
        "apiextensions.k8s.io",
        "crd.projectcalico.org",
    ):
        assert expected in names
    assert names["apps"]["preferredVersion"] == {"groupVersion": "apps/v1", "version": "v1"}
    s, group, _ = await http.get("/apis/apps")
    assert s == 200 and group["kind"] == "APIGroup" and group["name"] == "apps"
    s, calico, _ = await http.get("/apis/crd.projectcalico.org/v1")
    res = {r["name"]: r for r in calico["resources"]}
    assert res["ipreservations"]["namespaced"] is False and res["ipreservations"]["kind"] == "IPReservation"
    assert s == 200 and calico["apiVersion"] == "v1" and calico["groupVersion"] == "crd.projectcalico.org/v1"


async def test_new_crd_is_served_at_once_and_removed_with_its_objects(http: Http) -> None:
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.com"},
        "spec": {
            "group": "example.com",
            "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "shortNames": ["wd"]},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "spec": {"type": "object", "properties": {"size": {"type": "integer"}}},
                                "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                            },
                        }
                    },
                }
            ],
        },
    }
    s, created, _ = await http.post("/apis/apiextensions.k8s.io/v1/customresourcedefinitions", crd)
    assert s == 201
    assert {c["type"] for c in created["status"]["conditions"]} == {"Established", "NamesAccepted"}
    s, doc, _ = await http.get("/apis/example.com/v1")
    assert s == 200
    assert [r["name"] for r in doc["resources"]] == ["widgets", "widgets/status"]
    assert doc["resources"][0]["shortNames"] == ["wd"] and doc["resources"][0]["namespaced"] is True
    path = "/apis/example.com/v1/namespaces/default/widgets"
    s, w, _ = await http.post(
        path,
        {
            "apiVersion": "example.com/v1",
            "kind": "Widget",
            "metadata": {"name": "w"},
            "spec": {"size": 3, "unknown": 1},
            "status": {"x": 1},
        },
    )
    assert s == 201 and w["spec"] == {"size": 3} and "status" not in w and w["metadata"]["generation"] == 1
    s, w, _ = await http.patch(f"{path}/w", {"spec": {"size": 4}})
    assert w["metadata"]["generation"] == 2
    s, w, _ = await http.patch(f"{path}/w/status", {"status": {"x": 1}})
    assert s == 200 and w["status"] == {"x": 1} and w["metadata"]["generation"] == 2
    s, _, _ = await http.delete("/apis/apiextensions.k8s.io/v1/customresourcedefinitions/widgets.example.com")
    assert s == 200
    s, _, _ = await http.get("/apis/example.com/v1")
    assert s == 404
    s, groups, _ = await http.get("/apis")
    assert "example.com" not in {g["name"] for g in groups["groups"]}


async def test_version_and_health(http: Http) -> None:
    s, version, _ = await http.get("/version")
    assert s == 200 and version["major"] == "1" and version["gitVersion"].startswith("v1.")
    for path in ("/healthz", "/readyz"):
        s, body, _ = await http.get(path)
        assert s == 200 and body == "ok"
