"""Test harness for the emulator.

In-process (async)::

    async with Emulator(pod_cidr="10.244.0.0/24", calico="crd", calico_variant="latest",
                        nodes=3, kubelet_delay=0.3) as emu:
        emu.url, emu.kubeconfig_path, emu.control  # EmulatorControl (async)
        emu.cluster                                # the in-process Cluster, for white-box checks

As a subprocess (sync; the operator under test runs as another process against it)::

    with EmulatorProcess(calico="crd", log_file="emulator.log") as emu:
        emu.url, emu.kubeconfig_path, emu.control  # EmulatorControlSync (blocking)

Control endpoints (``/_emulator/...``) from async code: ``EmulatorControl(url, ca_file)`` (an aiohttp
session; ``await control.close()`` or ``async with``). From synchronous code:
``EmulatorControlSync(url, ca_file)`` with the same methods, blocking (urllib, nothing to close).
``Emulator`` gives the async one, ``EmulatorProcess`` the sync one; construct the other kind yourself
from ``emu.url`` and ``emu.ca_file`` if needed. The control endpoints are test plumbing: HTTPS like
everything else, but without authentication (without ``ca_file`` the server is not verified).

The API itself is HTTPS with authentication and RBAC. ``emu.kubeconfig_path`` logs in as the admin
(``kube-emulator-admin`` in ``system:masters``), for test set-up. To act as a ServiceAccount, ask
the TokenRequest API for a token and write a kubeconfig with it: ``write_token_kubeconfig()``.
"""

from __future__ import annotations

import json
import os
import selectors
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import aiohttp
import yaml

from .server import Cluster, EmulatorServer, Options
from .tls import kubeconfig, read_kubeconfig, token_user

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _fault_spec(
    target: str,
    method: str,
    path: str | None,
    webhook: str | None,
    status: int | None,
    latency: float,
    times: int | None,
    drop_watch: bool,
    message: str,
) -> dict[str, Any]:
    return {
        "target": target,
        "method": method,
        "path": path or "",
        "webhook": webhook or "",
        "status": status,
        "latency": latency,
        "times": times,
        "drop_watch": drop_watch,
        "message": message,
    }


class ControlError(Exception):
    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"control endpoint answered {status}: {body}")
        self.status = status
        self.body = body


def write_token_kubeconfig(
    admin_kubeconfig: str | Path, token: str, path: str | Path, namespace: str = "default"
) -> Path:
    """A kubeconfig for the same server and CA as ``admin_kubeconfig`` that logs in with ``token``."""
    parts = read_kubeconfig(admin_kubeconfig)
    out = Path(path)
    out.touch(mode=0o600)
    out.write_text(yaml.safe_dump(kubeconfig(parts.server, parts.ca_pem, token_user(token), namespace)))
    return out


def _control_ssl(ca_file: str | None) -> ssl.SSLContext:
    if ca_file:
        return ssl.create_default_context(cafile=ca_file)
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # test plumbing: the caller chose not to verify
    return ctx


