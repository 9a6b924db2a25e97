"""Ledger load/save on its ConfigMaps, against the emulator: shards, only changed shards written,
interrupted writes, corruption, a failed read freezing the ledger, migration from format 1."""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

import pytest
from component_support import NAMESPACE, Cluster
from kubernetes.aio import client

from capo_operator.kube import ledger as L
from capo_operator.kube.ledger import (
    DATA_KEY,
    INDEX_KEY,
    META_KEY,
    PAYLOAD_KEY,
    Ledger,
    LedgerEntry,
    LedgerError,
)


def entry(i: int) -> LedgerEntry:
    return LedgerEntry(
        ip=f"10.0.{i // 256}.{i % 256}",
        namespace="ns",
        name=f"p{i}",
        uid=f"u{i}",
        node="n",
        owner_kind="StatefulSet",
        owner_name="db",
        owner_uid="o",
    )


def pods(n: int, start: int = 0) -> dict[str, LedgerEntry]:
    """Dual-stack pods with random uids, as a real cluster has them."""
    out = {}
    for i in range(start, start + n):
        uid = str(uuid.uuid5(uuid.NAMESPACE_DNS, str(i)))
        for ip in (f"10.{i // 65536}.{i // 256 % 256}.{i % 256}", f"fd00::1:{i:x}"):
            out[ip] = LedgerEntry(
                ip, f"tenant-{i % 7}", f"kafka-{i}", uid, f"node-{i % 40}", "StatefulSet", "kafka", "o"
            )
    return out


async def configmaps(cluster: Cluster) -> dict[str, client.V1ConfigMap]:
    items = (await client.CoreV1Api(cluster.api).list_namespaced_config_map(NAMESPACE)).items
    return {cm.metadata.name: cm for cm in items if cm.metadata.name.startswith("capo-ledger")}


async def fresh(cluster: Cluster) -> Ledger:
    ledger = Ledger(cluster.api, namespace=NAMESPACE)
    await ledger.load()
    return ledger


def written(cluster: Cluster) -> list[str]:
    """The ConfigMaps written or deleted, in order ("+" for a creation: its name is in the body)."""
    return [
        "+" if m == "POST" else path.rsplit("/", 1)[-1]
        for m, path, status in cluster.calls.log
        if m in ("PUT", "POST", "DELETE") and status < 300
    ]


@pytest.fixture
def small_shards(monkeypatch: pytest.MonkeyPatch) -> None:
    """Shards of 16 KiB, so a few thousand pods need several (the real target needs ~8,000 pods
    per shard, which makes slow tests)."""
    monkeypatch.setattr(L, "TARGET_SHARD_BYTES", 16 * 1024)


async def test_absent_then_created_then_updated_in_one_call(cluster: Cluster) -> None:
    ledger = Ledger(cluster.api, namespace=NAMESPACE)
    assert await ledger.load() == {}
    first = {e.ip: e for e in map(entry, range(3))}
    assert await ledger.save(first)
    assert await Ledger(cluster.api, namespace=NAMESPACE).load() == first
    cms = await configmaps(cluster)
    assert set(cms) == {"capo-ledger", "capo-ledger-0"}
    assert json.loads((cms["capo-ledger"].data or {})[INDEX_KEY]) == {"format": 2, "shards": 1}
    cluster.calls.clear()
    second = {e.ip: e for e in map(entry, range(2, 6))}
    await ledger.save(second)
    assert [m for m, _, _ in cluster.calls.log] == ["PUT"]  # the one shard, not the index
    assert await ledger.load() == second


async def test_an_unchanged_ledger_writes_nothing(cluster: Cluster) -> None:
    ledger = await fresh(cluster)
    await ledger.save(pods(10))
    reloaded = await fresh(cluster)  # what it knows comes from the load, not only from its own writes
    cluster.calls.clear()
    assert await reloaded.save(pods(10))
    assert written(cluster) == []


async def test_recreated_after_someone_deleted_it(cluster: Cluster) -> None:
    ledger = await fresh(cluster)
    await ledger.save({"10.0.0.1": entry(1)})
    core = client.CoreV1Api(cluster.api)
    await core.delete_namespaced_config_map("capo-ledger-0", NAMESPACE)
    await core.delete_namespaced_config_map("capo-ledger", NAMESPACE)
    await ledger.save({"10.0.0.2": entry(2)})
    assert set(await fresh_load(cluster)) == {"10.0.0.2"}


async def fresh_load(cluster: Cluster) -> dict[str, LedgerEntry]:
    return await Ledger(cluster.api, namespace=NAMESPACE).load()


