"""The verbs of the API server (create, update, patch, delete, evict, ...), independent of HTTP.

Controllers inside the emulator (scheduler, kubelet, namespace controller, garbage collector) call
these too, so their writes are admitted, validated and watched exactly like a client's.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import copy
import logging
import random
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import Any, cast

from . import errors as E
from . import rbac
from . import schema as S
from .admission import Admission, Attributes
from .context import RequestContext, now, rfc3339
from .patching import apply_patch, check_patch_type
from .resources import Registry, ResourceType, types_from_crd
from .selectors import FieldSelector, Selector, fields_match, from_label_selector, matches
from .store import Key, Obj, Store
from .validation import validate_builtin, validate_metadata, validate_name

log = logging.getLogger("kube_emulator.api")

_GENERATE_CHARS = "bcdfghjklmnpqrstvwxz2456789"
_MAX_RETRIES = 8
TERMINAL_PHASES = ("Succeeded", "Failed")


def kind_of(rt: ResourceType) -> dict[str, str]:
    return {"group": rt.group, "version": rt.version, "kind": rt.kind}


def resource_of(rt: ResourceType) -> dict[str, str]:
    return {"group": rt.group, "version": rt.version, "resource": rt.plural}


def _meta(obj: Obj) -> dict[str, Any]:
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        meta = obj["metadata"] = {}
    return meta


def _without(obj: Obj, *keys: str) -> Obj:
    return {k: v for k, v in obj.items() if k not in keys}


def _same_content(a: Obj, b: Obj) -> bool:
    """Equal apart from resourceVersion (a no-op write is not stored, as in the real server)."""
    am = dict(a.get("metadata") or {})
    bm = dict(b.get("metadata") or {})
    am.pop("resourceVersion", None)
    bm.pop("resourceVersion", None)
    return am == bm and _without(a, "metadata") == _without(b, "metadata")


class ApiServer:
    def __init__(self, registry: Registry, store: Store, admission: Admission) -> None:
        self.registry = registry
        self.store = store
        self.admission = admission
        self.crd_hooks: list[Callable[[], None]] = []
        # Registry-level checks that need the caller (RBAC escalation prevention): (rt, new, old, ctx).
        self.write_checks: list[Callable[[ResourceType, Obj, Obj | None, RequestContext], None]] = []
        # uids deleted with propagationPolicy Orphan: the garbage collector orphans their dependents.
        self.orphaning: set[str] = set()
        # The cost that shapes write performance on a real server: each write waits for etcd's commit
        # (fsync), and writes to one object follow each other (optimistic concurrency on its revision).
        self.write_latency = 0.0
        self._object_locks: dict[tuple[Key, str, str], tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def _one_writer(self, rt: ResourceType, namespace: str | None, name: str) -> AsyncIterator[None]:
        """Writes to one object run one at a time; writes to different objects run side by side."""
        ident = (rt.key, namespace or "", name)
        lock, users = self._object_locks.get(ident) or (asyncio.Lock(), 0)
        self._object_locks[ident] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._object_locks[ident]
            if users <= 1:
                del self._object_locks[ident]
            else:
                self._object_locks[ident] = (lock, users - 1)

    async def _commit_cost(self) -> None:
        if self.write_latency > 0:
            await asyncio.sleep(self.write_latency)

    # Reading ---------------------------------------------------------------------------------

    def present(self, rt: ResourceType, obj: Obj) -> Obj:
        """The object as the requested version shows it (versions share storage, no conversion)."""
        if obj.get("apiVersion") == rt.api_version:
            return obj
        shown = dict(obj)
        shown["apiVersion"] = rt.api_version
        return shown

    def get(self, rt: ResourceType, namespace: str | None, name: str) -> Obj:
        obj = self.store.get(rt.key, namespace, name)
        if obj is None:
            raise E.not_found(rt.plural, rt.group, name)
        return obj

    def list(
        self, rt: ResourceType, namespace: str | None, labels: Selector = (), fields: FieldSelector = ()
    ) -> list[Obj]:
        return [
            o
            for o in self.store.list(rt.key, namespace)
            if matches(labels, (o.get("metadata") or {}).get("labels")) and fields_match(fields, o)
        ]

    # Checks shared by writes -----------------------------------------------------------------

    def _check_namespace(self, rt: ResourceType, namespace: str | None, name: str, creating: bool) -> None:
        if not rt.namespaced:
            return
        ns = self.store.get(("", "namespaces"), None, namespace or "")
        if ns is None:
            raise E.not_found("namespaces", "", namespace or "")
        if creating and (ns.get("metadata") or {}).get("deletionTimestamp"):
            raise E.forbidden(
                rt.plural,
                rt.group,
                name,
                f"unable to create new content in namespace {namespace} because it is being terminated",
            )

    def _check_type_meta(self, rt: ResourceType, body: Obj) -> None:
        api_version = body.get("apiVersion")
        kind = body.get("kind")
        if api_version and api_version != rt.api_version:
            raise E.bad_request(
                f"the API version in the data ({api_version}) does not match the expected API version "
                f"({rt.api_version})"
            )
        if kind and kind != rt.kind:
            raise E.bad_request(f"the kind in the data ({kind}) does not match the expected kind ({rt.kind})")
        body["apiVersion"] = rt.api_version
        body["kind"] = rt.kind

    def _validate(self, rt: ResourceType, obj: Obj, old: Obj | None) -> Obj:
        meta = _meta(obj)
        name = meta.get("name") or ""
        errs = validate_metadata(meta)
        if rt.schema is not None or rt.crd_name:
            # Both callers pass a private copy (create's deep copy, update's merge result).
            obj = S.prune_and_default(obj, rt.schema, in_place=True)
            errs += S.validate(obj, rt.schema)
        else:
            errs += validate_builtin(rt.group, rt.plural, obj)
            if rt.group == rbac.GROUP:
                errs += rbac.default_and_validate(rt.plural, obj, old)
        if rt.plural == "customresourcedefinitions" and rt.group == "apiextensions.k8s.io":
            errs += _validate_crd(obj)
        if old is not None:
            old_meta = old.get("metadata") or {}
            if old_meta.get("deletionTimestamp"):
                added = set(meta.get("finalizers") or []) - set(old_meta.get("finalizers") or [])
                if added:
                    errs.append(
                        E.FieldError(
                            "metadata.finalizers",
                            "FieldValueForbidden",
                            "Forbidden: no new finalizers can be added if the object is being deleted, "
                            f"found new finalizers {sorted(added)!r}".replace("'", '"'),
                        )
                    )
        if errs:
            raise E.invalid(rt.kind, rt.group, name, errs)
        return obj

    async def _admit(
        self,
        rt: ResourceType,
        op: str,
        sub: str,
        namespace: str | None,
        name: str,
        obj: Obj | None,
        old: Obj | None,
        ctx: RequestContext,
        options: Obj,
        kind: dict[str, str] | None = None,
    ) -> None:
        await self.admission.admit(
            Attributes(
                resource=resource_of(rt),
                kind=kind or kind_of(rt),
                subresource=sub,
                operation=op,
                namespace=namespace or "",
                name=name,
                obj=obj,
                old=old,
                user=ctx.user,
                dry_run=ctx.dry_run,
                options=options,
                namespaced=rt.namespaced,
            ),
            ctx,
        )

    async def _mutate_create(
        self,
        rt: ResourceType,
        namespace: str | None,
        name: str,
        obj: Obj,
        ctx: RequestContext,
        generated: bool,
    ) -> Obj:
        """Mutating admission on CREATE, as kube-apiserver runs it: before the registry sets the uid and
        creationTimestamp and before a generateName is resolved, so webhooks see neither."""
        server_set = {k: obj["metadata"].get(k) for k in ("uid", "creationTimestamp", "generation")}
        sent = copy.deepcopy(obj)
        for key in server_set:
            sent["metadata"].pop(key, None)
        if generated:
            sent["metadata"].pop("name", None)
        attrs = Attributes(
            resource=resource_of(rt),
            kind=kind_of(rt),
            subresource="",
            operation="CREATE",
            namespace=namespace or "",
            name="" if generated else name,
            obj=sent,
            old=None,
            user=ctx.user,
            dry_run=ctx.dry_run,
            options={"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"},
            namespaced=rt.namespaced,
        )
        mutated = await self.admission.mutate(attrs, ctx)
        if mutated is sent:
            return obj
        if not isinstance(mutated, dict) or not isinstance(mutated.get("metadata"), dict):
            raise E.ApiError(
                500, "Internal error occurred: the mutated object has no metadata", reason="InternalError"
            )
        meta = mutated["metadata"]
        meta["name"] = name
        if rt.namespaced:
            meta["namespace"] = namespace
        for key, value in server_set.items():
            if value is not None:
                meta[key] = value
        if rt.has_status:
            # Status is the registry's on create: whatever a webhook wrote there is reset.
            if "status" in obj:
                mutated["status"] = obj["status"]
            else:
                mutated.pop("status", None)
        return mutated

    # Create ----------------------------------------------------------------------------------

    async def create(self, rt: ResourceType, namespace: str | None, body: Obj, ctx: RequestContext) -> Obj:
        if not isinstance(body, dict):
            raise E.bad_request("the body of the request is not a JSON object")
        obj = copy.deepcopy(body)
        self._check_type_meta(rt, obj)
        meta = _meta(obj)
        if rt.namespaced:
            if meta.get("namespace") and namespace and meta["namespace"] != namespace:
                raise E.bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request"
                )
            meta["namespace"] = namespace
        else:
            meta.pop("namespace", None)
        if meta.get("resourceVersion"):
            raise E.ApiError(500, "resourceVersion should not be set on objects to be created")
        generated = not meta.get("name") and bool(meta.get("generateName"))
        if generated:
            meta["name"] = meta["generateName"] + "".join(random.choices(_GENERATE_CHARS, k=5))
        name = meta.get("name") or ""
        if not name:
            raise E.invalid(
                rt.kind,
                rt.group,
                "",
                [
                    E.FieldError(
                        "metadata.name",
                        "FieldValueRequired",
                        "Required value: name or generateName is required",
                    )
                ],
            )
        errs = validate_name(name, rt.name_rule)
        if errs:
            raise E.invalid(rt.kind, rt.group, name, errs)
        self._check_namespace(rt, namespace, name, creating=True)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = rfc3339()
        for transient in ("deletionTimestamp", "deletionGracePeriodSeconds", "selfLink", "managedFields"):
            meta.pop(transient, None)
        if rt.generation:
            meta["generation"] = 1
        else:
            meta.pop("generation", None)
        if rt.has_status:
            obj.pop("status", None)
        _prepare_create(rt, obj)
        obj = await self._mutate_create(rt, namespace, name, obj, ctx, generated)
        obj = self._validate(rt, obj, None)
        for check in self.write_checks:
            check(rt, obj, None, ctx)
        await self._admit(
            rt,
            "CREATE",
            "",
            namespace,
            name,
            obj,
            None,
            ctx,
            {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"},
        )
        async with self._one_writer(rt, namespace, name):
            if self.store.get(rt.key, namespace, name) is not None:
                raise E.already_exists(rt.plural, rt.group, name)
            self._check_namespace(rt, namespace, name, creating=True)
            if ctx.dry_run:
                return obj
            await self._commit_cost()
            if self.store.get(rt.key, namespace, name) is not None:
                raise E.already_exists(rt.plural, rt.group, name)
            stored = self.store.put(rt.key, obj)
        if _is_crd(rt):
            self._register_crd(stored)
        return stored

    # Update / patch --------------------------------------------------------------------------

    async def update(
        self,
        rt: ResourceType,
        namespace: str | None,
        name: str,
        body: Obj,
        ctx: RequestContext,
        subresource: str = "",
    ) -> Obj:
        if not isinstance(body, dict):
            raise E.bad_request("the body of the request is not a JSON object")
        incoming = copy.deepcopy(body)
        self._check_type_meta(rt, incoming)
        meta = _meta(incoming)
        if meta.get("name") and meta["name"] != name:
            raise E.bad_request(
                f"the name of the object ({meta['name']}) does not match the name on the URL ({name})"
            )
        if rt.namespaced and meta.get("namespace") and meta["namespace"] != namespace:
            raise E.bad_request(
                "the namespace of the provided object does not match the namespace sent on the request"
            )
        wanted_rv = meta.get("resourceVersion") or None

        def build(current: Obj) -> Obj:
            return incoming

        return await self._write(rt, namespace, name, build, wanted_rv, ctx, subresource)

    async def patch(
        self,
        rt: ResourceType,
        namespace: str | None,
        name: str,
        content_type: str,
        body: bytes,
        ctx: RequestContext,
        subresource: str = "",
    ) -> Obj:
        # The media type is checked before anything else (415 comes before 404).
        check_patch_type(content_type, custom=rt.crd_name is not None)

        def build(current: Obj) -> Obj:
            patched = apply_patch(current, content_type, body, custom=rt.crd_name is not None)
            self._check_type_meta(rt, patched)
            return patched

        return await self._write(rt, namespace, name, build, None, ctx, subresource, patching=True)

    async def _write(
        self,
        rt: ResourceType,
        namespace: str | None,
        name: str,
        build: Callable[[Obj], Obj],
        wanted_rv: str | None,
        ctx: RequestContext,
        subresource: str,
        patching: bool = False,
    ) -> Obj:
        if subresource and subresource != "status":
            raise E.method_not_allowed()
        # Admission runs inside too: the real server admits each attempt against the object it read.
        async with self._one_writer(rt, namespace, name):
            return await self._write_attempts(
                rt, namespace, name, build, wanted_rv, ctx, subresource, patching
            )

    async def _write_attempts(
        self,
        rt: ResourceType,
        namespace: str | None,
        name: str,
        build: Callable[[Obj], Obj],
        wanted_rv: str | None,
        ctx: RequestContext,
        subresource: str,
        patching: bool,
    ) -> Obj:
        for _ in range(_MAX_RETRIES):
            current = self.store.get(rt.key, namespace, name)
            if current is None:
                raise E.not_found(rt.plural, rt.group, name)
            incoming = build(current)
            in_meta = _meta(incoming)
            cur_rv = current["metadata"]["resourceVersion"]
            if patching:
                # A patch carrying metadata.resourceVersion is a precondition; re-applying it on a retry
                # makes it mismatch the newer object, so a retry needs no separate precondition.
                patched_rv = in_meta.get("resourceVersion") or None
                if patched_rv is not None and patched_rv != cur_rv:
                    raise E.conflict(rt.plural, rt.group, name)
                if in_meta.get("name", name) != name:
                    raise E.invalid(
                        rt.kind,
                        rt.group,
                        name,
                        [
                            E.FieldError(
                                "metadata.name",
                                "FieldValueInvalid",
                                f'Invalid value: "{in_meta.get("name")}": field is immutable',
                            )
                        ],
                    )
            if wanted_rv is not None and wanted_rv != cur_rv:
                raise E.conflict(rt.plural, rt.group, name)
            if in_meta.get("uid") and in_meta["uid"] != current["metadata"].get("uid"):
                raise E.conflict(
                    rt.plural,
                    rt.group,
                    name,
                    f"Precondition failed: UID in precondition: {in_meta['uid']}, UID in object meta: "
                    f"{current['metadata'].get('uid')}",
                )
            new = self._merge_for_update(rt, current, incoming, subresource, private=patching)
            new = self._validate(rt, new, current)
            if _same_content(new, current):
                return current
            for check in self.write_checks:
                check(rt, new, current, ctx)
            await self._admit(
                rt,
                "UPDATE",
                subresource,
                namespace,
                name,
                new,
                current,
                ctx,
                {"kind": "UpdateOptions", "apiVersion": "meta.k8s.io/v1"},
            )
            latest = self.store.get(rt.key, namespace, name)
            if latest is None:
                raise E.not_found(rt.plural, rt.group, name)
            if latest["metadata"]["resourceVersion"] != cur_rv:
                if wanted_rv is not None:
                    raise E.conflict(rt.plural, rt.group, name)
                continue  # changed while admission ran: redo on the newest object, as the server retries
            if ctx.dry_run:
                return new
            await self._commit_cost()
            if (self.store.get(rt.key, namespace, name) or {}).get("metadata", {}).get(
                "resourceVersion"
            ) != cur_rv:
                continue  # an unserialized in-process writer (kubelet status) got in first
            new_meta = new["metadata"]
            if (
                new_meta.get("deletionTimestamp")
                and not new_meta.get("finalizers")
                and not new_meta.get("deletionGracePeriodSeconds")
            ):
                # The last finalizer is gone from an object being deleted: it goes away now.
                final = self.store.remove(rt.key, namespace, name)
                assert final is not None
                self._after_remove(rt, final)
                return final
            stored = self.store.put(rt.key, new)
            if _is_crd(rt):
                self._register_crd(stored)
            return stored
        raise E.conflict(rt.plural, rt.group, name)

    def _merge_for_update(
        self, rt: ResourceType, current: Obj, incoming: Obj, subresource: str, private: bool = False
    ) -> Obj:
        if subresource == "status":
            new = copy.deepcopy(current)
            if "status" in incoming:
                new["status"] = copy.deepcopy(incoming["status"])
            else:
                new.pop("status", None)
            return new
        # A patch's result is a fresh copy per attempt (apply_patch); an update's body is reused on retry.
        new = incoming if private else cast(Obj, S.copy_json(incoming))
        meta = _meta(new)
        cur_meta = current["metadata"]
        for fixed in (
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "name",
            "namespace",
            "generation",
        ):
            if fixed in cur_meta:
                meta[fixed] = cur_meta[fixed]
            else:
                meta.pop(fixed, None)
        if "generateName" in cur_meta:
            meta["generateName"] = cur_meta["generateName"]
        meta["resourceVersion"] = cur_meta["resourceVersion"]
        if rt.has_status:
            if "status" in current:
                new["status"] = copy.deepcopy(current["status"])
            else:
                new.pop("status", None)
        _prepare_update(rt, new, current)
        if rt.generation and _without(new, "metadata", "status") != _without(current, "metadata", "status"):
            meta["generation"] = int(cur_meta.get("generation") or 0) + 1
        return new

    # Delete ----------------------------------------------------------------------------------

    async def delete(
        self,
        rt: ResourceType,
        namespace: str | None,
        name: str,
        options: Obj,
        ctx: RequestContext,
        *,
        admit: bool = True,
        collection: bool = False,
    ) -> tuple[Obj, bool]:
        """Delete one object; returns (object, removed-now).

        As kube-apiserver's registry store (Store.Delete): a pod is always deleted gracefully, even
        with gracePeriodSeconds 0, i.e. in two writes: one that sets deletionTimestamp and
        deletionGracePeriodSeconds (watchers see MODIFIED), then, if the grace period is 0 and no
        finalizer is left, the removal (DELETED). Each write admits the DELETE against the object it
        is about to change, so a grace-0 pod delete calls validating webhooks twice. Admission runs
        before the write without holding the object: a write that got in meanwhile makes the
        attempt start over on the newer object (optimistic concurrency, as GuaranteedUpdate and
        conditionalDelete retry on a revision conflict), admission included."""
        options = dict(options)
        for _ in range(_MAX_RETRIES):
            current = self.get(rt, namespace, name)
            self._check_preconditions(rt, name, current, options)
            step, grace = self._delete_step(rt, current, options)
            if step == "pending":
                return current, False  # a longer or equal grace period on a terminating pod: nothing
            if admit:
                await self._admit_delete(rt, namespace, name, current, options, ctx, collection)
            if step == "finalizing":
                return current, False  # already being deleted, waiting for finalizers: admitted, no write
            if ctx.dry_run:
                current = self.get(rt, namespace, name)
                self._check_preconditions(rt, name, current, options)
                return current, False
            async with self._one_writer(rt, namespace, name):
                if self._changed(rt, namespace, name, current):
                    continue
                await self._commit_cost()
                if self._changed(rt, namespace, name, current):
                    continue  # an unserialized in-process writer (kubelet status) got in first
                if orphan_requested(options):
                    self.orphaning.add(str(current["metadata"].get("uid")))
                if step == "remove":
                    return self._remove(rt, namespace, name), True
                if step == "namespace":
                    return self._mark_namespace(rt, current), False
                marked = self._mark_deleting(rt, current, grace)
            marked_meta = marked["metadata"]
            if grace > 0 or marked_meta.get("finalizers") or not self._graceful(rt):
                return marked, False
            # Grace 0 and nothing left to wait for: the same request removes it now (second write).
            if (options.get("preconditions") or {}).get("resourceVersion"):
                options["preconditions"] = {
                    **options["preconditions"],
                    "resourceVersion": marked_meta["resourceVersion"],
                }
        raise E.conflict(rt.plural, rt.group, name)

    async def _admit_delete(
        self,
        rt: ResourceType,
        namespace: str | None,
        name: str,
        current: Obj,
        options: Obj,
        ctx: RequestContext,
        collection: bool,
    ) -> None:
        delete_options: Obj = {"kind": "DeleteOptions", "apiVersion": "meta.k8s.io/v1"}
        delete_options.update({k: v for k, v in options.items() if k not in ("kind", "apiVersion")})
        if self._graceful(rt):
            # The pod strategy writes the grace period it settled on back into the options.
            delete_options["gracePeriodSeconds"] = self._grace_period(rt, current, options)
        if ctx.dry_run:
            delete_options["dryRun"] = ["All"]
        await self._admit(
            rt, "DELETE", "", namespace, "" if collection else name, None, current, ctx, delete_options
        )

    def _changed(self, rt: ResourceType, namespace: str | None, name: str, seen: Obj) -> bool:
        latest = self.store.get(rt.key, namespace, name)
        if latest is None:
            raise E.not_found(rt.plural, rt.group, name)
        return bool(latest["metadata"]["resourceVersion"] != seen["metadata"]["resourceVersion"])

    @staticmethod
    def _graceful(rt: ResourceType) -> bool:
        """Resources whose strategy deletes gracefully (in the built-in registry: pods)."""
        return rt.group == "" and rt.plural == "pods"

    def _delete_step(self, rt: ResourceType, current: Obj, options: Obj) -> tuple[str, int]:
        """What the next write of a delete is (rest.BeforeDelete): "remove", "mark" (set
        deletionTimestamp with the returned grace period), "namespace", "finalizing" (already being
        deleted and waiting for finalizers: admitted, nothing written) or "pending" (a terminating
        pod asked for an equal or longer grace period: neither admitted nor written)."""
        meta = current["metadata"]
        if _is_namespace(rt):
            return ("finalizing", 0) if meta.get("deletionTimestamp") else ("namespace", 0)
        if not self._graceful(rt):
            return (
                ("mark", 0)
                if meta.get("finalizers") and not meta.get("deletionTimestamp")
                else (("finalizing", 0) if meta.get("finalizers") else ("remove", 0))
            )
        grace = self._grace_period(rt, current, options)
        if meta.get("deletionTimestamp"):
            old_grace = meta.get("deletionGracePeriodSeconds")
            if not old_grace:
                return ("finalizing", 0) if meta.get("finalizers") else ("remove", 0)
            if grace >= int(old_grace):
                return "pending", int(old_grace)
        return "mark", grace

    def _mark_deleting(self, rt: ResourceType, current: Obj, grace: int) -> Obj:
        new = copy.deepcopy(current)
        new_meta = new["metadata"]
        new_meta["deletionTimestamp"] = rfc3339(now() + timedelta(seconds=grace))
        new_meta["deletionGracePeriodSeconds"] = grace
        if rt.generation:
            new_meta["generation"] = int(new_meta.get("generation") or 0) + 1
        return self.store.put(rt.key, new)

    def _mark_namespace(self, rt: ResourceType, current: Obj) -> Obj:
        # Namespaces always go through Terminating; the namespace controller removes them.
        new = copy.deepcopy(current)
        new["metadata"]["deletionTimestamp"] = rfc3339()
        new["metadata"]["deletionGracePeriodSeconds"] = 0
        new.setdefault("status", {})["phase"] = "Terminating"
        return self.store.put(rt.key, new)

    def _check_preconditions(self, rt: ResourceType, name: str, current: Obj, options: Obj) -> None:
        pre = options.get("preconditions") or {}
        meta = current["metadata"]
        if pre.get("uid") and pre["uid"] != meta.get("uid"):
            raise E.conflict(
                rt.plural,
                rt.group,
                name,
                f"Precondition failed: UID in precondition: {pre['uid']}, UID in object meta: "
                f"{meta.get('uid')}",
            )
        if pre.get("resourceVersion") and pre["resourceVersion"] != meta.get("resourceVersion"):
            raise E.conflict(
                rt.plural,
                rt.group,
                name,
                f"Precondition failed: ResourceVersion in precondition: {pre['resourceVersion']}, "
                f"ResourceVersion in object meta: {meta.get('resourceVersion')}",
            )

    def _grace_period(self, rt: ResourceType, obj: Obj, options: Obj) -> int:
        if _is_namespace(rt):
            return 0
        if not (rt.group == "" and rt.plural == "pods"):
            return 0
        requested = options.get("gracePeriodSeconds")
        spec = obj.get("spec") or {}
        status = obj.get("status") or {}
        if not spec.get("nodeName") or status.get("phase") in TERMINAL_PHASES:
            return 0  # nothing runs it: the real pod strategy deletes it at once
        if requested is None:
            requested = spec.get("terminationGracePeriodSeconds", 30)
        return max(0, int(requested))

    def _remove(self, rt: ResourceType, namespace: str | None, name: str) -> Obj:
        if _is_crd(rt):
            crd = self.store.get(rt.key, None, name)
            if crd is not None:
                self._unregister_crd(crd)
        final = self.store.remove(rt.key, namespace, name)
        if final is None:
            raise E.not_found(rt.plural, rt.group, name)
        self._after_remove(rt, final)
        return final

    def _after_remove(self, rt: ResourceType, final: Obj) -> None:
        if _is_crd(rt):
            self._unregister_crd(final)

    async def delete_collection(
        self,
        rt: ResourceType,
        namespace: str | None,
        labels: Selector,
        fields: FieldSelector,
        options: Obj,
        ctx: RequestContext,
    ) -> builtins.list[Obj]:
        deleted = []
        for obj in self.list(rt, namespace, labels, fields):
            meta = obj["metadata"]
            try:
                result, _ = await self.delete(
                    rt, meta.get("namespace"), meta["name"], options, ctx, collection=True
                )
            except E.ApiError as exc:
                if exc.code == 404:
                    continue
                raise
            deleted.append(result)
        return deleted

    # Eviction --------------------------------------------------------------------------------

    async def evict(
        self, rt: ResourceType, namespace: str, name: str, eviction: Obj, ctx: RequestContext
    ) -> Obj:
        if not isinstance(eviction, dict):
            raise E.bad_request("the body of the request is not a JSON object")
        ev_meta = eviction.get("metadata") or {}
        if ev_meta.get("name") and ev_meta["name"] != name:
            raise E.bad_request("name in URL does not match name in Eviction object")
        pod = self.get(rt, namespace, name)
        delete_options = dict(eviction.get("deleteOptions") or {})
        if delete_options.get("dryRun"):
            ctx.dry_run = True
        await self._admit(
            rt,
            "CREATE",
            "eviction",
            namespace,
            name,
            eviction,
            None,
            ctx,
            {
                "kind": "CreateOptions",
                "apiVersion": "meta.k8s.io/v1",
                **({"dryRun": ["All"]} if ctx.dry_run else {}),
            },
            kind={"group": "policy", "version": "v1", "kind": "Eviction"},
        )
        pod = self.get(rt, namespace, name)
        phase = (pod.get("status") or {}).get("phase")
        if (
            phase not in TERMINAL_PHASES
            and phase != "Pending"
            and not pod["metadata"].get("deletionTimestamp")
        ):
            self._check_disruption_budgets(pod)
        if ctx.dry_run:
            return E.success_status(201)
        # The eviction handler deletes the pod itself (the same graceful steps, no second admission).
        await self.delete(rt, namespace, name, delete_options, ctx, admit=False)
        return E.success_status(201)

    def _check_disruption_budgets(self, pod: Obj) -> None:
        namespace = pod["metadata"]["namespace"]
        labels = pod["metadata"].get("labels") or {}
        pdbs = self.store.list(("policy", "poddisruptionbudgets"), namespace)
        matching = []
        for pdb in pdbs:
            selector = from_label_selector((pdb.get("spec") or {}).get("selector"))
            if selector is None or not selector:
                continue
            if matches(selector, labels):
                matching.append(pdb)
        if len(matching) > 1:
            raise E.ApiError(
                500,
                "This pod has more than one PodDisruptionBudget, which the eviction "
                "subresource does not support.",
            )
        for pdb in matching:
            status = pdb.get("status") or {}
            if int(status.get("disruptionsAllowed") or 0) <= 0:
                pdb_name = pdb["metadata"]["name"]
                raise E.ApiError(
                    429,
                    "Cannot evict pod as it would violate the pod's disruption budget.",
                    reason="TooManyRequests",
                    details={
                        "causes": [
                            {
                                "reason": "DisruptionBudget",
                                "message": f"The disruption budget {pdb_name} needs "
                                f"{status.get('desiredHealthy', 0)} healthy pods and has "
                                f"{status.get('currentHealthy', 0)} currently",
                            }
                        ]
                    },
                )

    # CustomResourceDefinitions ---------------------------------------------------------------

    def _register_crd(self, crd: Obj) -> None:
        name = crd["metadata"]["name"]
        self.registry.remove_crd(name)
        for rt in types_from_crd(crd):
            self.registry.add(rt)
            self.store.bucket(rt.key)
        for hook in self.crd_hooks:
            hook()

    def _unregister_crd(self, crd: Obj) -> None:
        gone = self.registry.remove_crd(crd["metadata"]["name"])
        for rt in gone[:1]:
            for obj in list(self.store.list(rt.key)):
                self.store.remove(rt.key, obj["metadata"].get("namespace"), obj["metadata"]["name"])
            self.store.drop(rt.key)
        for hook in self.crd_hooks:
            hook()


def check_write_latency(value: object) -> float:
    """A write latency in seconds: a finite number from 0 to 10 (ValueError otherwise)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"write latency must be a number of seconds, got {value!r}")
    if not 0 <= value <= 10:  # also rejects NaN
        raise ValueError(f"write latency must be between 0 and 10 seconds, got {value!r}")
    return float(value)


