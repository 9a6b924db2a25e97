"""PodGC's orphan collection, as kube-controller-manager's ``pkg/controller/podgc`` does it.

A pod bound (``spec.nodeName``) to a Node that does not exist is quarantined: when the Node is
still missing ``orphan_delay`` seconds (real: 40 s) after PodGC first saw it missing, every pod on
it is marked Failed with a ``DisruptionTarget`` condition (reason ``DeletionByPodGC``) and then
force-deleted (grace period 0), as ``system:serviceaccount:kube-system:pod-garbage-collector``;
the delete goes through admission like any other.
"""

from __future__ import annotations

import asyncio
import copy
import logging
from typing import TYPE_CHECKING

from . import errors as E
from .background import Background
from .context import RequestContext, UserInfo, rfc3339
from .store import Key, Obj, WatchEvent

if TYPE_CHECKING:
    from .server import Cluster

log = logging.getLogger("kube_emulator.podgc")
POD_KEY: Key = ("", "pods")
NODE_KEY: Key = ("", "nodes")
POD_GC = UserInfo(
    "system:serviceaccount:kube-system:pod-garbage-collector",
    ("system:serviceaccounts", "system:serviceaccounts:kube-system", "system:authenticated"),
)
TERMINAL = ("Succeeded", "Failed")


class PodGC(Background):
    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.quarantined: set[str] = set()  # nodes found missing, waiting out the quarantine
        super().__init__()

    def on_event(self, key: Key, event: WatchEvent) -> None:
        if key == POD_KEY and event.type != "DELETED":
            node = (event.obj.get("spec") or {}).get("nodeName")
            if node and node not in self.quarantined and self.cluster.store.get(NODE_KEY, None, node) is None:
                self._quarantine(node)
        elif key == NODE_KEY and event.type == "DELETED":
            node = event.obj["metadata"]["name"]
            if node not in self.quarantined and self._pods_on(node):
                self._quarantine(node)

    def _quarantine(self, node: str) -> None:
        self.quarantined.add(node)
        self.spawn(lambda: self._collect(node))

    def _pods_on(self, node: str) -> list[Obj]:
        return [p for p in self.cluster.store.list(POD_KEY) if (p.get("spec") or {}).get("nodeName") == node]

    async def _collect(self, node: str) -> None:
        try:
            await asyncio.sleep(self.cluster.options.podgc_orphan_delay)
        finally:
            self.quarantined.discard(node)
        if self.cluster.store.get(NODE_KEY, None, node) is not None:
            return  # the node exists (again): nothing is orphaned
        results = [await self._fail_and_delete(pod) for pod in self._pods_on(node)]
        if not all(results) and node not in self.quarantined:
            self._quarantine(node)  # the real controller retries on its next pass

    async def _fail_and_delete(self, pod: Obj) -> bool:
        rt = self.cluster.registry.get("", "v1", "pods")
        assert rt is not None
        meta = pod["metadata"]
        ns, name = meta["namespace"], meta["name"]
        ctx = RequestContext(user=POD_GC)
        log.info(
            "PodGC is force deleting orphaned pod %s/%s (node %s no longer exists)",
            ns,
            name,
            pod["spec"]["nodeName"],
        )
        try:
            if (pod.get("status") or {}).get("phase") not in TERMINAL:
                new = copy.deepcopy(pod)
                new["metadata"].pop("resourceVersion", None)  # a patch in the real controller: no conflict
                status = new.setdefault("status", {})
                status["phase"] = "Failed"
                conditions = [
                    c for c in status.get("conditions") or [] if c.get("type") != "DisruptionTarget"
                ]
                conditions.append(
                    {
                        "type": "DisruptionTarget",
                        "status": "True",
                        "lastProbeTime": None,
                        "lastTransitionTime": rfc3339(),
                        "reason": "DeletionByPodGC",
                        "message": "PodGC: node no longer exists",
                    }
                )
                status["conditions"] = conditions
                await self.cluster.api.update(rt, ns, name, new, ctx, subresource="status")
            await self.cluster.api.delete(rt, ns, name, {"gracePeriodSeconds": 0}, ctx)
        except E.ApiError as exc:
            if exc.code != 404:
                log.info("PodGC: deleting %s/%s failed: %s", ns, name, exc.message)
                return False
        return True
