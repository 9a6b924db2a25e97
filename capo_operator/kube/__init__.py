"""Kubernetes I/O: the informers (this module's exports), credentials and access checks, the Calico
store, the ReservedIP records, the ledger, the Lease election and Events.

The informers cache pods, namespaces and ReservedIP records:

    from capo_operator.kube import KubeTransport, pod_informer
    pods = pod_informer(KubeTransport(api))
    task = asyncio.create_task(pods.run())
    await pods.synced.wait()
    pods.store.get_by_name("redis", "redis-0")        # PodFacts | None
    pods.store.by_index(POD_IP_INDEX, "10.244.0.7")    # live pods holding that IP
    pods.store.by_index(UID_INDEX, uid)

Objects are decoded straight from the API's bytes into the operator's own values (`PodFacts`,
`NamespaceFacts`, `Record`); see `models`. Behaviour: see `informer`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from capo_operator.decisions.policy import NamespaceFacts, PodFacts
from capo_operator.decisions.record import Record
from capo_operator.kube.informer import Backoff, Informer, InformerStats, Store, object_key
from capo_operator.kube.models import NAMESPACES, PODS, RECORDS, Codec, DecodeError, Foreign, Kind, records_of
from capo_operator.kube.transport import ApiError, KubeTransport, Transport

UID_INDEX = "uid"
POD_IP_INDEX = "ip"
RECORD_POD_UID_INDEX = "pod-uid"


def pod_uid(pod: PodFacts) -> Iterable[str]:
    return (pod.uid,) if pod.uid else ()


def live_pod_ips(pod: PodFacts) -> Iterable[str]:
    """The IPs a pod holds now: none for a Failed/Succeeded pod (its IP was freed and may be
    someone else's) or a hostNetwork pod (the node's IP); a terminating pod still holds its IPs."""
    if pod.terminal or pod.host_network:
        return ()
    return pod.ips


def record_pod_uid(record: Record) -> Iterable[str]:
    return (record.pod.uid,) if record.pod is not None and record.pod.uid else ()


POD_INDEXERS = {UID_INDEX: pod_uid, POD_IP_INDEX: live_pod_ips}
RECORD_INDEXERS = {RECORD_POD_UID_INDEX: record_pod_uid}


def pod_informer(transport: Transport, **options: Any) -> Informer[PodFacts]:
    """Pods of every namespace, indexed by uid and by live IP."""
    return Informer(transport, PODS, indexers=POD_INDEXERS, **options)


def namespace_informer(transport: Transport, **options: Any) -> Informer[NamespaceFacts]:
    return Informer(transport, NAMESPACES, **options)


def record_informer(transport: Transport, reservation: str | None = None, **options: Any) -> Informer[Record]:
    """ReservedIP records (key: the record name), indexed by the uid of the pod they came from;
    with `reservation`, only that installation's records (`records.belongs_to`)."""
    kind = RECORDS if reservation is None else records_of(reservation)
    return Informer(transport, kind, indexers=RECORD_INDEXERS, **options)


__all__ = [
    "NAMESPACES",
    "PODS",
    "POD_INDEXERS",
    "POD_IP_INDEX",
    "RECORDS",
    "RECORD_INDEXERS",
    "RECORD_POD_UID_INDEX",
    "UID_INDEX",
    "ApiError",
    "Backoff",
    "Codec",
    "DecodeError",
    "Foreign",
    "Informer",
    "InformerStats",
    "Kind",
    "KubeTransport",
    "Store",
    "Transport",
    "live_pod_ips",
    "namespace_informer",
    "object_key",
    "pod_informer",
    "pod_uid",
    "record_informer",
    "record_pod_uid",
    "records_of",
]
