"""Kopf and the operator's client get the same credentials, from the `kubernetes` client's own
loaders (not mocks of them), in every mode those loaders support, and pick up rotated tokens."""

from __future__ import annotations

import base64
import json
import stat
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import kopf
import pytest
import yaml

from capo_operator.kube.credentials import (
    Credentials,
    CredentialsError,
    Source,
    login_again_at,
    split_authorization,
    token_subject,
)

SERVER = "https://203.0.113.10:6443"
CA_PEM = b"-----BEGIN CERTIFICATE-----\nCA\n-----END CERTIFICATE-----\n"
CERT_PEM = b"-----BEGIN CERTIFICATE-----\nCLIENT\n-----END CERTIFICATE-----\n"
KEY_PEM = b"-----BEGIN PRIVATE KEY-----\nKEY\n-----END PRIVATE KEY-----\n"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def jwt(claims: dict[str, Any]) -> str:
    def part(obj: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")

    return f"{part({'alg': 'RS256', 'kid': 'test'})}.{part(claims)}.c2lnbmF0dXJl"


def kubeconfig(tmp_path: Path, user: dict[str, Any], name: str = "kubeconfig") -> Path:
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": SERVER, "certificate-authority-data": b64(CA_PEM)}}],
        "users": [{"name": "u", "user": user}],
        "contexts": [{"name": "ctx", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "ctx",
    }
    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc))
    return path


async def kube_client_header(creds: Credentials) -> str | None:
    """The Authorization header the `kubernetes` client itself would send."""
    settings = await creds.configuration.auth_settings()
    bearer = settings.get("BearerToken")
    return bearer["value"] if bearer else None


async def login(source: Source) -> tuple[Credentials, kopf.ConnectionInfo]:
    creds = Credentials(source)
    await creds.load()
    return creds, await creds.connection_info()


async def test_kubeconfig_token_reaches_kopf_as_a_bearer_token(tmp_path: Path) -> None:
    creds, info = await login(Source(kubeconfig=str(kubeconfig(tmp_path, {"token": "abc.def"}))))
    assert info.server == SERVER
    assert (info.scheme, info.token) == ("Bearer", "abc.def")
    assert info.as_http_headers()["Authorization"] == "Bearer abc.def"
    # Kopf and the operator's own client send exactly the same header.
    assert await kube_client_header(creds) == "Bearer abc.def"
    assert info.ca_path is not None and Path(info.ca_path).read_bytes() == CA_PEM  # type: ignore[arg-type]
    assert info.certificate_path is None and info.username is None


async def test_client_certificate_reaches_kopf_as_files(tmp_path: Path) -> None:
    user = {"client-certificate-data": b64(CERT_PEM), "client-key-data": b64(KEY_PEM)}
    creds, info = await login(Source(kubeconfig=str(kubeconfig(tmp_path, user))))
    assert Path(str(info.certificate_path)).read_bytes() == CERT_PEM
    assert Path(str(info.private_key_path)).read_bytes() == KEY_PEM
    assert info.token is None and info.scheme is None
    assert "Authorization" not in info.as_http_headers()
    assert await kube_client_header(creds) is None


