"""Structural-schema handling of custom resources: pruning, defaulting and validation.

Implements the subset of ``openAPIV3Schema`` that kube-apiserver enforces and that CRDs commonly use:
type, nullable, properties/required/additionalProperties, items, enum, format (with the apiserver's
format checkers, ``cidr`` using Go's net.ParseCIDR rules), pattern, min/max(Length|Items|Properties),
minimum/maximum, x-kubernetes-preserve-unknown-fields, x-kubernetes-int-or-string, x-kubernetes-list-type
(``set`` and ``map``), defaults. CEL rules (x-kubernetes-validations) and oneOf/anyOf are not evaluated.
"""

from __future__ import annotations

import base64
import copy
import functools
import json
import re
import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from .errors import FieldError
from .ip import parse_cidr_sloppy, parse_ip_sloppy

# ObjectMeta fields a custom resource keeps; anything else under metadata is pruned.
OBJECT_META_FIELDS = frozenset(
    {
        "name",
        "generateName",
        "namespace",
        "selfLink",
        "uid",
        "resourceVersion",
        "generation",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "labels",
        "annotations",
        "ownerReferences",
        "finalizers",
        "managedFields",
    }
)


def prune_and_default(
    obj: dict[str, Any], schema: Mapping[str, Any] | None, *, in_place: bool = False
) -> dict[str, Any]:
    """Drop unknown fields and nulls, fill defaults: what the server does before validation.
    `in_place` for an object nobody else holds (saves a deep copy of a large object per write)."""
    result: dict[str, Any] = obj if in_place else copy_json(obj)
    meta = result.get("metadata")
    if isinstance(meta, dict):
        for key in list(meta):
            if key not in OBJECT_META_FIELDS:
                del meta[key]
    if schema is None:
        return result
    for key in list(result):
        if key in ("apiVersion", "kind", "metadata"):
            continue
        props = schema.get("properties") or {}
        if key in props:
            sub = props[key]
            if result[key] is None and not sub.get("nullable"):
                del result[key]
            else:
                result[key] = _prune(result[key], sub)
        elif not schema.get("x-kubernetes-preserve-unknown-fields"):
            del result[key]
    _defaults(result, schema, top=True)
    return result


def _prune(value: Any, schema: Mapping[str, Any]) -> Any:
    if isinstance(value, dict):
        if schema.get("x-kubernetes-embedded-resource") and isinstance(value.get("metadata"), dict):
            pass
        props = schema.get("properties")
        addl = schema.get("additionalProperties")
        preserve = schema.get("x-kubernetes-preserve-unknown-fields")
        for key in list(value):
            sub: Mapping[str, Any] | None = None
            if props is not None and key in props:
                sub = props[key]
            elif isinstance(addl, Mapping):
                sub = addl
            elif not preserve and addl is not True:
                del value[key]
                continue
            if sub is not None:
                if value[key] is None and not sub.get("nullable"):
                    del value[key]
                else:
                    value[key] = _prune(value[key], sub)
        _defaults(value, schema)
        return value
    if isinstance(value, list):
        items = schema.get("items")
        if isinstance(items, Mapping):
            return [_prune(v, items) for v in value]
    return value


def _defaults(value: dict[str, Any], schema: Mapping[str, Any], top: bool = False) -> None:
    for key, sub in (schema.get("properties") or {}).items():
        if top and key in ("apiVersion", "kind", "metadata"):
            continue
        if key not in value and isinstance(sub, Mapping) and "default" in sub:
            value[key] = copy.deepcopy(sub["default"])


def validate(obj: Mapping[str, Any], schema: Mapping[str, Any] | None) -> list[FieldError]:
    if schema is None:
        return []
    errors: list[FieldError] = []
    top = {k: v for k, v in obj.items() if k not in ("apiVersion", "kind", "metadata")}
    sub_schema = dict(schema)
    sub_schema["required"] = [
        r for r in schema.get("required") or [] if r not in ("metadata", "apiVersion", "kind")
    ]
    _validate(top, sub_schema, "", errors, root=True)
    return errors


def _go_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return "null"


def _show(value: Any) -> str:
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, dict | list):
        return json.dumps(_go_type(value))
    return json.dumps(value)


