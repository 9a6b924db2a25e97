"""The clients the operator uses work against the emulator: kubernetes.aio and Kopf."""

from __future__ import annotations

import asyncio
import os
import threading
from typing import Any

import pytest

from kube_emulator.testing import EmulatorProcess

from .conftest import pod


async def test_kubernetes_aio_crud(k8s: Any) -> None:
    from kubernetes.aio import client
    from kubernetes.aio.client.rest import ApiException

    core = client.CoreV1Api(k8s)
    created = await core.create_namespaced_config_map(
        "default", {"metadata": {"name": "k"}, "data": {"a": "1"}}
    )
    assert created.metadata.name == "k" and created.metadata.resource_version
    got = await core.read_namespaced_config_map("k", "default")
    got.data = {"a": "2"}
    replaced = await core.replace_namespaced_config_map("k", "default", got)
    assert replaced.data == {"a": "2"}
    with pytest.raises(ApiException) as info:
        await core.replace_namespaced_config_map("k", "default", got)  # stale resourceVersion
    assert info.value.status == 409
    patched = await core.patch_namespaced_config_map("k", "default", {"data": {"b": "3"}})
    assert patched.data == {"a": "2", "b": "3"}
    listed = await core.list_namespaced_config_map("default", label_selector="")
    assert [i.metadata.name for i in listed.items] == ["k"]
    await core.delete_namespaced_config_map("k", "default")
    with pytest.raises(ApiException) as info:
        await core.read_namespaced_config_map("k", "default")
    assert info.value.status == 404

    pods = await core.create_namespaced_pod("default", pod("web"))
    for _ in range(50):
        pods = await core.read_namespaced_pod("web", "default")
        if pods.status.pod_ips:
            break
        await asyncio.sleep(0.05)
    assert pods.status.phase == "Running" and pods.status.pod_ips[0].ip.startswith("10.244.0.")


async def test_kubernetes_aio_custom_objects_and_leases(k8s: Any) -> None:
    from kubernetes.aio import client
    from kubernetes.aio.client.rest import ApiException

    custom = client.CustomObjectsApi(k8s)
    body = {
        "apiVersion": "crd.projectcalico.org/v1",
        "kind": "IPReservation",
        "metadata": {"name": "capo"},
        "spec": {"reservedCIDRs": []},
    }
    await custom.create_cluster_custom_object("crd.projectcalico.org", "v1", "ipreservations", body)
    ops = [{"op": "add", "path": "/spec/reservedCIDRs/-", "value": "10.244.0.9/32"}]
    result = await custom.patch_cluster_custom_object(
        "crd.projectcalico.org",
        "v1",
        "ipreservations",
        "capo",
        ops,
        _content_type="application/json-patch+json",
    )
    assert result["spec"]["reservedCIDRs"] == ["10.244.0.9/32"]
    with pytest.raises(ApiException) as info:
        await custom.patch_cluster_custom_object(
            "crd.projectcalico.org",
            "v1",
            "ipreservations",
            "capo",
            ops,
            _content_type="application/json-patch+json",
        )
    assert info.value.status == 422  # the latest CRD is a set

    leases = client.CoordinationV1Api(k8s)
    lease = await leases.create_namespaced_lease(
        "default", {"metadata": {"name": "capo"}, "spec": {"holderIdentity": "a", "leaseDurationSeconds": 15}}
    )
    lease.spec.holder_identity = "b"
    await leases.replace_namespaced_lease("capo", "default", lease)
    with pytest.raises(ApiException) as info:
        await leases.replace_namespaced_lease("capo", "default", lease)
    assert info.value.status == 409


async def test_kubernetes_aio_watch(k8s: Any) -> None:
    from kubernetes.aio import client, watch

    core = client.CoreV1Api(k8s)
    await core.create_namespaced_config_map("default", {"metadata": {"name": "w"}})
    seen = []
    w = watch.Watch()
    async for event in w.stream(core.list_namespaced_config_map, "default", timeout_seconds=1):
        seen.append((event["type"], event["object"].metadata.name))
    assert seen == [("ADDED", "w")]


