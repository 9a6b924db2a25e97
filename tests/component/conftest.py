"""Component tests: the I/O modules (calico, records, leader, ledger) against the API emulator."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from component_support import Cluster, api_for, install, record_calls

from kube_emulator.testing import Emulator


@pytest.fixture
def emulator_options() -> dict[str, Any]:
    """Override (or parametrize indirectly) to choose the Calico flavour."""
    return {"calico": "crd", "calico_variant": "latest"}


@pytest.fixture
async def cluster(emulator_options: dict[str, Any]) -> AsyncIterator[Cluster]:
    async with Emulator(**emulator_options) as emu:
        api = await api_for(emu)
        c = Cluster(emu=emu, api=api, calls=record_calls(api))
        try:
            await install(api)
            c.calls.clear()
            yield c
        finally:
            for extra in c._extra:
                await extra.close()
            await api.close()
