"""In-memory fakes for the orchestration modules: Calico and record stores, an Event recorder, a
ledger, and a harness that assembles the operator over them through the composition root
(`app.assemble`), with caches over real informer stores, filled directly. Every store call is
appended to one shared journal, so tests can check the order of writes across stores."""

from __future__ import annotations

import asyncio
import itertools
from collections import defaultdict
from collections.abc import AsyncGenerator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from kubernetes.aio.client import ApiException

from capo_operator.app import Operator, Options, assemble
from capo_operator.config import Config
from capo_operator.decisions import pending
from capo_operator.decisions.addresses import ip_of, record_name
from capo_operator.decisions.policy import NamespaceFacts, Owner, PodFacts
from capo_operator.decisions.record import FINALIZER, PodRef, Record
from capo_operator.decisions.sticky import Claim
from capo_operator.flows.releaser import Releaser
from capo_operator.flows.safety_net import SafetyNet
from capo_operator.kube import Store, Transport, object_key
from capo_operator.kube.caches import Caches
from capo_operator.kube.calico import CalicoError, CalicoGroup, Snapshot
from capo_operator.kube.credentials import Credentials, Source
from capo_operator.kube.events import ObjectRef
from capo_operator.kube.ledger import LedgerEntry
from capo_operator.metrics import Metrics

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
HOLD = timedelta(minutes=40)
STS = Owner(api_version="apps/v1", kind="StatefulSet", name="db", uid="sts-uid")

Call = tuple[str, Any]

_versions = itertools.count(1)
_uids = itertools.count(1)


def put(store: Store[Any], key: str, obj: Any, *, uid: str) -> None:
    """Into an informer store, as the informer puts what it lists or watches."""
    store._put(key, str(next(_versions)), uid, obj)


class Journal(list[Call]):
    """Every store call, in order: ("calico.append", ("10.0.0.1",)), ("records.create", "10.0.0.1")..."""

    def ops(self, prefix: str = "") -> list[str]:
        return [op for op, _ in self if op.startswith(prefix)]


class _Failures:
    """Exceptions to raise on the next calls of an operation (FIFO)."""

    def __init__(self) -> None:
        self._queued: dict[str, list[BaseException]] = defaultdict(list)

    def fail(self, op: str, exc: BaseException | None = None, times: int = 1) -> None:
        for _ in range(times):
            self._queued[op].append(exc if exc is not None else CalicoError(f"injected {op} failure", 500))

    def check(self, op: str) -> None:
        if self._queued[op]:
            raise self._queued[op].pop(0)


class FakeCalico(_Failures):
    """The Calico IPReservation: a set of canonical IPs. `gate` (when set) makes `append` wait."""

    def __init__(self, journal: Journal | None = None, ips: Iterable[str] = ()) -> None:
        super().__init__()
        self.journal = journal if journal is not None else Journal()
        self.ips: set[str] = {ip_of(ip) for ip in ips}
        self.gate: asyncio.Event | None = None
        self.group = CalicoGroup.CRD
        self.name = "capo-reserved-ips"
        self.append_times: list[float] = []
        self.malformed: list[str] = []  # entries Calico cannot parse (a rewrite drops them)
        self.bare: set[str] = set()  # IPs written as bare IPs (a rewrite makes them host CIDRs)
        self.details: list[dict[str, str]] = []  # the pending details each append carried
        self.annotations: dict[str, str] = {}  # the object's pending annotations

    async def ensure(self) -> None:
        self.journal.append(("calico.ensure", None))
        self.check("ensure")

    async def append(self, ips: Iterable[str], details: Mapping[str, str] | None = None) -> None:
        ips = tuple(ips)
        self.journal.append(("calico.append", ips))
        self.details.append(dict(details or {}))
        if self.gate is not None:
            await self.gate.wait()
        self.check("append")
        self.append_times.append(asyncio.get_running_loop().time())
        self.ips.update(ip_of(ip) for ip in ips)
        for ip, value in (details or {}).items():
            self.annotations[pending.key(ip)] = value

    async def remove(self, ips: Iterable[str]) -> frozenset[str]:
        ips = tuple(ips)
        self.journal.append(("calico.remove", ips))
        self.check("remove")
        removed = frozenset(ip_of(ip) for ip in ips) & self.ips
        self.ips -= removed
        self.malformed.clear()
        self.bare.clear()
        for ip in removed:
            self.annotations.pop(pending.key(ip), None)
        return removed

    async def clear_pending(self, keys: Iterable[str]) -> None:
        keys = tuple(sorted(keys))
        self.journal.append(("calico.clear_pending", keys))
        self.check("clear_pending")
        for key in keys:
            self.annotations.pop(key, None)

    async def read(self) -> Snapshot:
        self.journal.append(("calico.read", None))
        self.check("read")
        return self.snapshot()

    def state(self) -> tuple[object, ...]:
        return (
            frozenset(self.ips),
            tuple(self.malformed),
            frozenset(self.bare),
            tuple(sorted(self.annotations.items())),
        )

    def cache(self) -> FakeReservationCache:
        return FakeReservationCache(self)

    def snapshot(self) -> Snapshot:
        """The object as it is now (no journal entry: what a watch delivers costs no call)."""
        records, invalid = pending.read(self.annotations)
        return Snapshot(
            ips=frozenset(self.ips),
            malformed=tuple(self.malformed),
            resource_version="1",
            bare=frozenset(self.bare & self.ips),
            pending=records,
            pending_invalid=invalid,
        )


