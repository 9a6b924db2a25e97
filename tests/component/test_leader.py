"""LeaseElector against the emulator, with short timings (lease 2 s, renew deadline 1.5 s, retry 0.2 s)."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, cast

import pytest
from component_support import NAMESPACE, Calls, Cluster, eventually
from kubernetes.aio import client

from capo_operator.kube.leader import LeaseElector

LEASE = "capo"
MICRO_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
TIMINGS: dict[str, Any] = dict(
    lease_duration=timedelta(seconds=2),
    renew_deadline=timedelta(seconds=1.5),
    retry_period=timedelta(seconds=0.2),
)


@dataclass
class Replica:
    """One elector with its own client, recording what happened to it."""

    elector: LeaseElector
    calls: Calls
    changes: list[bool] = field(default_factory=list)
    leads: int = 0
    cancelled_leads: int = 0
    lost_at: float | None = None
    crash: bool = False
    task: asyncio.Task[None] | None = None

    async def lead(self) -> None:
        self.leads += 1
        if self.crash:
            raise RuntimeError("the release loop crashed")
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled_leads += 1
            self.lost_at = time.monotonic()
            raise

    def start(self) -> None:
        self.task = asyncio.create_task(self.elector.run(self.lead))

    async def stop(self) -> None:
        assert self.task is not None
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


@pytest.fixture
async def replicas(cluster: Cluster) -> AsyncIterator[Callable[..., Coroutine[Any, Any, Replica]]]:
    made: list[Replica] = []

    async def make(identity: str, **kwargs: Any) -> Replica:
        api, calls = await cluster.new_api()
        changes: list[bool] = []
        elector = LeaseElector(
            api,
            namespace=NAMESPACE,
            name=LEASE,
            identity=identity,
            on_change=changes.append,
            **{**TIMINGS, **kwargs},
        )
        replica = Replica(elector=elector, calls=calls, changes=changes)
        made.append(replica)
        return replica

    yield make
    for r in made:
        if r.task is not None and not r.task.done():
            await r.stop()


async def lease(cluster: Cluster) -> dict[str, Any]:
    body = cast(
        dict[str, Any],
        await cluster.custom.get_namespaced_custom_object(
            "coordination.k8s.io", "v1", NAMESPACE, "leases", LEASE
        ),
    )
    return body


async def test_single_elector_leads_renews_and_releases(cluster: Cluster, replicas: Any) -> None:
    a: Replica = await replicas("a")
    a.start()
    await eventually(lambda: a.elector.is_leader, within=2)
    assert a.changes == [True] and a.leads == 1
    first = (await lease(cluster))["spec"]
    assert first["holderIdentity"] == "a" and first["leaseDurationSeconds"] == 2
    assert MICRO_TIME.match(first["renewTime"]) and MICRO_TIME.match(first["acquireTime"])
    assert first.get("leaseTransitions", 0) == 0
    await asyncio.sleep(0.5)
    later = (await lease(cluster))["spec"]
    assert later["renewTime"] > first["renewTime"]  # renewed every retry period
    assert later["acquireTime"] == first["acquireTime"]
    await a.stop()
    assert a.changes == [True, False] and a.cancelled_leads == 1
    released = (await lease(cluster))["spec"]
    assert not released.get("holderIdentity") and released["leaseDurationSeconds"] == 1


async def test_two_electors_exactly_one_leader(replicas: Any) -> None:
    a: Replica = await replicas("a")
    b: Replica = await replicas("b")
    a.start()
    b.start()
    await eventually(lambda: a.elector.is_leader or b.elector.is_leader, within=2)
    for _ in range(30):  # 3 s: well past a lease duration
        assert a.elector.is_leader != b.elector.is_leader
        await asyncio.sleep(0.1)
    assert a.leads + b.leads == 1


async def test_graceful_shutdown_hands_over_within_a_retry_period(cluster: Cluster, replicas: Any) -> None:
    a: Replica = await replicas("a")
    a.start()
    await eventually(lambda: a.elector.is_leader, within=2)
    b: Replica = await replicas("b")
    b.start()
    await asyncio.sleep(0.5)
    assert not b.elector.is_leader
    await a.stop()
    took = await eventually(lambda: b.elector.is_leader, within=2)
    assert took < 1.0  # retry period (0.2 s, jittered to 0.24 s) plus requests, not the 2 s lease
    spec = (await lease(cluster))["spec"]
    assert spec["holderIdentity"] == "b" and spec["leaseTransitions"] == 1


async def test_killed_leader_is_replaced_after_the_lease_expires(cluster: Cluster, replicas: Any) -> None:
    a: Replica = await replicas("a", release_on_cancel=False)
    a.start()
    await eventually(lambda: a.elector.is_leader, within=2)
    b: Replica = await replicas("b")
    b.start()
    await asyncio.sleep(0.5)
    await a.stop()  # stops renewing, leaves the Lease naming "a"
    assert (await lease(cluster))["spec"]["holderIdentity"] == "a"
    took = await eventually(lambda: b.elector.is_leader, within=4)
    # b last saw the record change at most one retry period before the kill; it waits a full lease.
    assert 1.5 < took < 3.5
    assert (await lease(cluster))["spec"]["holderIdentity"] == "b"


async def test_a_conflict_on_renew_is_absorbed(cluster: Cluster, replicas: Any) -> None:
    a: Replica = await replicas("a")
    a.start()
    await eventually(lambda: a.elector.is_leader, within=2)
    for i in range(3):
        # Someone else touches the Lease (not its holder): the cached resourceVersion goes stale.
        await cluster.custom.patch_namespaced_custom_object(
            "coordination.k8s.io",
            "v1",
            NAMESPACE,
            "leases",
            LEASE,
            {"metadata": {"labels": {"touched": str(i)}}},
            _content_type="application/merge-patch+json",
        )
        await asyncio.sleep(0.3)
    assert a.calls.count("PUT", "leases", status=409) >= 1
    before = (await lease(cluster))["spec"]["renewTime"]
    await asyncio.sleep(0.4)
    assert (await lease(cluster))["spec"]["renewTime"] > before
    assert a.elector.is_leader and a.changes == [True] and a.cancelled_leads == 0


async def test_lead_is_cancelled_at_once_when_another_holder_takes_the_lease(
    cluster: Cluster, replicas: Any
) -> None:
    a: Replica = await replicas("a")
    a.start()
    await eventually(lambda: a.elector.is_leader, within=2)
    body = await lease(cluster)
    body["spec"].update(holderIdentity="intruder", leaseDurationSeconds=60)
    await cluster.custom.replace_namespaced_custom_object(
        "coordination.k8s.io", "v1", NAMESPACE, "leases", LEASE, body
    )
    overwritten = time.monotonic()
    await eventually(lambda: a.cancelled_leads == 1, within=2)
    assert a.lost_at is not None
    assert a.lost_at - overwritten < 1.0  # the next renewal, not the 1.5 s renew deadline
    assert a.changes == [True, False]
    await asyncio.sleep(1.0)
    assert not a.elector.is_leader  # the intruder's 60 s lease is respected
    assert (await lease(cluster))["spec"]["holderIdentity"] == "intruder"


async def test_a_crashing_lead_gives_leadership_up(cluster: Cluster, replicas: Any) -> None:
    a: Replica = await replicas("a")
    a.crash = True
    a.start()
    await eventually(lambda: a.leads >= 1, within=2)
    b: Replica = await replicas("b")
    b.start()
    # a gives up (and releases) after each crash, so b gets in well before any lease expiry.
    await eventually(lambda: b.elector.is_leader, within=2)
    assert a.changes[:2] == [True, False]
    await asyncio.sleep(0.5)
    assert b.elector.is_leader and not a.elector.is_leader


async def test_steps_down_when_renewals_fail_for_the_renew_deadline(cluster: Cluster, replicas: Any) -> None:
    a: Replica = await replicas("a")
    a.start()
    await eventually(lambda: a.elector.is_leader, within=2)
    await cluster.emu.control.add_fault(method="PUT", path=f"leases/{LEASE}", status=500)
    failing_since = time.monotonic()
    await eventually(lambda: a.cancelled_leads == 1, within=3)
    assert a.lost_at is not None
    # Stepped down by the renew deadline (1.5 s since the last good renewal), before the 2 s lease ends.
    assert 1.0 < a.lost_at - failing_since < 1.9
    await cluster.emu.control.clear_faults()
    # The Lease still names "a", so "a" takes it back at once when the API recovers.
    await eventually(lambda: a.elector.is_leader, within=2)
    assert a.changes == [True, False, True]


def test_timings_are_validated() -> None:
    api: Any = client.ApiClient.__new__(client.ApiClient)
    with pytest.raises(ValueError):
        LeaseElector(
            api,
            namespace="ns",
            name="l",
            identity="a",
            lease_duration=timedelta(seconds=10),
            renew_deadline=timedelta(seconds=10),
        )
    with pytest.raises(ValueError):
        LeaseElector(api, namespace="ns", name="l", identity="")
