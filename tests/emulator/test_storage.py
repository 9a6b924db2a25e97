"""Generic storage semantics: versions, conflicts, validation, patches, deletes, dry runs."""

from __future__ import annotations

import asyncio

from kube_emulator.testing import Emulator

from .conftest import Http, pod

PODS = "/api/v1/namespaces/default/pods"
CMS = "/api/v1/namespaces/default/configmaps"


def cm(name: str, **data: str) -> dict[str, object]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": data}


async def test_create_assigns_metadata_and_increasing_versions(http: Http) -> None:
    s1, a, _ = await http.post(CMS, cm("a"))
    s2, b, _ = await http.post(CMS, cm("b"))
    assert (s1, s2) == (201, 201)
    assert int(b["metadata"]["resourceVersion"]) > int(a["metadata"]["resourceVersion"])
    assert a["metadata"]["uid"] != b["metadata"]["uid"]
    assert a["metadata"]["creationTimestamp"].endswith("Z")
    status, got, _ = await http.get(f"{CMS}/a")
    assert status == 200 and got["metadata"]["uid"] == a["metadata"]["uid"]


async def test_already_exists_is_409(http: Http) -> None:
    await http.post(CMS, cm("dup"))
    status, body, _ = await http.post(CMS, cm("dup"))
    assert status == 409
    assert body["kind"] == "Status" and body["status"] == "Failure"
    assert body["reason"] == "AlreadyExists"
    assert body["details"] == {"name": "dup", "kind": "configmaps"}
    assert body["message"] == 'configmaps "dup" already exists'


async def test_not_found_status(http: Http) -> None:
    status, body, _ = await http.get(f"{CMS}/nope")
    assert status == 404 and body["reason"] == "NotFound" and body["message"] == 'configmaps "nope" not found'
    status, body, _ = await http.post("/api/v1/namespaces/missing/configmaps", cm("x"))
    assert status == 404 and body["message"] == 'namespaces "missing" not found'


async def test_put_with_stale_resource_version_conflicts(http: Http) -> None:
    _, created, _ = await http.post(CMS, cm("c", a="1"))
    stale = created["metadata"]["resourceVersion"]
    s, updated, _ = await http.put(f"{CMS}/c", {**created, "data": {"a": "2"}})
    assert s == 200 and updated["data"] == {"a": "2"}
    s, body, _ = await http.put(f"{CMS}/c", {**created, "data": {"a": "3"}})
    assert s == 409 and body["reason"] == "Conflict"
    assert "the object has been modified" in body["message"]
    # Without a resourceVersion the update is unconditional.
    unconditional = {**created, "metadata": {"name": "c"}, "data": {"a": "4"}}
    s, body, _ = await http.put(f"{CMS}/c", unconditional)
    assert s == 200 and body["data"] == {"a": "4"} and body["metadata"]["resourceVersion"] != stale


async def test_merge_patch_with_stale_resource_version_conflicts(http: Http) -> None:
    _, created, _ = await http.post(CMS, cm("m", a="1"))
    rv = created["metadata"]["resourceVersion"]
    s, _, _ = await http.patch(f"{CMS}/m", {"data": {"a": "2"}})
    assert s == 200
    s, body, _ = await http.patch(f"{CMS}/m", {"metadata": {"resourceVersion": rv}, "data": {"a": "3"}})
    assert s == 409 and body["reason"] == "Conflict"
    _, now, _ = await http.get(f"{CMS}/m")
    assert now["data"] == {"a": "2"}


async def test_noop_update_keeps_resource_version(http: Http) -> None:
    _, created, _ = await http.post(CMS, cm("n", a="1"))
    s, same, _ = await http.patch(f"{CMS}/n", {"data": {"a": "1"}})
    assert s == 200 and same["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"]


async def test_json_patch_is_atomic(http: Http) -> None:
    _, created, _ = await http.post(CMS, cm("j", a="1"))
    ops = [
        {"op": "replace", "path": "/data/a", "value": "changed"},
        {"op": "test", "path": "/data/a", "value": "something else"},
    ]
    s, body, _ = await http.patch(f"{CMS}/j", ops, "application/json-patch+json")
    assert s == 422 and body["kind"] == "Status"
    _, now, _ = await http.get(f"{CMS}/j")
    assert now["data"] == {"a": "1"}
    assert now["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"]
    ok = [{"op": "test", "path": "/data/a", "value": "1"}, {"op": "add", "path": "/data/b", "value": "2"}]
    s, body, _ = await http.patch(f"{CMS}/j", ok, "application/json-patch+json")
    assert s == 200 and body["data"] == {"a": "1", "b": "2"}
    s, body, _ = await http.patch(
        f"{CMS}/j", [{"op": "remove", "path": "/data/missing"}], "application/json-patch+json"
    )
    assert s == 422


async def test_unsupported_patch_types(http: Http) -> None:
    await http.post(CMS, cm("p"))
    s, body, _ = await http.patch(f"{CMS}/p", b"data: {}", "application/apply-patch+yaml")
    assert s == 415 and body["reason"] == "UnsupportedMediaType"
    s, _, _ = await http.patch(f"{CMS}/p", {"data": {"x": "y"}}, "application/strategic-merge-patch+json")
    assert s == 200  # built-ins accept strategic merge (applied as a merge patch)
    s, _, _ = await http.patch(
        "/apis/crd.projectcalico.org/v1/ipreservations/r",
        {"spec": {}},
        "application/strategic-merge-patch+json",
    )
    assert s == 415  # custom resources do not, as on a real server


