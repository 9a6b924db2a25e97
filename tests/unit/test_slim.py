"""kube.slim: the generated API methods the operator uses, without the generated API classes."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator

import pytest
from kubernetes.aio import client as k8s
from kubernetes.aio import config

from capo_operator.kube.slim import AdmissionregistrationV1, AppsV1, CoreV1
from kube_emulator.testing import Emulator

NS = "default"


@pytest.fixture
async def api() -> AsyncIterator[k8s.ApiClient]:
    async with Emulator() as emu:
        cfg = k8s.Configuration()
        await config.load_kube_config(config_file=emu.kubeconfig_path, client_configuration=cfg)
        client = k8s.ApiClient(cfg)
        try:
            yield client
        finally:
            await client.close()  # type: ignore[no-untyped-call]


async def test_config_maps_round_trip_with_the_generated_models(api: k8s.ApiClient) -> None:
    core = CoreV1(api)
    body = k8s.V1ConfigMap(metadata=k8s.V1ObjectMeta(name="ledger"), data={"k": "v"})
    created = await core.create_namespaced_config_map(NS, body)
    assert isinstance(created, k8s.V1ConfigMap) and created.data == {"k": "v"}
    read = await core.read_namespaced_config_map("ledger", NS)
    assert read.metadata.resource_version == created.metadata.resource_version
    # A plain dict body works too (the ledger writes dicts), and a stale resourceVersion conflicts.
    fresh = {
        "metadata": {"name": "ledger", "resourceVersion": read.metadata.resource_version},
        "data": {"k": "w"},
    }
    replaced = await core.replace_namespaced_config_map("ledger", NS, fresh)
    assert replaced.data == {"k": "w"}
    with pytest.raises(k8s.ApiException) as conflict:
        await core.replace_namespaced_config_map("ledger", NS, fresh)
    assert conflict.value.status == 409
    await core.delete_namespaced_config_map("ledger", NS)
    with pytest.raises(k8s.ApiException) as missing:
        await core.read_namespaced_config_map("ledger", NS)
    assert missing.value.status == 404


async def test_secrets_namespaces_pods_and_events(api: k8s.ApiClient) -> None:
    core = CoreV1(api)
    secret = k8s.V1Secret(metadata=k8s.V1ObjectMeta(name="certs"), data={"tls.crt": "eA=="})
    created = await core.create_namespaced_secret(NS, secret)
    read = await core.read_namespaced_secret("certs", NS)
    assert isinstance(read, k8s.V1Secret) and read.data == {"tls.crt": "eA=="}
    created.data = {"tls.crt": "eQ=="}
    assert (await core.replace_namespaced_secret("certs", NS, created)).data == {"tls.crt": "eQ=="}
    assert (await core.read_namespace(NS)).metadata.name == NS
    with pytest.raises(k8s.ApiException) as missing:
        await core.read_namespaced_pod("nope", NS)
    assert missing.value.status == 404


async def test_webhook_configuration_json_patch(api: k8s.ApiClient) -> None:
    config = {
        "metadata": {"name": "capo"},
        "webhooks": [
            {
                "name": "reserve.capo.io",
                "clientConfig": {"url": "https://127.0.0.1:1/reserve"},
                "admissionReviewVersions": ["v1"],
                "sideEffects": "None",
            }
        ],
    }
    await k8s.AdmissionregistrationV1Api(api).create_validating_webhook_configuration(config)
    admission = AdmissionregistrationV1(api)
    patch = [{"op": "add", "path": "/webhooks/0/clientConfig/caBundle", "value": "Q0E="}]
    patched = await admission.patch_validating_webhook_configuration(
        "capo", patch, _content_type="application/json-patch+json"
    )
    assert patched.webhooks[0].client_config.ca_bundle == "Q0E="
    read = await admission.read_validating_webhook_configuration("capo")
    assert (
        isinstance(read, k8s.V1ValidatingWebhookConfiguration)
        and read.webhooks[0].client_config.ca_bundle == "Q0E="
    )


def test_the_operator_does_not_load_the_big_generated_api_classes() -> None:
    """Their modules cost ~25 MB (CoreV1Api), ~5 MB (AdmissionregistrationV1Api), ~5 MB
    (AppsV1Api) and ~1 MB (AuthorizationV1Api) once imported."""
    code = (
        "import sys, capo_operator.app, capo_operator.flows.admission, capo_operator.serving.certs, "
        "capo_operator.flows.releaser, "
        "capo_operator.kube.ledger, capo_operator.kube.events;"
        "big = ('.core_v1_api', '.admissionregistration_v1_api', '.authorization_v1_api', '.apps_v1_api');"
        "print(sorted(m for m in sys.modules if m.endswith(big)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


async def test_a_config_map_watch_through_kubernetes_watch(api: k8s.ApiClient) -> None:
    """app.watch_config_map streams `list_namespaced_config_map` with kubernetes.aio's Watch."""
    from kubernetes.aio import watch

    core = CoreV1(api)
    listed = await core.list_namespaced_config_map(NS, field_selector="metadata.name=capo-config")
    assert isinstance(listed, k8s.V1ConfigMapList) and listed.items == []
    await core.create_namespaced_config_map(NS, {"metadata": {"name": "other"}, "data": {"k": "0"}})
    await core.create_namespaced_config_map(NS, {"metadata": {"name": "capo-config"}, "data": {"k": "1"}})
    stream = watch.Watch()
    seen = []
    try:
        async for event in stream.stream(
            core.list_namespaced_config_map, NS, field_selector="metadata.name=capo-config", timeout_seconds=2
        ):
            seen.append((event["type"], event["raw_object"]["data"], type(event["object"]).__name__))
    finally:
        await stream.close()
    assert seen == [("ADDED", {"k": "1"}, "V1ConfigMap")]


