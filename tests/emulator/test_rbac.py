"""RBAC authorization from stored Roles/ClusterRoles/bindings, with the real server's verdicts and texts."""

from __future__ import annotations

from typing import Any

from kube_emulator.testing import Emulator

from .conftest import Http, Identities, pod, sa_subject

RBAC = "/apis/rbac.authorization.k8s.io/v1"
PODS = "/api/v1/namespaces/default/pods"
SSAR = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"
OP = 'User "system:serviceaccount:default:op"'


def rule(resources: list[str], verbs: list[str], **extra: Any) -> dict[str, Any]:
    return {"apiGroups": [""], "resources": resources, "verbs": verbs, **extra}


async def make_pod(http: Http, name: str, namespace: str = "default") -> None:
    s, body, _ = await http.post(f"/api/v1/namespaces/{namespace}/pods", pod(name, schedulerName="none"))
    assert s == 201, body


async def test_bootstrap_policy_is_seeded(http: Http) -> None:
    s, roles, _ = await http.get(f"{RBAC}/clusterroles")
    names = {r["metadata"]["name"] for r in roles["items"]}
    assert {"cluster-admin", "system:discovery", "system:basic-user", "system:public-info-viewer"} <= names
    s, binding, _ = await http.get(f"{RBAC}/clusterrolebindings/system:discovery")
    assert s == 200 and binding["subjects"] == [
        {"kind": "Group", "apiGroup": "rbac.authorization.k8s.io", "name": "system:authenticated"}
    ]
    assert binding["metadata"]["annotations"] == {"rbac.authorization.kubernetes.io/autoupdate": "true"}


async def test_role_binding_allows_only_in_its_namespace(who: Identities, http: Http) -> None:
    s, _, _ = await http.post("/api/v1/namespaces", {"metadata": {"name": "other"}})
    assert s == 201
    op = await who.sa_client("op")
    await who.grant(sa_subject("op"), [rule(["pods"], ["get", "list", "create"])])
    await make_pod(http, "a")
    await make_pod(http, "b", "other")
    assert (await op.get(PODS))[0] == 200
    assert (await op.get(f"{PODS}/a"))[0] == 200
    s, body, _ = await op.get("/api/v1/namespaces/other/pods/b")
    assert s == 403
    assert body["message"] == (
        f'pods "b" is forbidden: {OP} cannot get resource "pods" in API group "" in the namespace "other"'
    )
    assert body["details"] == {"name": "b", "kind": "pods"}
    s, body, _ = await op.get("/api/v1/pods")
    assert s == 403
    assert (
        body["message"]
        == f'pods is forbidden: {OP} cannot list resource "pods" in API group "" at the cluster scope'
    )
    s, body, _ = await op.delete(f"{PODS}/a")
    assert s == 403 and f'{OP} cannot delete resource "pods"' in body["message"]