async def test_token_file_is_read_again_on_every_login(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("first-token\n")
    creds, info = await login(Source(kubeconfig=str(kubeconfig(tmp_path, {"tokenFile": str(token_file)}))))
    assert info.token == "first-token"

    token_file.write_text("second-token\n")  # rotated by whoever issues it
    again = await creds.connection_info()  # what Kopf's re-login after a 401 calls
    assert again.token == "second-token"
    assert await kube_client_header(creds) == "Bearer second-token"


async def test_periodic_refresh_gives_the_operators_client_the_rotated_token(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("first-token")
    creds = Credentials(Source(kubeconfig=str(kubeconfig(tmp_path, {"tokenFile": str(token_file)}))))
    await creds.load()
    token_file.write_text("second-token")
    await creds.refresh(force=False)
    assert await kube_client_header(creds) == "Bearer second-token"


def exec_plugin(tmp_path: Path, token: str, expires: datetime | None) -> tuple[dict[str, Any], Path]:
    """A real exec credential plugin (a script) that counts its runs."""
    counter = tmp_path / "runs"
    counter.write_text("0")
    status: dict[str, Any] = {"token": token}
    if expires is not None:
        status["expirationTimestamp"] = expires.strftime("%Y-%m-%dT%H:%M:%SZ")
    script = tmp_path / "plugin.py"
    script.write_text(
        "import json, pathlib\n"
        f"c = pathlib.Path({str(counter)!r}); c.write_text(str(int(c.read_text()) + 1))\n"
        "print(json.dumps({'apiVersion': 'client.authentication.k8s.io/v1', 'kind': 'ExecCredential',"
        f" 'status': {status!r}}}))\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    user = {
        "exec": {
            "apiVersion": "client.authentication.k8s.io/v1",
            "command": sys.executable,
            "args": [str(script)],
            "interactiveMode": "Never",
        }
    }
    return user, counter


async def test_exec_plugin_token_and_its_expiry_reach_kopf(tmp_path: Path) -> None:
    expires = (datetime.now(UTC) + timedelta(hours=1)).replace(microsecond=0)
    user, runs = exec_plugin(tmp_path, "exec-token", expires)
    creds, info = await login(Source(kubeconfig=str(kubeconfig(tmp_path, user))))
    assert (info.scheme, info.token) == ("Bearer", "exec-token")
    # Kopf logs in again (and so runs the plugin again) shortly before the token expires.
    assert info.expiration is not None
    assert expires - timedelta(minutes=2) < info.expiration < expires
    assert await kube_client_header(creds) == "Bearer exec-token"

    before = int(runs.read_text())
    await creds.refresh(force=False)  # the periodic refresh: the token is good for an hour
    assert int(runs.read_text()) == before
    await creds.connection_info()  # a login (e.g. after a 401) always asks the plugin again
    assert int(runs.read_text()) == before + 1


async def test_oidc_id_token_reaches_kopf_with_its_expiry(tmp_path: Path) -> None:
    exp = int(time.time()) + 3600
    id_token = jwt({"iss": "https://idp.example", "sub": "alice", "exp": exp})
    user = {
        "auth-provider": {
            "name": "oidc",
            "config": {
                "client-id": "capo",
                "client-secret": "s",
                "idp-issuer-url": "https://idp.example",
                "id-token": id_token,
                "refresh-token": "r",
            },
        }
    }
    creds, info = await login(Source(kubeconfig=str(kubeconfig(tmp_path, user))))
    assert (info.scheme, info.token) == ("Bearer", id_token)
    assert info.expiration == datetime.fromtimestamp(exp, UTC) - timedelta(seconds=30)
    assert await kube_client_header(creds) == f"Bearer {id_token}"


async def test_basic_auth_reaches_kopf_with_the_same_header(tmp_path: Path) -> None:
    creds, info = await login(
        Source(kubeconfig=str(kubeconfig(tmp_path, {"username": "admin", "password": "secret"})))
    )
    expected = "Basic " + b64(b"admin:secret")
    assert info.as_http_headers()["Authorization"] == expected
    assert await kube_client_header(creds) == expected


def service_account_dir(tmp_path: Path, token: str) -> Path:
    sa = tmp_path / "serviceaccount"
    sa.mkdir(exist_ok=True)
    (sa / "token").write_text(token)
    (sa / "ca.crt").write_bytes(CA_PEM)
    (sa / "namespace").write_text("capo-system")
    return sa


IN_CLUSTER_ENV = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}


async def test_in_cluster_service_account_token_reaches_kopf(tmp_path: Path) -> None:
    token = jwt({"sub": "system:serviceaccount:capo-system:capo-operator", "exp": int(time.time()) + 3600})
    sa = service_account_dir(tmp_path, token)
    creds, info = await login(Source(service_account_dir=str(sa), environ=IN_CLUSTER_ENV))
    assert creds.mode == "in-cluster"
    assert info.server == "https://10.96.0.1:443"
    assert (info.scheme, info.token) == ("Bearer", token)
    assert Path(str(info.ca_path)).read_bytes() == CA_PEM
    assert info.expiration is not None
    assert "system:serviceaccount:capo-system:capo-operator" in creds.describe()
    assert token not in creds.describe()


async def test_rotated_service_account_token_is_used_after_a_relogin(tmp_path: Path) -> None:
    """The kubelet rewrites the projected token; Kopf's next login (after a 401, or before the
    old token's expiry) and the operator's next refresh both use the new one, with no restart."""
    sa = service_account_dir(tmp_path, "old-token")
    creds, info = await login(Source(service_account_dir=str(sa), environ=IN_CLUSTER_ENV))
    assert info.token == "old-token"
    (sa / "token").write_text("new-token")
    assert (await creds.connection_info()).token == "new-token"
    assert await kube_client_header(creds) == "bearer new-token"


async def test_an_explicit_kubeconfig_wins_over_the_in_cluster_account(tmp_path: Path) -> None:
    sa = service_account_dir(tmp_path, "sa-token")
    path = kubeconfig(tmp_path, {"token": "kubeconfig-token"})
    creds, info = await login(
        Source(kubeconfig=str(path), service_account_dir=str(sa), environ=IN_CLUSTER_ENV)
    )
    assert creds.mode == "kubeconfig" and info.token == "kubeconfig-token"


async def test_without_in_cluster_account_the_default_kubeconfig_is_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = kubeconfig(tmp_path, {"token": "default-token"})
    from kubernetes.aio.config import kube_config

    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(path))
    creds, info = await login(Source(service_account_dir=str(tmp_path / "none"), environ={}))
    assert creds.mode == "kubeconfig" and info.token == "default-token"


async def test_a_missing_kubeconfig_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "missing" / "kubeconfig"
    with pytest.raises(CredentialsError, match=str(missing)):
        await Credentials(Source(kubeconfig=str(missing))).load()


async def test_a_failed_refresh_keeps_the_last_good_credentials(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("good-token")
    path = kubeconfig(tmp_path, {"tokenFile": str(token_file)})
    creds = Credentials(Source(kubeconfig=str(path)))
    await creds.load()
    path.write_text("{not: [valid")
    with pytest.raises(CredentialsError):
        await creds.refresh()
    assert await kube_client_header(creds) == "Bearer good-token"


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("Bearer abc", ("Bearer", "abc")),
        ("bearer abc", ("Bearer", "abc")),
        ("abc", ("Bearer", "abc")),
        ("Basic dXNlcjpwdw==", ("Basic", "dXNlcjpwdw==")),
        ("", (None, None)),
        (None, (None, None)),
    ],
)
def test_split_authorization(header: str | None, expected: tuple[str | None, str | None]) -> None:
    assert split_authorization(header) == expected


def test_token_claims_are_read_only_from_jwts() -> None:
    assert token_subject("opaque-token") == ""
    assert login_again_at("a.b") is None
    assert login_again_at("a.!!!.c") is None
    assert login_again_at(jwt({"exp": "soon"})) is None
    assert login_again_at(jwt({"exp": 2_000_000_000})) == datetime.fromtimestamp(
        2_000_000_000, UTC
    ) - timedelta(seconds=30)