async def test_owner_reads(api: k8s.ApiClient) -> None:
    apps = AppsV1(api)
    body = {
        "metadata": {"name": "redis"},
        "spec": {
            "selector": {"matchLabels": {"app": "redis"}},
            "serviceName": "redis",
            "template": {
                "metadata": {"labels": {"app": "redis"}},
                "spec": {"containers": [{"name": "c", "image": "redis"}]},
            },
        },
    }
    await k8s.AppsV1Api(api).create_namespaced_stateful_set(NS, body)
    found = await apps.read_namespaced_stateful_set("redis", NS)
    assert isinstance(found, k8s.V1StatefulSet) and found.metadata.name == "redis"
    for read in (
        apps.read_namespaced_deployment,
        apps.read_namespaced_daemon_set,
        apps.read_namespaced_replica_set,
    ):
        with pytest.raises(k8s.ApiException) as missing:
            await read("redis", NS)
        assert missing.value.status == 404


async def test_mutating_webhook_configuration_json_patch(api: k8s.ApiClient) -> None:
    config = {
        "metadata": {"name": "capo-sticky"},
        "webhooks": [
            {
                "name": "sticky.capo.io",
                "clientConfig": {"url": "https://127.0.0.1:1/sticky-ip"},
                "admissionReviewVersions": ["v1"],
                "sideEffects": "None",
            }
        ],
    }
    await k8s.AdmissionregistrationV1Api(api).create_mutating_webhook_configuration(config)
    admission = AdmissionregistrationV1(api)
    patch = [{"op": "add", "path": "/webhooks/0/clientConfig/caBundle", "value": "Q0E="}]
    patched = await admission.patch_mutating_webhook_configuration(
        "capo-sticky", patch, _content_type="application/json-patch+json"
    )
    assert patched.webhooks[0].client_config.ca_bundle == "Q0E="
    read = await admission.read_mutating_webhook_configuration("capo-sticky")
    assert isinstance(read, k8s.V1MutatingWebhookConfiguration)
    assert read.webhooks[0].client_config.ca_bundle == "Q0E="
