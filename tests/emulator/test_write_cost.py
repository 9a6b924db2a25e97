"""The write cost that shapes performance: a per-write commit latency, and one writer per object."""

from __future__ import annotations

import asyncio
import time

import pytest

from kube_emulator.cli import parse_args
from kube_emulator.testing import ControlError, Emulator

from .conftest import Http

CMS = "/api/v1/namespaces/default/configmaps"
JSON_PATCH = "application/json-patch+json"


def cm(name: str) -> dict[str, object]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {}}


async def test_concurrent_patches_of_one_object_commit_one_after_another(emu: Emulator, http: Http) -> None:
    await http.post(CMS, cm("one"))
    await emu.control.set_write_latency(0.1)
    started = time.monotonic()
    results = await asyncio.gather(
        *(
            http.patch(f"{CMS}/one", [{"op": "add", "path": f"/data/k{i}", "value": str(i)}], JSON_PATCH)
            for i in range(5)
        )
    )
    elapsed = time.monotonic() - started
    assert [status for status, _, _ in results] == [200] * 5
    # Serialized: five commits of 0.1 s cannot finish sooner than 0.5 s.
    assert elapsed >= 0.5
    versions = sorted(int(body["metadata"]["resourceVersion"]) for _, body, _ in results)
    assert len(set(versions)) == 5  # each patch is its own write, none lost
    _, final, _ = await http.get(f"{CMS}/one")
    assert final["data"] == {f"k{i}": str(i) for i in range(5)}


async def test_writes_to_different_objects_commit_side_by_side(emu: Emulator, http: Http) -> None:
    await emu.control.set_write_latency(0.4)
    started = time.monotonic()
    results = await asyncio.gather(*(http.post(CMS, cm(f"side-{i}")) for i in range(5)))
    elapsed = time.monotonic() - started
    assert [status for status, _, _ in results] == [201] * 5
    assert elapsed >= 0.4  # each write pays the commit latency
    assert elapsed < 5 * 0.4  # but not one after another (that would take 2 s)


async def test_a_write_waits_for_its_commit_and_a_read_does_not(emu: Emulator, http: Http) -> None:
    await http.post(CMS, cm("slow"))
    await emu.control.set_write_latency(0.3)
    started = time.monotonic()
    await http.patch(f"{CMS}/slow", {"data": {"a": "1"}})
    assert time.monotonic() - started >= 0.3
    started = time.monotonic()
    status, _, _ = await http.get(f"{CMS}/slow")
    assert status == 200 and time.monotonic() - started < 0.3
    # Deletes are writes too.
    started = time.monotonic()
    status, _, _ = await http.delete(f"{CMS}/slow")
    assert status == 200 and time.monotonic() - started >= 0.3


async def test_checked_updates_still_conflict_when_serialized(emu: Emulator, http: Http) -> None:
    _, created, _ = await http.post(CMS, cm("rv"))
    await emu.control.set_write_latency(0.05)
    bodies = [{**created, "data": {"writer": str(i)}} for i in range(3)]
    results = await asyncio.gather(*(http.put(f"{CMS}/rv", b) for b in bodies))
    assert sorted(status for status, _, _ in results) == [200, 409, 409]


async def test_write_latency_is_set_and_read_at_run_time(emu: Emulator) -> None:
    assert await emu.control.write_latency() == 0.0
    await emu.control.set_write_latency(0.005)
    assert await emu.control.write_latency() == 0.005
    assert emu.cluster.api.write_latency == 0.005
    for bad in (-1, "fast", None, 11):
        with pytest.raises(ControlError) as err:
            await emu.control.set_write_latency(bad)  # type: ignore[arg-type]
        assert err.value.status == 400 and "write latency" in err.value.body["message"]
    assert await emu.control.write_latency() == 0.005


async def test_write_latency_from_options_and_command_line() -> None:
    assert parse_args(["--write-latency", "0.002"]).write_latency == 0.002
    assert parse_args([]).write_latency == 0.0
    with pytest.raises(SystemExit):
        parse_args(["--write-latency", "-0.5"])
    async with Emulator(write_latency=0.002) as e:
        assert await e.control.write_latency() == 0.002