async def test_20000_dual_stack_pods_fit_and_one_change_rewrites_one_shard(cluster: Cluster) -> None:
    big = pods(20_000)
    ledger = await fresh(cluster)
    await ledger.save(big)
    cms = await configmaps(cluster)
    shards = json.loads((cms["capo-ledger"].data or {})[INDEX_KEY])["shards"]
    assert 2 <= shards <= L.MAX_SHARDS
    assert set(cms) == {"capo-ledger", *(f"capo-ledger-{i}" for i in range(shards))}
    for i in range(shards):
        cm = cms[f"capo-ledger-{i}"]
        assert len(base64.b64decode((cm.binary_data or {})[PAYLOAD_KEY])) <= L.TARGET_SHARD_BYTES
    assert await fresh_load(cluster) == big

    cluster.calls.clear()
    changed = dict(big)
    del changed["10.0.0.7"], changed["fd00::1:7"]  # one pod went away
    changed.update(pods(1, start=60_000))  # another came
    await ledger.save(changed)
    assert 1 <= len(written(cluster)) <= 2 and "capo-ledger" not in written(cluster)
    assert await fresh_load(cluster) == changed


def spy(ledger: Ledger) -> list[str]:
    """The ConfigMaps a ledger writes ("name") and deletes ("-name"), in order."""
    log: list[str] = []
    write, delete = ledger._write, ledger._delete

    async def writing(name: str, **kw: Any) -> bool:
        log.append(name)
        return bool(await write(name, **kw))

    async def deleting(name: str) -> None:
        log.append("-" + name)
        await delete(name)

    ledger._write = writing  # type: ignore[method-assign]
    ledger._delete = deleting  # type: ignore[method-assign]
    return log


@pytest.mark.usefixtures("small_shards")
async def test_growing_writes_the_index_first_and_shrinking_removes_the_extra_shards(
    cluster: Cluster,
) -> None:
    ledger = await fresh(cluster)
    await ledger.save(pods(100))
    log = spy(ledger)
    await ledger.save(pods(3000))
    assert log[0] == "capo-ledger"  # readers look at every new shard before an old one changes
    shards = len(log) - 1
    assert shards >= 2 and log[1:] == [f"capo-ledger-{i}" for i in reversed(range(shards))]

    log.clear()
    await ledger.save(pods(100))
    # The new layout first, then the index, then the shards no reader looks at any more.
    assert log == ["capo-ledger-0", "capo-ledger", *(f"-capo-ledger-{i}" for i in range(1, shards))]
    assert set(await configmaps(cluster)) == {"capo-ledger", "capo-ledger-0"}
    assert await fresh_load(cluster) == pods(100)


@pytest.mark.parametrize("fail_after", [0, 1, 2, 5])
@pytest.mark.usefixtures("small_shards")
async def test_a_reshard_interrupted_half_way_loses_no_entry(cluster: Cluster, fail_after: int) -> None:
    before = pods(3000)
    ledger = await fresh(cluster)
    await ledger.save(pods(200))
    await ledger.save(before)  # now several shards
    after = pods(100)  # shrinking; then growing back from there
    for target in (after, before):
        writer = await fresh(cluster)
        log = spy(writer)
        write, delete = writer._write, writer._delete

        def alive(log: list[str] = log) -> None:
            if len(log) >= fail_after:  # `fail_after` calls went through: now the leader dies
                raise RuntimeError("the leader died")

        async def dying_write(name: str, write: Any = write, **kw: Any) -> bool:
            alive()
            return bool(await write(name, **kw))

        async def dying_delete(name: str, delete: Any = delete) -> None:
            alive()
            await delete(name)

        writer._write = dying_write  # type: ignore[method-assign]
        writer._delete = dying_delete  # type: ignore[method-assign]
        with pytest.raises(RuntimeError):
            await writer.save(target)
        recovered = await fresh_load(cluster)
        # Every entry of the target that is not in the previous ledger may be missing (not yet
        # written), but nothing the previous ledger knew is lost unless the target dropped it.
        previous = before if target is after else after
        kept = {ip for ip in previous if ip in target}
        assert kept <= set(recovered)
        # Finishing the save (the next leader's first pass) converges.
        await (await fresh(cluster)).save(target)
        assert await fresh_load(cluster) == target


async def test_a_failed_read_keeps_the_ledger_untouched_for_the_term(cluster: Cluster) -> None:
    await (await fresh(cluster)).save(pods(5))
    await cluster.emu.control.add_fault(method="GET", path="configmaps/capo-ledger-0", status=500, times=1)
    ledger = Ledger(cluster.api, namespace=NAMESPACE)
    with pytest.raises(client.ApiException):
        await ledger.load()
    cluster.calls.clear()

    assert not await ledger.save(pods(2, start=100))  # the first pass of the new term
    assert not await ledger.save({})
    assert written(cluster) == []
    assert await fresh_load(cluster) == pods(5)

    assert await ledger.load() == pods(5)  # the next term reads it
    assert await ledger.save(pods(2, start=100))
    assert await fresh_load(cluster) == pods(2, start=100)


async def test_a_process_that_never_read_the_ledger_does_not_write_it(cluster: Cluster) -> None:
    await (await fresh(cluster)).save(pods(3))
    assert not await Ledger(cluster.api, namespace=NAMESPACE).save({})
    assert await fresh_load(cluster) == pods(3)