class FakeReservationCache:
    """The watched IPReservation (kube.calico.ReservationCache) over a FakeCalico: synced at once,
    and up to date at once unless `frozen` (a watch that lags: it shows the state frozen)."""

    def __init__(self, calico: FakeCalico) -> None:
        self.calico = calico
        self.synced = asyncio.Event()
        self.synced.set()
        self.frozen: tuple[tuple[object, ...], Snapshot] | None = None

    @property
    def version(self) -> object:
        return self.frozen[0] if self.frozen is not None else self.calico.state()

    def snapshot(self) -> Snapshot | None:
        if not self.synced.is_set():
            return None
        return self.frozen[1] if self.frozen is not None else self.calico.snapshot()

    def freeze(self) -> None:
        self.frozen = (self.calico.state(), self.calico.snapshot())

    async def run(self) -> None:
        await asyncio.Event().wait()


class FakeRecords(_Failures):
    """The ReservedIP store. When `index` is given (the record informer's store behind the Views)
    it is kept in step, as the informer's watch would keep it."""

    def __init__(self, journal: Journal | None = None, index: Store[Record] | None = None) -> None:
        super().__init__()
        self.journal = journal if journal is not None else Journal()
        self.items: dict[str, Record] = {}
        self.index = index
        self.reservation = "capo-reserved-ips"
        self.gate: asyncio.Event | None = None  # when set, `create` waits for it

    def _sync(self, name: str) -> None:
        if self.index is None:
            return
        if name in self.items:
            put(self.index, name, self.items[name], uid=self.items[name].uid or name)
        else:
            self.index._remove(name)

    def put(self, record: Record) -> None:
        """Seed a record (no journal entry). Like the API server, it gets a uid when it has none."""
        if record.uid is None:
            record = replace(record, uid=f"{record.name}-{next(_uids)}")
        self.items[record.name] = record
        self._sync(record.name)

    def _check_uid(self, name: str, uid: str | None) -> None:
        """A write with a uid precondition, about another object of that name: a 409, as the
        API server (and the emulator) answer."""
        record = self.items.get(name)
        if uid is not None and record is not None and record.uid != uid:
            raise ApiException(status=409, reason=f"Precondition failed: UID in precondition: {uid}")

    async def create(self, record: Record) -> bool:
        self.journal.append(("records.create", record.name))
        if self.gate is not None:
            await self.gate.wait()
        self.check("create")
        if record.name in self.items:
            return False
        self.put(record)
        return True

    async def mark_releasing(
        self, name: str, reason: str, *, finalizers: Sequence[str] = (), uid: str | None = None
    ) -> None:
        self.journal.append(("records.mark_releasing", (name, reason)))
        self.check("mark_releasing")
        self._check_uid(name, uid)
        if name in self.items:
            self.items[name] = replace(self.items[name], releasing=reason, finalizers=tuple(finalizers))
            self._sync(name)

    async def finish_manual(
        self, name: str, *, finalizers: Sequence[str] = (), uid: str | None = None
    ) -> bool:
        """Drops our finalizer from a record being deleted: with no finalizer left it goes."""
        self.journal.append(("records.finish_manual", name))
        self.check("finish_manual")
        record = self.items.get(name)
        if record is None:
            return False
        self._check_uid(name, uid)
        if finalizers:
            self.items[name] = replace(record, releasing="manual", finalizers=tuple(finalizers))
        else:
            del self.items[name]
        self._sync(name)
        return True

    async def add_finalizer(self, name: str, *, finalizers: Sequence[str] = ()) -> None:
        self.journal.append(("records.add_finalizer", name))
        self.check("add_finalizer")
        if name in self.items:
            self.items[name] = replace(self.items[name], finalizers=(*finalizers, FINALIZER))
            self._sync(name)

    def delete_by_person(self, name: str) -> None:
        """`kubectl delete reservedip`: a record with a finalizer stays, marked as being deleted."""
        record = self.items[name]
        if record.finalizers:
            self.items[name] = replace(record, deleting=True)
        else:
            del self.items[name]
        self._sync(name)

    async def set_clock(
        self,
        name: str,
        *,
        reserved_at: datetime,
        expires_at: datetime | None,
        hold: timedelta,
        policy: str | None = None,
    ) -> None:
        self.journal.append(("records.set_clock", (name, reserved_at, expires_at, hold)))
        self.check("set_clock")
        if name in self.items:
            record = self.items[name]
            self.items[name] = replace(
                record,
                reserved_at=reserved_at,
                expires_at=expires_at,
                hold=hold,
                policy=record.policy if policy is None else policy,
            )
            self._sync(name)

    async def claim(self, name: str, claim: Claim, *, resource_version: str) -> bool:
        """A precondition on the record's resourceVersion, as the API server checks it."""
        self.journal.append(("records.claim", (name, claim.token)))
        self.check("claim")
        record = self.items.get(name)
        if record is None or record.resource_version != resource_version:
            return False
        self.items[name] = replace(record, claim=claim, resource_version=str(int(resource_version) + 1))
        self._sync(name)
        return True

    async def clear_claim(self, name: str, token: str) -> bool:
        self.journal.append(("records.clear_claim", (name, token)))
        self.check("clear_claim")
        record = self.items.get(name)
        if record is None or record.claim is None or record.claim.token != token:
            return False
        rv = str(int(record.resource_version or "0") + 1)
        self.items[name] = replace(record, claim=None, resource_version=rv)
        self._sync(name)
        return True

    async def delete(self, name: str, *, uid: str | None = None) -> bool:
        self.journal.append(("records.delete", name))
        self.check("delete")
        record = self.items.get(name)
        if record is not None and uid is not None and record.uid != uid:
            return False  # the uid precondition: another object of that name stays
        if self.items.pop(name, None) is None:
            return False
        self._sync(name)
        return True

    async def list(self) -> list[Record]:
        self.journal.append(("records.list", None))
        self.check("list")
        return list(self.items.values())