async def test_invalid_names_are_422(http: Http) -> None:
    s, body, _ = await http.post(CMS, cm("Not_Valid"))
    assert s == 422 and body["reason"] == "Invalid"
    assert body["details"]["causes"][0]["field"] == "metadata.name"
    s, body, _ = await http.post("/api/v1/namespaces", {"metadata": {"name": "a.b"}})
    assert s == 422  # namespaces are DNS labels
    s, body, _ = await http.post(CMS, {"metadata": {"name": "l", "labels": {"bad key!": "x"}}})
    assert s == 422


async def test_generate_name(http: Http) -> None:
    s, body, _ = await http.post(CMS, {"metadata": {"generateName": "gen-"}})
    assert s == 201 and body["metadata"]["name"].startswith("gen-") and len(body["metadata"]["name"]) == 9


async def test_namespace_label_and_terminating_namespace_forbids_create(http: Http, emu: Emulator) -> None:
    s, ns, _ = await http.post("/api/v1/namespaces", {"metadata": {"name": "doomed"}})
    assert s == 201 and ns["metadata"]["labels"]["kubernetes.io/metadata.name"] == "doomed"
    _, seeded, _ = await http.get("/api/v1/namespaces/kube-system")
    assert seeded["metadata"]["labels"]["kubernetes.io/metadata.name"] == "kube-system"
    await http.post(
        "/api/v1/namespaces/doomed/configmaps", {"metadata": {"name": "x", "finalizers": ["f/x"]}}
    )
    s, body, _ = await http.delete("/api/v1/namespaces/doomed")
    assert s == 200 and body["status"]["phase"] == "Terminating"
    s, body, _ = await http.post("/api/v1/namespaces/doomed/configmaps", cm("y"))
    assert s == 403 and body["reason"] == "Forbidden"
    assert "because it is being terminated" in body["message"]
    # The finalizer holds the configmap (and so the namespace) until it is removed.
    await asyncio.sleep(0.3)
    s, _, _ = await http.get("/api/v1/namespaces/doomed")
    assert s == 200
    await http.patch("/api/v1/namespaces/doomed/configmaps/x", {"metadata": {"finalizers": None}})
    for _ in range(50):
        s, _, _ = await http.get("/api/v1/namespaces/doomed")
        if s == 404:
            break
        await asyncio.sleep(0.1)
    assert s == 404


async def test_delete_preconditions_and_finalizers(http: Http) -> None:
    _, created, _ = await http.post(CMS, {"metadata": {"name": "d", "finalizers": ["example.com/hold"]}})
    s, body, _ = await http.delete(f"{CMS}/d", {"preconditions": {"uid": "wrong"}})
    assert s == 409 and "Precondition failed" in body["message"]
    s, body, _ = await http.delete(f"{CMS}/d", {"preconditions": {"uid": created["metadata"]["uid"]}})
    assert s == 200 and body["metadata"]["deletionTimestamp"]
    s, body, _ = await http.patch(f"{CMS}/d", {"metadata": {"finalizers": ["example.com/hold", "new/one"]}})
    assert s == 422  # no new finalizers on an object being deleted
    s, _, _ = await http.patch(f"{CMS}/d", {"metadata": {"finalizers": []}})
    assert s == 200
    s, _, _ = await http.get(f"{CMS}/d")
    assert s == 404


async def test_dry_run_persists_nothing(http: Http) -> None:
    s, body, _ = await http.post(f"{CMS}?dryRun=All", cm("dry"))
    assert s == 201 and body["metadata"]["name"] == "dry"
    s, _, _ = await http.get(f"{CMS}/dry")
    assert s == 404
    _, created, _ = await http.post(CMS, cm("dry", a="1"))
    s, _, _ = await http.patch(f"{CMS}/dry?dryRun=All", {"data": {"a": "2"}})
    assert s == 200
    s, _, _ = await http.delete(f"{CMS}/dry?dryRun=All")
    assert s == 200
    _, now, _ = await http.get(f"{CMS}/dry")
    assert (
        now["data"] == {"a": "1"}
        and now["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"]
    )


async def test_status_subresource_separation(http: Http) -> None:
    s, created, _ = await http.post(
        PODS, {**pod("st", schedulerName="other"), "status": {"phase": "Running"}}
    )
    assert s == 201 and created["status"]["phase"] == "Pending"  # status is reset on create
    s, body, _ = await http.patch(
        f"{PODS}/st", {"status": {"phase": "Failed"}, "metadata": {"labels": {"a": "b"}}}
    )
    assert s == 200 and body["status"]["phase"] == "Pending" and body["metadata"]["labels"] == {"a": "b"}
    s, body, _ = await http.patch(
        f"{PODS}/st/status",
        {"status": {"podIP": "10.9.9.9", "podIPs": [{"ip": "10.9.9.9"}]}, "metadata": {"labels": {"c": "d"}}},
    )
    assert s == 200 and body["status"]["podIP"] == "10.9.9.9" and body["metadata"]["labels"] == {"a": "b"}


async def test_methods_not_allowed_and_unknown_paths(http: Http) -> None:
    s, body, _ = await http.request("DELETE", "/api/v1/namespaces")
    assert s == 405 and body["reason"] == "MethodNotAllowed"
    s, _, _ = await http.get("/apis/nope.example.com/v1/things")
    assert s == 404
    s, _, _ = await http.get("/api/v1/namespaces/default/pods/x/eviction")
    assert s == 405


async def test_limit_pages_and_list_has_resource_version(http: Http) -> None:
    for i in range(3):
        await http.post(CMS, cm(f"l{i}"))
    s, body, _ = await http.get(f"{CMS}?limit=1")
    assert s == 200 and len(body["items"]) == 1 and body["metadata"]["continue"]
    assert int(body["metadata"]["resourceVersion"]) > 0 and body["kind"] == "ConfigMapList"
