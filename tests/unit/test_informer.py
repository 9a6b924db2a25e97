"""The informer against a fake API server: sync, watch, relist-and-diff, resync, errors, cancellation."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import pytest
from fakes import eventually
from informer_fakes import FakeKube, pod

from capo_operator.decisions.policy import PodFacts
from capo_operator.kube import (
    POD_IP_INDEX,
    UID_INDEX,
    ApiError,
    Backoff,
    Informer,
    pod_informer,
)


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def attach(self, informer: Informer[PodFacts]) -> None:
        informer.add_handlers(
            on_add=lambda p: self.events.append(("add", p.name)),
            on_update=lambda old, new: self.events.append(("update", new.name)),
            on_delete=lambda p: self.events.append(("delete", p.name)),
        )

    def take(self) -> list[tuple[str, str]]:
        events, self.events = self.events, []
        return events


def fast_backoff() -> Backoff:
    return Backoff(initial=0.01, maximum=0.05)


@pytest.fixture
def kube() -> FakeKube:
    return FakeKube()


@pytest.fixture
async def running(kube: FakeKube) -> AsyncIterator[tuple[Informer[PodFacts], Recorder]]:
    informer = pod_informer(kube, page_size=2, backoff=fast_backoff(), resync_period=None)
    recorder = Recorder()
    recorder.attach(informer)
    task = asyncio.create_task(informer.run())
    try:
        yield informer, recorder
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def names(informer: Informer[PodFacts]) -> set[str]:
    return {p.name for p in informer.store.values()}


async def test_first_list_spans_pages_then_synced(kube: FakeKube) -> None:
    for i in range(5):
        kube.put(pod(f"p{i}", ips=(f"10.0.0.{i + 1}",)))
    informer = pod_informer(kube, page_size=2, resync_period=None)
    recorder = Recorder()
    seen_synced: list[bool] = []
    informer.add_handlers(on_add=lambda _p: seen_synced.append(informer.synced.is_set()))
    recorder.attach(informer)
    task = asyncio.create_task(informer.run())
    await asyncio.wait_for(informer.synced.wait(), 5)
    assert names(informer) == {f"p{i}" for i in range(5)}
    assert sorted(recorder.take()) == [("add", f"p{i}") for i in range(5)]
    assert seen_synced == [False] * 5  # the initial list is delivered before `synced`
    assert informer.resource_version == str(kube.rv)
    assert informer.store.get_by_name("ns", "p2") is not None
    assert [p.name for p in informer.store.by_index(POD_IP_INDEX, "10.0.0.3")] == ["p2"]
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_watch_events_update_store_and_indexes(
    kube: FakeKube, running: tuple[Informer[PodFacts], Recorder]
) -> None:
    informer, recorder = running
    await asyncio.wait_for(informer.synced.wait(), 5)
    kube.put(pod("a", ips=("10.0.0.1",)))
    await eventually(lambda: "a" in names(informer))
    kube.put(pod("a", ips=("10.0.0.1",), phase="Failed"))  # terminal: its IP is free
    await eventually(lambda: informer.store.by_index(POD_IP_INDEX, "10.0.0.1") == [])
    kube.put(pod("b", ips=("10.0.0.1",)))  # the IP is reused by another pod
    await eventually(lambda: [p.name for p in informer.store.by_index(POD_IP_INDEX, "10.0.0.1")] == ["b"])
    kube.delete("ns/a")
    await eventually(lambda: names(informer) == {"b"})
    assert recorder.take() == [("add", "a"), ("update", "a"), ("add", "b"), ("delete", "a")]
    assert [p.name for p in informer.store.by_index(UID_INDEX, "uid-ns-b")] == ["b"]
    assert informer.resource_version == str(kube.rv)


async def test_terminating_pod_keeps_its_ip_and_host_network_holds_none(
    kube: FakeKube, running: tuple[Informer[PodFacts], Recorder]
) -> None:
    informer, _ = running
    kube.put(pod("t", ips=("10.0.0.5",), deleting=True))
    kube.put(pod("h", ips=("192.168.1.10",), host_network=True))
    kube.put(pod("s", ips=("10.0.0.6",), phase="Succeeded"))
    await eventually(lambda: names(informer) == {"t", "h", "s"})
    assert [p.name for p in informer.store.by_index(POD_IP_INDEX, "10.0.0.5")] == ["t"]
    assert informer.store.index_values(POD_IP_INDEX) == ["10.0.0.5"]


async def test_bookmarks_advance_the_resource_version(
    kube: FakeKube, running: tuple[Informer[PodFacts], Recorder]
) -> None:
    informer, recorder = running
    await asyncio.wait_for(informer.synced.wait(), 5)
    await eventually(lambda: kube.watching == 1)
    kube.rv += 40  # other resources changed meanwhile
    kube.bookmark()
    await eventually(lambda: informer.resource_version == str(kube.rv))
    assert recorder.take() == [] and informer.stats.bookmarks == 1
    # A dropped stream resumes from the bookmark's version, not the list's.
    kube.drop_watches()
    await eventually(lambda: len(kube.watch_params) == 2)
    assert kube.watch_params[-1]["resourceVersion"] == str(kube.rv)
    assert kube.watch_params[-1]["allowWatchBookmarks"] == "true"


async def test_dropped_watch_resumes_without_relist(
    kube: FakeKube, running: tuple[Informer[PodFacts], Recorder]
) -> None:
    informer, recorder = running
    kube.put(pod("a"))
    await eventually(lambda: names(informer) == {"a"})
    await eventually(lambda: kube.watching == 1)
    kube.drop_watches()
    kube.put(pod("b"))  # made while no stream is open: replayed from the history
    kube.delete("ns/a")
    await eventually(lambda: names(informer) == {"b"})
    assert kube.lists == 1 and informer.stats.expired == 0
    assert recorder.take() == [("add", "a"), ("add", "b"), ("delete", "a")]


async def test_410_relists_and_the_diff_removes_ghosts(
    kube: FakeKube, running: tuple[Informer[PodFacts], Recorder]
) -> None:
    informer, recorder = running
    for i, name in enumerate(("keep", "gone", "changed")):
        kube.put(pod(name, ips=(f"10.0.1.{i}",)))
    await eventually(lambda: names(informer) == {"keep", "gone", "changed"})
    await eventually(lambda: kube.watching == 1)
    recorder.take()
    kube.drop_watches()
    # While disconnected: a deletion, an update and a creation, then the history is compacted.
    kube.delete_silently("ns/gone")
    kube.put_silently(pod("changed", ips=("10.0.1.99",)))
    kube.put_silently(pod("new"))
    await eventually(lambda: names(informer) == {"keep", "changed", "new"})
    events = recorder.take()
    assert events[0] == ("delete", "gone")  # deletions first
    assert sorted(events[1:]) == [("add", "new"), ("update", "changed")]  # "keep" is unchanged: silent
    assert informer.store.by_index(POD_IP_INDEX, "10.0.1.1") == []  # the ghost's IP is not held
    assert [p.name for p in informer.store.by_index(POD_IP_INDEX, "10.0.1.99")] == ["changed"]
    assert informer.store.by_index(POD_IP_INDEX, "10.0.1.2") == []
    assert informer.stats.expired == 1 and kube.lists == 2


async def test_error_event_410_in_stream_relists(
    kube: FakeKube, running: tuple[Informer[PodFacts], Recorder]
) -> None:
    informer, _ = running
    await asyncio.wait_for(informer.synced.wait(), 5)
    await eventually(lambda: kube.watching == 1)
    kube.send_raw(b'{"type":"ERROR","object":{"kind":"Status","code":410,"reason":"Expired","message":"x"}}')
    await eventually(lambda: kube.lists == 2)
    assert informer.stats.expired == 1


async def test_expired_continue_restarts_the_list(kube: FakeKube) -> None:
    for i in range(7):
        kube.put(pod(f"p{i}"))
    kube.expire_next_continue = 1
    informer = pod_informer(kube, page_size=3, resync_period=None)
    task = asyncio.create_task(informer.run())
    await asyncio.wait_for(informer.synced.wait(), 5)
    assert names(informer) == {f"p{i}" for i in range(7)}
    assert informer.stats.list_restarts == 1 and kube.lists == 2
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_list_errors_back_off_then_succeed(kube: FakeKube, caplog: pytest.LogCaptureFixture) -> None:
    kube.put(pod("a"))
    kube.fail_next = [ApiError(500, "InternalError", "boom"), ApiError(429, "TooManyRequests", "slow down")]
    informer = pod_informer(kube, backoff=fast_backoff(), resync_period=None)
    task = asyncio.create_task(informer.run())
    with caplog.at_level(logging.WARNING):
        await asyncio.wait_for(informer.synced.wait(), 5)
    assert names(informer) == {"a"} and informer.stats.errors == 2
    assert "boom" in caplog.text
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_a_raising_handler_is_isolated(kube: FakeKube, caplog: pytest.LogCaptureFixture) -> None:
    informer = pod_informer(kube, resync_period=None)
    seen: list[str] = []

    def broken(p: PodFacts) -> None:
        raise RuntimeError(f"handler bug on {p.name}")

    informer.add_handlers(on_add=broken)
    informer.add_handlers(on_add=lambda p: seen.append(p.name))
    kube.put(pod("a"))
    task = asyncio.create_task(informer.run())
    with caplog.at_level(logging.ERROR):
        await asyncio.wait_for(informer.synced.wait(), 5)
        await eventually(lambda: kube.watching == 1)
        kube.put(pod("b"))
        await eventually(lambda: seen == ["a", "b"])
    assert informer.stats.handler_errors == 2 and "handler bug on b" in caplog.text
    assert names(informer) == {"a", "b"}
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_resync_redelivers_cached_objects(kube: FakeKube) -> None:
    kube.put(pod("a"))
    kube.put(pod("b"))
    informer = pod_informer(kube, resync_period=0.05)
    updates: list[tuple[str, bool]] = []
    informer.add_handlers(on_update=lambda old, new: updates.append((new.name, old is new)))
    task = asyncio.create_task(informer.run())
    await eventually(lambda: len(updates) >= 4)
    assert {name for name, _ in updates} == {"a", "b"} and all(same for _, same in updates)
    assert informer.stats.resyncs >= 2
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_unreadable_objects_are_skipped(kube: FakeKube) -> None:
    kube.put(pod("good"))
    bad = pod("bad")
    bad["metadata"]["labels"] = {"x": 1}  # not a string: the API never serves this
    kube.put(bad)
    informer = pod_informer(kube, resync_period=None)
    task = asyncio.create_task(informer.run())
    await asyncio.wait_for(informer.synced.wait(), 5)
    assert names(informer) == {"good"}
    await eventually(lambda: kube.watching == 1)
    kube.put(bad)  # in a watch event: skipped too, the stream goes on
    kube.put(pod("later"))
    await eventually(lambda: names(informer) == {"good", "later"})
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


@pytest.mark.parametrize("after", [0, 1, 2, 3, 4, 5, 6, 8, 13, 21])
async def test_cancellation_at_any_moment_is_clean(kube: FakeKube, after: int) -> None:
    for i in range(5):
        kube.put(pod(f"p{i}"))
    informer = pod_informer(kube, page_size=1, resync_period=0.001)
    task = asyncio.create_task(informer.run())
    for _ in range(after):
        await asyncio.sleep(0)
    task.cancel()
    results = await asyncio.gather(task, return_exceptions=True)
    assert isinstance(results[0], asyncio.CancelledError)
    assert kube.watching == 0  # the stream was closed
    await asyncio.sleep(0)
    assert [t for t in asyncio.all_tasks() if t is not asyncio.current_task()] == []  # nothing left behind


def test_bad_options_are_refused(kube: FakeKube) -> None:
    with pytest.raises(ValueError, match="page_size must be positive"):
        pod_informer(kube, page_size=0)
    with pytest.raises(ValueError, match="resync_period must be positive"):
        pod_informer(kube, resync_period=0)


def test_backoff_grows_with_jitter_and_resets() -> None:
    backoff = Backoff(initial=1.0, maximum=8.0)
    delays = [backoff.next() for _ in range(6)]
    ceilings = [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert all(c / 2 <= d <= c for d, c in zip(delays, ceilings, strict=True))
    backoff.reset()
    assert backoff.next() <= 1.0


async def test_a_pod_recreated_in_the_gap_is_a_deletion_and_an_addition(
    kube: FakeKube, running: tuple[Informer[PodFacts], Recorder]
) -> None:
    # A StatefulSet pod deleted and recreated under the same name while the informer was away:
    # the old pod (uid) is gone, which the safety net must hear, not an "update".
    informer, recorder = running
    kube.put(pod("redis-0", ips=("10.0.0.1",), uid="old"))
    await eventually(lambda: names(informer) == {"redis-0"})
    await eventually(lambda: kube.watching == 1)
    recorder.take()
    kube.put_silently(pod("redis-0", ips=("10.0.0.2",), uid="new"))
    await eventually(lambda: informer.store.uid("ns/redis-0") == "new")
    assert recorder.take() == [("delete", "redis-0"), ("add", "redis-0")]
    assert (
        informer.store.by_index(UID_INDEX, "old") == []
        and informer.store.by_index(POD_IP_INDEX, "10.0.0.1") == []
    )
