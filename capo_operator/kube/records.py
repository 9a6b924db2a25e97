"""The ReservedIP records in the API: create, mark, re-time, finish and delete them (the value type
and its encoding are `decisions.record`). Methods raise `kubernetes.aio.client.ApiException` for API
failures other than the ones documented as "not an error"; `create`, on the delete path's hot
side, goes through `transport.send_json` and raises its `ApiError`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, cast

from kubernetes.aio import client as k8s

from capo_operator.decisions.record import (
    DEFAULT_RESERVATION,
    FINALIZER,
    GROUP,
    LABEL_RESERVATION,
    PLURAL,
    RELEASING_ANNOTATION,
    VERSION,
    Record,
    RecordError,
    belongs_to,
    claim_body,
    format_time,
)
from capo_operator.decisions.sticky import Claim
from capo_operator.kube.transport import ApiError, send_json

logger = logging.getLogger(__name__)

MERGE_PATCH = "application/merge-patch+json"
LIST_PAGE = 500


class RecordStore:
    """The records of one IPReservation (`reservation`): created with its label, listed by it."""

    def __init__(self, api: k8s.ApiClient, reservation: str = DEFAULT_RESERVATION) -> None:
        self.api = api
        self.reservation = reservation
        self._custom = k8s.CustomObjectsApi(api)
        self._collection = f"/apis/{GROUP}/{VERSION}/{PLURAL}"

    async def create(self, record: Record) -> bool:
        """Create; False when a record of that name already exists (not an error)."""
        body = record.to_body()
        body["metadata"].pop("resourceVersion", None)
        body["metadata"]["labels"][LABEL_RESERVATION] = self.reservation
        try:
            # Without the generated method: its per-call validation and model conversion were
            # most of the operator's CPU per record (py-spy, a delete run); the answer is not read.
            await send_json(self.api, "POST", self._collection, body)
        except ApiError as exc:
            if exc.status == 409:
                return False
            raise
        return True

    async def _merge(self, name: str, patch: dict[str, Any]) -> None:
        try:
            await self._custom.patch_cluster_custom_object(
                GROUP, VERSION, PLURAL, name, patch, _content_type=MERGE_PATCH
            )
        except k8s.ApiException as exc:
            if exc.status != 404:
                raise

    async def mark_releasing(
        self, name: str, reason: str, *, finalizers: Sequence[str] = (), uid: str | None = None
    ) -> None:
        """Set the releasing annotation and drop our finalizer, in one merge patch; `finalizers` are
        the record's other finalizers, kept (a merge patch replaces the list). Once marked, the
        release is finished by any later pass, so the finalizer has no more work to do.
        With `uid`, only that object is marked: the patch carries `metadata.uid`, which the API
        server refuses for another object of the same name (409 or 422, raised: the decision was
        taken on a stale view). A missing record is not an error."""
        metadata: dict[str, Any] = {
            "annotations": {RELEASING_ANNOTATION: reason},
            "finalizers": list(finalizers) or None,
        }
        if uid:
            metadata["uid"] = uid
        await self._merge(name, {"metadata": metadata})

    async def finish_manual(
        self, name: str, *, finalizers: Sequence[str] = (), uid: str | None = None
    ) -> bool:
        """A record deleted by a person, whose IP has left Calico: mark it (the records watch then
        knows the release was done) and drop our finalizer, so the pending deletion completes.
        False when it was already gone. With `uid`: only that object (see mark_releasing)."""
        metadata: dict[str, Any] = {
            "annotations": {RELEASING_ANNOTATION: "manual"},
            "finalizers": list(finalizers) or None,
        }
        if uid:
            metadata["uid"] = uid
        try:
            await self._custom.patch_cluster_custom_object(
                GROUP, VERSION, PLURAL, name, {"metadata": metadata}, _content_type=MERGE_PATCH
            )
        except k8s.ApiException as exc:
            if exc.status == 404:
                return False
            raise
        return True

    async def add_finalizer(self, name: str, *, finalizers: Sequence[str] = ()) -> None:
        """Give a record made before finalizers existed ours (`finalizers`: the ones it has).
        A missing record is not an error."""
        await self._merge(name, {"metadata": {"finalizers": [*finalizers, FINALIZER]}})

    async def set_clock(
        self,
        name: str,
        *,
        reserved_at: datetime,
        expires_at: datetime | None,
        hold: timedelta,
        policy: str | None = None,
    ) -> None:
        """Merge-patch spec.reservedAt/expiresAt/holdSeconds (and spec.policy when given).
        A missing record is not an error."""
        # A merge patch with null deletes the key; that is what "no expiry yet" means.
        spec: dict[str, Any] = {
            "reservedAt": format_time(reserved_at),
            "expiresAt": None if expires_at is None else format_time(expires_at),
            "holdSeconds": int(hold.total_seconds()),
        }
        if policy is not None:
            spec["policy"] = policy
        await self._merge(name, {"spec": spec})

    async def claim(self, name: str, claim: Claim, *, resource_version: str) -> bool:
        """Write `claim` on the record if it is still at `resource_version`: True when this claim won,
        False when the record changed (another claim won; 409) or is gone (404)."""
        patch = {"metadata": {"resourceVersion": resource_version}, "spec": {"claim": claim_body(claim)}}
        try:
            await self._custom.patch_cluster_custom_object(
                GROUP, VERSION, PLURAL, name, patch, _content_type=MERGE_PATCH
            )
        except k8s.ApiException as exc:
            if exc.status in (404, 409):
                return False
            raise
        return True

    async def clear_claim(self, name: str, token: str) -> bool:
        """Remove the claim if it is still the one with `token` (a JSON patch `test` guards it): a
        newer claim is never cleared by a stale decision. False when it was not there any more."""
        patch = [
            {"op": "test", "path": "/spec/claim/token", "value": token},
            {"op": "remove", "path": "/spec/claim"},
        ]
        try:
            await self._custom.patch_cluster_custom_object(
                GROUP, VERSION, PLURAL, name, patch, _content_type="application/json-patch+json"
            )
        except k8s.ApiException as exc:
            if exc.status in (404, 409, 422):
                return False
            raise
        return True

    async def delete(self, name: str, *, uid: str | None = None) -> bool:
        """Delete; False when it was already gone. With `uid`, only that object: a DELETE with a
        uid precondition, so another record made since under the same name stays (False: the one
        meant is gone). A record that still carries our finalizer (marked by an older version, or a
        stale view) stays Terminating after the DELETE: the finalizer is then dropped so that the
        deletion completes."""
        options = k8s.V1DeleteOptions(preconditions=k8s.V1Preconditions(uid=uid)) if uid else None
        try:
            gone = await self._custom.delete_cluster_custom_object(GROUP, VERSION, PLURAL, name, body=options)
        except k8s.ApiException as exc:
            if exc.status == 404 or (uid and exc.status == 409):
                return False
            raise
        metadata = (gone.get("metadata") if isinstance(gone, Mapping) else None) or {}
        finalizers = metadata.get("finalizers") or []
        if metadata.get("deletionTimestamp") and FINALIZER in finalizers:
            await self._merge(
                name, {"metadata": {"finalizers": [f for f in finalizers if f != FINALIZER] or None}}
            )
        return True

    async def list(self) -> list[Record]:
        """Every valid record of this reservation (invalid bodies are skipped and logged)."""
        records: list[Record] = []
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"limit": LIST_PAGE}
            if token:
                kwargs["_continue"] = token
            page = cast(
                dict[str, Any],
                await self._custom.list_cluster_custom_object(GROUP, VERSION, PLURAL, **kwargs),
            )
            for item in page.get("items") or []:
                if not belongs_to((item.get("metadata") or {}).get("labels"), self.reservation):
                    continue  # another installation's
                try:
                    records.append(Record.from_body(item))
                except RecordError as exc:
                    name = (item.get("metadata") or {}).get("name")
                    logger.warning("skipping invalid ReservedIP %s: %s", name, exc)
            token = (page.get("metadata") or {}).get("continue")
            if not token:
                return records