def orphan_requested(options: Obj) -> bool:
    return options.get("propagationPolicy") == "Orphan" or options.get("orphanDependents") is True


def _is_crd(rt: ResourceType) -> bool:
    return rt.group == "apiextensions.k8s.io" and rt.plural == "customresourcedefinitions"


def _is_namespace(rt: ResourceType) -> bool:
    return rt.group == "" and rt.plural == "namespaces"


def _validate_crd(crd: Obj) -> list[E.FieldError]:
    spec = crd.get("spec") or {}
    names = spec.get("names") or {}
    errs = []
    for field in ("group", "scope"):
        if not spec.get(field):
            errs.append(E.FieldError(f"spec.{field}", "FieldValueRequired", "Required value"))
    for field in ("plural", "kind"):
        if not names.get(field):
            errs.append(E.FieldError(f"spec.names.{field}", "FieldValueRequired", "Required value"))
    if not spec.get("versions"):
        errs.append(E.FieldError("spec.versions", "FieldValueRequired", "Required value"))
    expected = f"{names.get('plural')}.{spec.get('group')}"
    if crd["metadata"].get("name") != expected:
        errs.append(
            E.FieldError(
                "metadata.name",
                "FieldValueInvalid",
                f'Invalid value: "{crd["metadata"].get("name")}": must be spec.names.plural+"."+spec.group',
            )
        )
    if spec.get("scope") not in (None, "", "Cluster", "Namespaced"):
        errs.append(
            E.FieldError(
                "spec.scope",
                "FieldValueNotSupported",
                f'Unsupported value: "{spec.get("scope")}": supported values: "Cluster", "Namespaced"',
            )
        )
    return errs


