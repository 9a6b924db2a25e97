"""The operator's identity towards the API server: one source for its own client and for Kopf.

Every mode the `kubernetes` client loads is supported: a client certificate, a kubeconfig `token`
or `tokenFile`, exec and OIDC plugins, basic auth, and the in-cluster ServiceAccount token. The
loaders keep a bearer token under the API key `BearerToken` with its scheme inside the value
(`Bearer x` from a kubeconfig, `bearer x` in-cluster); reading any other key sends no credentials
at all, and the API server answers as `system:anonymous`.

Tokens change while the operator runs (the kubelet rotates the projected ServiceAccount token; exec
plugins and `tokenFile`s hand out short-lived ones), so `refresh()` re-runs the original loader into
the same `Configuration` object that the operator's client reads on every request, and Kopf's login
handler calls it before answering: after a 401 Kopf logs in again and gets the new token.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import kopf
import yaml
from kubernetes.aio import client as k8s
from kubernetes.aio import config as k8s_config
from kubernetes.aio.config import incluster_config

logger = logging.getLogger(__name__)

SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
# Re-read token sources this often, like client-go's cached file token source.
REFRESH_SECONDS = 60.0
# Kopf logs in again this long before a token expires, so a request never carries a dead one.
_EXPIRY_MARGIN = timedelta(seconds=30)


class CredentialsError(Exception):
    """No usable credentials; the message says where the operator looked."""


@dataclass(frozen=True)
class Source:
    """Where the credentials come from: a kubeconfig file (or $KUBECONFIG / ~/.kube/config when
    `kubeconfig` is None and there is no in-cluster account), or a ServiceAccount directory."""

    kubeconfig: str | None = None
    context: str | None = None
    service_account_dir: str = SERVICE_ACCOUNT_DIR
    # KUBERNETES_SERVICE_HOST/PORT; the process environment when None.
    environ: dict[str, str] | None = None


class Credentials:
    """Loads the credentials once, keeps them fresh, and hands Kopf the same ones."""

    def __init__(self, source: Source) -> None:
        self.source = source
        self.configuration = k8s.Configuration()
        self.mode = ""  # "in-cluster" | "kubeconfig", once loaded
        self.loaded_at: datetime | None = None
        self._exec_expiry: datetime | None = None  # an exec plugin's token: run it again only then
        self._relogin_lock = asyncio.Lock()
        self.kopf_logins = 0
        self._last_relogin: datetime | None = None
        self._failed_header: str | None = None

    async def load(self) -> k8s.Configuration:
        """First load: an explicit kubeconfig wins; otherwise in-cluster, then the default kubeconfig."""
        if self.source.kubeconfig is None and self._in_cluster_available():
            self.mode = "in-cluster"
        else:
            self.mode = "kubeconfig"
        await self.refresh()
        logger.info("API credentials: %s (%s)", self.mode, self.describe())
        return self.configuration

    async def refresh(self, *, force: bool = True) -> None:
        """Re-run the loader into the same Configuration: a rotated token file, a new exec-plugin
        token or a refreshed OIDC token is in use from the next request on. Unforced, an exec
        plugin's token that is still good for a while is kept (plugins can be slow to run)."""
        cfg = self.configuration
        fresh_for = 2 * timedelta(seconds=REFRESH_SECONDS)
        if not force and self._exec_expiry is not None and datetime.now(UTC) + fresh_for < self._exec_expiry:
            return
        try:
            if self.mode == "in-cluster":
                self._incluster_loader().load_and_set(cfg)
            else:
                # The kubeconfig is not rewritten (it is usually mounted read-only).
                loader = await k8s_config.load_kube_config(
                    config_file=self.source.kubeconfig,
                    context=self.source.context,
                    client_configuration=cfg,
                    persist_config=False,
                )
                expiry = getattr(loader, "exec_plugin_expiry", None)
                self._exec_expiry = expiry if isinstance(expiry, datetime) else None
        except (k8s_config.ConfigException, OSError, KeyError, ValueError, yaml.YAMLError) as exc:
            where = self.source.kubeconfig or ("the in-cluster account" if self.mode else "the kubeconfig")
            raise CredentialsError(f"cannot load API credentials from {where}: {exc}") from exc
        # The loaders keep a token file's trailing newline, which no HTTP header may carry.
        for key, value in list(cfg.api_key.items()):
            if isinstance(value, str):
                cfg.api_key[key] = value.strip()
        self.loaded_at = datetime.now(UTC)

    async def relogin(self) -> bool:
        """After a 401: reload now (at most once a second) and say whether the credentials
        changed, i.e. whether a retry can succeed."""
        async with self._relogin_lock:
            now = datetime.now(UTC)
            if self._last_relogin is not None and now - self._last_relogin < timedelta(seconds=1):
                return self._header() != self._failed_header
            self._failed_header = self._header()
            self._last_relogin = now
            try:
                await self.refresh()
            except CredentialsError as exc:
                logger.warning("reloading API credentials after a 401 failed: %s", exc)
                return False
            return self._header() != self._failed_header

    def _header(self) -> str | None:
        value = self.configuration.api_key.get("BearerToken") or self.configuration.api_key.get(
            "authorization"
        )
        return value if isinstance(value, str) else None

    async def run(self, interval: float = REFRESH_SECONDS) -> None:
        """Keep the operator's own client fresh (Kopf refreshes through `connection_info`)."""
        while True:
            await asyncio.sleep(interval)
            try:
                await self.refresh(force=False)
            except CredentialsError as exc:
                # The last good credentials stay in use; a 401 will say so loudly if they expire.
                logger.warning("refreshing API credentials failed, keeping the current ones: %s", exc)

    async def connection_info(self) -> kopf.ConnectionInfo:
        """What Kopf connects with: exactly the operator's own endpoint and credentials."""
        await self.refresh()
        self.kopf_logins += 1
        if self.kopf_logins > 1:  # after a 401, or shortly before the token expires
            logger.info("Kopf logs in again (login #%d): %s", self.kopf_logins, self.describe())
        cfg = self.configuration
        scheme, token = split_authorization(await cfg.get_api_key_with_prefix("BearerToken", "authorization"))
        basic = scheme is None and bool(cfg.username)
        return kopf.ConnectionInfo(
            server=cfg.host,
            ca_path=cfg.ssl_ca_cert or None,
            insecure=not cfg.verify_ssl,
            scheme=scheme,
            token=token,
            username=cfg.username if basic else None,
            password=cfg.password if basic else None,
            certificate_path=cfg.cert_file or None,
            private_key_path=cfg.key_file or None,
            proxy_url=cfg.proxy or None,
            expiration=login_again_at(token) or self._exec_login_again_at(),
        )

    def _exec_login_again_at(self) -> datetime | None:
        return self._exec_expiry - _EXPIRY_MARGIN if self._exec_expiry is not None else None

    def describe(self) -> str:
        """The credential kind for logs; never the secret itself."""
        cfg = self.configuration
        kinds = []
        header = cfg.api_key.get("BearerToken") or cfg.api_key.get("authorization")
        if header:
            scheme, token = split_authorization(header)
            subject = token_subject(token)
            kinds.append(f"{(scheme or 'bearer').lower()} token" + (f" of {subject}" if subject else ""))
        if cfg.cert_file:
            kinds.append("client certificate")
        if cfg.username:
            kinds.append("basic auth")
        return f"{', '.join(kinds) or 'no credentials'} for {cfg.host}"

    def subject(self) -> str:
        """The user a ServiceAccount or OIDC token names, if it says so ("" otherwise)."""
        header = self.configuration.api_key.get("BearerToken") or self.configuration.api_key.get(
            "authorization"
        )
        return token_subject(split_authorization(header)[1])

    def _in_cluster_available(self) -> bool:
        env = self.source.environ if self.source.environ is not None else os.environ
        host = env.get(incluster_config.SERVICE_HOST_ENV_NAME)
        token = os.path.join(self.source.service_account_dir, "token")
        return bool(host) and os.path.isfile(token)

    def _incluster_loader(self) -> incluster_config.InClusterConfigLoader:
        return incluster_config.InClusterConfigLoader(
            token_filename=os.path.join(self.source.service_account_dir, "token"),
            cert_filename=os.path.join(self.source.service_account_dir, "ca.crt"),
            environ=self.source.environ if self.source.environ is not None else os.environ,
        )