@dataclass(frozen=True)
class Posted:
    ref: ObjectRef
    reason: str
    message: str
    warning: bool


class FakeEvents:
    def __init__(self) -> None:
        self.posted: list[Posted] = []

    def post(self, ref: ObjectRef, reason: str, message: str, *, warning: bool = False) -> None:
        self.posted.append(Posted(ref, reason, message, warning))

    def reasons(self) -> list[str]:
        return [p.reason for p in self.posted]

    def with_reason(self, reason: str) -> list[Posted]:
        return [p for p in self.posted if p.reason == reason]


class FakeLedger:
    def __init__(self, entries: Mapping[str, LedgerEntry] | None = None) -> None:
        self.entries: dict[str, LedgerEntry] = dict(entries or {})
        self.saves: list[dict[str, LedgerEntry]] = []

    async def load(self) -> dict[str, LedgerEntry]:
        return dict(self.entries)

    async def save(self, entries: Mapping[str, LedgerEntry]) -> None:
        self.saves.append(dict(entries))
        self.entries = dict(entries)


class Clock:
    """A settable clock: `now` is what the parts read."""

    def __init__(self, now: datetime = NOW) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


class DummyApi:
    """Stands in for `kubernetes.aio.client.ApiClient` where no API call is expected."""

    def sanitize_for_serialization(self, obj: Any) -> Any:
        return obj