def _prepare_create(rt: ResourceType, obj: Obj) -> None:
    """Server-side defaults and resets that the real registries apply on create."""
    if rt.group == "" and rt.plural == "namespaces":
        meta = obj["metadata"]
        meta.setdefault("labels", {})["kubernetes.io/metadata.name"] = meta["name"]
        obj.setdefault("spec", {}).setdefault("finalizers", ["kubernetes"])
        obj["status"] = {"phase": "Active"}
    elif rt.group == "" and rt.plural == "pods":
        spec = obj.setdefault("spec", {})
        spec.setdefault("schedulerName", "default-scheduler")
        spec.setdefault("restartPolicy", "Always")
        spec.setdefault("terminationGracePeriodSeconds", 30)
        spec.setdefault("dnsPolicy", "ClusterFirst")
        spec.setdefault("serviceAccountName", "default")
        spec.setdefault("securityContext", {})
        spec.setdefault("enableServiceLinks", True)
        spec.setdefault("priority", 0)
        for c in spec.get("containers") or []:
            if isinstance(c, dict):
                c.setdefault("imagePullPolicy", "IfNotPresent")
                c.setdefault("terminationMessagePath", "/dev/termination-log")
                c.setdefault("terminationMessagePolicy", "File")
                c.setdefault("resources", {})
        obj["status"] = {"phase": "Pending", "qosClass": "BestEffort"}
    elif _is_crd(rt):
        spec = obj.get("spec") or {}
        names = dict(spec.get("names") or {})
        names.setdefault("singular", str(names.get("kind", "")).lower())
        names.setdefault("listKind", f"{names.get('kind', '')}List")
        stamp = rfc3339()
        obj["status"] = {
            "acceptedNames": names,
            "storedVersions": [v["name"] for v in spec.get("versions") or [] if v.get("storage")],
            "conditions": [
                {
                    "type": "NamesAccepted",
                    "status": "True",
                    "reason": "NoConflicts",
                    "message": "no conflicts found",
                    "lastTransitionTime": stamp,
                },
                {
                    "type": "Established",
                    "status": "True",
                    "reason": "InitialNamesAccepted",
                    "message": "the initial names have been accepted",
                    "lastTransitionTime": stamp,
                },
            ],
        }


def _prepare_update(rt: ResourceType, new: Obj, current: Obj) -> None:
    if rt.group == "" and rt.plural == "namespaces":
        meta = new["metadata"]
        meta.setdefault("labels", {})["kubernetes.io/metadata.name"] = meta["name"]
        if "spec" in current:
            new["spec"] = copy.deepcopy(current["spec"])  # spec.finalizers only change through /finalize
        if "status" in current:
            new["status"] = copy.deepcopy(current["status"])
