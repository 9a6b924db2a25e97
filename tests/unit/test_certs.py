"""Built-in webhook certificates: generation, rotation policy, files served by Kopf, and the API side.

The API tests run against the project's Kubernetes API emulator (kube_emulator.testing.Emulator) and
are skipped with a reason while it cannot be imported.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import pathlib
import socket
import ssl
from typing import Any

import pytest
from cryptography import x509
from kubernetes.aio import client as k8s

from capo_operator.serving import certs
from capo_operator.serving.certs import (
    BuiltinCertificates,
    Material,
    Policy,
    ReloadingWebhookServer,
    dns_names,
    parse_material,
)

NS = "capo-system"
SVC = "capo-webhook"
NAMES = tuple(dns_names(SVC, NS))
HOST = f"{SVC}.{NS}.svc"
NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def _trusting(bundle_pem: bytes) -> ssl.SSLContext:
    """What kube-apiserver does with caBundle: trust exactly those CAs and check the host name."""
    ctx = ssl.create_default_context(cadata=bundle_pem.decode())
    ctx.check_hostname = True
    return ctx


def _verifies(bundle_pem: bytes, material: Material) -> bool:
    cert = material.serving_cert
    store = x509.verification.Store(x509.load_pem_x509_certificates(bundle_pem))
    verifier = (
        x509.verification.PolicyBuilder()
        .store(store)
        .time(dt.datetime.now(dt.UTC))
        .build_server_verifier(x509.DNSName(HOST))
    )
    try:
        verifier.verify(cert, [])
    except x509.verification.VerificationError:
        return False
    return True


# -- pure: generation and policy ----------------------------------------------------------------------


def test_serving_certificate_has_the_service_names_and_verifies_against_the_ca() -> None:
    m = Policy(names=NAMES).fresh(dt.datetime.now(dt.UTC))
    san = m.serving_cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sorted(san.get_values_for_type(x509.DNSName)) == sorted(
        [
            "capo-webhook",
            "capo-webhook.capo-system",
            "capo-webhook.capo-system.svc",
            "capo-webhook.capo-system.svc.cluster.local",
        ]
    )
    assert _verifies(m.ca_bundle_pem(), m)
    ca_basic = m.signer.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert ca_basic.ca is True
    # A 10-year CA and a 1-year serving certificate.
    assert m.signer.not_valid_after_utc - m.signer.not_valid_before_utc >= dt.timedelta(days=3650)
    life = m.serving_cert.not_valid_after_utc - m.serving_cert.not_valid_before_utc
    assert dt.timedelta(days=365) <= life <= dt.timedelta(days=366)


def test_another_ca_does_not_verify_the_serving_certificate() -> None:
    a = Policy(names=NAMES).fresh(NOW)
    b = Policy(names=NAMES).fresh(NOW)
    assert not _verifies(b.ca_bundle_pem(), a)


def test_secret_data_round_trips_and_garbage_is_rejected() -> None:
    m = Policy(names=NAMES).fresh(NOW)
    data = m.to_data()
    assert set(data) == {"tls.crt", "tls.key", "ca.crt", "ca.key"}
    back = parse_material(data, m.annotations())
    assert back is not None
    assert back.serving_cert == m.serving_cert and back.cas == m.cas
    assert parse_material({**data, "tls.crt": base64.b64encode(b"junk").decode()}, None) is None
    other = Policy(names=NAMES).fresh(NOW)
    assert parse_material({**data, "tls.key": other.to_data()["tls.key"]}, None) is None  # key mismatch
    assert parse_material({k: v for k, v in data.items() if k != "ca.key"}, None) is None
    assert parse_material(None, None) is None


def test_a_valid_secret_is_left_alone() -> None:
    policy = Policy(names=NAMES)
    m = policy.fresh(NOW)
    assert policy.next(m, NOW + dt.timedelta(days=200)) is None


def test_serving_certificate_is_renewed_30_days_before_expiry_by_the_same_ca() -> None:
    policy = Policy(names=NAMES)
    m = policy.fresh(NOW)
    assert policy.next(m, m.serving_cert.not_valid_after_utc - dt.timedelta(days=31)) is None
    later = m.serving_cert.not_valid_after_utc - dt.timedelta(days=29)
    renewed = policy.next(m, later)
    assert renewed is not None
    assert renewed.cas == m.cas  # caBundle unchanged: nothing to propagate, nothing to drop
    assert renewed.serving_cert.serial_number != m.serving_cert.serial_number
    assert renewed.serving_cert.not_valid_after_utc > m.serving_cert.not_valid_after_utc
    assert renewed.issuer_of_serving() is renewed.signer


def test_changed_service_names_force_a_new_serving_certificate() -> None:
    m = Policy(names=NAMES).fresh(NOW)
    other = Policy(names=tuple(dns_names("other", NS)))
    renewed = other.next(m, NOW + dt.timedelta(minutes=1))
    assert renewed is not None and renewed.cas == m.cas
    san = renewed.serving_cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "other.capo-system.svc" in san.get_values_for_type(x509.DNSName)


def test_ca_rotation_publishes_the_new_ca_before_switching_to_it() -> None:
    policy = Policy(names=NAMES, ca_validity=dt.timedelta(days=800), ca_overlap=dt.timedelta(hours=1))
    first = policy.fresh(NOW)
    # The usual yearly renewal (same CA) comes first...
    m = policy.next(first, NOW + dt.timedelta(days=340))
    assert m is not None and m.cas == first.cas
    # ...then the CA has under a year left (800-day CA in this test).
    t1 = m.signer.not_valid_after_utc - dt.timedelta(days=364)
    phase1 = policy.next(m, t1)
    assert phase1 is not None
    assert len(phase1.cas) == 2 and phase1.cas[1] == m.signer
    # The old serving certificate stays (it is still valid) and still verifies with the new bundle.
    assert phase1.serving_cert == m.serving_cert
    assert phase1.issuer_of_serving() == m.signer
    # Before the overlap has passed nothing changes...
    assert policy.next(phase1, t1 + dt.timedelta(minutes=30)) is None
    # ...after it, the serving certificate is re-issued by the new CA, and the bundle keeps both.
    phase2 = policy.next(phase1, t1 + dt.timedelta(hours=2))
    assert phase2 is not None
    assert phase2.issuer_of_serving() is phase2.signer and phase2.signer == phase1.signer
    assert len(phase2.cas) == 2
    # Once the old CA expires it is dropped from the bundle.
    phase3 = policy.next(phase2, m.signer.not_valid_after_utc + dt.timedelta(seconds=1))
    assert phase3 is not None and phase3.cas == (phase2.signer,)
    assert phase3.issuer_of_serving() is phase3.signer


def test_an_expired_ca_means_a_fresh_start() -> None:
    policy = Policy(names=NAMES)
    m = policy.fresh(NOW)
    again = policy.next(m, m.signer.not_valid_after_utc + dt.timedelta(days=1))
    assert again is not None and again.signer != m.signer and len(again.cas) == 1


def test_serving_certificate_never_outlives_its_ca() -> None:
    ca, key = certs.make_ca("x", now=NOW, validity=dt.timedelta(days=10))
    cert, _ = certs.make_serving(ca, key, NAMES, now=NOW)
    assert cert.not_valid_after_utc <= ca.not_valid_after_utc


# -- files and a real TLS server (Kopf's) -------------------------------------------------------------


def _instance(tmp_path: pathlib.Path, **kwargs: Any) -> BuiltinCertificates:
    return BuiltinCertificates(
        k8s.ApiClient(k8s.Configuration()),
        namespace=NS,
        secret_name="capo-webhook-tls",
        service_name=SVC,
        webhook_config_name="capo-operator",
        cert_dir=tmp_path / "certs",
        **kwargs,
    )


def test_files_are_private_and_loadable_as_a_pair(tmp_path: pathlib.Path) -> None:
    inst = _instance(tmp_path)
    m = Policy(names=NAMES).fresh(dt.datetime.now(dt.UTC))
    inst._write_files(m)
    assert inst.ready
    assert inst.cert_file.stat().st_mode & 0o777 == 0o600
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(inst.cert_file, inst.key_file)  # what Kopf's WebhookServer does
    assert inst.ca_file.read_bytes() == m.ca_bundle_pem()
    assert certs.certificate_expiry(inst.cert_file) == m.serving_cert.not_valid_after_utc.timestamp()
    leftovers = [p.name for p in inst.cert_dir.iterdir() if p.name.startswith(".")]
    assert leftovers == []  # atomic writes leave no temporary files behind


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _serve_kopf(inst: BuiltinCertificates, port: int, started: asyncio.Event) -> None:
    """The webhook server the operator runs, consumed as Kopf consumes it."""

    async def fn(request: Any, **_: Any) -> dict[str, Any]:
        return {
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "response": {"uid": request["request"]["uid"], "allowed": True},
        }

    server = ReloadingWebhookServer(
        addr="127.0.0.1",
        port=port,
        certfile=str(inst.cert_file),
        pkeyfile=str(inst.key_file),
        cafile=str(inst.ca_file),
        file_check_interval=0.05,
    )
    async for _ in server(fn):  # type: ignore[arg-type]
        started.set()


async def _review(port: int, ctx: ssl.SSLContext) -> int:
    """One admission call as kube-apiserver makes it (TLS to the Service name, certificate checked
    against caBundle); returns the serial of the certificate the server presented."""
    body = json.dumps(
        {
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "u",
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "operation": "DELETE",
                "userInfo": {"username": "test"},
                "oldObject": {"metadata": {"name": "p", "namespace": "ns", "uid": "p-uid"}},
            },
        }
    ).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=HOST)
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        writer.write(
            b"POST /reserve-on-delete HTTP/1.1\r\nHost: "
            + HOST.encode()
            + b"\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: "
            + str(len(body)).encode()
            + b"\r\n\r\n"
            + body
        )
        await writer.drain()
        response = await reader.read()
    finally:
        writer.close()
    head, _, payload = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    assert json.loads(payload)["response"]["allowed"] is True
    return x509.load_der_x509_certificate(der).serial_number


async def test_rotation_is_picked_up_and_clients_trusting_the_bundle_keep_connecting(
    tmp_path: pathlib.Path,
) -> None:
    policy = Policy(names=NAMES)
    inst = _instance(tmp_path, policy=policy)
    now = dt.datetime.now(dt.UTC)
    # A serving certificate with 20 days left: inside the 30-day renewal window.
    first = Policy(names=NAMES, serving_validity=dt.timedelta(days=20)).fresh(now)
    inst._write_files(first)
    bundle = first.ca_bundle_pem()  # what caBundle holds; unchanged by a serving-cert renewal
    ctx = _trusting(bundle)
    port = _free_port()

    started = asyncio.Event()
    serving = asyncio.create_task(_serve_kopf(inst, port, started))
    await asyncio.wait_for(started.wait(), 5)
    failures: list[str] = []
    serials: list[int] = []
    try:
        serials.append(await _review(port, ctx))

        async def hammer() -> None:
            # Requests keep flowing while the certificate changes underneath.
            for _ in range(150):
                try:
                    serials.append(await _review(port, ctx))
                except (ssl.SSLError, OSError, AssertionError) as exc:
                    failures.append(repr(exc))
                await asyncio.sleep(0.005)

        task = asyncio.create_task(hammer())
        await asyncio.sleep(0.1)
        # Renewal time: the policy re-issues the serving certificate with the same CA.
        renewed = policy.next(first, dt.datetime.now(dt.UTC))
        assert renewed is not None and renewed.ca_bundle_pem() == bundle
        inst._write_files(renewed)
        await task
        serials.append(await _review(port, ctx))
    finally:
        serving.cancel()
    assert serials[0] == first.serving_cert.serial_number
    assert serials[-1] == renewed.serving_cert.serial_number
    assert failures == [], failures


async def test_files_that_do_not_load_keep_the_previous_certificate_in_service(
    tmp_path: pathlib.Path,
) -> None:
    inst = _instance(tmp_path)
    first = Policy(names=NAMES).fresh(dt.datetime.now(dt.UTC))
    inst._write_files(first)
    ctx = _trusting(first.ca_bundle_pem())
    port = _free_port()
    started = asyncio.Event()
    serving = asyncio.create_task(_serve_kopf(inst, port, started))
    try:
        await asyncio.wait_for(started.wait(), 5)
        # A half-written pair, as a non-atomic writer could leave it (e.g. --certs=files).
        inst.cert_file.write_bytes(b"-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n")
        await asyncio.sleep(0.2)
        assert await _review(port, ctx) == first.serving_cert.serial_number
        cert, key = certs.make_serving(first.signer, first.ca_key, NAMES)
        inst._written = None
        inst._write_files(Material(cert, key, first.cas, first.ca_key, None))
        for _ in range(50):
            await asyncio.sleep(0.05)
            if await _review(port, ctx) == cert.serial_number:
                break
        else:
            pytest.fail("the valid certificate was never picked up")
    finally:
        serving.cancel()


# -- against the Kubernetes API emulator -------------------------------------------------------------


def _emulator() -> Any:
    testing = pytest.importorskip(
        "kube_emulator.testing", reason="kube_emulator.testing.Emulator is not available yet"
    )
    return testing.Emulator


async def _api(kubeconfig: pathlib.Path | str) -> k8s.ApiClient:
    from kubernetes.aio import config as k8s_config

    cfg = k8s.Configuration()
    await k8s_config.load_kube_config(config_file=str(kubeconfig), client_configuration=cfg)
    return k8s.ApiClient(cfg)


WEBHOOK_CONFIG: dict[str, Any] = {
    "apiVersion": "admissionregistration.k8s.io/v1",
    "kind": "ValidatingWebhookConfiguration",
    "metadata": {"name": "capo-operator"},
    "webhooks": [
        {
            "name": name,
            "admissionReviewVersions": ["v1"],
            "sideEffects": "NoneOnDryRun",
            "failurePolicy": "Ignore",
            "clientConfig": {"service": {"name": SVC, "namespace": NS, "path": path, "port": 443}},
            "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": [op], "resources": [res]}],
        }
        for name, path, op, res in (
            ("reserve-on-delete.capo.io", "/reserve-on-delete", "DELETE", "pods"),
            ("reserve-on-eviction.capo.io", "/reserve-on-eviction", "CREATE", "pods/eviction"),
        )
    ],
}


async def _ensure_namespace(api: k8s.ApiClient) -> None:
    try:
        await k8s.CoreV1Api(api).create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=NS)))
    except k8s.ApiException as exc:
        if exc.status != 409:
            raise


async def _create_webhook_config(api: k8s.ApiClient) -> None:
    await k8s.AdmissionregistrationV1Api(api).create_validating_webhook_configuration(WEBHOOK_CONFIG)


async def _ca_bundles(api: k8s.ApiClient) -> list[bytes]:
    cfg = await k8s.AdmissionregistrationV1Api(api).read_validating_webhook_configuration("capo-operator")
    return [base64.b64decode(w.client_config.ca_bundle) for w in cfg.webhooks]


async def test_two_replicas_agree_and_the_ca_bundle_verifies_the_serving_certificate(
    tmp_path: pathlib.Path,
) -> None:
    async with _emulator()() as emu:
        api_a, api_b = await _api(emu.kubeconfig_path), await _api(emu.kubeconfig_path)
        try:
            await _ensure_namespace(api_a)
            await _create_webhook_config(api_a)
            expiries: list[float] = []
            a = BuiltinCertificates(
                api_a,
                namespace=NS,
                secret_name="capo-webhook-tls",
                service_name=SVC,
                webhook_config_name="capo-operator",
                cert_dir=tmp_path / "a",
                on_expiry=expiries.append,
            )
            b = BuiltinCertificates(
                api_b,
                namespace=NS,
                secret_name="capo-webhook-tls",
                service_name=SVC,
                webhook_config_name="capo-operator",
                cert_dir=tmp_path / "b",
            )
            # Started together, as replicas of a Deployment are: exactly one Secret wins.
            await asyncio.gather(a.prepare(), b.prepare())
            assert a.ready and b.ready
            assert a.cert_file.read_bytes() == b.cert_file.read_bytes()
            secret = await k8s.CoreV1Api(api_a).read_namespaced_secret("capo-webhook-tls", NS)
            assert secret.type == "kubernetes.io/tls"
            assert set(secret.data) == {"tls.crt", "tls.key", "ca.crt", "ca.key"}
            assert base64.b64decode(secret.data["tls.crt"]) in a.cert_file.read_bytes()
            bundles = await _ca_bundles(api_a)
            assert len(bundles) == 2 and bundles[0] == bundles[1]
            assert a.material is not None and _verifies(bundles[0], a.material)
            assert expiries == [a.material.serving_cert.not_valid_after_utc.timestamp()]
        finally:
            await api_a.close()
            await api_b.close()


async def test_a_missing_webhook_configuration_is_not_fatal(tmp_path: pathlib.Path) -> None:
    async with _emulator()() as emu:
        api = await _api(emu.kubeconfig_path)
        try:
            await _ensure_namespace(api)
            inst = BuiltinCertificates(
                api,
                namespace=NS,
                secret_name="capo-webhook-tls",
                service_name=SVC,
                webhook_config_name="capo-operator",
                cert_dir=tmp_path / "c",
            )
            await inst.prepare()
            assert inst.ready and inst.cert_file.exists()
        finally:
            await api.close()


async def test_near_expiry_certificate_is_rotated_once_and_followed_by_the_other_replica(
    tmp_path: pathlib.Path,
) -> None:
    async with _emulator()() as emu:
        api_a, api_b = await _api(emu.kubeconfig_path), await _api(emu.kubeconfig_path)
        try:
            await _ensure_namespace(api_a)
            await _create_webhook_config(api_a)
            # A Secret whose serving certificate has only 10 days left.
            short = Policy(names=NAMES, serving_validity=dt.timedelta(days=10)).fresh(dt.datetime.now(dt.UTC))
            await k8s.CoreV1Api(api_a).create_namespaced_secret(
                NS,
                k8s.V1Secret(
                    metadata=k8s.V1ObjectMeta(name="capo-webhook-tls", namespace=NS),
                    type="kubernetes.io/tls",
                    data=short.to_data(),
                ),
            )
            kw: dict[str, Any] = {
                "namespace": NS,
                "secret_name": "capo-webhook-tls",
                "service_name": SVC,
                "webhook_config_name": "capo-operator",
                "check_interval": 0.05,
            }
            a = BuiltinCertificates(api_a, cert_dir=tmp_path / "a", **kw)
            b = BuiltinCertificates(api_b, cert_dir=tmp_path / "b", **kw)
            await asyncio.gather(a.prepare(), b.prepare())
            assert a.cert_file.read_bytes() == b.cert_file.read_bytes()
            assert a.material is not None
            rotated = a.material.serving_cert
            assert rotated.serial_number != short.serving_cert.serial_number
            assert rotated.not_valid_after_utc - dt.datetime.now(dt.UTC) > dt.timedelta(days=300)
            # Same CA: the caBundle published before the rotation still verifies the new certificate.
            assert a.material.cas == short.cas
            assert all(_verifies(bundle, a.material) for bundle in await _ca_bundles(api_a))

            # Another replica rotates later; the first one follows on its next periodic read.
            cert, key = certs.make_serving(a.material.signer, a.material.ca_key, NAMES)
            renewed = Material(cert, key, a.material.cas, a.material.ca_key, None)
            secret = await k8s.CoreV1Api(api_b).read_namespaced_secret("capo-webhook-tls", NS)
            secret.data = renewed.to_data()
            await k8s.CoreV1Api(api_b).replace_namespaced_secret("capo-webhook-tls", NS, secret)
            runner = asyncio.create_task(a.run())
            try:
                for _ in range(100):
                    await asyncio.sleep(0.05)
                    if (
                        renewed.serving_cert.public_bytes(certs.serialization.Encoding.PEM)
                        in a.cert_file.read_bytes()
                    ):
                        break
                else:
                    pytest.fail("the replica did not pick up the rotated certificate")
            finally:
                runner.cancel()
        finally:
            await api_a.close()
            await api_b.close()


async def test_the_server_says_serving_only_while_it_accepts_connections(tmp_path: pathlib.Path) -> None:
    """Readiness waits for `serving`: a replica that joined the Service before its webhook listened
    would refuse the apiserver's calls, and with failurePolicy Ignore the deletions go through."""
    inst = _instance(tmp_path, policy=Policy(names=NAMES))
    inst._write_files(Policy(names=NAMES).fresh(dt.datetime.now(dt.UTC)))
    port = _free_port()
    server = ReloadingWebhookServer(
        addr="127.0.0.1", port=port, certfile=str(inst.cert_file), pkeyfile=str(inst.key_file)
    )

    async def fn(request: Any, **_: Any) -> dict[str, Any]:
        return {}

    assert not server.serving
    async with server:  # as Kopf runs it: leaving closes the listener
        async for _ in server(fn):  # type: ignore[arg-type]
            assert server.serving
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            break
    assert not server.serving
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)
