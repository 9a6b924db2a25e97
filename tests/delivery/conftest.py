"""Shared renders for the delivery tests (each rendered once per session: they take ~0.1-0.5 s)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "hack"))

import delivery_tools

Doc = dict[str, Any]


@pytest.fixture(scope="session")
def tools() -> Any:
    return delivery_tools


@pytest.fixture(scope="session")
def default_docs() -> list[Doc]:
    return delivery_tools.load_docs(delivery_tools.kustomize("default"))


@pytest.fixture(scope="session")
def certmanager_docs() -> list[Doc]:
    return delivery_tools.load_docs(delivery_tools.kustomize("certmanager"))


@pytest.fixture(scope="session")
def prometheus_docs() -> list[Doc]:
    return delivery_tools.load_docs(delivery_tools.kustomize("prometheus"))


def find(docs: list[Doc], kind: str, name: str) -> Doc:
    for d in docs:
        if d["kind"] == kind and d["metadata"]["name"] == name:
            return d
    raise AssertionError(f"{kind}/{name} not rendered")
