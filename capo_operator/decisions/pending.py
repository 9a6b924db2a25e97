"""What a ReservedIP record will say, carried in the Calico write itself until the record exists.

The webhook answers after one write, the Calico append; the record follows asynchronously. So that a
crash in between loses nothing, the same JSON patch adds one annotation per IP to the IPReservation
object: key `pending.capo.io/<record name>`, value a compact JSON array (about 200 bytes) holding the
record's fields. The leader adopts an entry without a record from it (the pod's details and the real
reservation time) and removes annotations whose record exists, in one batched write. Pure module.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from capo_operator.decisions.addresses import AddressError, ip_of, record_name
from capo_operator.decisions.record import Record, RecordError, format_time
from capo_operator.decisions.sticky import ReleasePolicy

PREFIX = "pending.capo.io/"
FORMAT = 1  # first element of the array: lets a later version change the layout
_FIELDS = 14
# The whole annotation map of an object may hold 256 KiB; pending details stop well short of it (and
# each replica's writes are capped against what the last response showed), so the object stays writable.
BUDGET_BYTES = 128 * 1024


class PendingError(ValueError):
    """A pending annotation that cannot be read (corrupt, truncated or of an unknown format)."""


def key(ip: str) -> str:
    """The annotation key for an IP (AddressError for a non-IP)."""
    return PREFIX + record_name(ip)


def is_key(annotation: str) -> bool:
    return annotation.startswith(PREFIX)


def encode(record: Record) -> str:
    """The compact annotation value for a record (times to the second, as the record stores them).
    A sticky record adds a 15th field, its release policy, so that a record adopted from the
    annotation (its follower was late) can still be given back."""
    pod, owner = record.pod, record.owner
    sticky = [str(record.release_policy)] if record.sticky else []
    return json.dumps(
        [
            FORMAT,
            record.ip,
            pod.namespace if pod else "",
            pod.name if pod else "",
            pod.uid if pod else "",
            (pod.node or "") if pod else "",
            owner.api_version if owner else "",
            owner.kind if owner else "",
            owner.name if owner else "",
            owner.uid if owner else "",
            record.trigger,
            int(record.reserved_at.timestamp()),
            int(record.hold.total_seconds()),
            record.policy,
            *sticky,
        ],
        separators=(",", ":"),
        ensure_ascii=False,
    )


def size(annotation: str, value: str) -> int:
    """Bytes counted toward the object's annotation limit (key and value, UTF-8)."""
    return len(annotation.encode()) + len(value.encode())


def total_size(annotations: Mapping[Any, Any]) -> int:
    """`size` summed over the pending annotations among `annotations` (others, and non-string
    entries, count 0). Runs after every append over the whole map: ASCII text (the usual case)
    is measured without encoding it."""
    total = 0
    for k, v in annotations.items():
        if isinstance(k, str) and isinstance(v, str) and k.startswith(PREFIX):
            if k.isascii() and v.isascii():
                total += len(k) + len(v)
            else:
                total += len(k.encode()) + len(v.encode())
    return total


def decode(annotation: str, value: Any) -> Record:
    """The record an annotation describes, its clock running from the real reservation time.
    PendingError when the value is not a valid entry or does not belong to the key's IP."""
    if not is_key(annotation):
        raise PendingError(f"{annotation!r} is not a pending-record annotation")
    if not isinstance(value, str):
        raise PendingError(f"{annotation}: expected a string, got {type(value).__name__}")
    try:
        fields = json.loads(value)
    except ValueError as exc:
        raise PendingError(f"{annotation}: not JSON: {exc}") from None
    if not isinstance(fields, list) or len(fields) not in (_FIELDS, _FIELDS + 1) or fields[0] != FORMAT:
        raise PendingError(f"{annotation}: expected a list of {_FIELDS} fields in format {FORMAT}")
    release_policy: ReleasePolicy | None = None
    if len(fields) > _FIELDS:  # a sticky record's release policy
        try:
            release_policy = ReleasePolicy(fields.pop())
        except (ValueError, TypeError):
            raise PendingError(f"{annotation}: the 15th field is not a release policy") from None
    (_, ip, namespace, name, uid, node, o_api, o_kind, o_name, o_uid, trigger, at, hold, policy) = fields
    for label, text in (
        ("ip", ip),
        ("namespace", namespace),
        ("name", name),
        ("uid", uid),
        ("node", node),
        ("owner apiVersion", o_api),
        ("owner kind", o_kind),
        ("owner name", o_name),
        ("owner uid", o_uid),
        ("policy", policy),
    ):
        if not isinstance(text, str):
            raise PendingError(f"{annotation}: {label} must be a string, got {text!r}")
    for label, number in (("reservedAt", at), ("holdSeconds", hold)):
        if isinstance(number, bool) or not isinstance(number, int) or number < 0:
            raise PendingError(f"{annotation}: {label} must be a non-negative integer, got {number!r}")
    try:
        if key(ip) != annotation:
            raise PendingError(f"{annotation}: describes IP {ip!r}, which belongs to another key")
        reserved_at = datetime.fromtimestamp(at, UTC)
    except (AddressError, OverflowError, OSError, ValueError) as exc:
        raise PendingError(f"{annotation}: {exc}") from None
    spec: dict[str, Any] = {
        "ip": ip_of(ip),
        "trigger": trigger,
        "reservedAt": format_time(reserved_at),
        "holdSeconds": hold,
        "policy": policy,
    }
    if namespace or name:
        spec["pod"] = {"namespace": namespace, "name": name, "uid": uid, "node": node or None}
    if o_kind or o_name:
        spec["owner"] = {"apiVersion": o_api, "kind": o_kind, "name": o_name, "uid": o_uid}
    try:
        record = Record.from_body({"metadata": {"name": record_name(ip)}, "spec": spec})
        expires_at = record.reserved_at + timedelta(seconds=hold)
    except (RecordError, OverflowError) as exc:
        raise PendingError(f"{annotation}: {exc}") from None
    return Record(
        ip=record.ip,
        pod=record.pod,
        owner=record.owner,
        trigger=record.trigger,
        reserved_at=record.reserved_at,
        expires_at=expires_at,
        hold=record.hold,
        policy=record.policy,
        sticky=release_policy is not None,
        release_policy=release_policy or ReleasePolicy.TTL,
    )


def read(annotations: Any) -> tuple[dict[str, Record], dict[str, str]]:
    """The pending records in an object's annotations, by canonical IP, and the keys that could not
    be read (key -> reason)."""
    records: dict[str, Record] = {}
    bad: dict[str, str] = {}
    if not isinstance(annotations, Mapping):
        return records, bad
    for annotation, value in annotations.items():
        if not isinstance(annotation, str) or not is_key(annotation):
            continue
        try:
            record = decode(annotation, value)
        except PendingError as exc:
            bad[annotation] = str(exc)
            continue
        records[record.ip] = record
    return records, bad
