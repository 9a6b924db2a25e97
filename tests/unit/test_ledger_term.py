"""The releaser with the real Ledger over a scripted ConfigMap API: a ledger that could not be
read when leadership began is not overwritten by that term's passes, and a later term that reads
it recovers the vanished pods and then writes the ledger again."""

from __future__ import annotations

from typing import Any

import pytest
from fakes import NOW, DummyApi, Harness, make_harness, make_ns, make_pod
from kubernetes.aio import client as k8s

from capo_operator.kube.ledger import Ledger, LedgerEntry
from capo_operator.kube.slim import CoreV1


class ConfigMaps:
    """The four CoreV1Api calls the ledger makes, on a dict; reads fail while `failing`."""

    def __init__(self) -> None:
        self.objects: dict[str, k8s.V1ConfigMap] = {}
        self.failing = False
        self.writes: list[str] = []

    async def read_namespaced_config_map(self, name: str, namespace: str) -> k8s.V1ConfigMap:
        if self.failing:
            raise k8s.ApiException(status=500, reason="etcdserver: request timed out")
        if name not in self.objects:
            raise k8s.ApiException(status=404, reason="Not Found")
        return self.objects[name]

    async def create_namespaced_config_map(self, namespace: str, body: k8s.V1ConfigMap) -> None:
        self.writes.append(body.metadata.name)
        self.objects[body.metadata.name] = body

    async def replace_namespaced_config_map(self, name: str, namespace: str, body: k8s.V1ConfigMap) -> None:
        if name not in self.objects:
            raise k8s.ApiException(status=404, reason="Not Found")
        self.writes.append(name)
        self.objects[name] = body

    async def delete_namespaced_config_map(self, name: str, namespace: str) -> None:
        self.writes.append("-" + name)
        self.objects.pop(name, None)


@pytest.fixture
def h() -> Harness:
    h = make_harness(leading=True)
    h.add_ns(make_ns("db"))
    return h


def ledger_on(api: ConfigMaps) -> Ledger:
    ledger = Ledger(DummyApi(), namespace="capo-system")  # type: ignore[arg-type]
    ledger._core = api  # type: ignore[assignment]
    return ledger


async def saved_ips(api: ConfigMaps) -> set[str]:
    return set(await ledger_on(api).load())


async def test_a_term_that_could_not_read_the_ledger_never_overwrites_it(h: Harness) -> None:
    api = ConfigMaps()
    # An earlier term recorded db-0, which vanished while every replica was down.
    gone = LedgerEntry("10.0.0.9", "db", "db-0", "gone-uid", "n1", "StatefulSet", "db", "o")
    first = ledger_on(api)
    await first.load()
    await first.save({gone.ip: gone})
    api.writes.clear()
    h.add_pod(make_pod(name="db-1", uid="u1", ips=("10.0.0.1",)))

    api.failing = True
    term = h.releaser(ledger_on(api), clock=lambda: NOW)
    with pytest.raises(k8s.ApiException):
        await term.recover_from_ledger()  # `lead` logs this and goes on with its passes
    api.failing = False
    await term.pass_once()
    await term.pass_once()

    assert api.writes == []
    assert await saved_ips(api) == {"10.0.0.9"}  # still there for the next leader
    assert "10.0.0.9" not in {r.ip for r in h.op.views.records()}

    # The next term reads it: the vanished pod's IP is reserved, then the ledger is rewritten.
    following = h.releaser(ledger_on(api), clock=lambda: NOW)
    await following.recover_from_ledger()
    await following.pass_once()
    assert h.records.items["10.0.0.9"].trigger == "safety-net"
    assert await saved_ips(api) == {"10.0.0.1"}


def test_the_scripted_api_is_what_the_ledger_calls() -> None:
    # Guards the fake: every method the ledger calls on slim.CoreV1 exists on the fake, and on
    # the generated CoreV1Api whose names and signatures slim.CoreV1 keeps.
    used: list[Any] = [
        CoreV1.read_namespaced_config_map,
        CoreV1.create_namespaced_config_map,
        CoreV1.replace_namespaced_config_map,
        CoreV1.delete_namespaced_config_map,
    ]
    assert all(callable(m) for m in used)
    assert all(hasattr(ConfigMaps, m.__name__) for m in used)
    assert all(callable(getattr(k8s.CoreV1Api, m.__name__)) for m in used)
