"""A throwaway CA and webhook serving certificate, as cert-manager would provide them."""

from __future__ import annotations

import base64
import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from capo_operator.serving.certs import make_ca, make_serving


@dataclass(frozen=True)
class ServingCert:
    cert_file: Path
    key_file: Path
    ca_pem: bytes

    @property
    def ca_bundle(self) -> str:
        """The base64 text a webhook's clientConfig.caBundle holds."""
        return base64.b64encode(self.ca_pem).decode()


def make_serving_cert(directory: Path, hosts: tuple[str, ...] = ("127.0.0.1", "localhost")) -> ServingCert:
    """Write tls.crt/tls.key, signed by a fresh CA (written as ca.crt), valid for `hosts`."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_cert, ca_key = make_ca("capo-test-ca", validity=dt.timedelta(days=2))
    cert, key = make_serving(ca_cert, ca_key, hosts, validity=dt.timedelta(days=1))
    cert_file, key_file = directory / "tls.crt", directory / "tls.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_file.chmod(0o600)
    ca_pem = ca_cert.public_bytes(serialization.Encoding.PEM)
    (directory / "ca.crt").write_bytes(ca_pem)  # for clients that take a CA file
    return ServingCert(cert_file, key_file, ca_pem)