def _type_ok(value: Any, typ: str) -> bool:
    if typ == "object":
        return isinstance(value, dict)
    if typ == "array":
        return isinstance(value, list)
    if typ == "string":
        return isinstance(value, str)
    if typ == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if typ == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if typ == "boolean":
        return isinstance(value, bool)
    return True


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _validate(
    value: Any, schema: Mapping[str, Any], path: str, errors: list[FieldError], root: bool = False
) -> None:
    if value is None:
        if schema.get("nullable"):
            return
        if schema.get("type"):
            errors.append(
                FieldError(
                    path,
                    "FieldValueInvalid",
                    f'Invalid value: "null": {path} in body must be of type {schema["type"]}: "null"',
                )
            )
        return
    typ = schema.get("type")
    if schema.get("x-kubernetes-int-or-string"):
        if not (isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))):
            errors.append(
                FieldError(
                    path,
                    "FieldValueInvalid",
                    f"Invalid value: {_show(value)}: {path} in body must be of type integer,string: "
                    f"{_show(_go_type(value))}",
                )
            )
            return
    elif typ and not _type_ok(value, typ):
        errors.append(
            FieldError(
                path,
                "FieldValueInvalid",
                f"Invalid value: {_show(_go_type(value))}: {path} in body must be of type {typ}: "
                f"{_show(_go_type(value))}",
            )
        )
        return
    if "enum" in schema and value not in schema["enum"]:
        supported = ", ".join(json.dumps(v) for v in schema["enum"])
        errors.append(
            FieldError(
                path,
                "FieldValueNotSupported",
                f"Unsupported value: {_show(value)}: supported values: {supported}",
            )
        )
    if isinstance(value, str):
        _validate_string(value, schema, path, errors)
    elif isinstance(value, int | float) and not isinstance(value, bool):
        _validate_number(value, schema, path, errors)
    elif isinstance(value, list):
        _validate_array(value, schema, path, errors)
    elif isinstance(value, dict):
        _validate_object(value, schema, path, errors, root)


_PLAIN_STRING_KEYS = frozenset({"type", "format", "maxLength", "minLength", "pattern", "description"})


def _string_passes(value: str, schema: Mapping[str, Any]) -> bool:
    """What `_validate_string` checks, without building messages: True when it would find nothing."""
    fmt = schema.get("format")
    return (
        (not fmt or check_format(fmt, value))
        and ("maxLength" not in schema or len(value) <= schema["maxLength"])
        and ("minLength" not in schema or len(value) >= schema["minLength"])
        and ("pattern" not in schema or re.search(schema["pattern"], value) is not None)
    )


def _validate_string(value: str, schema: Mapping[str, Any], path: str, errors: list[FieldError]) -> None:
    fmt = schema.get("format")
    if fmt and not check_format(fmt, value):
        errors.append(
            FieldError(
                path,
                "FieldValueInvalid",
                f"Invalid value: {_show(value)}: {path} in body must be of type {fmt}: {_show(value)}",
            )
        )
    if "maxLength" in schema and len(value) > schema["maxLength"]:
        errors.append(
            FieldError(
                path, "FieldValueTooLong", f"Too long: may not be more than {schema['maxLength']} bytes"
            )
        )
    if "minLength" in schema and len(value) < schema["minLength"]:
        errors.append(
            FieldError(
                path,
                "FieldValueInvalid",
                f"Invalid value: {_show(value)}: {path} in body should be at least "
                f"{schema['minLength']} chars long",
            )
        )
    if "pattern" in schema and not re.search(schema["pattern"], value):
        errors.append(
            FieldError(
                path,
                "FieldValueInvalid",
                f"Invalid value: {_show(value)}: {path} in body should match '{schema['pattern']}'",
            )
        )


def _validate_number(value: float, schema: Mapping[str, Any], path: str, errors: list[FieldError]) -> None:
    if "minimum" in schema:
        low = schema["minimum"]
        if value < low or (schema.get("exclusiveMinimum") and value == low):
            errors.append(
                FieldError(
                    path,
                    "FieldValueInvalid",
                    f"Invalid value: {value}: {path} in body should be greater than or equal to {low}",
                )
            )
    if "maximum" in schema:
        high = schema["maximum"]
        if value > high or (schema.get("exclusiveMaximum") and value == high):
            errors.append(
                FieldError(
                    path,
                    "FieldValueInvalid",
                    f"Invalid value: {value}: {path} in body should be less than or equal to {high}",
                )
            )
    fmt = schema.get("format")
    if fmt == "int32" and isinstance(value, int) and not -(2**31) <= value < 2**31:
        errors.append(
            FieldError(
                path, "FieldValueInvalid", f"Invalid value: {value}: {path} in body must be of type int32"
            )
        )


