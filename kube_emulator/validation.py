"""Validation of object metadata and of the few built-in fields the emulator checks."""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from typing import Any

from .errors import FieldError

_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")

SUBDOMAIN_MSG = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and "
    "must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is "
    "'[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
)
LABEL_MSG = (
    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start "
    "and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is "
    "'[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
)


def is_dns1123_subdomain(value: str) -> bool:
    return len(value) <= 253 and bool(_DNS1123_SUBDOMAIN.match(value))


def is_dns1123_label(value: str) -> bool:
    return len(value) <= 63 and bool(_DNS1123_LABEL.match(value))


def validate_name(name: str, rule: str, field: str = "metadata.name") -> list[FieldError]:
    if rule == "label":
        if not is_dns1123_label(name):
            msg = LABEL_MSG if len(name) <= 63 else "must be no more than 63 characters"
            return [FieldError(field, "FieldValueInvalid", f'Invalid value: "{name}": {msg}')]
        return []
    if rule == "path":
        bad = name in (".", "..") or "/" in name or "%" in name
        if bad:
            return [FieldError(field, "FieldValueInvalid", f"Invalid value: \"{name}\": may not contain '/'")]
        return []
    if not is_dns1123_subdomain(name):
        msg = SUBDOMAIN_MSG if len(name) <= 253 else "must be no more than 253 characters"
        return [FieldError(field, "FieldValueInvalid", f'Invalid value: "{name}": {msg}')]
    return []


@functools.lru_cache(maxsize=1 << 16)
def _qualified_name_errors(key: str) -> str | None:
    # Cached: every write of an object re-checks all its label and annotation keys, mostly the same ones.
    prefix, _, name = key.rpartition("/")
    if "/" in prefix:
        return "a qualified name must consist of alphanumeric characters, '-', '_' or '.'"
    if prefix and not is_dns1123_subdomain(prefix):
        return "prefix part " + SUBDOMAIN_MSG
    if not name:
        return "name part must be non-empty"
    if len(name) > 63:
        return "name part must be no more than 63 characters"
    if not _QUALIFIED_NAME.match(name):
        return (
            "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end "
            "with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for "
            "validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')"
        )
    return None


def validate_metadata(meta: Mapping[str, Any]) -> list[FieldError]:
    errors: list[FieldError] = []
    labels = meta.get("labels") or {}
    if not isinstance(labels, Mapping):
        return [FieldError("metadata.labels", "FieldValueInvalid", "Invalid value: must be a map")]
    for key, value in labels.items():
        why = _qualified_name_errors(key)
        if why:
            errors.append(
                FieldError("metadata.labels", "FieldValueInvalid", f'Invalid value: "{key}": {why}')
            )
        if not isinstance(value, str):
            errors.append(FieldError(f"metadata.labels[{key}]", "FieldValueInvalid", "must be a string"))
        elif len(value) > 63 or not _LABEL_VALUE.match(value):
            errors.append(
                FieldError(
                    "metadata.labels",
                    "FieldValueInvalid",
                    f'Invalid value: "{value}": a valid label must be an empty string or consist of '
                    "alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric "
                    "character" + (" (must be no more than 63 characters)" if len(value) > 63 else ""),
                )
            )
    annotations = meta.get("annotations") or {}
    if not isinstance(annotations, Mapping):
        return [*errors, FieldError("metadata.annotations", "FieldValueInvalid", "must be a map")]
    total = 0
    for key, value in annotations.items():
        why = _qualified_name_errors(key)
        if why:
            errors.append(
                FieldError("metadata.annotations", "FieldValueInvalid", f'Invalid value: "{key}": {why}')
            )
        if not isinstance(value, str):
            errors.append(FieldError(f"metadata.annotations[{key}]", "FieldValueInvalid", "must be a string"))
        else:
            total += len(key) + len(value)
    if total > 256 * 1024:
        errors.append(
            FieldError(
                "metadata.annotations", "FieldValueTooLong", "Too long: must have at most 262144 bytes"
            )
        )
    return errors


def validate_builtin(group: str, plural: str, obj: Mapping[str, Any]) -> list[FieldError]:
    """The few built-in field checks the emulator performs (far fewer than the real server)."""
    if group == "" and plural == "pods":
        containers = (obj.get("spec") or {}).get("containers")
        if not containers:
            return [FieldError("spec.containers", "FieldValueRequired", "Required value")]
        errors = []
        for i, c in enumerate(containers):
            if not isinstance(c, Mapping) or not c.get("name"):
                errors.append(
                    FieldError(f"spec.containers[{i}].name", "FieldValueRequired", "Required value")
                )
            elif not c.get("image"):
                errors.append(
                    FieldError(f"spec.containers[{i}].image", "FieldValueRequired", "Required value")
                )
        return errors
    if group == "coordination.k8s.io" and plural == "leases":
        spec = obj.get("spec") or {}
        dur = spec.get("leaseDurationSeconds")
        if dur is not None and (not isinstance(dur, int) or dur <= 0):
            return [
                FieldError(
                    "spec.leaseDurationSeconds",
                    "FieldValueInvalid",
                    f"Invalid value: {dur}: must be greater than 0",
                )
            ]
    return []
