"""Group commit in front of the Calico append, and the records that follow it in the background."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from datetime import timedelta

import pytest
from fakes import Harness, eventually, make_harness, make_pod

from capo_operator.decisions.policy import Hold
from capo_operator.flows import reserver as reserver_module
from capo_operator.kube.calico import CalicoError, GroupCommit

HOLD = Hold(timedelta(minutes=40), "ipReserveTime=40m")


class Store:
    """Appends held until released one by one; each may be told to fail."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], dict[str, str]]] = []
        self.release: asyncio.Queue[BaseException | None] = asyncio.Queue()

    async def append(self, ips: Iterable[str], details: Mapping[str, str] | None = None) -> None:
        self.calls.append((list(ips), dict(details or {})))
        outcome = await self.release.get()
        if outcome is not None:
            raise outcome


async def test_the_first_append_is_written_at_once_and_later_ones_share_the_next_write() -> None:
    store = Store()
    commit = GroupCommit(store)
    first = asyncio.ensure_future(commit.append(["10.0.0.1"], {"10.0.0.1": "a"}))
    await eventually(lambda: len(store.calls) == 1)
    later = [
        asyncio.ensure_future(commit.append([f"10.0.1.{i}"], {f"10.0.1.{i}": str(i)})) for i in range(20)
    ]
    await eventually(lambda: commit.waiting == 20)
    assert not first.done()

    store.release.put_nowait(None)
    await first
    await eventually(lambda: len(store.calls) == 2)
    assert not any(f.done() for f in later)  # answered only once the write holding their IPs succeeded
    store.release.put_nowait(None)
    await asyncio.gather(*later)

    assert store.calls[1][0] == [f"10.0.1.{i}" for i in range(20)]
    assert store.calls[1][1] == {f"10.0.1.{i}": str(i) for i in range(20)}
    assert commit.writes == 2


async def test_a_failed_batch_fails_every_waiter_it_carried_and_only_those() -> None:
    store = Store()
    commit = GroupCommit(store)
    first = asyncio.ensure_future(commit.append(["10.0.0.1"]))
    await eventually(lambda: len(store.calls) == 1)
    batch = [asyncio.ensure_future(commit.append([f"10.0.1.{i}"])) for i in range(3)]
    await eventually(lambda: commit.waiting == 3)

    store.release.put_nowait(None)
    store.release.put_nowait(CalicoError("HTTP 500: etcd leader changed", status=500))
    await first
    results = await asyncio.gather(*batch, return_exceptions=True)

    assert all(isinstance(r, CalicoError) and r.status == 500 for r in results)
    assert len({id(r) for r in results}) == 3  # one error per waiter
    # The next append starts a fresh write.
    nxt = asyncio.ensure_future(commit.append(["10.0.2.1"]))
    store.release.put_nowait(None)
    await nxt
    assert store.calls[-1][0] == ["10.0.2.1"]


async def test_a_bad_ip_fails_its_caller_before_joining_a_batch() -> None:
    store = Store()
    commit = GroupCommit(store)
    with pytest.raises(CalicoError, match="refusing to reserve 'nope'"):
        await commit.append(["10.0.0.1", "nope"])
    assert store.calls == [] and commit.waiting == 0


async def test_batches_are_bounded_and_ips_deduplicated() -> None:
    store = Store()
    commit = GroupCommit(store, max_batch=4)
    first = asyncio.ensure_future(commit.append(["10.0.0.1"]))
    await eventually(lambda: len(store.calls) == 1)
    rest = [asyncio.ensure_future(commit.append([f"10.0.1.{i}", "10.0.1.0"])) for i in range(6)]
    await eventually(lambda: commit.waiting == 6)
    for _ in range(4):
        store.release.put_nowait(None)
    await asyncio.gather(first, *rest)

    sizes = [len(ips) for ips, _ in store.calls[1:]]
    assert all(size <= 4 for size in sizes)
    assert sorted({ip for ips, _ in store.calls for ip in ips}) == sorted(
        {"10.0.0.1", *(f"10.0.1.{i}" for i in range(6))}
    )
    assert all(len(ips) == len(set(ips)) for ips, _ in store.calls)


async def test_a_caller_that_stops_waiting_still_gets_its_ips_written() -> None:
    store = Store()
    commit = GroupCommit(store)
    first = asyncio.ensure_future(commit.append(["10.0.0.1"]))
    await eventually(lambda: len(store.calls) == 1)
    impatient = asyncio.ensure_future(commit.append(["10.0.0.2"]))
    await eventually(lambda: commit.waiting == 1)
    impatient.cancel()
    store.release.put_nowait(None)
    store.release.put_nowait(CalicoError("boom"))  # its outcome must not be left unread either
    await first
    await eventually(lambda: len(store.calls) == 2)
    assert store.calls[1][0] == ["10.0.0.2"]


# -- records follow ---------------------------------------------------------------------------


@pytest.fixture
def h() -> Harness:
    return make_harness()


