"""The per-process state handed to Kopf as `memo`, and the read-only views of the informers' caches."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from capo_operator.config import Config
from capo_operator.decisions.policy import NamespaceFacts, PodFacts
from capo_operator.kube import (
    POD_INDEXERS,
    POD_IP_INDEX,
    RECORD_INDEXERS,
    RECORD_POD_UID_INDEX,
    UID_INDEX,
    Store,
)
from capo_operator.kube.records import Record
from capo_operator.serving.metrics import Metrics

if TYPE_CHECKING:
    from kubernetes.aio import client as k8s

    from capo_operator.flows.reserver import Reserver
    from capo_operator.flows.safety_net import SafetyNet
    from capo_operator.kube.access import Permission
    from capo_operator.kube.calico import CalicoStore
    from capo_operator.kube.credentials import Credentials
    from capo_operator.kube.events import EventRecorder
    from capo_operator.kube.records import RecordStore


@dataclass(frozen=True)
class Options:
    """What the command line decided (not reloadable)."""

    config_path: Path
    namespace: str
    identity: str
    tls_cert_file: Path
    tls_key_file: Path
    certs: str  # "files" | "builtin"
    webhook_config_name: str
    webhook_service: str
    kubeconfig: str | None = None
    config_map: str | None = None  # the ConfigMap the config file is mounted from (watched directly)
    log_format: str = "json"
    log_level: str = "info"


class Views:
    """Read-only views over the informers' stores (pods, namespaces, this installation's records),
    shared by the webhook, the safety net and the releaser. The stores are updated in place by the
    informers (`capo_operator.flows.watchers`); `synced` is set once all three have listed."""

    def __init__(self) -> None:
        self._pods: Store[PodFacts] = Store(POD_INDEXERS)
        self._namespaces: Store[NamespaceFacts] = Store()
        self._records: Store[Record] = Store(RECORD_INDEXERS)
        self.synced = asyncio.Event()
        self._pod_listeners: list[Callable[[PodFacts | None, PodFacts | None], None]] = []

    def attach(
        self, *, pods: Store[PodFacts], namespaces: Store[NamespaceFacts], records: Store[Record]
    ) -> None:
        self._pods, self._namespaces, self._records = pods, namespaces, records
        for listener in self._pod_listeners:
            pods.listen(listener)

    def on_pod_change(self, listener: Callable[[PodFacts | None, PodFacts | None], None]) -> None:
        """`listener(old, new)` after every change of the pod cache (see Store.listen)."""
        self._pod_listeners.append(listener)
        self._pods.listen(listener)

    def records_generation(self) -> tuple[int, int]:
        """Changes whenever a record changes."""
        return (id(self._records), self._records.version)

    def pod_cache_id(self) -> int:
        """Changes when another pod store is attached (what was derived pod by pod is stale)."""
        return id(self._pods)

    def namespaces_generation(self) -> tuple[int, int]:
        return (id(self._namespaces), self._namespaces.version)

    def has_record_for(self, pod_uid: str) -> bool:
        """A record refers to this pod (O(1): the records' pod-uid index)."""
        return pod_uid in self._records.index_keys(RECORD_POD_UID_INDEX)

    def pods_with_uid(self, uid: str) -> list[PodFacts]:
        return self._pods.by_index(UID_INDEX, uid)

    def pod(self, namespace: str, name: str) -> PodFacts | None:
        return self._pods.get_by_name(namespace, name)

    def pods(self) -> Iterator[PodFacts]:
        return iter(self._pods.values())

    def generation(self) -> tuple[int, int, int, int]:
        """Changes whenever a pod or a namespace changes (what the ledger is derived from)."""
        return (id(self._pods), self._pods.version, id(self._namespaces), self._namespaces.version)

    def pod_count(self) -> int:
        return len(self._pods)

    def pod_uids(self) -> Collection[str]:
        """The uids of the pods present (a live view)."""
        return self._pods.index_keys(UID_INDEX)

    def namespace(self, name: str) -> NamespaceFacts | None:
        return self._namespaces.get(name)

    def namespace_names(self) -> frozenset[str]:
        return frozenset(self._namespaces)

    def ip_holders(self, ips: tuple[str, ...], *, except_uid: str | None = None) -> dict[str, str]:
        """IP -> uid of another live pod holding it now."""
        holders: dict[str, str] = {}
        for ip in ips:
            for pod in self._pods.by_index(POD_IP_INDEX, ip):
                if pod.uid != except_uid:
                    holders[ip] = pod.uid
                    break
        return holders

    def all_ip_holders(self) -> dict[str, str]:
        store = self._pods
        holders: dict[str, str] = {}
        for ip in store.index_values(POD_IP_INDEX):
            for pod in store.by_index(POD_IP_INDEX, ip):
                holders[ip] = pod.uid
        return holders

    def records(self) -> list[Record]:
        return self._records.values()

    def record(self, name: str) -> Record | None:
        return self._records.get(name)

    def record_count(self) -> int:
        return len(self._records)


class RecentUIDs:
    """Pod UIDs reserved recently, so the repeated DELETE admissions of one deletion cost no API call."""

    def __init__(self, ttl: float = 600.0, max_size: int = 50_000) -> None:
        self.ttl = ttl
        self.max_size = max_size
        self._seen: OrderedDict[str, float] = OrderedDict()

    def add(self, uid: str) -> None:
        self._seen[uid] = time.monotonic()
        self._seen.move_to_end(uid)
        while len(self._seen) > self.max_size:
            self._seen.popitem(last=False)

    def discard(self, uid: str) -> None:
        self._seen.pop(uid, None)

    def __contains__(self, uid: object) -> bool:
        if not isinstance(uid, str):
            return False
        seen = self._seen.get(uid)
        if seen is None:
            return False
        if time.monotonic() - seen > self.ttl:
            self._seen.pop(uid, None)
            return False
        return True


class TerminalUIDs:
    """The pods this replica has seen Failed/Succeeded, so that only a *transition* counts.

    Entries normally leave on the pod's DELETED event, but those are lost in watch gaps; so the
    set is also pruned against the pods present (`present`) after as many additions as it holds,
    and never exceeds `max_size` (the oldest go first: forgetting one can at worst
    make a later event of a long-terminal pod look like a new transition, which the safety
    net's own checks, a record or another live holder of the IP, then turn into a no-op)."""

    def __init__(self, present: Callable[[], Collection[str]], max_size: int = 100_000) -> None:
        self._present = present
        self.max_size = max_size
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._added = 0  # since the last prune
        self._prune_after = 64

    def __contains__(self, uid: object) -> bool:
        return uid in self._seen

    def __len__(self) -> int:
        return len(self._seen)

    def add(self, uid: str) -> None:
        self._seen[uid] = None
        self._seen.move_to_end(uid)
        self._added += 1
        # After as many additions as the set holds: O(1) per addition, amortized.
        if self._added >= self._prune_after:
            self._added = 0
            present = self._present()
            for stale in [u for u in self._seen if u not in present and u != uid]:
                del self._seen[stale]
            self._prune_after = max(len(self._seen), 64)
        while len(self._seen) > self.max_size:
            self._seen.popitem(last=False)

    def discard(self, uid: str) -> None:
        self._seen.pop(uid, None)


@dataclass
class Runtime:
    """Everything a handler or loop needs. Kopf gives each object a shallow copy of `memo`;
    `__copy__` returns self so that every handler sees the one live state (e.g. a reloaded config)."""

    options: Options
    config: Config
    metrics: Metrics
    api: k8s.ApiClient
    credentials: Credentials  # Kopf logs in with these too
    calico: CalicoStore
    records: RecordStore
    events: EventRecorder
    reserver: Reserver
    safety_net: SafetyNet
    views: Views = field(default_factory=Views)
    recent: RecentUIDs = field(default_factory=RecentUIDs)
    # Pods that had a record at some point (seen by this replica's records watch): the safety net
    # leaves them alone even after the hold was released (by the cap, say) and the IP reused.
    reserved_uids: RecentUIDs = field(default_factory=lambda: RecentUIDs(ttl=86_400.0, max_size=100_000))
    leading: bool = False
    cert_ready: bool = False
    # IPs whose records a person deleted (release now), filled by the records watch on the leader.
    manual_releases: set[str] = field(default_factory=set)
    # Pods this replica has seen terminal (from its first listing on): only a transition to
    # Failed/Succeeded frees an IP now; a pod that was terminal already freed it long ago.
    terminal_uids: TerminalUIDs = field(init=False)
    # Found missing by the start-up permission check (critical ones keep the replica unready).
    missing_permissions: list[Permission] = field(default_factory=list)
    # Set on SIGTERM/SIGINT: the process stops its own loops (releasing the Lease) before Kopf.
    shutdown: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.terminal_uids = TerminalUIDs(present=self.views.pod_uids)

    def __copy__(self) -> Runtime:
        return self

    @property
    def ready(self) -> tuple[bool, str]:
        critical = [p.describe() for p in self.missing_permissions if p.critical]
        if critical:
            return False, "missing permissions (see the log): " + "; ".join(critical)
        if not self.cert_ready:
            return False, "the webhook serving certificate is not loaded"
        if not self.views.synced.is_set():
            return False, "the pod, namespace and record caches are not synced yet"
        return True, "ready"
