"""The namespace controller and a small garbage collector.

Namespace deletion: the namespace turns Terminating; every namespaced object in it is deleted as
the namespace controller's service account (pods through the graceful path with admission, one
delete-collection style call per pod, so the admission request name is empty); when nothing is left
the namespace itself is removed.
Garbage collection (background propagation only): when an object is removed, dependents whose
``ownerReferences`` all point at removed objects are deleted (with admission); with
``propagationPolicy: Orphan`` their references to it are removed instead. Foreground deletion is
treated as background.
"""

from __future__ import annotations

import asyncio
import copy
import logging
from typing import TYPE_CHECKING, Any

from . import errors as E
from .background import Background
from .context import GARBAGE_COLLECTOR, NAMESPACE_CONTROLLER, RequestContext
from .store import Key, Obj, WatchEvent

if TYPE_CHECKING:
    from .server import Cluster

log = logging.getLogger("kube_emulator.controllers")
NS_KEY: Key = ("", "namespaces")


class Controllers(Background):
    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        # owner uid -> the objects whose ownerReferences name it (kube's GC keeps such a graph,
        # uidToNode): a deletion looks up its dependents instead of scanning every object.
        self._dependents: dict[str, set[tuple[Key, str, str]]] = {}
        super().__init__()

    def _index(self, key: Key, obj: Obj | None, add: bool) -> None:
        if obj is None:
            return
        meta = obj["metadata"]
        ident = (key, meta.get("namespace") or "", meta["name"])
        for ref in meta.get("ownerReferences") or []:
            uid = ref.get("uid")
            if not uid:
                continue
            if add:
                self._dependents.setdefault(uid, set()).add(ident)
            else:
                dependents = self._dependents.get(uid)
                if dependents is not None:
                    dependents.discard(ident)
                    if not dependents:
                        del self._dependents[uid]

    def on_event(self, key: Key, event: WatchEvent) -> None:
        meta = event.obj["metadata"]
        old_meta = (event.old or {}).get("metadata") or {}
        if meta.get("ownerReferences") or old_meta.get("ownerReferences"):
            self._index(key, event.old, add=False)
            if event.type != "DELETED":
                self._index(key, event.obj, add=True)
        if (
            key == NS_KEY
            and event.type == "MODIFIED"
            and meta.get("deletionTimestamp")
            and not old_meta.get("deletionTimestamp")
        ):
            name = meta["name"]
            self.spawn(lambda: self._finish_namespace(name))
        if event.type == "DELETED":
            uid = meta.get("uid")
            if uid:
                namespace = meta.get("namespace")
                self.spawn(lambda: self._collect(uid, namespace))

    async def _finish_namespace(self, name: str) -> None:
        ctx = RequestContext(user=NAMESPACE_CONTROLLER)
        store = self.cluster.store
        while True:
            remaining = 0
            refused = False
            for rt in self._namespaced_types():
                for obj in list(store.list(rt.key, name)):
                    remaining += 1
                    if obj["metadata"].get("deletionTimestamp"):
                        continue
                    try:
                        await self.cluster.api.delete(
                            rt, name, obj["metadata"]["name"], {}, ctx, collection=True
                        )
                    except E.ApiError as exc:
                        if exc.code != 404:
                            refused = True
                            log.info(
                                "namespace %s: deleting %s/%s: %s",
                                name,
                                rt.plural,
                                obj["metadata"]["name"],
                                exc.message,
                            )
            if remaining == 0:
                break
            # Back off after a refusal (a webhook denying the delete), as the real controller does.
            await asyncio.sleep(1.0 if refused else 0.1)
        ns = store.get(NS_KEY, None, name)
        if ns is not None and ns["metadata"].get("deletionTimestamp"):
            store.remove(NS_KEY, None, name)
            log.info("namespace %s removed", name)

    def _namespaced_types(self) -> list[Any]:
        seen: set[Key] = set()
        result = []
        # Pods first, as the real controller's ordering does not matter but pods take longest.
        for rt in sorted(self.cluster.registry.all(), key=lambda t: (t.plural != "pods", t.group, t.plural)):
            if rt.namespaced and rt.key not in seen:
                seen.add(rt.key)
                result.append(rt)
        return result

    async def _collect(self, uid: str, namespace: str | None) -> None:
        orphan = uid in self.cluster.api.orphaning
        self.cluster.api.orphaning.discard(uid)
        store = self.cluster.store
        types = {rt.key: rt for rt in self.cluster.registry.all()}
        for key, dep_namespace, name in sorted(self._dependents.get(uid, ())):
            rt = types.get(key)
            # A namespaced owner's dependents are in its namespace (kube ignores other references).
            if rt is None or (rt.namespaced and namespace and dep_namespace != namespace):
                continue
            obj = store.get(key, dep_namespace or None, name)
            if obj is None:
                continue
            refs = obj["metadata"].get("ownerReferences") or []
            if not any(r.get("uid") == uid for r in refs):
                continue
            if orphan:
                self._strip_reference(rt.key, obj, uid)
                continue
            if any(r.get("uid") != uid and self._alive(r, obj) for r in refs):
                continue
            if obj["metadata"].get("deletionTimestamp"):
                continue
            try:
                await self.cluster.api.delete(
                    rt,
                    obj["metadata"].get("namespace"),
                    obj["metadata"]["name"],
                    {"preconditions": {"uid": obj["metadata"]["uid"]}},
                    RequestContext(user=GARBAGE_COLLECTOR),
                )
            except E.ApiError as exc:
                log.info("garbage collector: %s %s: %s", rt.plural, obj["metadata"]["name"], exc.message)

    def _alive(self, ref: Obj, dependent: Obj) -> bool:
        api_version = str(ref.get("apiVersion", ""))
        group = api_version.split("/")[0] if "/" in api_version else ""
        for rt in self.cluster.registry.all():
            if rt.group == group and rt.kind == ref.get("kind"):
                ns = dependent["metadata"].get("namespace") if rt.namespaced else None
                owner = self.cluster.store.get(rt.key, ns, str(ref.get("name")))
                return owner is not None and owner["metadata"].get("uid") == ref.get("uid")
        return False

    def _strip_reference(self, key: Key, obj: Obj, uid: str) -> None:
        new = copy.deepcopy(obj)
        new["metadata"]["ownerReferences"] = [
            r for r in new["metadata"]["ownerReferences"] if r.get("uid") != uid
        ]
        if not new["metadata"]["ownerReferences"]:
            del new["metadata"]["ownerReferences"]
        self.cluster.store.put(key, new)