async def test_a_newer_format_is_read_as_a_failure_and_never_overwritten(cluster: Cluster) -> None:
    core = client.CoreV1Api(cluster.api)
    index = {INDEX_KEY: json.dumps({"format": 3, "shards": 1})}
    await core.create_namespaced_config_map(
        NAMESPACE, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="capo-ledger"), data=index)
    )
    ledger = Ledger(cluster.api, namespace=NAMESPACE)
    with pytest.raises(LedgerError, match="format 3"):
        await ledger.load()
    assert not await ledger.save(pods(1))
    assert (await configmaps(cluster))["capo-ledger"].data == index


@pytest.mark.usefixtures("small_shards")
async def test_a_corrupt_shard_is_skipped_whole_and_rewritten(cluster: Cluster) -> None:
    entries = pods(3000)
    ledger = await fresh(cluster)
    await ledger.save(pods(100))
    await ledger.save(entries)
    core = client.CoreV1Api(cluster.api)
    cms = await configmaps(cluster)
    shards = json.loads((cms["capo-ledger"].data or {})[INDEX_KEY])["shards"]
    victim = cms["capo-ledger-0"]
    raw = bytearray(base64.b64decode((victim.binary_data or {})[PAYLOAD_KEY]))
    raw[len(raw) // 2] ^= 0x40
    victim.binary_data = {PAYLOAD_KEY: base64.b64encode(bytes(raw)).decode()}
    await core.replace_namespaced_config_map("capo-ledger-0", NAMESPACE, victim)

    reader = Ledger(cluster.api, namespace=NAMESPACE)
    loaded = await reader.load()
    lost = {ip for ip, e in entries.items() if L.shard_of(e.uid, shards) == 0}
    assert lost and set(loaded) == set(entries) - lost  # the other shards, nothing of the bad one
    assert all(loaded[ip] == entries[ip] for ip in loaded)

    cluster.calls.clear()
    await reader.save(entries)  # a corrupt shard is not a failed read: the next save repairs it
    assert written(cluster) == ["capo-ledger-0"]
    assert await fresh_load(cluster) == entries


@pytest.mark.usefixtures("small_shards")
async def test_a_missing_shard_loses_only_its_entries(cluster: Cluster) -> None:
    entries = pods(3000)
    ledger = await fresh(cluster)
    await ledger.save(pods(100))
    await ledger.save(entries)
    await client.CoreV1Api(cluster.api).delete_namespaced_config_map("capo-ledger-1", NAMESPACE)
    shards = json.loads(((await configmaps(cluster))["capo-ledger"].data or {})[INDEX_KEY])["shards"]
    loaded = await fresh_load(cluster)
    assert set(loaded) == {ip for ip, e in entries.items() if L.shard_of(e.uid, shards) != 1}


@pytest.mark.usefixtures("small_shards")
async def test_a_damaged_index_reads_every_shard(cluster: Cluster) -> None:
    entries = pods(3000)
    ledger = await fresh(cluster)
    await ledger.save(pods(100))
    await ledger.save(entries)
    core = client.CoreV1Api(cluster.api)
    index = (await configmaps(cluster))["capo-ledger"]
    index.data = {INDEX_KEY: "{garbage"}
    await core.replace_namespaced_config_map("capo-ledger", NAMESPACE, index)

    reader = Ledger(cluster.api, namespace=NAMESPACE)
    assert await reader.load() == entries
    await reader.save(entries)
    assert json.loads(((await configmaps(cluster))["capo-ledger"].data or {})[INDEX_KEY])["format"] == 2


async def test_format1_is_read_then_replaced_once_the_shards_are_written(cluster: Cluster) -> None:
    old = {e.ip: e for e in map(entry, range(50))}
    core = client.CoreV1Api(cluster.api)
    await core.create_namespaced_config_map(
        NAMESPACE,
        client.V1ConfigMap(
            metadata=client.V1ObjectMeta(name="capo-ledger"), data={DATA_KEY: L.legacy_encode(old)}
        ),
    )
    ledger = Ledger(cluster.api, namespace=NAMESPACE)
    assert await ledger.load() == old
    cluster.calls.clear()

    await ledger.save(old)

    assert written(cluster) == ["+", "capo-ledger"]  # shard 0 created, then the old data replaced
    cms = await configmaps(cluster)
    assert set(cms["capo-ledger"].data or {}) == {INDEX_KEY}
    assert await fresh_load(cluster) == old


async def test_format1_unreadable_content_loads_as_what_can_be_read(cluster: Cluster) -> None:
    core = client.CoreV1Api(cluster.api)
    await core.create_namespaced_config_map(
        NAMESPACE,
        client.V1ConfigMap(
            metadata=client.V1ObjectMeta(name="capo-ledger"),
            data={DATA_KEY: json.dumps({"10.0.0.1": {"ns": "a", "pod": "b", "uid": "c"}, "x": {}})},
        ),
    )
    assert set(await fresh_load(cluster)) == {"10.0.0.1"}


async def test_shard_metadata_is_readable_by_people(cluster: Cluster) -> None:
    await (await fresh(cluster)).save(pods(4))
    meta = json.loads(((await configmaps(cluster))["capo-ledger-0"].data or {})[META_KEY])
    assert {k: meta[k] for k in ("format", "shard", "shards", "ips")} == {
        "format": 2,
        "shard": 0,
        "shards": 1,
        "ips": 8,
    }
