"""The emulator's PKI: a CA, a serving certificate and the admin client certificate.

Made fresh at every start (EC P-256, quick to generate). The server requests client certificates
but does not require them (a caller may use a bearer token or nothing), and verifies any it gets
against its own CA, as kube-apiserver does with ``--client-ca-file``.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

ADMIN_USER = "kube-emulator-admin"
ADMIN_GROUP = "system:masters"
SERVING_HOSTS = ("127.0.0.1", "::1", "localhost")
_VALIDITY = dt.timedelta(days=7)


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _key_usage(ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        key_cert_sign=ca,
        crl_sign=ca,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        encipher_only=False,
        decipher_only=False,
    )


@dataclass(frozen=True)
class KeyPair:
    cert_pem: bytes
    key_pem: bytes


class Pki:
    """CA + serving pair + admin client pair, also written as files for ``ssl`` (which needs paths)."""

    def __init__(self, directory: Path) -> None:
        now = dt.datetime.now(dt.UTC)
        self._ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-emulator-ca")])
        self._ca = (
            x509.CertificateBuilder()
            .subject_name(ca_name)
            .issuer_name(ca_name)
            .public_key(self._ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + _VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(_key_usage(ca=True), critical=True)
            .sign(self._ca_key, hashes.SHA256())
        )
        self.ca_pem = _pem(self._ca)
        sans: list[x509.GeneralName] = [x509.DNSName("localhost")]
        sans += [x509.IPAddress(ipaddress.ip_address(h)) for h in SERVING_HOSTS if h != "localhost"]
        self.serving = self._issue(
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]),
            ExtendedKeyUsageOID.SERVER_AUTH,
            sans,
        )
        self.admin = self.client_pair(ADMIN_USER, (ADMIN_GROUP,))
        directory.mkdir(parents=True, exist_ok=True)
        self.ca_file = directory / "ca.crt"
        self.ca_file.write_bytes(self.ca_pem)
        self.serving_cert_file, self.serving_key_file = _write_pair(directory, "serving", self.serving)
        self.admin_cert_file, self.admin_key_file = _write_pair(directory, "admin", self.admin)

    def _issue(
        self, subject: x509.Name, usage: x509.ObjectIdentifier, sans: list[x509.GeneralName] | None = None
    ) -> KeyPair:
        now = dt.datetime.now(dt.UTC)
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self._ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + _VALIDITY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(ca=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(self._ca_key, hashes.SHA256())
        return KeyPair(_pem(cert), _key_pem(key))

    def client_pair(self, user: str, groups: tuple[str, ...] = ()) -> KeyPair:
        """A client certificate for ``user`` (CN) in ``groups`` (O), as kubeadm issues them."""
        attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, g) for g in groups]
        attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, user))
        return self._issue(x509.Name(attrs), ExtendedKeyUsageOID.CLIENT_AUTH)

    def server_context(self) -> ssl.SSLContext:
        # Not create_default_context(): it would also trust the system roots for client certificates.
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(str(self.serving_cert_file), str(self.serving_key_file))
        ctx.load_verify_locations(cadata=self.ca_pem.decode())  # the emulator's own CA, nothing else
        ctx.verify_mode = ssl.CERT_OPTIONAL  # certificates are one way to log in, not the only one
        return ctx


def _write_pair(directory: Path, name: str, pair: KeyPair) -> tuple[Path, Path]:
    cert_file, key_file = directory / f"{name}.crt", directory / f"{name}.key"
    cert_file.write_bytes(pair.cert_pem)
    key_file.touch(mode=0o600)
    key_file.write_bytes(pair.key_pem)
    return cert_file, key_file


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def kubeconfig(url: str, ca_pem: bytes, user: dict[str, Any], namespace: str = "default") -> dict[str, Any]:
    """A kubeconfig for ``url`` trusting ``ca_pem``, logging in with ``user`` (a kubeconfig user)."""
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "emulator", "cluster": {"server": url, "certificate-authority-data": _b64(ca_pem)}}
        ],
        "users": [{"name": "emulator", "user": user}],
        "contexts": [
            {
                "name": "emulator",
                "context": {"cluster": "emulator", "user": "emulator", "namespace": namespace},
            }
        ],
        "current-context": "emulator",
    }


def cert_user(pair: KeyPair) -> dict[str, Any]:
    return {"client-certificate-data": _b64(pair.cert_pem), "client-key-data": _b64(pair.key_pem)}


def token_user(token: str) -> dict[str, Any]:
    return {"token": token}


@dataclass(frozen=True)
class KubeconfigParts:
    server: str
    ca_pem: bytes
    user: dict[str, Any]


def read_kubeconfig(path: str | Path) -> KubeconfigParts:
    """The current context's server, CA and user of a kubeconfig (data or file references)."""
    cfg = yaml.safe_load(Path(path).read_text())
    current = cfg.get("current-context")
    ctx = next(c["context"] for c in cfg["contexts"] if c["name"] == current)
    cluster = next(c["cluster"] for c in cfg["clusters"] if c["name"] == ctx["cluster"])
    user = next(u["user"] for u in cfg["users"] if u["name"] == ctx["user"])
    if "certificate-authority-data" in cluster:
        ca_pem = base64.b64decode(cluster["certificate-authority-data"])
    else:
        ca_pem = Path(cluster["certificate-authority"]).read_bytes()
    return KubeconfigParts(cluster["server"], ca_pem, dict(user or {}))


def client_context(ca_pem: bytes, pair: KeyPair | None = None) -> ssl.SSLContext:
    """An SSL context trusting ``ca_pem`` and, given a pair, presenting that client certificate."""
    ctx = ssl.create_default_context(cadata=ca_pem.decode())
    if pair is not None:
        # ssl loads certificates from files only: a private temporary directory, removed at once.
        with tempfile.TemporaryDirectory(prefix="kube-emulator-client-") as tmp:
            cert_file, key_file = _write_pair(Path(tmp), "client", pair)
            ctx.load_cert_chain(str(cert_file), str(key_file))
    return ctx


def kubeconfig_context(path: str | Path) -> tuple[str, ssl.SSLContext, dict[str, str]]:
    """(server URL, SSL context, extra headers) to call the server as the kubeconfig's user."""
    parts = read_kubeconfig(path)
    user = parts.user
    pair = None
    if "client-certificate-data" in user:
        pair = KeyPair(
            base64.b64decode(user["client-certificate-data"]), base64.b64decode(user["client-key-data"])
        )
    elif "client-certificate" in user:
        pair = KeyPair(Path(user["client-certificate"]).read_bytes(), Path(user["client-key"]).read_bytes())
    headers = {"Authorization": f"Bearer {user['token']}"} if user.get("token") else {}
    return parts.server, client_context(parts.ca_pem, pair), headers