class EmulatorControl:
    """Async client of the ``/_emulator/`` control endpoints."""

    def __init__(self, url: str, ca_file: str | None = None) -> None:
        self.url = url.rstrip("/")
        self._ssl = _control_ssl(ca_file)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> EmulatorControl:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        async with self._session.request(method, self.url + path, json=body, ssl=self._ssl) as resp:
            data = await resp.json(content_type=None)
            if resp.status >= 400:
                raise ControlError(resp.status, data)
            return data

    async def kubelet_evict(self, namespace: str, name: str, message: str | None = None) -> dict[str, Any]:
        """Node-pressure eviction: the pod turns Failed/Evicted, its IPs are freed (no API delete)."""
        result: dict[str, Any] = await self._call(
            "POST", "/_emulator/kubelet/evict", {"namespace": namespace, "name": name, "message": message}
        )
        return result

    async def kubelet_fail(
        self, namespace: str, name: str, reason: str = "Error", message: str | None = None
    ) -> dict[str, Any]:
        result: dict[str, Any] = await self._call(
            "POST",
            "/_emulator/kubelet/fail",
            {"namespace": namespace, "name": name, "reason": reason, "message": message},
        )
        return result

    async def kubelet_pause(self, paused: bool = True) -> None:
        """While paused, kubelets do not issue the final DELETE of terminating pods."""
        await self._call("POST", "/_emulator/kubelet/pause", {"paused": paused})

    async def set_service(self, namespace: str, name: str, port: int | None, url: str) -> None:
        """Route webhook calls for Service namespace/name:port to ``url`` (e.g. https://127.0.0.1:9443)."""
        await self._call(
            "POST", "/_emulator/services", {"namespace": namespace, "name": name, "port": port, "url": url}
        )

    async def add_fault(
        self,
        target: str = "api",
        *,
        method: str = "*",
        path: str | None = None,
        webhook: str | None = None,
        status: int | None = None,
        latency: float = 0.0,
        times: int | None = None,
        drop_watch: bool = False,
        message: str = "",
    ) -> int:
        data = await self._call(
            "POST",
            "/_emulator/faults",
            _fault_spec(target, method, path, webhook, status, latency, times, drop_watch, message),
        )
        return int(data["id"])

    async def remove_fault(self, fault_id: int) -> None:
        await self._call("DELETE", f"/_emulator/faults/{fault_id}")

    async def clear_faults(self) -> None:
        await self._call("DELETE", "/_emulator/faults")

    async def allocator(self) -> dict[str, Any]:
        result: dict[str, Any] = await self._call("GET", "/_emulator/allocator")
        return result

    async def admission_log(self) -> list[dict[str, Any]]:
        data = await self._call("GET", "/_emulator/admission-log")
        entries: list[dict[str, Any]] = data["entries"]
        return entries

    async def clear_admission_log(self) -> None:
        await self._call("DELETE", "/_emulator/admission-log")

    async def expire_tokens(self, namespace: str, name: str) -> int:
        """Every token issued so far for ServiceAccount namespace/name is refused from now on (401)."""
        data = await self._call(
            "POST", "/_emulator/serviceaccounts/expire-tokens", {"namespace": namespace, "name": name}
        )
        return int(data["expired"])

    async def set_write_latency(self, seconds: float) -> None:
        """Every write waits this long for its commit (writes to one object one after another)."""
        await self._call("POST", "/_emulator/write-latency", {"seconds": seconds})

    async def write_latency(self) -> float:
        data = await self._call("GET", "/_emulator/write-latency")
        return float(data["seconds"])