def test_kopf_operator_sees_pods_and_posts_events(tmp_path: Any) -> None:
    """A real Kopf operator (discovery, list, watch, patch, events) against the emulator process."""
    kopf = pytest.importorskip("kopf")
    from kopf.testing import KopfRunner

    from kube_emulator.testing import EmulatorControlSync

    operator = tmp_path / "op.py"
    operator.write_text(
        "import kopf\n"
        "@kopf.on.login()\n"
        "def login(**kwargs):\n"
        "    return kopf.login_with_kubeconfig(**kwargs)\n"
        "@kopf.on.startup()\n"
        "def conf(settings, **_):\n"
        "    settings.watching.server_timeout = 5\n"
        "    settings.posting.level = 0\n"
        "@kopf.on.event('pods')\n"
        "def seen(body, logger, **_):\n"
        "    if body['status'].get('podIP'):\n"
        "        print('POD-IP', body['metadata']['name'], body['status']['podIP'], flush=True)\n"
        "@kopf.on.create('reservedips.capo.io')\n"
        "def created(body, patch, **_):\n"
        "    patch.status['seen'] = True\n"
        "    kopf.info(body, reason='Seen', message='a record')\n"
    )
    with EmulatorProcess(kubelet_delay=0.1) as emu:
        from kubernetes import client, config

        _install_record_crd(emu.kubeconfig_path)
        old = os.environ.get("KUBECONFIG")
        os.environ["KUBECONFIG"] = emu.kubeconfig_path
        # A registry of its own: other tests may have imported modules that register handlers in
        # Kopf's default one (KopfRunner makes the given registry the default: restore it after).
        default_registry = kopf.get_default_registry()
        try:
            with KopfRunner(
                ["run", "--standalone", "-A", str(operator)], timeout=30, registry=kopf.OperatorRegistry()
            ) as runner:
                config.load_kube_config(config_file=emu.kubeconfig_path)
                api = client.ApiClient()
                core = client.CoreV1Api(api)
                threading.Event().wait(1.5)
                core.create_namespaced_pod("default", pod("kopf-pod"))
                custom = client.CustomObjectsApi(api)
                custom.create_cluster_custom_object(
                    "capo.io",
                    "v1",
                    "reservedips",
                    {
                        "apiVersion": "capo.io/v1",
                        "kind": "ReservedIP",
                        "metadata": {"name": "10.244.0.7"},
                        "spec": {"ip": "10.244.0.7"},
                    },
                )
                status: dict[str, Any] = {}
                for _ in range(60):
                    obj = custom.get_cluster_custom_object("capo.io", "v1", "reservedips", "10.244.0.7")
                    status = obj.get("status") or {}
                    if status.get("seen"):
                        break
                    threading.Event().wait(0.2)
                events = core.list_namespaced_event("default").items
                api.close()
        finally:
            kopf.set_default_registry(default_registry)
            if old is None:
                os.environ.pop("KUBECONFIG", None)
            else:
                os.environ["KUBECONFIG"] = old
        EmulatorControlSync(emu.url, emu.ca_file).allocator()
    assert runner.exception is None, runner.exception
    assert "POD-IP kopf-pod 10.244.0.1" in runner.output
    assert status.get("seen") is True
    assert any(e.reason == "Seen" for e in events)
    del kopf


def _install_record_crd(kubeconfig: str) -> None:
    import json
    import urllib.request

    from kube_emulator.tls import kubeconfig_context

    url, context, _ = kubeconfig_context(kubeconfig)

    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "reservedips.capo.io"},
        "spec": {
            "group": "capo.io",
            "scope": "Cluster",
            "names": {
                "plural": "reservedips",
                "singular": "reservedip",
                "kind": "ReservedIP",
                "shortNames": ["rip"],
            },
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "schema": {
                        "openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
                    },
                }
            ],
        },
    }
    req = urllib.request.Request(
        url + "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
        data=json.dumps(crd).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, context=context) as resp:
        assert resp.status == 201


def test_process_tokens_and_sync_control(tmp_path: Any) -> None:
    """The subprocess emulator: TokenRequest with the admin kubeconfig, a token kubeconfig, and
    EmulatorControlSync.expire_tokens (with and without verifying the server)."""
    import json
    import urllib.error
    import urllib.request

    from kube_emulator.testing import EmulatorControlSync, write_token_kubeconfig
    from kube_emulator.tls import kubeconfig_context

    def call(kubeconfig: str, method: str, path: str, body: Any = None) -> int:
        url, context, headers = kubeconfig_context(kubeconfig)
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            url + path, data=data, method=method, headers={"Content-Type": "application/json", **headers}
        )
        try:
            with urllib.request.urlopen(req, context=context) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)

    with EmulatorProcess(kubelet_delay=0.1) as emu:
        admin = emu.kubeconfig_path
        assert emu.url.startswith("https://") and emu.ca_file
        assert (
            call(admin, "POST", "/api/v1/namespaces/default/serviceaccounts", {"metadata": {"name": "op"}})
            == 201
        )
        url, context, _ = kubeconfig_context(admin)
        req = urllib.request.Request(
            url + "/api/v1/namespaces/default/serviceaccounts/op/token",
            data=b"{}",
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, context=context) as resp:
            token = json.loads(resp.read())["status"]["token"]
        op = str(write_token_kubeconfig(admin, token, tmp_path / "op", namespace="default"))
        assert call(op, "GET", "/api") == 200
        assert call(op, "GET", "/api/v1/namespaces/default/pods") == 403
        assert EmulatorControlSync(emu.url).expire_tokens("default", "op") == 1
        assert call(op, "GET", "/api") == 401
        assert emu.control.expire_tokens("default", "op") == 0