def split_authorization(header: str | None) -> tuple[str | None, str | None]:
    """`Bearer x` -> ("Bearer", "x"); a bare value is taken as a bearer token."""
    if not header:
        return None, None
    scheme, sep, token = header.strip().partition(" ")
    if not sep:
        return "Bearer", scheme
    if scheme.lower() == "bearer":
        scheme = "Bearer"  # in-cluster tokens come as `bearer x`
    return scheme, token.strip() or None


def _jwt_claims(token: str | None) -> dict[str, Any]:
    """The unverified claims of a JWT (ServiceAccount and OIDC tokens are JWTs); {} otherwise."""
    if not token or token.count(".") != 2:
        return {}
    # base64url by the JWT spec; some issuers use the standard alphabet.
    payload = token.split(".")[1].replace("+", "-").replace("/", "_")
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (binascii.Error, ValueError):
        return {}
    return claims if isinstance(claims, dict) else {}


def token_subject(token: str | None) -> str:
    sub = _jwt_claims(token).get("sub")
    return sub if isinstance(sub, str) else ""


def login_again_at(token: str | None) -> datetime | None:
    """When Kopf should log in again: shortly before the token's `exp`, if it has one."""
    exp = _jwt_claims(token).get("exp")
    if not isinstance(exp, int | float) or isinstance(exp, bool):
        return None
    return datetime.fromtimestamp(exp, UTC) - _EXPIRY_MARGIN
