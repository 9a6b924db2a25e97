"""A tiny HTTPS admission webhook for the tests (aiohttp + ssl + a CA made with cryptography)."""

from __future__ import annotations

import asyncio
import base64
import datetime
import ipaddress
import ssl
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


@dataclass
class Pki:
    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes

    @property
    def ca_bundle(self) -> str:
        return base64.b64encode(self.ca_pem).decode()


def make_pki(dns_names: list[str]) -> Pki:
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test-ca")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
    sans.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns_names[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return Pki(
        ca.public_bytes(serialization.Encoding.PEM),
        cert.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
    )


@dataclass
class WebhookServer:
    """Records every AdmissionReview; answers per ``deny``/``message``/``warnings``/``delay``."""

    pki: Pki
    reviews: list[dict[str, Any]] = field(default_factory=list)
    deny: bool = False
    message: str = ""
    code: int | None = None
    warnings: list[str] = field(default_factory=list)
    delay: float = 0.0
    url: str = ""
    peers: list[tuple[str, int]] = field(default_factory=list)  # the client end of each review's connection
    port: int = 0  # listen on this port (0: any free one; a restart keeps the URL)
    # Extra response fields computed from the request (a mutating webhook's patch and patchType).
    extra: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    _runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.Response:
        review = await request.json()
        self.reviews.append(review)
        peer = request.transport.get_extra_info("peername") if request.transport else None
        self.peers.append((str(peer[0]), int(peer[1])) if peer else ("", 0))
        if self.delay:
            await asyncio.sleep(self.delay)
        response: dict[str, Any] = {"uid": review["request"]["uid"], "allowed": not self.deny}
        if self.deny:
            response["status"] = {"message": self.message, **({"code": self.code} if self.code else {})}
        if self.warnings:
            response["warnings"] = self.warnings
        if self.extra is not None:
            response.update(self.extra(review["request"]))
        return web.json_response(
            {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}
        )

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/{path:.*}", self.handle)
        with tempfile.TemporaryDirectory() as tmp:
            cert, key = Path(tmp) / "tls.crt", Path(tmp) / "tls.key"
            cert.write_bytes(self.pki.cert_pem)
            key.write_bytes(self.pki.key_pem)
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(str(cert), str(key))
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port, ssl_context=ctx)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"https://127.0.0.1:{self.port}"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def requests(self, operation: str | None = None) -> list[dict[str, Any]]:
        reqs = [r["request"] for r in self.reviews]
        return [r for r in reqs if operation is None or r["operation"] == operation]


def webhook_configuration(
    name: str,
    client_config: dict[str, Any],
    *,
    rules: list[dict[str, Any]] | None = None,
    failure_policy: str = "Fail",
    side_effects: str = "NoneOnDryRun",
    namespace_selector: dict[str, Any] | None = None,
    object_selector: dict[str, Any] | None = None,
    timeout: int = 5,
    hook_name: str = "hook.test.io",
) -> dict[str, Any]:
    hook: dict[str, Any] = {
        "name": hook_name,
        "clientConfig": client_config,
        "rules": rules
        or [
            {"apiGroups": [""], "apiVersions": ["v1"], "operations": ["DELETE"], "resources": ["pods"]},
            {
                "apiGroups": [""],
                "apiVersions": ["v1"],
                "operations": ["CREATE"],
                "resources": ["pods/eviction"],
            },
        ],
        "failurePolicy": failure_policy,
        "sideEffects": side_effects,
        "admissionReviewVersions": ["v1"],
        "timeoutSeconds": timeout,
        "matchPolicy": "Equivalent",
    }
    if namespace_selector is not None:
        hook["namespaceSelector"] = namespace_selector
    if object_selector is not None:
        hook["objectSelector"] = object_selector
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": [hook],
    }
