"""Fuzzed AdmissionReviews against the real webhook server (Kopf, the handlers, reviews.serve).

The operator runs in this process (in a thread with its own event loop) against the emulator, with
in-memory Calico and record stores that journal every call, as bench/webhook.py runs it. Each
malformed, truncated, oversized or type-confused review must be answered within the apiserver's
timeout, either allowed or with a 400, and must write nothing; the same review intact, sent
right after, must reserve: the mutation, not the pod, is what kept the stores untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import itertools
import json
import ssl
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.error import HTTPError

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kubernetes.aio import client, config

from capo_operator.app import Options
from capo_operator.config import parse_config
from capo_operator.decisions.addresses import host_cidr, ip_of, record_name
from capo_operator.decisions.record import Record
from capo_operator.kube.calico import CalicoGroup, Snapshot
from capo_operator.serving import reviews
from capo_testkit.certs import make_serving_cert
from kube_emulator.testing import EmulatorProcess

ROOT = Path(__file__).resolve().parents[2]
NAMESPACE = "fuzz"
TIMEOUT = 5.0  # the shipped webhook's timeoutSeconds


class JournalCalico:
    group = CalicoGroup.CRD
    name = "capo-reserved-ips"

    def __init__(self) -> None:
        self.writes: list[tuple[str, tuple[str, ...]]] = []
        self.entries: set[str] = set()

    async def ensure(self) -> None:
        return None

    async def append(self, ips: Iterable[str], details: Mapping[str, str] | None = None) -> None:
        ips = tuple(ips)
        self.writes.append(("append", ips))
        self.entries.update(host_cidr(ip) for ip in ips)

    async def remove(self, ips: Iterable[str]) -> frozenset[str]:
        ips = tuple(ips)
        if ips:
            self.writes.append(("remove", ips))
        return frozenset()

    async def read(self) -> Snapshot:
        return Snapshot(ips=frozenset(), malformed=(), resource_version="1")  # keeps the leader idle


class JournalRecords:
    reservation = "capo-reserved-ips"

    def __init__(self) -> None:
        self.writes: list[tuple[str, str]] = []

    async def create(self, record: Record) -> bool:
        self.writes.append(("create", record.name))
        return True

    async def mark_releasing(self, name: str, reason: str, **_: Any) -> None:
        self.writes.append(("mark_releasing", name))

    async def set_clock(self, name: str, **_: Any) -> None:
        self.writes.append(("set_clock", name))

    async def delete(self, name: str) -> bool:
        self.writes.append(("delete", name))
        return False

    async def list(self) -> list[Record]:
        return []


@dataclass
class Webhook:
    url: str
    context: ssl.SSLContext
    calico: JournalCalico
    records: JournalRecords
    counter: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def writes(self) -> int:
        """Calico writes, and record writes other than the records that follow an earlier append
        (they are created in the background, so they may land while a later review is served)."""
        following = {record_name(ip) for _, ips in self.calico.writes for ip in ips}
        return len(self.calico.writes) + sum(1 for _, name in self.records.writes if name not in following)

    def wait_record(self, ip: str, within: float = 10.0) -> None:
        deadline = time.monotonic() + within
        while ("create", record_name(ip)) not in self.records.writes:
            assert time.monotonic() < deadline, f"no record written for {ip}"
            time.sleep(0.005)

    def post(self, path: str, body: bytes) -> tuple[int, dict[str, Any] | None, float]:
        request = urllib.request.Request(
            self.url + path, data=body, headers={"Content-Type": "application/json"}, method="POST"
        )
        started = time.monotonic()
        try:
            with urllib.request.urlopen(request, context=self.context, timeout=TIMEOUT + 5) as resp:
                status, text = resp.status, resp.read()
        except HTTPError as exc:
            status, text = exc.code, b""
        took = time.monotonic() - started
        return status, (json.loads(text) if status == 200 else None), took


def _free_port() -> int:
    import socket

    with contextlib.closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _prepare(kubeconfig: str) -> None:
    cfg = client.Configuration()
    await config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
    async with client.ApiClient(cfg) as api:
        core = client.CoreV1Api(api)
        await core.create_namespace(
            client.V1Namespace(metadata=client.V1ObjectMeta(name=NAMESPACE, labels={"ip-reserve": "enabled"}))
        )
        crd = yaml.safe_load((ROOT / "manifests/crd/capo.io_reservedips.yaml").read_text())
        await client.ApiextensionsV1Api(api).create_custom_resource_definition(crd)


@pytest.fixture(scope="module")
def webhook(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Webhook]:
    from capo_operator import app

    workdir = tmp_path_factory.mktemp("fuzz")
    with EmulatorProcess() as emu:
        asyncio.run(_prepare(emu.kubeconfig_path))
        serving = make_serving_cert(workdir, hosts=("127.0.0.1",))
        port, metrics, probes = _free_port(), _free_port(), _free_port()
        text = (
            "apiVersion: config.capo.io/v1\nkind: CapoConfig\n"
            f'health:\n  healthProbeBindAddress: "127.0.0.1:{probes}"\n'
            f'metrics:\n  bindAddress: "127.0.0.1:{metrics}"\n'
            f"webhook:\n  port: {port}\n"
            "ipReserveMaxCount: 1000000\n"
            # One release pass only: a second would adopt the journal's entries (records are not
            # in the emulator), and adoption writes are not the reviews' writes.
            "ipReleasePeriod: 30m\n"
        )
        (workdir / "capo_config.yaml").write_text(text)
        options = Options(
            config_path=workdir / "capo_config.yaml",
            namespace="default",
            identity="fuzz",
            tls_cert_file=serving.cert_file,
            tls_key_file=serving.key_file,
            certs="files",
            webhook_config_name="capo-operator",
            webhook_service="capo-webhook",
            kubeconfig=str(emu.kubeconfig_path),
            log_format="text",
            log_level="error",
        )
        calico, records = JournalCalico(), JournalRecords()
        loop = asyncio.new_event_loop()
        task: asyncio.Task[int] | None = None

        def run() -> None:
            nonlocal task
            asyncio.set_event_loop(loop)
            task = loop.create_task(
                app.run(options, parse_config(text), calico=calico, records=records)  # type: ignore[arg-type]
            )
            with contextlib.suppress(BaseException):
                loop.run_until_complete(task)

        thread = threading.Thread(target=run, name="operator", daemon=True)
        thread.start()
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{probes}/readyz", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline and thread.is_alive(), "the operator did not become ready"
            time.sleep(0.1)
        context = ssl.create_default_context(cafile=str(workdir / "ca.crt"))
        try:
            yield Webhook(f"https://127.0.0.1:{port}", context, calico, records)
        finally:
            if task is not None:
                loop.call_soon_threadsafe(task.cancel)
            thread.join(30)


# -- reviews --------------------------------------------------------------------------------------


def pod(n: int) -> dict[str, Any]:
    ip = f"10.{n // 65536 % 256}.{n // 256 % 256}.{n % 256}"
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"redis-{n}",
            "namespace": NAMESPACE,
            "uid": str(uuid.uuid4()),
            "labels": {"statefulset.kubernetes.io/pod-name": f"redis-{n}"},
            "annotations": {"note": "x"},
            "ownerReferences": [
                {
                    "apiVersion": "apps/v1",
                    "kind": "StatefulSet",
                    "name": "redis",
                    "uid": "u",
                    "controller": True,
                }
            ],
        },
        "spec": {"nodeName": "node-1", "hostNetwork": False, "containers": [{"name": "c", "image": "i"}]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]},
    }


def delete_review(n: int) -> dict[str, Any]:
    """A DELETE review of a selected pod with an IP, in an enabled namespace: intact, it reserves."""
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": str(uuid.uuid4()),
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "name": f"redis-{n}",
            "namespace": NAMESPACE,
            "operation": "DELETE",
            "userInfo": {"username": "fuzz"},
            "object": None,
            "oldObject": pod(n),
            "dryRun": False,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "DeleteOptions"},
        },
    }


# Where a value of another type makes the review malformed, and the types allowed there.
STR, BOOL, OBJ, LIST, NULL = "str", "bool", "obj", "list", "null"
PATHS: dict[tuple[str | int, ...], tuple[str, ...]] = {
    (): (OBJ,),
    ("request",): (OBJ,),
    ("request", "uid"): (STR,),
    ("request", "kind"): (OBJ, NULL),  # the check treats an absent kind as unknown, not malformed
    ("request", "resource"): (OBJ,),
    ("request", "resource", "resource"): (STR,),
    ("request", "resource", "version"): (STR,),
    ("request", "resource", "group"): (STR, NULL),
    ("request", "operation"): (STR,),
    ("request", "userInfo"): (OBJ,),
    ("request", "name"): (STR, NULL),
    ("request", "namespace"): (STR, NULL),
    ("request", "dryRun"): (BOOL, NULL),
    ("request", "options"): (OBJ, NULL),
    ("request", "oldObject"): (OBJ,),
    ("request", "oldObject", "metadata"): (OBJ,),
    ("request", "oldObject", "metadata", "name"): (STR,),
    ("request", "oldObject", "metadata", "namespace"): (STR,),
    ("request", "oldObject", "metadata", "uid"): (STR,),
    ("request", "oldObject", "metadata", "labels"): (OBJ, NULL),
    ("request", "oldObject", "metadata", "labels", "statefulset.kubernetes.io/pod-name"): (STR,),
    ("request", "oldObject", "metadata", "annotations"): (OBJ, NULL),
    ("request", "oldObject", "metadata", "annotations", "note"): (STR,),
    ("request", "oldObject", "metadata", "ownerReferences"): (LIST, NULL),
    ("request", "oldObject", "metadata", "ownerReferences", 0): (OBJ,),
    ("request", "oldObject", "metadata", "ownerReferences", 0, "controller"): (BOOL, NULL),
    ("request", "oldObject", "spec"): (OBJ, NULL),
    ("request", "oldObject", "spec", "nodeName"): (STR, NULL),
    ("request", "oldObject", "spec", "hostNetwork"): (BOOL, NULL),
    ("request", "oldObject", "status"): (OBJ, NULL),
    ("request", "oldObject", "status", "phase"): (STR, NULL),
    ("request", "oldObject", "status", "podIP"): (STR, NULL),
    ("request", "oldObject", "status", "podIPs"): (LIST, NULL),
    ("request", "oldObject", "status", "podIPs", 0): (OBJ,),
    ("request", "oldObject", "status", "podIPs", 0, "ip"): (STR, NULL),
}
VALUES: dict[str, st.SearchStrategy[Any]] = {
    STR: st.text(max_size=8),
    BOOL: st.booleans(),
    OBJ: st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
    LIST: st.lists(st.one_of(st.integers(), st.text(max_size=4)), max_size=2),
    NULL: st.none(),
}
NUMBER = st.one_of(st.integers(-(2**70), 2**70), st.floats(allow_nan=False, allow_infinity=False))


@st.composite
def confused(draw: st.DrawFn) -> tuple[tuple[str | int, ...], Any]:
    path = draw(st.sampled_from(sorted(PATHS, key=repr)))
    wrong = [VALUES[kind] for kind in VALUES if kind not in PATHS[path]]
    return path, draw(st.one_of(NUMBER, *wrong))


def replace_at(review: dict[str, Any], path: tuple[str | int, ...], value: Any) -> Any:
    if not path:
        return value
    target: Any = review
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return review


Mutation = tuple[str, Any]
mutations: st.SearchStrategy[Mutation] = st.one_of(
    st.tuples(st.just("truncate"), st.floats(0.0, 0.999)),
    st.tuples(st.just("confuse"), confused()),
    st.tuples(st.just("oversize"), st.integers(reviews.MAX_BODY_BYTES + 1, reviews.MAX_BODY_BYTES + 4096)),
    st.tuples(st.just("garbage"), st.binary(max_size=64)),
)


def mutate(review: dict[str, Any], mutation: Mutation) -> bytes:
    kind, arg = mutation
    text = json.dumps(review).encode()
    if kind == "truncate":
        return text[: int(len(text) * arg)]
    if kind == "confuse":
        path, value = arg
        return json.dumps(replace_at(copy.deepcopy(review), path, value)).encode()
    if kind == "oversize":
        review = copy.deepcopy(review)
        review["request"]["oldObject"]["metadata"]["annotations"]["padding"] = ""
        padding = arg - len(json.dumps(review).encode())
        review["request"]["oldObject"]["metadata"]["annotations"]["padding"] = "x" * padding
        return json.dumps(review).encode()
    return bytes(arg)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
@given(mutation=mutations)
def test_a_malformed_review_is_answered_in_time_and_writes_nothing(
    webhook: Webhook, mutation: Mutation
) -> None:
    n = next(webhook.counter)
    review = delete_review(n)
    before = webhook.writes()

    status, answer, took = webhook.post("/reserve-on-delete", mutate(review, mutation))

    assert took < TIMEOUT, f"answered after {took:.1f}s"
    assert status in (200, 400), status
    if status == 200:
        assert answer is not None and answer["response"]["allowed"] is True, answer
    assert webhook.writes() == before, "a malformed review wrote to the stores"

    # The intact review reserves: the mutation is what kept the stores untouched.
    status, answer, took = webhook.post("/reserve-on-delete", json.dumps(review).encode())
    assert status == 200 and answer is not None and answer["response"]["allowed"] is True
    ip = review["request"]["oldObject"]["status"]["podIP"]
    assert ("append", (ip,)) in webhook.calico.writes
    webhook.wait_record(ip)  # records follow the answer: let this one land before the next count


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    eviction=st.one_of(
        st.none(),
        st.integers(),
        st.text(max_size=5),
        st.fixed_dictionaries(
            {"metadata": st.one_of(st.none(), st.integers(), st.lists(st.integers(), max_size=2))}
        ),
        st.fixed_dictionaries(
            {
                "metadata": st.fixed_dictionaries(
                    {"name": st.one_of(st.integers(), st.none()), "namespace": st.just(NAMESPACE)}
                ),
            }
        ),
        st.fixed_dictionaries(
            {
                "metadata": st.just({"name": "redis-0", "namespace": NAMESPACE}),
                "deleteOptions": st.one_of(
                    st.integers(), st.text(max_size=3), st.just({"dryRun": "All"}), st.just({"dryRun": [1]})
                ),
            }
        ),
    )
)
def test_a_malformed_eviction_is_answered_and_writes_nothing(webhook: Webhook, eviction: Any) -> None:
    review = {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": str(uuid.uuid4()),
            "kind": {"group": "policy", "version": "v1", "kind": "Eviction"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "subResource": "eviction",
            "name": "redis-0",
            "namespace": NAMESPACE,
            "operation": "CREATE",
            "userInfo": {"username": "fuzz"},
            "object": eviction,
            "oldObject": None,
        },
    }
    before = webhook.writes()

    status, answer, took = webhook.post("/reserve-on-eviction", json.dumps(review).encode())

    assert took < TIMEOUT and status in (200, 400), (status, took)
    if status == 200:
        assert answer is not None and answer["response"]["allowed"] is True
    assert webhook.writes() == before


def test_a_large_but_real_pod_is_still_reserved(webhook: Webhook) -> None:
    """A pod near etcd's object limit (say, a big last-applied-configuration) is a real deletion:
    aiohttp's default 1 MiB body limit would have refused it with a 413."""
    review = delete_review(next(webhook.counter))
    review["request"]["oldObject"]["metadata"]["annotations"]["big"] = "x" * 1_400_000

    status, answer, _ = webhook.post("/reserve-on-delete", json.dumps(review).encode())

    assert status == 200 and answer is not None and answer["response"]["allowed"] is True
    ip = review["request"]["oldObject"]["status"]["podIP"]
    assert ("append", (ip,)) in webhook.calico.writes
    webhook.wait_record(ip)  # records follow the answer: let this one land before the next count
    assert ip_of(host_cidr(ip)) == ip


def test_the_webhook_still_answers_after_the_fuzzing(webhook: Webhook) -> None:
    review = delete_review(next(webhook.counter))
    status, answer, took = webhook.post("/reserve-on-delete", json.dumps(review).encode())
    assert status == 200 and answer is not None and answer["response"]["allowed"] is True
    assert took < TIMEOUT