async def test_records_follow_with_retries(h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reserver_module.random, "uniform", lambda a, b: 0.0)  # no backoff wait
    h.records.fail("create", RuntimeError("apiserver busy"), times=3)
    pod = make_pod(ips=("10.0.0.1",))

    await h.op.reserver.reserve(pod, pod.ips, HOLD, "delete", records_later=True)
    await h.op.reserver.follower.flush()

    assert h.records.items["10.0.0.1"].trigger == "delete"
    assert h.journal.ops("records.create") == ["records.create"] * 4
    assert h.sample("capo_reservations_total", trigger="delete") == 1
    assert h.op.reserver.follower.waiting == 0


async def test_the_follower_gives_up_after_its_attempts(h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reserver_module.random, "uniform", lambda a, b: 0.0)
    h.records.fail("create", RuntimeError("down"), times=100)

    await h.op.reserver.reserve(make_pod(), ("10.0.0.1",), HOLD, "delete", records_later=True)
    await h.op.reserver.follower.flush()

    assert len(h.journal.ops("records.create")) == reserver_module.FOLLOW_ATTEMPTS
    assert h.records.items == {}
    assert h.calico.annotations  # the leader adopts it from the details the append carried


async def test_a_record_already_waiting_is_not_queued_twice(h: Harness) -> None:
    h.records.gate = asyncio.Event()
    pod = make_pod(ips=("10.0.0.1",))
    await h.op.reserver.reserve(pod, pod.ips, HOLD, "delete", records_later=True)
    await h.op.reserver.reserve(pod, pod.ips, HOLD, "safety-net", records_later=True)
    assert h.op.reserver.follower.waiting == 1
    h.records.gate.set()
    await h.op.reserver.follower.flush()
    assert h.records.items["10.0.0.1"].trigger == "delete"  # the first reservation stands
    assert h.journal.ops("records.create") == ["records.create"]


async def test_the_follower_is_bounded(h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reserver_module, "FOLLOW_LIMIT", 2)
    h.records.gate = asyncio.Event()
    pod = make_pod(ips=("10.0.0.1", "10.0.0.2", "10.0.0.3"))

    await h.op.reserver.reserve(pod, pod.ips, HOLD, "delete", records_later=True)

    assert h.op.reserver.follower.waiting == 2
    assert h.calico.ips == {"10.0.0.1", "10.0.0.2", "10.0.0.3"}  # the reservation itself is whole
    h.records.gate.set()
    await h.op.reserver.follower.flush()
    assert set(h.records.items) == {"10.0.0.1", "10.0.0.2"}


async def test_a_failed_write_is_counted_once_however_many_it_carried(h: Harness) -> None:
    h.calico.gate = asyncio.Event()
    pods = [make_pod(name=f"db-{i}", uid=f"u-{i}", ips=(f"10.0.0.{i + 1}",)) for i in range(4)]
    first = asyncio.ensure_future(h.op.reserver.reserve(pods[0], pods[0].ips, HOLD, "delete"))
    await eventually(lambda: len(h.calico.details) == 1)
    rest = [asyncio.ensure_future(h.op.reserver.reserve(p, p.ips, HOLD, "delete")) for p in pods[1:]]
    await eventually(lambda: h.op.reserver.commit.waiting == 3)
    h.calico.fail("append", times=1)  # the first write fails, the batch of the other three succeeds
    h.calico.gate.set()

    results = await asyncio.gather(first, *rest, return_exceptions=True)

    assert isinstance(results[0], CalicoError)
    created = [r.created for r in results[1:] if not isinstance(r, BaseException)]
    assert created == [("10.0.0.2",), ("10.0.0.3",), ("10.0.0.4",)]
    assert h.sample("capo_calico_write_errors_total", operation="append") == 1


async def test_records_wait_for_a_lull_in_the_appends(h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reserver_module, "FOLLOW_QUIET", 0.2)
    monkeypatch.setattr(reserver_module, "FOLLOW_MAX_DELAY", 5.0)
    loop = asyncio.get_running_loop()
    started = loop.time()
    for i in range(5):  # a burst: an append every 50 ms
        pod = make_pod(name=f"db-{i}", uid=f"u-{i}", ips=(f"10.0.0.{i + 1}",))
        await h.op.reserver.reserve(pod, pod.ips, HOLD, "delete", records_later=True)
        assert h.records.items == {}, "a record was written while appends kept coming"
        await asyncio.sleep(0.05)
    await h.op.reserver.follower.flush()
    assert len(h.records.items) == 5
    assert loop.time() - started >= 0.2 + 4 * 0.05


async def test_records_are_written_by_the_max_delay_even_without_a_lull(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(reserver_module, "FOLLOW_QUIET", 10.0)
    monkeypatch.setattr(reserver_module, "FOLLOW_MAX_DELAY", 0.1)
    pod = make_pod(ips=("10.0.0.1",))
    await h.op.reserver.reserve(pod, pod.ips, HOLD, "delete", records_later=True)
    await asyncio.wait_for(h.op.reserver.follower.flush(), 2)
    assert "10.0.0.1" in h.records.items