# -- builders ---------------------------------------------------------------------------------


def make_pod(
    name: str = "db-0",
    namespace: str = "db",
    *,
    uid: str | None = None,
    ips: tuple[str, ...] = ("10.0.0.1",),
    labels: Mapping[str, str] | None = None,
    annotations: Mapping[str, str] | None = None,
    host_network: bool = False,
    phase: str | None = "Running",
    reason: str | None = None,
    deleting: bool = False,
    owner: Owner | None = STS,
    node: str | None = "node-1",
) -> PodFacts:
    return PodFacts(
        namespace=namespace,
        name=name,
        uid=uid or f"uid-{namespace}-{name}",
        node=node,
        labels=dict(labels) if labels is not None else {"statefulset.kubernetes.io/pod-name": name},
        annotations=dict(annotations or {}),
        ips=ips,
        host_network=host_network,
        phase=phase,
        reason=reason,
        deleting=deleting,
        owner=owner,
    )


def make_ns(name: str = "db", *, enabled: bool = True, terminating: bool = False) -> NamespaceFacts:
    return NamespaceFacts(name=name, enabled=enabled, terminating=terminating)


def make_record(
    ip: str,
    *,
    age: timedelta = timedelta(minutes=10),
    expires_in: timedelta | None = timedelta(minutes=30),
    pod: PodRef | str | None = "default",
    owner: Owner | None = None,
    trigger: str = "delete",
    hold: timedelta = HOLD,
    policy: str = "ipReserveTime=40m",
    releasing: str | None = None,
    now: datetime = NOW,
) -> Record:
    if pod == "default":
        pod = PodRef(namespace="db", name=f"pod-{record_name(ip)}", uid=f"uid-{record_name(ip)}", node="n1")
    assert not isinstance(pod, str)
    return Record(
        ip=ip,
        pod=pod,
        owner=owner,
        trigger=trigger,
        reserved_at=now - age,
        expires_at=None if expires_in is None else now + expires_in,
        hold=hold,
        policy=policy,
        releasing=releasing,
    )


def options(tmp: Path | None = None) -> Options:
    base = tmp or Path("/nonexistent")
    return Options(
        config_path=base / "capo_config.yaml",
        namespace="capo-system",
        identity="capo-0",
        tls_cert_file=base / "tls.crt",
        tls_key_file=base / "tls.key",
        certs="files",
        webhook_config_name="capo-operator",
        webhook_service="capo-webhook",
    )


class NoTransport:
    """The harness's informers are filled directly; one that reaches the API is a test bug."""

    async def get(self, path: str, params: Mapping[str, str]) -> bytes:
        raise AssertionError(f"unexpected GET {path}")

    def stream(self, path: str, params: Mapping[str, str], seconds: float) -> AsyncGenerator[bytes]:
        raise AssertionError(f"unexpected WATCH {path}")


