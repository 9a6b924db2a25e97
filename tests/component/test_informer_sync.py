"""The informers against the API emulator, through the operator's kubernetes.aio client."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from component_support import NAMESPACE, Cluster, eventually
from kubernetes.aio import client

from capo_operator.decisions.policy import PodFacts
from capo_operator.decisions.record import GROUP, PLURAL, VERSION, PodRef, Record
from capo_operator.kube import (
    POD_IP_INDEX,
    RECORD_POD_UID_INDEX,
    ApiError,
    Backoff,
    Informer,
    KubeTransport,
    namespace_informer,
    pod_informer,
    record_informer,
)
from capo_operator.kube.records import RecordStore

POD_WATCH = r"/api/v1/pods\?.*watch=true"


@pytest.fixture
def emulator_options() -> dict[str, Any]:
    # A /20 pool for many pods; a short watch history so that a gap can outlive it.
    return {"calico": "crd", "pod_cidr": "10.244.0.0/20", "kubelet_delay": 0.05, "watch_history": 200}


def manifest(name: str) -> dict[str, Any]:
    return {"metadata": {"name": name}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}}


async def create_pods(api: client.ApiClient, names: list[str], namespace: str = NAMESPACE) -> None:
    core = client.CoreV1Api(api)
    semaphore = asyncio.Semaphore(16)

    async def one(name: str) -> None:
        async with semaphore:
            await core.create_namespaced_pod(namespace, manifest(name))

    await asyncio.gather(*(one(name) for name in names))


async def delete_pods(api: client.ApiClient, names: list[str], namespace: str = NAMESPACE) -> None:
    core = client.CoreV1Api(api)
    for name in names:
        await core.delete_namespaced_pod(name, namespace, grace_period_seconds=0)


class Watched:
    """An informer running in the background and what its handlers heard."""

    def __init__(self, informer: Informer[PodFacts]) -> None:
        self.informer = informer
        self.deleted: list[str] = []
        self.added: list[str] = []
        informer.add_handlers(
            on_add=lambda p: self.added.append(p.name), on_delete=lambda p: self.deleted.append(p.name)
        )
        self.task = asyncio.create_task(informer.run())

    def names(self) -> set[str]:
        return {p.name for p in self.informer.store.values()}

    async def stop(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


def pod_watches(cluster: Cluster) -> int:
    return sum(1 for w in cluster.emu.cluster.http.watchers if "/pods?" in w.path)


def server_pods(cluster: Cluster) -> dict[str, dict[str, Any]]:
    bucket = cluster.emu.cluster.store.bucket(("", "pods"))
    return {name: obj for (_ns, name), obj in bucket.objects.items()}


async def test_sync_of_many_pods_across_pages(cluster: Cluster) -> None:
    names = [f"p{i:04d}" for i in range(600)]
    await create_pods(cluster.api, names)
    await eventually(lambda: all(o.get("status", {}).get("podIP") for o in server_pods(cluster).values()), 30)
    watched = Watched(pod_informer(KubeTransport(cluster.api), page_size=50, resync_period=None))
    try:
        await asyncio.wait_for(watched.informer.synced.wait(), 30)
        assert watched.names() == set(names) and sorted(watched.added) == names
        for name, obj in server_pods(cluster).items():
            ip = obj["status"]["podIP"]
            assert [p.name for p in watched.informer.store.by_index(POD_IP_INDEX, ip)] == [name]
        assert watched.informer.stats.lists == 1 and watched.informer.stats.list_restarts == 0
        # And the watch follows: a new pod appears.
        await create_pods(cluster.api, ["late"])
        await eventually(lambda: "late" in watched.names())
    finally:
        await watched.stop()


async def test_a_dropped_watch_resumes_and_misses_nothing(cluster: Cluster) -> None:
    await create_pods(cluster.api, ["a", "b", "c"])
    backoff = Backoff(initial=0.05, maximum=0.2)
    watched = Watched(pod_informer(KubeTransport(cluster.api), backoff=backoff, resync_period=None))
    control = cluster.emu.control
    try:
        await asyncio.wait_for(watched.informer.synced.wait(), 10)
        await eventually(lambda: pod_watches(cluster) == 1)
        # The watch is broken, and new watches fail for a while: changes pile up meanwhile.
        failing = await control.add_fault("api", method="GET", path=POD_WATCH, status=503)
        await control.add_fault("api", path=POD_WATCH, drop_watch=True, times=1)
        await delete_pods(cluster.api, ["a"])
        await create_pods(cluster.api, ["d"])
        await control.remove_fault(failing)
        await eventually(lambda: watched.names() == set(server_pods(cluster)), 10)
        assert watched.names() == {"b", "c", "d"} and "a" in watched.deleted
        assert watched.informer.stats.lists == 1  # resumed from its resourceVersion, no relist
        assert watched.informer.stats.errors >= 1
    finally:
        await watched.stop()


async def test_410_after_a_long_gap_relists_and_emits_the_deletions(cluster: Cluster) -> None:
    await create_pods(cluster.api, [f"g{i}" for i in range(10)])
    backoff = Backoff(initial=0.05, maximum=0.2)
    watched = Watched(pod_informer(KubeTransport(cluster.api), backoff=backoff, resync_period=None))
    control = cluster.emu.control
    try:
        await asyncio.wait_for(watched.informer.synced.wait(), 10)
        await eventually(lambda: len(watched.names()) == 10 and pod_watches(cluster) == 1)
        failing = await control.add_fault("api", method="GET", path=POD_WATCH, status=503)
        await control.add_fault("api", path=POD_WATCH, drop_watch=True, times=1)
        await delete_pods(cluster.api, ["g1", "g2", "g3"])
        # More changes than the server's watch history holds: the gap cannot be replayed.
        await create_pods(cluster.api, [f"churn{i}" for i in range(80)])
        await delete_pods(cluster.api, [f"churn{i}" for i in range(80)])
        await eventually(lambda: not any(n.startswith("churn") for n in server_pods(cluster)), 20)
        await control.remove_fault(failing)
        await eventually(lambda: watched.informer.stats.expired >= 1, 10)
        await eventually(lambda: watched.names() == set(server_pods(cluster)), 10)
        assert {"g1", "g2", "g3"} <= set(watched.deleted)  # no ghosts: the vanished pods were deleted
        assert watched.informer.stats.lists == 2
    finally:
        await watched.stop()


async def test_namespaces_and_records(cluster: Cluster) -> None:
    transport = KubeTransport(cluster.api)
    namespaces = namespace_informer(transport, resync_period=None)
    records = record_informer(transport, resync_period=None)
    store = RecordStore(cluster.api)
    now = datetime(2026, 1, 1, tzinfo=UTC)
    record = Record(
        ip="10.0.0.1",
        pod=PodRef(NAMESPACE, "p", "uid-p", None),
        owner=None,
        trigger="delete",
        reserved_at=now,
        expires_at=None,
        hold=timedelta(minutes=5),
        policy="ipReserveTime=5m",
    )
    await store.create(record)
    tasks = [asyncio.create_task(namespaces.run()), asyncio.create_task(records.run())]
    try:
        await asyncio.wait_for(asyncio.gather(namespaces.synced.wait(), records.synced.wait()), 10)
        assert namespaces.store.get(NAMESPACE) is not None
        [cached] = records.store.by_index(RECORD_POD_UID_INDEX, "uid-p")
        assert cached.ip == "10.0.0.1" and cached.resource_version
        await client.CoreV1Api(cluster.api).patch_namespace(
            NAMESPACE, {"metadata": {"labels": {"ip-reserve": "enabled"}}}
        )
        await eventually(lambda: getattr(namespaces.store.get(NAMESPACE), "enabled", False))
        await store.delete(record.name)
        await eventually(lambda: len(records.store) == 0)
        # A record someone wrote by hand, unreadable (its name is not its IP's): logged and left
        # out, and the informer goes on.
        junk = {**record.to_body(), "metadata": {"name": "junk"}}
        await client.CustomObjectsApi(cluster.api).create_cluster_custom_object(GROUP, VERSION, PLURAL, junk)
        await store.create(replace(record, ip="10.0.0.3"))
        await eventually(lambda: records.store.keys() == ["10.0.0.3"])
        assert records.stats.skipped == 1
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_transport_reads_long_watch_lines_and_reports_api_errors(cluster: Cluster) -> None:
    transport = KubeTransport(cluster.api)
    watched = Watched(pod_informer(transport, resync_period=None))
    try:
        await asyncio.wait_for(watched.informer.synced.wait(), 10)
        await eventually(lambda: pod_watches(cluster) == 1)
        # Annotations may total 256 KiB: one watch line larger than aiohttp's readline limit.
        big = manifest("big")
        big["metadata"]["annotations"] = {"example.com/blob": "x" * 200_000, "capo.io/reserve": "true"}
        await client.CoreV1Api(cluster.api).create_namespaced_pod(NAMESPACE, big)
        await eventually(lambda: "big" in watched.names())
        pod = watched.informer.store.get_by_name(NAMESPACE, "big")
        assert pod is not None and pod.annotations == {"capo.io/reserve": "true"}
        assert watched.informer.stats.errors == 0
    finally:
        await watched.stop()
    with pytest.raises(ApiError) as caught:
        await transport.get("/apis/capo.io/v1/nothings", {})
    assert caught.value.status == 404 and caught.value.reason == "NotFound"