async def test_cluster_role_through_role_binding_is_namespaced(who: Identities, http: Http) -> None:
    await http.post("/api/v1/namespaces", {"metadata": {"name": "other"}})
    op = await who.sa_client("op")
    await who.grant(sa_subject("op"), [rule(["configmaps"], ["list"])], cluster_role=True, name="cm-reader")
    assert (await op.get("/api/v1/namespaces/default/configmaps"))[0] == 200
    assert (await op.get("/api/v1/namespaces/other/configmaps"))[0] == 403
    assert (await op.get("/api/v1/configmaps"))[0] == 403
    # Through a ClusterRoleBinding the same rules apply everywhere.
    binding = {
        "metadata": {"name": "cm-reader-everywhere"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cm-reader"},
        "subjects": [sa_subject("op")],
    }
    assert (await http.post(f"{RBAC}/clusterrolebindings", binding))[0] == 201
    assert (await op.get("/api/v1/namespaces/other/configmaps"))[0] == 200
    assert (await op.get("/api/v1/configmaps"))[0] == 200


async def test_subresources_need_their_own_rules(who: Identities, http: Http) -> None:
    op = await who.sa_client("op")
    await make_pod(http, "a")
    await who.grant(sa_subject("op"), [rule(["pods"], ["*"])])
    eviction = {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": "a"}}
    s, body, _ = await op.post(f"{PODS}/a/eviction", eviction)
    assert s == 403
    assert body["message"] == (
        f'pods "a" is forbidden: {OP} cannot create resource "pods/eviction" in API group "" '
        'in the namespace "default"'
    )
    assert body["details"] == {"name": "a", "kind": "pods"}
    s, body, _ = await op.patch(f"{PODS}/a/status", {"status": {"phase": "Failed"}})
    assert s == 403 and 'cannot patch resource "pods/status"' in body["message"]
    await who.grant(
        sa_subject("op"), [rule(["*/status"], ["get"]), rule(["pods/eviction"], ["create"])], name="subs"
    )
    assert (await op.get(f"{PODS}/a/status"))[0] == 200
    assert (await op.patch(f"{PODS}/a/status", {"status": {"phase": "Failed"}}))[0] == 403
    assert (await op.post(f"{PODS}/a/eviction", eviction))[0] == 201


async def test_star_subresource_rule_does_not_cover_the_resource_itself(who: Identities, http: Http) -> None:
    op = await who.sa_client("op")
    await make_pod(http, "a")
    await who.grant(sa_subject("op"), [rule(["*/status"], ["get"])])
    assert (await op.get(f"{PODS}/a/status"))[0] == 200
    assert (await op.get(f"{PODS}/a"))[0] == 403


async def test_verbs_follow_request_info(who: Identities, http: Http) -> None:
    op = await who.sa_client("op")
    await make_pod(http, "a")
    await who.grant(sa_subject("op"), [rule(["pods"], ["watch", "patch", "deletecollection"])])
    s, body, _ = await op.get(PODS)
    assert s == 403 and "cannot list resource" in body["message"]
    events = await op.watch(f"{PODS}?watch=true&timeoutSeconds=1", until=1)
    assert events[0]["type"] == "ADDED"
    assert (await op.patch(f"{PODS}/a", {"metadata": {"labels": {"x": "y"}}}))[0] == 200
    s, current, _ = await http.get(f"{PODS}/a")
    s, body, _ = await op.put(f"{PODS}/a", current)
    assert s == 403 and "cannot update resource" in body["message"]
    s, body, _ = await op.delete(f"{PODS}/a")
    assert s == 403 and "cannot delete resource" in body["message"]
    assert (await op.delete(PODS))[0] == 200  # a DELETE without a name is a deletecollection


async def test_resource_names_and_the_name_field_selector(who: Identities, http: Http) -> None:
    op = await who.sa_client("op")
    await make_pod(http, "mine")
    await make_pod(http, "theirs")
    await who.grant(sa_subject("op"), [rule(["pods"], ["get", "list", "watch"], resourceNames=["mine"])])
    assert (await op.get(f"{PODS}/mine"))[0] == 200
    s, body, _ = await op.get(f"{PODS}/theirs")
    assert s == 403 and body["message"].startswith('pods "theirs" is forbidden')
    s, body, _ = await op.get(PODS)
    assert s == 403 and body["message"].startswith("pods is forbidden")
    # A list or watch that requires metadata.name is a request for that name (RequestInfo).
    s, body, _ = await op.get(f"{PODS}?fieldSelector=metadata.name%3Dmine")
    assert s == 200 and [i["metadata"]["name"] for i in body["items"]] == ["mine"]
    events = await op.watch(f"{PODS}?watch=1&fieldSelector=metadata.name%3D%3Dmine&timeoutSeconds=1", until=1)
    assert events[0]["object"]["metadata"]["name"] == "mine"
    s, body, _ = await op.get(f"{PODS}?fieldSelector=metadata.name%3Dtheirs")
    assert s == 403 and body["message"].startswith('pods "theirs" is forbidden: ')
    assert (await op.get(f"{PODS}?fieldSelector=metadata.name!%3Dtheirs"))[0] == 403


async def test_non_resource_urls(who: Identities, http: Http) -> None:
    op = await who.sa_client("op")
    for path in ("/api", "/api/v1", "/apis", "/apis/apps/v1", "/version", "/healthz"):
        assert (await op.get(path))[0] == 200, path
    s, body, _ = await op.get("/")
    assert s == 403 and body["message"] == f'forbidden: {OP} cannot get path "/"'
    crb = {
        "metadata": {"name": "root"},
        "rules": [{"nonResourceURLs": ["/"], "verbs": ["get"]}],
    }
    assert (await http.post(f"{RBAC}/clusterroles", crb))[0] == 201
    await who.grant(sa_subject("op"), crb["rules"], namespace=None, name="root-2")
    assert (await op.get("/"))[0] == 200


async def test_bindings_take_effect_at_once_both_ways(who: Identities, http: Http) -> None:
    op = await who.sa_client("op")
    assert (await op.get(PODS))[0] == 403
    await who.grant(sa_subject("op"), [rule(["pods"], ["list"])])
    assert (await op.get(PODS))[0] == 200
    s, _, _ = await http.patch(
        f"{RBAC}/namespaces/default/roles/grant", {"rules": [rule(["secrets"], ["list"])]}
    )
    assert s == 200
    assert (await op.get(PODS))[0] == 403
    assert (await op.get("/api/v1/namespaces/default/secrets"))[0] == 200
    assert (await http.delete(f"{RBAC}/namespaces/default/rolebindings/grant"))[0] == 200
    assert (await op.get("/api/v1/namespaces/default/secrets"))[0] == 403


async def test_binding_to_a_missing_role_grants_nothing_and_says_why(who: Identities, http: Http) -> None:
    op = await who.sa_client("op")
    binding = {
        "metadata": {"name": "dangling"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "nope"},
        "subjects": [{"kind": "ServiceAccount", "name": "op"}],  # namespace defaults to the binding's
    }
    assert (await http.post(f"{RBAC}/namespaces/default/rolebindings", binding))[0] == 201
    s, body, _ = await op.get(PODS)
    assert s == 403 and body["message"].endswith(
        'in the namespace "default": RBAC: role.rbac.authorization.k8s.io "nope" not found'
    )


async def test_group_and_user_subjects(who: Identities) -> None:
    await who.grant({"kind": "User", "name": "carol"}, [rule(["pods"], ["list"])])
    await who.grant(
        {"kind": "Group", "name": "system:serviceaccounts:default"}, [rule(["secrets"], ["list"])], name="g"
    )
    carol = who.certificate("carol")
    assert (await carol.get(PODS))[0] == 200
    assert (await carol.get("/api/v1/namespaces/default/secrets"))[0] == 403
    op = await who.sa_client("op")
    assert (await op.get("/api/v1/namespaces/default/secrets"))[0] == 200
    assert (await op.get(PODS))[0] == 403


async def test_masters_may_do_anything(who: Identities) -> None:
    root = who.certificate("someone", ("system:masters",))
    assert (await root.get("/api/v1/secrets"))[0] == 200
    assert (await root.get("/"))[0] == 200


async def test_self_subject_access_review(who: Identities, http: Http) -> None:
    op = await who.sa_client("op")
    await who.grant(sa_subject("op"), [rule(["pods/eviction"], ["create"])], name="evict")

    async def review(client: Http, spec: dict[str, Any]) -> tuple[int, Any]:
        body = {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview", "spec": spec}
        s, out, _ = await client.post(SSAR, body)
        return s, out

    s, out = await review(
        op,
        {
            "resourceAttributes": {
                "namespace": "default",
                "verb": "create",
                "resource": "pods",
                "subresource": "eviction",
            }
        },
    )
    assert s == 201 and out["status"] == {
        "allowed": True,
        "reason": 'RBAC: allowed by RoleBinding "evict/default" of Role "evict" '
        'to ServiceAccount "op/default"',
    }
    s, out = await review(
        op,
        {
            "resourceAttributes": {
                "namespace": "other",
                "verb": "create",
                "resource": "pods",
                "subresource": "eviction",
            }
        },
    )
    assert s == 201 and out["status"] == {"allowed": False}
    s, out = await review(op, {"nonResourceAttributes": {"path": "/apis/apps", "verb": "get"}})
    assert out["status"]["allowed"] is True and "system:discovery" in out["status"]["reason"]
    s, out = await review(op, {})
    assert s == 422 and "exactly one of nonResourceAttributes or resourceAttributes" in out["message"]
    s, out = await review(http, {"resourceAttributes": {"verb": "delete", "resource": "nodes"}})
    assert s == 201 and out["status"]["allowed"] is True
    s, out = await review(who.anonymous(), {"nonResourceAttributes": {"path": "/api", "verb": "get"}})
    assert s == 403  # system:basic-user is for authenticated users only
    s, _, _ = await op.get(SSAR)
    assert s == 403  # nobody may list reviews: they are create-only and never stored
    s, _, _ = await http.get(SSAR)
    assert s == 405


async def test_refusals_are_logged_with_user_verb_and_resource(
    who: Identities, emu: Emulator, caplog: Any
) -> None:
    op = await who.sa_client("op")
    caplog.set_level("INFO", logger="kube_emulator.auth")
    await op.get("/api/v1/namespaces/default/secrets/s1")
    assert any(
        "user=system:serviceaccount:default:op verb=get resource=secrets 's1' in namespace default"
        in r.getMessage()
        for r in caplog.records
    ), [r.getMessage() for r in caplog.records]


async def test_rbac_objects_are_defaulted_and_validated(http: Http) -> None:
    binding = {
        "metadata": {"name": "b"},
        "roleRef": {"kind": "ClusterRole", "name": "view"},
        "subjects": [{"kind": "User", "name": "u"}, {"kind": "ServiceAccount", "name": "sa"}],
    }
    s, body, _ = await http.post(f"{RBAC}/namespaces/default/rolebindings", binding)
    assert s == 201, body
    assert body["roleRef"]["apiGroup"] == "rbac.authorization.k8s.io"
    assert body["subjects"][0]["apiGroup"] == "rbac.authorization.k8s.io"
    assert "apiGroup" not in body["subjects"][1]
    s, body, _ = await http.patch(f"{RBAC}/namespaces/default/rolebindings/b", {"roleRef": {"name": "edit"}})
    assert s == 422 and body["message"] == (
        'RoleBinding.rbac.authorization.k8s.io "b" is invalid: roleRef: Invalid value: '
        'rbac.RoleRef{APIGroup:"rbac.authorization.k8s.io", Kind:"ClusterRole", Name:"edit"}: '
        "cannot change roleRef"
    )
    s, body, _ = await http.patch(f"{RBAC}/namespaces/default/rolebindings/b", {"subjects": []})
    assert s == 200  # subjects may change
    crb = {
        **binding,
        "roleRef": {"kind": "Role", "name": "x"},
        "subjects": [{"kind": "ServiceAccount", "name": "sa"}],
    }
    s, body, _ = await http.post(f"{RBAC}/clusterrolebindings", crb)
    assert s == 422
    assert [c["field"] for c in body["details"]["causes"]] == ["roleRef.kind", "subjects[0].namespace"]
    role = {
        "metadata": {"name": "r"},
        "rules": [{"resources": ["pods"], "verbs": ["get"]}, {"nonResourceURLs": ["/x"], "verbs": ["get"]}],
    }
    s, body, _ = await http.post(f"{RBAC}/namespaces/default/roles", role)
    assert s == 422
    assert [c["message"] for c in body["details"]["causes"]] == [
        "Required value: resource rules must supply at least one api group",
        "Invalid value: [/x]: namespaced rules cannot apply to non-resource URLs",
    ]


async def test_no_escalation_through_roles_or_bindings(who: Identities) -> None:
    op = await who.sa_client("op")
    writer = {
        "apiGroups": ["rbac.authorization.k8s.io"],
        "resources": ["roles", "rolebindings"],
        "verbs": ["create"],
    }
    await who.grant(sa_subject("op"), [writer, rule(["pods"], ["get", "list"])], name="writer")
    roles, bindings = f"{RBAC}/namespaces/default/roles", f"{RBAC}/namespaces/default/rolebindings"
    held = {"metadata": {"name": "held"}, "rules": [rule(["pods"], ["get"])]}
    assert (await op.post(roles, held))[0] == 201  # what op holds itself it may grant
    more = {"metadata": {"name": "more"}, "rules": [rule(["pods", "secrets"], ["get", "list"])]}
    s, body, _ = await op.post(roles, more)
    assert (s, body["reason"]) == (403, "Forbidden")
    assert body["message"] == (
        'roles.rbac.authorization.k8s.io "more" is forbidden: user "system:serviceaccount:default:op" '
        '(groups=["system:serviceaccounts" "system:serviceaccounts:default" "system:authenticated"]) '
        "is attempting to grant RBAC permissions not currently held:\n"
        '{APIGroups:[""], Resources:["secrets"], Verbs:["get" "list"]}'
    )

    def binding(name: str, kind: str, role: str) -> dict[str, Any]:
        return {
            "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": role},
            "subjects": [{"kind": "User", "name": "mallory"}],
        }

    assert (await op.post(bindings, binding("b1", "Role", "held")))[0] == 201
    s, body, _ = await op.post(bindings, binding("b2", "ClusterRole", "cluster-admin"))
    assert s == 403 and "is attempting to grant RBAC permissions not currently held" in body["message"]
    s, body, _ = await op.post(bindings, binding("b3", "Role", "ghost"))
    assert (s, body["message"]) == (
        403,
        'rolebindings.rbac.authorization.k8s.io "b3" is forbidden: '
        'role.rbac.authorization.k8s.io "ghost" not found',
    )
    # The bind and escalate verbs lift the check, as on the real server.
    bind = {
        "apiGroups": ["rbac.authorization.k8s.io"],
        "resources": ["clusterroles"],
        "verbs": ["bind"],
        "resourceNames": ["cluster-admin"],
    }
    escalate = {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["roles"], "verbs": ["escalate"]}
    await who.grant(sa_subject("op"), [bind, escalate], name="lift")
    assert (await op.post(bindings, binding("b2", "ClusterRole", "cluster-admin")))[0] == 201
    assert (await op.post(roles, more))[0] == 201
