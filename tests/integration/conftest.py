"""Integration suite: the real operator process against the emulator (or a real cluster).

Set CAPO_TEST_KUBECONFIG to run against a real cluster (CAPO_TEST_WEBHOOK_HOST: the address its
apiserver uses to reach this machine); emulator-only tests are then skipped with a reason.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Generator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from capo_testkit import Harness, real_kubeconfig  # noqa: E402

DEFAULT_TIMEOUT = 90  # seconds per test; every wait inside is shorter and says what it waited for


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    real = real_kubeconfig() is not None
    for item in items:
        if "integration" not in str(item.path):
            continue
        if item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(DEFAULT_TIMEOUT))
        if real and item.get_closest_marker("emulator_only") is not None:
            item.add_marker(
                pytest.mark.skip(
                    reason="emulator-only (fault injection, Calico CRD variants, the demo); "
                    "CAPO_TEST_KUBECONFIG points at a real cluster"
                )
            )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Generator[None, Any, None]:
    outcome = yield
    report = outcome.get_result()
    harness = getattr(item, "_capo_harness", None)
    if report.when == "call" and report.failed and harness is not None:
        # The operators' own account of what happened, next to the failed assertion.
        report.sections.append(("operator logs", harness.logs(80)))


@pytest.fixture
def cluster_options() -> dict[str, Any]:
    """Emulator options (calico flavour, dual stack); parametrize indirectly to change them."""
    return {}


@pytest.fixture
async def capo(
    request: pytest.FixtureRequest, tmp_path: Path, cluster_options: dict[str, Any]
) -> AsyncIterator[Harness]:
    """A fresh cluster (its own emulator) with the shipped webhook configuration; no operator yet."""
    async with Harness.open(tmp_path, **cluster_options) as harness:
        request.node._capo_harness = harness
        yield harness
