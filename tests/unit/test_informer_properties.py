"""Property: whatever happens on the server, and whenever the informer must relist, its store ends
equal to the server's state, its indexes agree with the objects, and the handlers' view (replaying
add/update/delete) equals the store."""

from __future__ import annotations

import asyncio
from typing import Any

from fakes import eventually
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from informer_fakes import FakeKube, pod

from capo_operator.decisions.policy import PodFacts
from capo_operator.kube import POD_IP_INDEX, Backoff, live_pod_ips, pod_informer

NAMES = st.sampled_from(["a", "b", "c", "d", "e"])
IPS = st.sampled_from(["10.0.0.1", "10.0.0.2", "10.0.0.3", "fd00::1"])
PHASES = st.sampled_from(["Running", "Running", "Failed", "Succeeded"])

GENERATIONS = st.sampled_from(["1", "1", "2"])  # another uid: the pod was deleted and recreated

operations = st.one_of(
    st.tuples(st.just("put"), NAMES, IPS, PHASES, GENERATIONS),
    st.tuples(st.just("delete"), NAMES),
    st.tuples(st.just("put_silently"), NAMES, IPS, PHASES, GENERATIONS),  # compacted: only a relist sees it
    st.tuples(st.just("delete_silently"), NAMES),
    st.tuples(st.just("drop")),  # stream broken: resume from the last resourceVersion
    st.tuples(st.just("compact")),  # history gone: 410, relist
    st.tuples(st.just("bookmark")),
)


def apply(kube: FakeKube, op: tuple[Any, ...]) -> None:
    kind = op[0]
    if kind in ("put", "put_silently"):
        body = pod(op[1], ips=(op[2],), phase=op[3], uid=f"uid-{op[1]}-{op[4]}")
        kube.put(body) if kind == "put" else kube.put_silently(body)
    elif kind in ("delete", "delete_silently") and f"ns/{op[1]}" in kube.objects:
        kube.delete(f"ns/{op[1]}") if kind == "delete" else kube.delete_silently(f"ns/{op[1]}")
    elif kind == "drop":
        kube.drop_watches()
    elif kind == "compact":
        kube.compact()
        kube.drop_watches()
    elif kind == "bookmark":
        kube.bookmark()


async def scenario(initial: list[tuple[Any, ...]], later: list[tuple[Any, ...]]) -> None:
    kube = FakeKube(history=50)
    for op in initial:
        apply(kube, op)
    informer = pod_informer(
        kube, page_size=2, backoff=Backoff(initial=0.001, maximum=0.005), resync_period=None
    )
    seen: dict[str, PodFacts] = {}  # what a handler that mirrors the events believes

    def on_add(p: PodFacts) -> None:
        assert f"{p.namespace}/{p.name}" not in seen
        seen[f"{p.namespace}/{p.name}"] = p

    def on_update(old: PodFacts, new: PodFacts) -> None:
        assert old.uid == new.uid and seen[f"{new.namespace}/{new.name}"] == old  # same pod, changed
        seen[f"{new.namespace}/{new.name}"] = new

    def on_delete(p: PodFacts) -> None:
        assert seen.pop(f"{p.namespace}/{p.name}").uid == p.uid

    informer.add_handlers(on_add=on_add, on_update=on_update, on_delete=on_delete)
    errors_before = 0
    task = asyncio.create_task(informer.run())
    try:
        await asyncio.wait_for(informer.synced.wait(), 5)
        for op in later:
            apply(kube, op)
            await asyncio.sleep(0)
        # A silent change is only noticed by a relist: end every scenario with a compaction.
        apply(kube, ("compact",))
        await eventually(lambda: informer.resource_version == str(kube.rv) and kube.watching > 0, within=5)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    expected = {key: PodFacts.from_pod(obj) for key, obj in kube.objects.items()}
    assert {key: informer.store.get(key) for key in informer.store} == expected
    assert seen == expected
    assert informer.stats.handler_errors == errors_before  # the handlers' assertions held
    holders: dict[str, set[str]] = {}
    for facts in expected.values():
        for ip in live_pod_ips(facts):
            holders.setdefault(ip, set()).add(facts.name)
    assert {ip: {p.name for p in informer.store.by_index(POD_IP_INDEX, ip)} for ip in holders} == holders
    assert set(informer.store.index_values(POD_IP_INDEX)) == set(holders)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(operations, max_size=8), st.lists(operations, max_size=25))
def test_store_converges_to_server_state(
    initial: list[tuple[Any, ...]], later: list[tuple[Any, ...]]
) -> None:
    asyncio.run(scenario(initial, later))