@dataclass
class Harness:
    op: Operator
    journal: Journal
    calico: FakeCalico
    records: FakeRecords
    events: FakeEvents
    ledger: FakeLedger

    @property
    def metrics(self) -> Metrics:
        return self.op.metrics

    @property
    def safety_net(self) -> SafetyNet:
        return self.op.safety_net

    @property
    def pods(self) -> Store[PodFacts]:
        return self.op.caches.pods.store

    @property
    def namespaces(self) -> Store[NamespaceFacts]:
        return self.op.caches.namespaces.store

    @property
    def record_index(self) -> Store[Record]:
        return self.op.caches.records.store

    def add_pod(self, pod: PodFacts) -> PodFacts:
        """Into the pod store (its indexes put it under its live IPs, if any)."""
        put(self.pods, object_key(pod.namespace, pod.name), pod, uid=pod.uid)
        return pod

    def remove_pod(self, pod: PodFacts) -> None:
        self.pods._remove(object_key(pod.namespace, pod.name))

    def add_holder(self, ip: str, uid: str) -> PodFacts:
        """Another live pod (namespace `elsewhere`, named after its uid) that holds `ip` now."""
        return self.add_pod(
            PodFacts(
                namespace="elsewhere",
                name=uid,
                uid=uid,
                node="node-9",
                labels={},
                annotations={},
                ips=(ip,),
                host_network=False,
                phase="Running",
                reason=None,
                deleting=False,
                owner=None,
            )
        )

    def index_record(self, record: Record) -> None:
        """Into the records cache only (the view lags behind the store)."""
        put(self.record_index, record.name, record, uid=record.name)

    def add_ns(self, ns: NamespaceFacts) -> NamespaceFacts:
        put(self.namespaces, ns.name, ns, uid=ns.name)
        return ns

    def add_record(self, record: Record, *, in_calico: bool = True) -> Record:
        self.records.put(record)
        if in_calico:
            self.calico.ips.add(record.ip)
        return record

    def sample(self, name: str, **labels: str) -> float:
        return sample(self.metrics, name, **labels)

    def releaser(self, ledger: Any = None, clock: Callable[[], datetime] | None = None) -> Releaser:
        """Another releaser over the same parts (a next leadership term, say), with its own ledger
        and clock; the operator's own is `op.releaser`."""
        mine = self.op.releaser
        return Releaser(
            api=DummyApi(),  # type: ignore[arg-type]
            views=mine.views,
            calico=mine.calico,
            records=mine.records,
            reserver=mine.reserver,
            sticky=mine.sticky,
            events=mine.events,
            metrics=mine.metrics,
            config=mine.config,
            manual_releases=mine.manual_releases,
            ledger=ledger if ledger is not None else FakeLedger(),
            clock=clock or mine.clock,
        )


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def make_harness(
    config: Config | None = None,
    *,
    leading: bool = False,
    clock: Callable[[], datetime] = lambda: NOW,
    cert_ready: bool = True,
    attach: bool = True,
    transport: Transport | None = None,
    config_text: str = "",
    watch_reservations: bool = False,
    **informer_options: Any,
) -> Harness:
    """The operator as `app.assemble` builds it, over in-memory stores. Its caches are filled by the
    test (`add_pod`, ...) and count as synced unless `attach=False`; with a `transport` (a fake API
    server) their informers can run (`op.caches.run()`)."""
    journal = Journal()
    calico = FakeCalico(journal)
    caches = Caches(transport or NoTransport(), reservation=calico.name, **informer_options)
    records = FakeRecords(journal, index=caches.records.store)
    events = FakeEvents()
    ledger = FakeLedger()
    op = assemble(
        options(),
        config or Config(),
        api=DummyApi(),  # type: ignore[arg-type]
        credentials=Credentials(Source(kubeconfig="/nonexistent/kubeconfig")),
        calico=calico,  # type: ignore[arg-type]
        records=records,  # type: ignore[arg-type]
        events=events,  # type: ignore[arg-type]
        metrics=Metrics(),
        caches=caches,
        ledger=ledger,  # type: ignore[arg-type]
        config_text=config_text,
        clock=clock,
        # reserveAhead's per-replica watch of the IPReservation (up to date at once unless frozen).
        reservations=calico.cache() if watch_reservations else None,  # type: ignore[arg-type]
    )
    op.leadership.leading = leading
    op.readiness.cert_ready = cert_ready
    if attach:
        caches.synced.set()
    return Harness(op=op, journal=journal, calico=calico, records=records, events=events, ledger=ledger)


async def eventually(predicate: Callable[[], bool], within: float = 2.0, step: float = 0.002) -> None:
    """Wait until `predicate()` holds (AssertionError after `within` seconds)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(step)