class EmulatorControlSync:
    """Blocking client of the ``/_emulator/`` control endpoints (same methods as EmulatorControl)."""

    def __init__(self, url: str, ca_file: str | None = None) -> None:
        self.url = url.rstrip("/")
        self._ssl = _control_ssl(ca_file)

    def close(self) -> None:
        """Nothing to release; present so both clients can be used alike."""

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            self.url + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(req, timeout=30, context=self._ssl) as resp:
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            raise ControlError(exc.code, json.loads(exc.read() or b"null")) from exc

    def kubelet_evict(self, namespace: str, name: str, message: str | None = None) -> dict[str, Any]:
        result: dict[str, Any] = self._call(
            "POST", "/_emulator/kubelet/evict", {"namespace": namespace, "name": name, "message": message}
        )
        return result

    def kubelet_fail(
        self, namespace: str, name: str, reason: str = "Error", message: str | None = None
    ) -> dict[str, Any]:
        result: dict[str, Any] = self._call(
            "POST",
            "/_emulator/kubelet/fail",
            {"namespace": namespace, "name": name, "reason": reason, "message": message},
        )
        return result

    def kubelet_pause(self, paused: bool = True) -> None:
        self._call("POST", "/_emulator/kubelet/pause", {"paused": paused})

    def set_service(self, namespace: str, name: str, port: int | None, url: str) -> None:
        self._call(
            "POST", "/_emulator/services", {"namespace": namespace, "name": name, "port": port, "url": url}
        )

    def add_fault(
        self,
        target: str = "api",
        *,
        method: str = "*",
        path: str | None = None,
        webhook: str | None = None,
        status: int | None = None,
        latency: float = 0.0,
        times: int | None = None,
        drop_watch: bool = False,
        message: str = "",
    ) -> int:
        data = self._call(
            "POST",
            "/_emulator/faults",
            _fault_spec(target, method, path, webhook, status, latency, times, drop_watch, message),
        )
        return int(data["id"])

    def remove_fault(self, fault_id: int) -> None:
        self._call("DELETE", f"/_emulator/faults/{fault_id}")

    def clear_faults(self) -> None:
        self._call("DELETE", "/_emulator/faults")

    def allocator(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", "/_emulator/allocator")
        return result

    def admission_log(self) -> list[dict[str, Any]]:
        entries: list[dict[str, Any]] = self._call("GET", "/_emulator/admission-log")["entries"]
        return entries

    def clear_admission_log(self) -> None:
        self._call("DELETE", "/_emulator/admission-log")

    def expire_tokens(self, namespace: str, name: str) -> int:
        data = self._call(
            "POST", "/_emulator/serviceaccounts/expire-tokens", {"namespace": namespace, "name": name}
        )
        return int(data["expired"])

    def set_write_latency(self, seconds: float) -> None:
        self._call("POST", "/_emulator/write-latency", {"seconds": seconds})

    def write_latency(self) -> float:
        return float(self._call("GET", "/_emulator/write-latency")["seconds"])


class Emulator:
    """The emulator in the current event loop (async context manager)."""

    def __init__(self, **options: Any) -> None:
        self.options = Options(**options)
        self.server = EmulatorServer(self.options)
        self.url = ""
        self.kubeconfig_path = ""
        self.ca_file = ""
        self.control = EmulatorControl("https://unset")

    @property
    def cluster(self) -> Cluster:
        return self.server.cluster

    async def __aenter__(self) -> Emulator:
        self.url = await self.server.start()
        self.kubeconfig_path = self.server.kubeconfig_path
        self.ca_file = str(self.server.pki.ca_file)
        self.control = EmulatorControl(self.url, self.ca_file)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.control.close()
        await self.server.stop()


class EmulatorProcess:
    """``python -m kube_emulator`` as a subprocess (sync context manager)."""

    def __init__(self, *, log_file: str | None = None, startup_timeout: float = 30.0, **options: Any) -> None:
        self.options = Options(**options)
        self.log_file = log_file
        self.startup_timeout = startup_timeout
        self.url = ""
        self.kubeconfig_path = ""
        self.ca_file = ""
        self.control = EmulatorControlSync("https://unset")
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def _argv(self) -> list[str]:
        o = self.options
        argv = [
            sys.executable,
            "-m",
            "kube_emulator",
            "--host",
            o.host,
            "--port",
            str(o.port),
            "--pod-cidr",
            o.pod_cidr,
            "--calico",
            o.calico,
            "--calico-variant",
            o.calico_variant,
            "--nodes",
            str(o.nodes),
            "--kubelet-delay",
            str(o.kubelet_delay),
            "--watch-history",
            str(o.watch_history),
            "--bookmark-interval",
            str(o.bookmark_interval),
            "--log-level",
            o.log_level,
            "--podgc-orphan-delay",
            str(o.podgc_orphan_delay),
            "--write-latency",
            str(o.write_latency),
        ]
        if o.pod_cidr_v6:
            argv += ["--pod-cidr-v6", o.pod_cidr_v6]
        if o.kubeconfig_out:
            argv += ["--kubeconfig-out", o.kubeconfig_out]
        return argv

    def __enter__(self) -> EmulatorProcess:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_ROOT), env.get("PYTHONPATH")]))
        if self.log_file:
            self._log = open(self.log_file, "ab")
        self.process = subprocess.Popen(
            self._argv(), stdout=subprocess.PIPE, stderr=self._log, env=env, cwd=str(PROJECT_ROOT)
        )
        try:
            line = self._read_ready_line()
        except BaseException:
            self._stop()
            raise
        ready = json.loads(line)
        self.url = ready["url"]
        self.kubeconfig_path = ready["kubeconfig"]
        self.ca_file = ready["ca"]
        self.control = EmulatorControlSync(self.url, self.ca_file)
        return self

    def _read_ready_line(self) -> str:
        assert self.process is not None and self.process.stdout is not None
        sel = selectors.DefaultSelector()
        sel.register(self.process.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + self.startup_timeout
        buf = b""
        try:
            while b"\n" not in buf:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("the emulator did not get ready in time")
                if not sel.select(left):
                    continue
                chunk = os.read(self.process.stdout.fileno(), 4096)
                if not chunk:
                    raise RuntimeError(f"the emulator exited early with code {self.process.wait()}")
                buf += chunk
        finally:
            sel.close()
        return buf.split(b"\n", 1)[0].decode()

    def _stop(self) -> None:
        if self.process is not None:
            if self.process.poll() is None:
                self.process.terminate()
                try:
                    self.process.wait(10)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
            if self.process.stdout is not None:
                self.process.stdout.close()
            self.process = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop()