def _validate_array(value: list[Any], schema: Mapping[str, Any], path: str, errors: list[FieldError]) -> None:
    if "maxItems" in schema and len(value) > schema["maxItems"]:
        errors.append(
            FieldError(
                path,
                "FieldValueTooMany",
                f"Too many: {len(value)}: must have at most {schema['maxItems']} items",
            )
        )
    if "minItems" in schema and len(value) < schema["minItems"]:
        errors.append(
            FieldError(
                path,
                "FieldValueInvalid",
                f"Invalid value: {len(value)}: {path} in body should have at least "
                f"{schema['minItems']} items",
            )
        )
    items = schema.get("items")
    if isinstance(items, Mapping):
        plain = items.get("type") == "string" and not items.keys() - _PLAIN_STRING_KEYS
        for i, item in enumerate(value):
            # A list of plain strings (reservedCIDRs): an item that passes needs no path of its own.
            if plain and isinstance(item, str) and _string_passes(item, items):
                continue
            _validate(item, items, f"{path}[{i}]", errors)
    list_type = schema.get("x-kubernetes-list-type")
    if list_type == "set":
        seen: set[tuple[str, str]] = set()
        for i, item in enumerate(value):
            # Strings (the common case: reservedCIDRs) need no encoding; the tag keeps "1" apart from 1.
            key = ("s", item) if isinstance(item, str) else ("j", json.dumps(item, sort_keys=True))
            if key in seen:
                errors.append(
                    FieldError(f"{path}[{i}]", "FieldValueDuplicate", f"Duplicate value: {_show(item)}")
                )
            seen.add(key)
    elif list_type == "map":
        keys = schema.get("x-kubernetes-list-map-keys") or []
        seen_keys: set[str] = set()
        for i, item in enumerate(value):
            if not isinstance(item, dict):
                continue
            map_key = json.dumps([item.get(k) for k in keys])
            if map_key in seen_keys:
                shown = "{" + ", ".join(f'"{k}":{json.dumps(item.get(k))}' for k in keys) + "}"
                errors.append(
                    FieldError(f"{path}[{i}]", "FieldValueDuplicate", f"Duplicate value: map[{shown}]")
                )
            seen_keys.add(map_key)


def _validate_object(
    value: dict[str, Any], schema: Mapping[str, Any], path: str, errors: list[FieldError], root: bool
) -> None:
    for req in schema.get("required") or []:
        if req not in value:
            errors.append(FieldError(_join(path, req), "FieldValueRequired", "Required value"))
    props = schema.get("properties") or {}
    addl = schema.get("additionalProperties")
    for key, item in value.items():
        if key in props:
            _validate(item, props[key], _join(path, key), errors)
        elif isinstance(addl, Mapping):
            _validate(item, addl, _join(path, key), errors)
    if "maxProperties" in schema and len(value) > schema["maxProperties"]:
        errors.append(
            FieldError(
                path,
                "FieldValueTooMany",
                f"Too many: {len(value)}: must have at most {schema['maxProperties']} items",
            )
        )
    if "minProperties" in schema and len(value) < schema["minProperties"]:
        errors.append(
            FieldError(
                path,
                "FieldValueInvalid",
                f"Invalid value: {len(value)}: {path} in body should have at least "
                f"{schema['minProperties']} properties",
            )
        )


_DATE_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?([Zz]|[+-]\d{2}:?\d{2})?$")
_MAC = re.compile(r"^([0-9A-Fa-f]{2}[:-]){5}([0-9A-Fa-f]{2})$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+$")


def copy_json(value: Any) -> Any:
    """A deep copy of JSON data (dicts, lists, scalars), several times faster than copy.deepcopy,
    which the write path of a large object (hundreds of list entries) otherwise spends its time in."""
    if isinstance(value, dict):
        return {k: copy_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [copy_json(v) for v in value]
    return value


@functools.lru_cache(maxsize=1 << 16)
def check_format(fmt: str, value: str) -> bool:
    """The apiserver's format checkers (kube-openapi strfmt), for the formats CRDs use.
    Cached: a write re-validates every entry of a list (an IPReservation holds hundreds of CIDRs),
    and parsing them in Python each time made the emulator, not the write, the cost measured."""
    if fmt == "cidr":
        return parse_cidr_sloppy(value) is not None
    if fmt == "ipv4":
        ip = parse_ip_sloppy(value)
        return ip is not None and ip.version == 4
    if fmt == "ipv6":
        ip = parse_ip_sloppy(value)
        return ip is not None and ":" in value
    if fmt in ("date-time", "datetime"):
        if not _DATE_TIME.match(value):
            return False
        try:
            datetime.fromisoformat(value.replace("z", "Z").replace("Z", "+00:00"))
        except ValueError:
            return False
        return True
    if fmt == "date":
        try:
            datetime.strptime(value, "%Y-%m-%d")
        except ValueError:
            return False
        return True
    if fmt in ("uuid", "uuid3", "uuid4", "uuid5"):
        try:
            uuid.UUID(value)
        except ValueError:
            return False
        return True
    if fmt == "byte":
        try:
            base64.b64decode(value, validate=True)
        except ValueError:
            return False
        return True
    if fmt == "mac":
        return bool(_MAC.match(value))
    if fmt == "email":
        return bool(_EMAIL.match(value))
    if fmt == "hostname":
        return (
            bool(
                re.match(
                    r"^[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?(\.[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?)*$",
                    value,
                )
            )
            and len(value) <= 255
        )
    # Formats the apiserver does not check (or that the emulator does not know) pass.
    return True
