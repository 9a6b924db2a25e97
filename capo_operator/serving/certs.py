"""Built-in webhook certificates: a CA and a serving certificate shared by every replica.

The material lives in one Secret (`tls.crt`, `tls.key`, `ca.crt`, `ca.key`). The first replica to
start creates it; the others get 409 and use the winner's, so all replicas serve the same
certificate. Every replica writes the certificate to local files for Kopf's WebhookServer and keeps
the webhook configuration's `caBundle` equal to the Secret's `ca.crt`.

Rotation without dropped requests:
- the serving certificate is renewed well before expiry and signed by the same CA, so the
  published `caBundle` keeps verifying it;
- when the CA itself nears expiry, a new CA is first *added* to `ca.crt` (and so to `caBundle`)
  while the old serving certificate stays in use; only after `ca_overlap` has passed is the serving
  certificate re-issued by the new CA. Expired CAs are dropped from the bundle.
Rotations are resourceVersion-checked Secret updates, so when replicas race only one wins and the
others adopt its result on their next read.

Kopf's own WebhookServer restarts its listener when the files change, and connections that arrive
in that gap are refused (measured: about one request in a few hundred during a rotation). The
`ReloadingWebhookServer` below keeps the listener and loads the new files into the live SSL
context instead, so new handshakes get the new certificate and none is refused. Use it for both
`--certs` modes.

The serving certificate and its key are written to ONE file (`tls.pem`, certificate then key), and
both `cert_file` and `key_file` point at it: a single atomic rename switches certificate and key
together, so a reload can never pair a new certificate with an old key.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import hashlib
import ipaddress
import logging
import os
import pathlib
import ssl
import tempfile
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp.web
import kopf
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from kubernetes.aio import client as k8s

from capo_operator.kube.slim import AdmissionregistrationV1, CoreV1
from capo_operator.serving import reviews

logger = logging.getLogger(__name__)

CA_VALIDITY = dt.timedelta(days=3650)
SERVING_VALIDITY = dt.timedelta(days=365)
SERVING_RENEW_BEFORE = dt.timedelta(days=30)
# A CA with less than this left is replaced, so it always outlives the serving certificates it signs.
CA_RENEW_BEFORE = dt.timedelta(days=365)
# How long a new CA is published in caBundle before it signs anything: long enough for every replica
# to patch caBundle and for kube-apiserver to pick the change up.
CA_OVERLAP = dt.timedelta(hours=1)
CHECK_INTERVAL = 60.0
# Certificates are backdated a little so a node whose clock lags still accepts them.
CLOCK_SKEW = dt.timedelta(minutes=5)

CA_PUBLISHED_ANNOTATION = "capo.io/ca-published-at"
SECRET_KEYS = ("tls.crt", "tls.key", "ca.crt", "ca.key")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def dns_names(service: str, namespace: str) -> list[str]:
    """The names kube-apiserver may use for the webhook Service."""
    svc = f"{service}.{namespace}.svc"
    return [service, f"{service}.{namespace}", svc, f"{svc}.cluster.local"]


def certificate_expiry(path: str | os.PathLike[str]) -> float:
    """notAfter (unix seconds) of the first certificate in a PEM file, e.g. for `--certs=files`."""
    cert = x509.load_pem_x509_certificate(pathlib.Path(path).read_bytes())
    return cert.not_valid_after_utc.timestamp()


def _new_key() -> ec.EllipticCurvePrivateKey:
    # P-256: accepted by kube-apiserver and Python's ssl, and generated in microseconds (fast tests).
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _public_der(key: Any) -> bytes:
    der: bytes = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return der


def make_ca(
    common_name: str, *, now: dt.datetime | None = None, validity: dt.timedelta = CA_VALIDITY
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    now = now or _now()
    key = _new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + validity)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _general_name(name: str) -> x509.GeneralName:
    """A SAN entry: an IP address (a webhook addressed by URL) or a DNS name (a Service)."""
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def make_serving(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    names: Sequence[str],
    *,
    now: dt.datetime | None = None,
    validity: dt.timedelta = SERVING_VALIDITY,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    now = now or _now()
    key = _new_key()
    # Never outlive the issuer: a chain with an expired CA does not verify.
    not_after = min(now + validity, ca_cert.not_valid_after_utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName([_general_name(n) for n in names]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


@dataclass(frozen=True)
class Material:
    """The parsed, consistent content of the certificate Secret."""

    serving_cert: x509.Certificate
    serving_key: ec.EllipticCurvePrivateKey
    cas: tuple[x509.Certificate, ...]  # the bundle; the signing CA first
    ca_key: ec.EllipticCurvePrivateKey
    ca_published_at: dt.datetime | None

    @property
    def signer(self) -> x509.Certificate:
        return self.cas[0]

    def ca_bundle_pem(self) -> bytes:
        return b"".join(_cert_pem(c) for c in self.cas)

    def to_data(self) -> dict[str, bytes | str]:
        raw = {
            "tls.crt": _cert_pem(self.serving_cert),
            "tls.key": _key_pem(self.serving_key),
            "ca.crt": self.ca_bundle_pem(),
            "ca.key": _key_pem(self.ca_key),
        }
        return {k: base64.b64encode(v).decode("ascii") for k, v in raw.items()}

    def annotations(self) -> dict[str, str]:
        if self.ca_published_at is None:
            return {}
        return {CA_PUBLISHED_ANNOTATION: self.ca_published_at.strftime("%Y-%m-%dT%H:%M:%SZ")}

    def issuer_of_serving(self) -> x509.Certificate | None:
        for ca in self.cas:
            try:
                self.serving_cert.verify_directly_issued_by(ca)
            except (ValueError, TypeError, InvalidSignature):  # not signed by this CA
                continue
            return ca
        return None


def _decode(data: dict[str, Any], key: str) -> bytes:
    value = data.get(key)
    if value is None:
        raise ValueError(f"missing key {key}")
    if isinstance(value, bytes):
        value = value.decode("ascii")
    return base64.b64decode(value, validate=True)


def _load_ec_key(pem: bytes) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError("only EC keys are used by the built-in certificates")
    return key


def parse_material(data: dict[str, Any] | None, annotations: dict[str, str] | None) -> Material | None:
    """Parse Secret data; None if anything is missing, garbled or inconsistent (then it is replaced)."""
    if not data:
        return None
    try:
        serving_cert = x509.load_pem_x509_certificate(_decode(data, "tls.crt"))
        serving_key = _load_ec_key(_decode(data, "tls.key"))
        cas = x509.load_pem_x509_certificates(_decode(data, "ca.crt"))
        ca_key = _load_ec_key(_decode(data, "ca.key"))
    except (ValueError, TypeError) as exc:
        logger.warning("The certificate Secret is unusable (%s); it will be replaced.", exc)
        return None
    if _public_der(serving_cert.public_key()) != _public_der(serving_key.public_key()):
        logger.warning("The certificate Secret's tls.key does not match tls.crt; it will be replaced.")
        return None
    # The signing CA is the one whose key we hold; it goes first.
    ca_pub = _public_der(ca_key.public_key())
    signers = [c for c in cas if _public_der(c.public_key()) == ca_pub]
    if not signers:
        logger.warning("The certificate Secret's ca.key matches nothing in ca.crt; it will be replaced.")
        return None
    ordered = (signers[0], *[c for c in cas if c is not signers[0]])
    published: dt.datetime | None = None
    stamp = (annotations or {}).get(CA_PUBLISHED_ANNOTATION)
    if stamp:
        with contextlib.suppress(ValueError):
            published = dt.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
    return Material(serving_cert, serving_key, ordered, ca_key, published)


@dataclass(frozen=True)
class Policy:
    names: tuple[str, ...]
    ca_validity: dt.timedelta = CA_VALIDITY
    serving_validity: dt.timedelta = SERVING_VALIDITY
    serving_renew_before: dt.timedelta = SERVING_RENEW_BEFORE
    ca_renew_before: dt.timedelta = CA_RENEW_BEFORE
    ca_overlap: dt.timedelta = CA_OVERLAP
    ca_common_name: str = "capo-operator-webhook-ca"

    def fresh(self, now: dt.datetime) -> Material:
        ca, ca_key = make_ca(self.ca_common_name, now=now, validity=self.ca_validity)
        cert, key = make_serving(ca, ca_key, self.names, now=now, validity=self.serving_validity)
        return Material(cert, key, (ca,), ca_key, None)

    def next(self, current: Material | None, now: dt.datetime) -> Material | None:
        """What the Secret should hold next, or None if `current` is fine as it is."""
        if current is None:
            return self.fresh(now)
        m = current
        changed = False
        signer_left = m.signer.not_valid_after_utc - now
        if signer_left <= dt.timedelta(0):
            # Nothing signed by it verifies any more: start over, there is no overlap to preserve.
            return self.fresh(now)
        if signer_left < self.ca_renew_before:
            # Phase 1 of a CA rotation: publish the new CA next to the old one; keep serving as before.
            ca, ca_key = make_ca(self.ca_common_name, now=now, validity=self.ca_validity)
            m = Material(m.serving_cert, m.serving_key, (ca, *m.cas), ca_key, now)
            changed = True
        # Drop CAs that can verify nothing any more.
        live = tuple(c for c in m.cas if c.not_valid_after_utc > now)
        if live != m.cas:
            m = Material(m.serving_cert, m.serving_key, live, m.ca_key, m.ca_published_at)
            changed = True
        if self._serving_needs_reissue(m, now):
            cert, key = make_serving(m.signer, m.ca_key, self.names, now=now, validity=self.serving_validity)
            m = Material(cert, key, m.cas, m.ca_key, m.ca_published_at)
            changed = True
        return m if changed else None

    def _serving_needs_reissue(self, m: Material, now: dt.datetime) -> bool:
        cert = m.serving_cert
        if cert.not_valid_after_utc - now < self.serving_renew_before:
            return True
        if cert.not_valid_before_utc > now + CLOCK_SKEW:
            return True
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            return True
        if sorted(san.get_values_for_type(x509.DNSName)) != sorted(self.names):
            return True
        issuer = m.issuer_of_serving()
        if issuer is None:
            return True  # nothing in the bundle verifies it
        if issuer is not m.signer:
            # Phase 2 of a CA rotation: switch once the new CA has been in caBundle long enough.
            published = m.ca_published_at
            return published is None or now - published >= self.ca_overlap
        return False


def _atomic_write(path: pathlib.Path, content: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


class BuiltinCertificates:
    def __init__(
        self,
        api: k8s.ApiClient,
        *,
        namespace: str,
        secret_name: str,
        service_name: str,
        webhook_config_name: str,
        cert_dir: pathlib.Path,
        on_expiry: Callable[[float], None] | None = None,
        check_interval: float = CHECK_INTERVAL,
        policy: Policy | None = None,
    ) -> None:
        self.core = CoreV1(api)
        self.admission = AdmissionregistrationV1(api)
        self.namespace = namespace
        self.secret_name = secret_name
        self.webhook_config_name = webhook_config_name
        self.cert_dir = pathlib.Path(cert_dir)
        self.on_expiry = on_expiry
        self.check_interval = check_interval
        self.policy = policy or Policy(names=tuple(dns_names(service_name, namespace)))
        # One combined file for both: see the module docstring.
        self.cert_file = self.cert_dir / "tls.pem"
        self.key_file = self.cert_file
        self.ca_file = self.cert_dir / "ca.crt"
        self.ready = False
        self.material: Material | None = None
        self._written: bytes | None = None

    # -- one pass -------------------------------------------------------------------------------------

    async def prepare(self) -> None:
        """Make sure a usable Secret exists, the files are written and caBundle is patched."""
        await self.sync()

    async def run(self) -> None:
        """Forever: follow the Secret, rotate before expiry, keep files and caBundle current."""
        while True:
            await asyncio.sleep(self.check_interval)
            try:
                await self.sync()
            except asyncio.CancelledError:
                raise
            except Exception:  # keep serving the current files; retry next period
                logger.exception(
                    "Refreshing the webhook certificates failed; retrying in %.0fs.", self.check_interval
                )

    async def sync(self) -> None:
        material = await self._settle_secret()
        self._write_files(material)
        self.material = material
        if self.on_expiry is not None:
            self.on_expiry(material.serving_cert.not_valid_after_utc.timestamp())
        await self._patch_ca_bundle(material.ca_bundle_pem())

    # -- the Secret -----------------------------------------------------------------------------------

    async def _settle_secret(self) -> Material:
        """Read (or create) the Secret and apply the rotation policy, racing other replicas safely."""
        for _ in range(5):
            secret = await self._read_secret()
            if secret is None:
                fresh = self.policy.fresh(_now())
                created = await self._create_secret(fresh)
                if created:
                    logger.info(
                        "Created the webhook certificate Secret %s/%s.", self.namespace, self.secret_name
                    )
                    return fresh
                continue  # another replica created it first: use theirs
            meta = secret.metadata
            current = parse_material(secret.data, meta.annotations if meta else None)
            wanted = self.policy.next(current, _now())
            if wanted is None:
                assert current is not None
                return current
            rv = meta.resource_version if meta else None
            if await self._replace_secret(wanted, rv):
                logger.info(
                    "Rotated the webhook certificates in Secret %s/%s (serving certificate valid until %s).",
                    self.namespace,
                    self.secret_name,
                    wanted.serving_cert.not_valid_after_utc.isoformat(),
                )
                return wanted
            # 409: another replica rotated first; read its result and judge again.
        raise RuntimeError(f"could not settle Secret {self.namespace}/{self.secret_name} after 5 attempts")

    async def _read_secret(self) -> k8s.V1Secret | None:
        try:
            secret: k8s.V1Secret = await self.core.read_namespaced_secret(self.secret_name, self.namespace)
        except k8s.ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return secret

    def _body(self, material: Material, resource_version: str | None) -> k8s.V1Secret:
        return k8s.V1Secret(
            api_version="v1",
            kind="Secret",
            metadata=k8s.V1ObjectMeta(
                name=self.secret_name,
                namespace=self.namespace,
                labels={"app.kubernetes.io/name": "capo-operator", "app.kubernetes.io/component": "webhook"},
                annotations=material.annotations() or None,
                resource_version=resource_version,
            ),
            type="kubernetes.io/tls",
            data=material.to_data(),
        )

    async def _create_secret(self, material: Material) -> bool:
        try:
            await self.core.create_namespaced_secret(self.namespace, self._body(material, None))
        except k8s.ApiException as exc:
            if exc.status == 409:
                return False
            raise
        return True

    async def _replace_secret(self, material: Material, resource_version: str | None) -> bool:
        # The resourceVersion makes this a compare-and-swap: of racing replicas only one succeeds.
        try:
            await self.core.replace_namespaced_secret(
                self.secret_name, self.namespace, self._body(material, resource_version)
            )
        except k8s.ApiException as exc:
            if exc.status in (404, 409):
                return False
            raise
        return True

    # -- files ----------------------------------------------------------------------------------------

    def _write_files(self, material: Material) -> None:
        combined = _cert_pem(material.serving_cert) + _key_pem(material.serving_key)
        if combined == self._written and self.cert_file.exists():
            return
        self.cert_dir.mkdir(parents=True, exist_ok=True)
        # CA first: whoever reads ca.crt after seeing a new tls.pem must find the CA that signed it.
        _atomic_write(self.ca_file, material.ca_bundle_pem())
        _atomic_write(self.cert_file, combined)
        self._written = combined
        self.ready = True
        logger.info(
            "Wrote the webhook serving certificate to %s (expires %s).",
            self.cert_file,
            material.serving_cert.not_valid_after_utc.isoformat(),
        )

    # -- caBundle -------------------------------------------------------------------------------------

    async def _patch_ca_bundle(self, bundle: bytes) -> None:
        await self._patch_one_ca_bundle(bundle, mutating=False)
        # The sticky-IP MutatingWebhookConfiguration of the same name, when installed.
        await self._patch_one_ca_bundle(bundle, mutating=True)

    async def _patch_one_ca_bundle(self, bundle: bytes, *, mutating: bool) -> None:
        b64 = base64.b64encode(bundle).decode("ascii")
        kind = "MutatingWebhookConfiguration" if mutating else "ValidatingWebhookConfiguration"
        read = (
            self.admission.read_mutating_webhook_configuration
            if mutating
            else self.admission.read_validating_webhook_configuration
        )
        patch = (
            self.admission.patch_mutating_webhook_configuration
            if mutating
            else self.admission.patch_validating_webhook_configuration
        )
        try:
            config = await read(self.webhook_config_name)
        except k8s.ApiException as exc:
            if exc.status == 404:
                logger.warning(
                    "%s %s not found: caBundle not patched (the webhook will not be called until it exists).",
                    kind,
                    self.webhook_config_name,
                )
                return
            raise
        ops: list[dict[str, Any]] = []
        hooks: list[Any] = list(config.webhooks or [])  # V1ValidatingWebhook or V1MutatingWebhook
        for i, hook in enumerate(hooks):
            current = hook.client_config.ca_bundle if hook.client_config else None
            if isinstance(current, bytes):
                current = current.decode("ascii")
            if current == b64:
                continue
            # The `test` guards the index: if the list changed since our read, the patch fails whole.
            ops.append({"op": "test", "path": f"/webhooks/{i}/name", "value": hook.name})
            ops.append({"op": "add", "path": f"/webhooks/{i}/clientConfig/caBundle", "value": b64})
        if not ops:
            return
        try:
            await patch(self.webhook_config_name, ops, _content_type="application/json-patch+json")
        except k8s.ApiException as exc:
            if exc.status in (404, 409, 422):
                # Changed or removed under us: the next period reads it again.
                logger.warning(
                    "Patching caBundle of %s failed (%s); will retry.", self.webhook_config_name, exc.status
                )
                return
            raise
        logger.info(
            "Patched caBundle of %s %s (%d webhooks).",
            kind,
            self.webhook_config_name,
            len(ops) // 2,
        )


class ReloadingWebhookServer(kopf.WebhookServer):
    """Kopf's WebhookServer, but a certificate change reloads the live SSL context in place.

    Kopf (1.45) tears its listener down and starts a new one when the files change, which refuses
    connections for a moment. Here the socket stays open; `load_cert_chain` on the same context
    makes every later handshake use the new pair while connections in flight finish on the old one.
    Files that do not load (e.g. a half-updated cert/key pair in `--certs=files` mode) are retried on
    the next check and the previous certificate stays in use.

    `serving` is true while the listener accepts connections: readiness waits for it, so a replica
    never joins the Service before its webhook answers (a refused call is a deletion let through).
    """

    serving = False
    shortcut: reviews.Shortcut | None = None  # reviews answered without Kopf (the repeats)

    async def __call__(self, fn: Any) -> AsyncIterator[Any]:  # kopf.WebhookFn -> WebhookClientConfig
        async def serve(request: aiohttp.web.Request) -> aiohttp.web.Response:
            # Checked before Kopf reads it, and always answered in time (capo_operator/serving/reviews.py).
            return await reviews.serve(fn, request, shortcut=self.shortcut)

        cadata, context = self._build_ssl()
        path = self.path.rstrip("/") if self.path else ""
        # aiohttp's default limit (1 MiB) is below what the apiserver may send for a large pod.
        app = aiohttp.web.Application(client_max_size=reviews.MAX_BODY_BYTES)
        app.add_routes([aiohttp.web.post(f"{path}/{{id:.*}}", serve)])
        runner = aiohttp.web.AppRunner(app, handle_signals=False)
        await runner.setup()
        try:
            port = self.port or self._allocate_free_port()
            site = aiohttp.web.TCPSite(
                runner, self.addr or None, port, ssl_context=context, reuse_address=True
            )
            await site.start()
            self.serving = True
            schema = "http" if context is None else "https"
            host = self.host or self.DEFAULT_HOST or self._get_accessible_addr(self.addr)
            client_config: dict[str, Any] = {"url": self._build_url(schema, host, port, self.path or "")}
            if cadata is not None:
                client_config["caBundle"] = base64.b64encode(cadata).decode("ascii")
            yield client_config
            digest = self._digest()
            while True:
                await asyncio.sleep(self.file_check_interval)
                latest = self._digest()
                if latest == digest or context is None or self.certfile is None:
                    continue
                try:
                    context.load_cert_chain(self.certfile, self.pkeyfile, self.password)
                except (ssl.SSLError, OSError) as exc:
                    logger.warning(
                        "New webhook certificate files do not load yet (%s); still serving the "
                        "previous certificate.",
                        exc,
                    )
                    continue
                digest = latest
                logger.info("Reloaded the webhook serving certificate from %s.", self.certfile)
        finally:
            self.serving = False
            await runner.cleanup()

    def _digest(self) -> str:
        hasher = hashlib.sha256()
        for name in (self.certfile, self.pkeyfile):
            if name is not None:
                try:
                    hasher.update(pathlib.Path(name).read_bytes())
                except OSError:
                    hasher.update(b"<unreadable>")
        return hasher.hexdigest()
