"""reserveAhead in the leader's loop: a pod selected while a pass runs is reserved ahead soon after,
not one `ipReleasePeriod` later; changes of pods selected already do not wake the leader."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from datetime import timedelta

import pytest
from fakes import eventually, make_harness, make_ns, make_pod

from capo_operator.config import Config


async def test_a_pod_selected_while_a_pass_writes_is_reserved_ahead_without_waiting_a_period() -> None:
    # A period far longer than the test: only the wake-up of a newly selected pod can bring the
    # second pod's IP in.
    h = make_harness(Config(reserve_ahead=True, ip_release_period=timedelta(seconds=60)), leading=True)
    h.add_ns(make_ns("db"))
    h.add_pod(make_pod(name="db-0", uid="u0", ips=("10.0.3.1",)))
    h.calico.gate = asyncio.Event()  # the pass's append waits: a pod is selected meanwhile
    h.op.views.synced.set()
    task = asyncio.create_task(h.op.releaser.lead())
    try:
        await eventually(lambda: ("calico.append", ("10.0.3.1",)) in h.journal)
        h.add_pod(make_pod(name="db-1", uid="u1", ips=("10.0.3.2",)))
        h.calico.gate.set()

        await eventually(lambda: "10.0.3.2" in h.calico.ips, within=3.0)

        assert h.calico.ips == {"10.0.3.1", "10.0.3.2"}
        assert h.sample("capo_reserved_ahead_ips") == 2
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_without_reserve_ahead_a_running_pod_is_not_reserved() -> None:
    h = make_harness(Config(ip_release_period=timedelta(milliseconds=50)), leading=True)
    h.add_ns(make_ns("db"))
    h.add_pod(make_pod(name="db-0", uid="u0", ips=("10.0.3.1",)))
    h.op.views.synced.set()
    task = asyncio.create_task(h.op.releaser.lead())
    try:
        await asyncio.sleep(0.3)  # several passes

        assert h.calico.ips == set()
        assert h.journal.ops("calico.append") == []
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_changes_of_a_pod_selected_already_do_not_wake_the_leader(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A drain marks every pod deleting: one pass per change would run the leader flat out for
    # nothing (their IPs are held already). Only a newly selected IP wakes it.
    h = make_harness(Config(reserve_ahead=True, ip_release_period=timedelta(seconds=60)), leading=True)
    h.add_ns(make_ns("db"))
    pod = h.add_pod(make_pod(name="db-0", uid="u0", ips=("10.0.3.1",)))
    h.op.views.synced.set()
    r = h.op.releaser
    passes: list[None] = []
    real = r.pass_once

    async def counted() -> int:
        passes.append(None)
        return await real()

    monkeypatch.setattr(r, "pass_once", counted)
    task = asyncio.create_task(r.lead())
    try:
        await eventually(lambda: "10.0.3.1" in h.calico.ips)
        await asyncio.sleep(0.3)
        assert len(passes) == 1

        h.add_pod(dataclasses.replace(pod, deleting=True))  # still selected, IP held already
        await asyncio.sleep(0.5)
        assert len(passes) == 1

        h.add_pod(make_pod(name="db-1", uid="u1", ips=("10.0.3.2",)))
        await eventually(lambda: "10.0.3.2" in h.calico.ips)
        assert len(passes) == 2
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
