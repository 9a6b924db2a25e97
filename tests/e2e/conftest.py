"""End-to-end: a kind cluster with Calico, the operator installed from the chart, real deletions.

Needs a Docker engine, `kind`, `kubectl` and `helm` on PATH. Without them every test here is skipped
with the reason. Set CAPO_E2E_CALICO_MANIFEST to a Calico manifest (file or URL) to install; the
default is Calico's v3.29 `calico.yaml`. Set CAPO_E2E_KEEP=1 to keep the cluster afterwards.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = "capo-e2e"
IMAGE = "capo-operator:e2e"
CALICO = os.environ.get(
    "CAPO_E2E_CALICO_MANIFEST",
    "https://raw.githubusercontent.com/projectcalico/calico/v3.29.3/manifests/calico.yaml",
)


def _missing() -> str | None:
    for tool in ("docker", "kind", "kubectl", "helm"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed"
    probe = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        return "no Docker engine is reachable (`docker info` failed)"
    return None


def run(*args: str, check: bool = True, timeout: float = 600, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), check=check, capture_output=True, text=True, timeout=timeout, **kw)


def kubectl(*args: str, check: bool = True) -> str:
    return run("kubectl", "--context", f"kind-{CLUSTER}", *args, check=check).stdout


def kubectl_stdin(stdin: str, *args: str) -> str:
    return run("kubectl", "--context", f"kind-{CLUSTER}", *args, input=stdin).stdout


def kubectl_json(*args: str) -> Any:
    return json.loads(kubectl(*args, "-o", "json"))


def wait_for(what: str, predicate: Any, timeout: float = 180, interval: float = 2) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval)


@pytest.fixture(scope="session")
def cluster() -> Iterator[str]:
    reason = _missing()
    if reason:
        pytest.skip(f"e2e needs Docker and kind: {reason}. See docs/install.md, 'End-to-end tests'.")
    run("docker", "build", "-t", IMAGE, str(ROOT), timeout=1800)
    existing = run("kind", "get", "clusters", check=False).stdout.split()
    if CLUSTER not in existing:
        run("kind", "create", "cluster", "--config", str(ROOT / "tests/e2e/kind-config.yaml"), timeout=900)
    try:
        kubectl("apply", "--server-side", "-f", CALICO)
        kubectl("-n", "kube-system", "rollout", "status", "ds/calico-node", "--timeout=600s")
        run("kind", "load", "docker-image", IMAGE, "--name", CLUSTER, timeout=900)
        repository, tag = IMAGE.split(":")
        run(
            "helm",
            "--kube-context",
            f"kind-{CLUSTER}",
            "upgrade",
            "--install",
            "capo",
            str(ROOT / "helm/capo"),
            "--namespace",
            "capo-system",
            "--create-namespace",
            "--wait",
            "--timeout",
            "5m",
            "--set",
            f"image.repository={repository}",
            "--set",
            f"image.tag={tag}",
            "--set",
            "image.pullPolicy=Never",
            "--set",
            "config.ipReserveTime=10m",
        )
        yield CLUSTER
    finally:
        if not os.environ.get("CAPO_E2E_KEEP"):
            run("kind", "delete", "cluster", "--name", CLUSTER, check=False)
