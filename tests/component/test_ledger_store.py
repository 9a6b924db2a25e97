"""Ledger load/save on its ConfigMap, against the emulator."""

from __future__ import annotations

import json

import pytest
from component_support import NAMESPACE, Cluster
from kubernetes.aio import client

from capo_operator.ledger import DATA_KEY, Ledger, LedgerEntry, LedgerError


def entry(i: int) -> LedgerEntry:
    return LedgerEntry(
        ip=f"10.0.0.{i}",
        namespace="ns",
        name=f"p{i}",
        uid=f"u{i}",
        node="n",
        owner_kind="StatefulSet",
        owner_name="db",
        owner_uid="o",
    )


async def test_absent_then_created_then_updated_in_one_call(cluster: Cluster) -> None:
    ledger = Ledger(cluster.api, namespace=NAMESPACE)
    assert await ledger.load() == {}
    first = {e.ip: e for e in map(entry, range(3))}
    await ledger.save(first)
    assert await Ledger(cluster.api, namespace=NAMESPACE).load() == first
    cluster.calls.clear()
    second = {e.ip: e for e in map(entry, range(2, 6))}
    await ledger.save(second)
    assert [m for m, _, _ in cluster.calls.log] == ["PUT"]
    cm = await client.CoreV1Api(cluster.api).read_namespaced_config_map("capo-ledger", NAMESPACE)
    data: dict[str, str] = cm.data or {}
    assert list(data) == [DATA_KEY]
    assert set(json.loads(data[DATA_KEY])) == {f"10.0.0.{i}" for i in range(2, 6)}
    assert await ledger.load() == second


async def test_a_fresh_process_saves_without_loading_first(cluster: Cluster) -> None:
    await Ledger(cluster.api, namespace=NAMESPACE).save({"10.0.0.1": entry(1)})  # creates (404, then POST)
    await Ledger(cluster.api, namespace=NAMESPACE).save({"10.0.0.2": entry(2)})  # updates
    assert set(await Ledger(cluster.api, namespace=NAMESPACE).load()) == {"10.0.0.2"}


async def test_recreated_after_someone_deleted_it(cluster: Cluster) -> None:
    ledger = Ledger(cluster.api, namespace=NAMESPACE)
    await ledger.save({"10.0.0.1": entry(1)})
    await client.CoreV1Api(cluster.api).delete_namespaced_config_map("capo-ledger", NAMESPACE)
    await ledger.save({"10.0.0.2": entry(2)})
    assert set(await ledger.load()) == {"10.0.0.2"}


async def test_unreadable_content_loads_as_what_can_be_read(cluster: Cluster) -> None:
    core = client.CoreV1Api(cluster.api)
    await core.create_namespaced_config_map(
        NAMESPACE,
        client.V1ConfigMap(
            metadata=client.V1ObjectMeta(name="capo-ledger"),
            data={DATA_KEY: json.dumps({"10.0.0.1": {"ns": "a", "pod": "b", "uid": "c"}, "x": {}})},
        ),
    )
    assert set(await Ledger(cluster.api, namespace=NAMESPACE).load()) == {"10.0.0.1"}


async def test_too_large_is_refused_without_writing(cluster: Cluster) -> None:
    huge = {}
    for i in range(6000):
        ip = f"10.{i // 65536}.{i // 256 % 256}.{i % 256}"
        huge[ip] = LedgerEntry(ip=ip, namespace="n" * 63, name="p" * 63, uid="u" * 36, node="x" * 63)
    ledger = Ledger(cluster.api, namespace=NAMESPACE)
    with pytest.raises(LedgerError):
        await ledger.save(huge)
    assert cluster.calls.log == []
    assert await ledger.load() == {}
