"""A scheduler and kubelets: pods get a node, IPs and Running; graceful deletes are finished.

- A pod without ``spec.nodeName`` whose schedulerName is ``default-scheduler`` is bound to the next
  node (round-robin); pods for another scheduler stay Pending with no node and no IP.
- The node's kubelet then sets up the sandbox: IPs from the allocator (the node IP for hostNetwork
  pods) and status Running/Ready. If IPAM fails the pod stays Pending with a condition and an Event,
  and the kubelet retries every second, as a real kubelet retries sandbox creation.
- When a pod gets a deletionTimestamp the kubelet, after min(kubelet_delay, grace) seconds, issues
  the final DELETE (gracePeriodSeconds=0, uid precondition) as ``system:node:<node>``; that delete
  goes through admission; a refusal is retried every second.
- A removed pod's IPs go back to the allocator. Node-pressure eviction and failure turn the pod
  Failed and free its IPs while they stay in ``status.podIPs``.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from . import errors as E
from .allocator import AllocationError, requested_ips
from .background import Background
from .context import RequestContext, node_user, rfc3339
from .store import Key, Obj, WatchEvent

if TYPE_CHECKING:
    from .server import Cluster

log = logging.getLogger("kube_emulator.kubelet")
POD_KEY: Key = ("", "pods")
NODE_KEY: Key = ("", "nodes")


def _condition(ctype: str, status: str, reason: str | None = None, message: str | None = None) -> Obj:
    cond: Obj = {"type": ctype, "status": status, "lastProbeTime": None, "lastTransitionTime": rfc3339()}
    if reason:
        cond["reason"] = reason
    if message:
        cond["message"] = message
    return cond


def _running_with(node: str, ips: list[str], host_ip: str) -> Callable[[Obj], None]:
    return lambda status: Kubelet._running(status, node, ips, host_ip)


class Kubelet(Background):
    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self._rr = itertools.count()
        super().__init__()
        self.paused = asyncio.Event()
        self.paused.set()  # set = running; cleared = the kubelet does not finish deletions

    @property
    def start_delay(self) -> float:
        return min(self.cluster.options.kubelet_delay, 0.05)

    def on_event(self, key: Key, event: WatchEvent) -> None:
        if key != POD_KEY:
            return
        meta = event.obj["metadata"]
        ns, name, uid = meta.get("namespace", ""), meta["name"], meta.get("uid", "")
        if event.type == "ADDED":
            self.spawn(lambda: self._start(ns, name, uid))
        elif event.type == "MODIFIED":
            old_meta = (event.old or {}).get("metadata") or {}
            newly_deleted = meta.get("deletionTimestamp") and not old_meta.get("deletionTimestamp")
            if newly_deleted and (event.obj.get("spec") or {}).get("nodeName"):
                grace = float(meta.get("deletionGracePeriodSeconds") or 0)
                self.spawn(lambda: self._finish_delete(ns, name, uid, grace))
        elif event.type == "DELETED":
            self.cluster.allocator.release(uid)

    # Start -------------------------------------------------------------------------------

    def _current(self, ns: str, name: str, uid: str) -> Obj | None:
        pod = self.cluster.store.get(POD_KEY, ns, name)
        if pod is None or pod["metadata"].get("uid") != uid or pod["metadata"].get("deletionTimestamp"):
            return None
        return pod

    def _node_names(self) -> list[str]:
        return [n["metadata"]["name"] for n in self.cluster.store.list(NODE_KEY)]

    async def _start(self, ns: str, name: str, uid: str) -> None:
        await asyncio.sleep(0)
        pod = self._current(ns, name, uid)
        if pod is None:
            return
        spec = pod.get("spec") or {}
        node = spec.get("nodeName")
        if not node:
            if spec.get("schedulerName", "default-scheduler") != "default-scheduler":
                return  # another scheduler's pod: nobody binds it here
            nodes = self._node_names()
            if not nodes:
                return
            node = nodes[next(self._rr) % len(nodes)]
            self._bind(pod, node)
        if self.cluster.store.get(NODE_KEY, None, node) is None:
            return  # no kubelet for an unknown node
        await asyncio.sleep(self.start_delay)
        while True:
            pod = self._current(ns, name, uid)
            if pod is None or (pod.get("status") or {}).get("phase") != "Pending":
                return
            try:
                ips, host_ip = self._assign(pod, node)
            except AllocationError as exc:
                await self._sandbox_failed(pod, str(exc))
                await asyncio.sleep(1.0)
                continue
            try:
                await self._write_status(ns, name, uid, node, _running_with(node, ips, host_ip))
            except E.ApiError as exc:
                log.warning("kubelet %s: status update of %s/%s failed: %s", node, ns, name, exc.message)
                if self._current(ns, name, uid) is None:
                    self.cluster.allocator.release(uid)
                    return
                await asyncio.sleep(1.0)
                continue
            return

    def _bind(self, pod: Obj, node: str) -> None:
        # A binding is a write of its own (pods/binding); it is stored directly, without admission.
        new = copy.deepcopy(pod)
        new["spec"]["nodeName"] = node
        status = new.setdefault("status", {})
        status["conditions"] = [c for c in status.get("conditions") or [] if c.get("type") != "PodScheduled"]
        status["conditions"].append(_condition("PodScheduled", "True"))
        self.cluster.store.put(POD_KEY, new)

    def _node_ip(self, node: str) -> str:
        obj = self.cluster.store.get(NODE_KEY, None, node) or {}
        for addr in (obj.get("status") or {}).get("addresses") or []:
            if addr.get("type") == "InternalIP":
                return str(addr["address"])
        return ""

    def _assign(self, pod: Obj, node: str) -> tuple[list[str], str]:
        host_ip = self._node_ip(node)
        meta = pod["metadata"]
        if (pod.get("spec") or {}).get("hostNetwork"):
            return [host_ip], host_ip
        owner = f"{meta.get('namespace')}/{meta['name']}"
        uid = meta["uid"]
        allocator = self.cluster.allocator
        if uid in allocator.by_pod:
            return allocator.by_pod[uid], host_ip
        wanted = requested_ips(pod)
        if wanted is not None:
            return allocator.assign_explicit(owner, uid, wanted), host_ip
        return allocator.auto_assign(owner, uid), host_ip

    @staticmethod
    def _running(status: Obj, node: str, ips: list[str], host_ip: str) -> None:
        status["phase"] = "Running"
        status["hostIP"] = host_ip
        status["hostIPs"] = [{"ip": host_ip}]
        status["podIP"] = ips[0]
        status["podIPs"] = [{"ip": ip} for ip in ips]
        status["startTime"] = status.get("startTime") or rfc3339()
        status["conditions"] = [
            _condition("PodReadyToStartContainers", "True"),
            _condition("Initialized", "True"),
            _condition("Ready", "True"),
            _condition("ContainersReady", "True"),
            _condition("PodScheduled", "True"),
        ]

    async def _sandbox_failed(self, pod: Obj, message: str) -> None:
        meta = pod["metadata"]
        ns, name, uid = meta["namespace"], meta["name"], meta["uid"]
        node = pod["spec"]["nodeName"]
        text = f'Failed to create pod sandbox: plugin type="calico" failed (add): {message}'
        log.info("kubelet %s: %s/%s: %s", node, ns, name, text)

        def mutate(status: Obj) -> None:
            conds = [
                c for c in status.get("conditions") or [] if c.get("type") != "PodReadyToStartContainers"
            ]
            conds.append(_condition("PodReadyToStartContainers", "False", "FailedCreatePodSandBox", text))
            status["conditions"] = conds

        try:
            await self._write_status(ns, name, uid, node, mutate)
            await self._event(pod, "Warning", "FailedCreatePodSandBox", text, node)
        except E.ApiError as exc:
            log.debug("kubelet %s: could not report sandbox failure: %s", node, exc.message)

    async def _event(self, pod: Obj, etype: str, reason: str, message: str, node: str) -> None:
        meta = pod["metadata"]
        rt = self.cluster.registry.get("", "v1", "events")
        assert rt is not None
        event = {
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "kind": "Pod",
                "apiVersion": "v1",
                "namespace": meta["namespace"],
                "name": meta["name"],
                "uid": meta["uid"],
            },
            "reason": reason,
            "message": message,
            "type": etype,
            "count": 1,
            "source": {"component": "kubelet", "host": node},
            "firstTimestamp": rfc3339(),
            "lastTimestamp": rfc3339(),
        }
        await self.cluster.api.create(rt, meta["namespace"], event, RequestContext(user=node_user(node)))

    async def _write_status(
        self,
        ns: str,
        name: str,
        uid: str,
        node: str,
        mutate: Callable[[Obj], None],
        allow_terminating: bool = False,
    ) -> Obj | None:
        rt = self.cluster.registry.get("", "v1", "pods")
        assert rt is not None
        for _ in range(5):
            pod = self.cluster.store.get(POD_KEY, ns, name)
            if pod is None or pod["metadata"].get("uid") != uid:
                return None
            if pod["metadata"].get("deletionTimestamp") and not allow_terminating:
                return None
            new = copy.deepcopy(pod)
            mutate(new.setdefault("status", {}))
            try:
                return await self.cluster.api.update(
                    rt, ns, name, new, RequestContext(user=node_user(node)), subresource="status"
                )
            except E.ApiError as exc:
                if exc.code != 409:
                    raise
        return None

    # Delete ------------------------------------------------------------------------------

    async def _finish_delete(self, ns: str, name: str, uid: str, grace: float) -> None:
        # Stopping the containers takes the grace period at most; with grace 0 the kill itself still
        # takes a moment, by which time the deleting request has usually removed the pod.
        delay = self.cluster.options.kubelet_delay
        await asyncio.sleep(min(delay, grace) if grace > 0 else delay)
        rt = self.cluster.registry.get("", "v1", "pods")
        assert rt is not None
        while True:
            await self.paused.wait()
            pod = self.cluster.store.get(POD_KEY, ns, name)
            if pod is None or pod["metadata"].get("uid") != uid:
                return
            node = (pod.get("spec") or {}).get("nodeName", "")
            try:
                await self.cluster.api.delete(
                    rt,
                    ns,
                    name,
                    {"gracePeriodSeconds": 0, "preconditions": {"uid": uid}},
                    RequestContext(user=node_user(node)),
                )
                return
            except E.ApiError as exc:
                if exc.code in (404, 409):
                    return
                log.info(
                    "kubelet %s: final delete of %s/%s refused (%s), retrying", node, ns, name, exc.message
                )
                await asyncio.sleep(1.0)

    # Helpers for tests -------------------------------------------------------------------

    async def terminate(self, ns: str, name: str, reason: str, message: str, evicted: bool) -> Obj:
        """Turn a pod Failed the way a kubelet does (no API delete); its IPs are freed."""
        pod = self.cluster.store.get(POD_KEY, ns, name)
        if pod is None:
            raise E.not_found("pods", "", name)
        uid = pod["metadata"]["uid"]
        node = (pod.get("spec") or {}).get("nodeName") or ""

        def mutate(status: Obj) -> None:
            status["phase"] = "Failed"
            status["reason"] = reason
            status["message"] = message
            conds = [
                c for c in status.get("conditions") or [] if c.get("type") not in ("Ready", "ContainersReady")
            ]
            conds.append(_condition("Ready", "False", "PodFailed"))
            conds.append(_condition("ContainersReady", "False", "PodFailed"))
            if evicted:
                conds.append(_condition("DisruptionTarget", "True", "TerminationByKubelet", message))
            status["conditions"] = conds
            status["containerStatuses"] = [
                {
                    "name": c.get("name", ""),
                    "image": c.get("image", ""),
                    "ready": False,
                    "restartCount": 0,
                    "started": False,
                    "state": {
                        "terminated": {
                            "exitCode": 137,
                            "reason": "ContainerStatusUnknown" if evicted else "Error",
                            "finishedAt": rfc3339(),
                        }
                    },
                }
                for c in (pod.get("spec") or {}).get("containers") or []
            ]

        result = await self._write_status(ns, name, uid, node, mutate, allow_terminating=True)
        self.cluster.allocator.release(uid)
        return result or pod
