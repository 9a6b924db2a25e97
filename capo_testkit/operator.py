"""The real operator as a separate process, started the way users run it."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from capo_testkit.metrics import Metrics, parse_metrics

ROOT = Path(__file__).resolve().parents[1]
# Every process any OperatorProcess started, so a crashed test run still leaves no orphans.
_LIVE: set[subprocess.Popen[bytes]] = set()


def _kill_leftovers() -> None:
    for proc in list(_LIVE):
        with contextlib.suppress(OSError):
            proc.kill()
            proc.wait(5)


atexit.register(_kill_leftovers)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def operator_config(
    *,
    webhook_port: int,
    metrics_port: int,
    health_port: int,
    namespace: str,
    reserve_time: str = "3s",
    release_period: str = "250ms",
    max_count: int = 300,
    label_selector: Mapping[str, Any] | None = None,
    lease: str = "capo",
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A CapoConfig with test timings: seconds instead of minutes, a 3 s lease."""
    config: dict[str, Any] = {
        "apiVersion": "config.capo.io/v1",
        "kind": "CapoConfig",
        "ipReserveMaxCount": max_count,
        "ipReserveTime": reserve_time,
        "ipReleasePeriod": release_period,
        "health": {"healthProbeBindAddress": f"127.0.0.1:{health_port}"},
        "metrics": {"bindAddress": f"127.0.0.1:{metrics_port}"},
        "webhook": {"port": webhook_port},
        "leaderElection": {
            "leaderElect": True,
            "resourceName": lease,
            "resourceNamespace": namespace,
            "leaseDuration": "3s",
            "renewDeadline": "2s",
            "retryPeriod": "500ms",
        },
    }
    if label_selector is not None:
        config["labelSelector"] = dict(label_selector)
    config.update(extra or {})
    return config


class OperatorProcess:
    """`python -m capo_operator run ...` with its own config file, ports and log file."""

    def __init__(
        self,
        *,
        workdir: Path,
        identity: str,
        kubeconfig: Path,
        namespace: str,
        cert_file: Path,
        key_file: Path,
        webhook_port: int,
        config: Mapping[str, Any] | None = None,
        args: Sequence[str] = (),
        **config_options: Any,
    ) -> None:
        self.args = tuple(args)  # more command-line flags
        self.identity = identity
        self.workdir = workdir
        self.kubeconfig = kubeconfig
        self.namespace = namespace
        self.cert_file, self.key_file = cert_file, key_file
        self.webhook_port = webhook_port
        self.metrics_port = free_port()
        self.health_port = free_port()
        workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = workdir / f"{identity}.yaml"
        self.log_path = workdir / f"{identity}.log"
        self.config: dict[str, Any] = dict(
            config
            or operator_config(
                webhook_port=webhook_port,
                metrics_port=self.metrics_port,
                health_port=self.health_port,
                namespace=namespace,
                **config_options,
            )
        )
        self.write_config(self.config)
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    # -- configuration --------------------------------------------------------------------

    def write_config(self, config: Mapping[str, Any] | str) -> None:
        """Replace the config file atomically (as the kubelet swaps a mounted ConfigMap)."""
        text = config if isinstance(config, str) else yaml.safe_dump(dict(config), sort_keys=False)
        if not isinstance(config, str):
            self.config = dict(config)
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, self.config_path)

    def update_config(self, **changes: Any) -> None:
        self.write_config({**self.config, **changes})

    # -- life cycle ------------------------------------------------------------------------

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.starts += 1
        log = self.log_path.open("ab")
        log.write(f"\n===== start #{self.starts} of {self.identity} =====\n".encode())
        log.flush()
        cmd = [
            sys.executable, "-m", "capo_operator", "run",
            "--config", str(self.config_path),
            "--namespace", self.namespace,
            "--identity", self.identity,
            "--kubeconfig", str(self.kubeconfig),
            "--tls-cert-file", str(self.cert_file),
            "--tls-key-file", str(self.key_file),
            "--certs", "files",
            "--log-format", "text",
            "--log-level", "info",
            *self.args,
        ]  # fmt: skip
        # --kubeconfig alone, as users run it: Kopf must log in with the operator's credentials,
        # not find an admin configuration of its own.
        env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
        env["PYTHONUNBUFFERED"] = "1"
        self.proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=ROOT, env=env
        )
        log.close()
        _LIVE.add(self.proc)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    async def _wait_exit(self, within: float) -> bool:
        assert self.proc is not None
        deadline = time.monotonic() + within
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    async def stop(self, within: float = 10) -> int | None:
        """SIGTERM (a graceful shutdown releases the Lease), SIGKILL if it hangs."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            if not await self._wait_exit(within):
                self.proc.kill()
                await self._wait_exit(5)
        _LIVE.discard(self.proc)
        return self.proc.returncode

    async def kill(self) -> None:
        """kill -9: no shutdown code runs, the Lease stays until it expires."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            await self._wait_exit(5)
        if self.proc is not None:
            _LIVE.discard(self.proc)

    async def _get(self, port: int, path: str) -> tuple[int, str]:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3)) as session,
            session.get(f"http://127.0.0.1:{port}{path}") as resp,
        ):
            return resp.status, await resp.text()

    async def wait_ready(self, within: float = 30) -> None:
        deadline = time.monotonic() + within
        last = "no answer"
        while time.monotonic() < deadline:
            if not self.running:
                raise AssertionError(
                    f"operator {self.identity} exited with {self.proc and self.proc.returncode} "
                    f"before it was ready\n{self.log_tail()}"
                )
            try:
                status, text = await self._get(self.health_port, "/readyz")
                if status == 200:
                    return
                last = f"HTTP {status}: {text.strip()}"
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                last = repr(exc)
            await asyncio.sleep(0.1)
        raise AssertionError(
            f"operator {self.identity} not ready after {within}s ({last})\n{self.log_tail()}"
        )

    async def metrics(self) -> Metrics:
        status, text = await self._get(self.metrics_port, "/metrics")
        if status != 200:
            raise AssertionError(f"GET /metrics of {self.identity}: HTTP {status}")
        return parse_metrics(text)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        tail = self.log_text().splitlines()[-lines:]
        return f"--- last {len(tail)} log lines of {self.identity} ({self.log_path}) ---\n" + "\n".join(tail)
