"""Capo's pod label selector: a pod matches if ANY requirement matches (not all, as in Kubernetes).

matchLabels entries count as `key In [value]` requirements beside the matchExpressions; an empty
selector matches no pod (Capo behaves so).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")

# Kubernetes' apimachinery validation rules for label keys and values.
_NAME_RE = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")
_DNS1123_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS1123_SUBDOMAIN_RE = re.compile(rf"{_DNS1123_LABEL}(\.{_DNS1123_LABEL})*")


class SelectorError(ValueError):
    """Invalid selector; `field` is the path inside the selector (e.g. "matchExpressions[1].operator")."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


def dns1123_subdomain_error(value: str) -> str | None:
    """Why `value` is not a DNS-1123 subdomain (Kubernetes object names), or None if it is one."""
    if not value:
        return "must not be empty"
    if len(value) > 253:
        return f"must be at most 253 characters, got {len(value)}"
    if not _DNS1123_SUBDOMAIN_RE.fullmatch(value):
        return (
            f"{value!r} is not a DNS-1123 subdomain (lowercase letters, digits, '-' and '.', "
            "starting and ending with a letter or digit)"
        )
    return None


def label_key_error(key: str) -> str | None:
    """Why `key` is not a valid label key ([prefix/]name), or None if it is one."""
    prefix, slash, name = key.rpartition("/")
    if slash:
        if not prefix:
            return f"label key {key!r} has an empty prefix before '/'"
        problem = dns1123_subdomain_error(prefix)
        if problem is not None:
            return f"label key prefix {problem}"
    if not name:
        return f"label key {key!r} has an empty name"
    if len(name) > 63:
        return f"label key name {name!r} must be at most 63 characters, got {len(name)}"
    if not _NAME_RE.fullmatch(name):
        return (
            f"label key name {name!r} must consist of letters, digits, '-', '_' or '.', "
            "starting and ending with a letter or digit"
        )
    return None


def label_value_error(value: str) -> str | None:
    """Why `value` is not a valid label value (may be empty), or None if it is one."""
    if len(value) > 63:
        return f"label value {value!r} must be at most 63 characters, got {len(value)}"
    if value and not _NAME_RE.fullmatch(value):
        return (
            f"label value {value!r} must consist of letters, digits, '-', '_' or '.', "
            "starting and ending with a letter or digit"
        )
    return None


@dataclass(frozen=True)
class Requirement:
    key: str
    operator: str  # "In", "NotIn", "Exists", "DoesNotExist"
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        # Same meaning as in a Kubernetes selector: NotIn also matches a pod without the label.
        if self.operator == "In":
            return self.key in labels and labels[self.key] in self.values
        if self.operator == "NotIn":
            return self.key not in labels or labels[self.key] not in self.values
        if self.operator == "Exists":
            return self.key in labels
        if self.operator == "DoesNotExist":
            return self.key not in labels
        return False  # unreachable for a validated requirement; never select on an unknown operator


def _describe(value: object) -> str:
    return f"{type(value).__name__} {value!r}"


@dataclass(frozen=True)
class AnySelector:
    requirements: tuple[Requirement, ...]

    def matches(self, labels: Mapping[str, str]) -> bool:
        return any(r.matches(labels) for r in self.requirements)

    @classmethod
    def from_dict(cls, data: object) -> AnySelector:
        """Build from a metav1.LabelSelector-shaped mapping; validates keys, operators and values
        as Kubernetes does (label key/value syntax, In/NotIn need values, Exists/DoesNotExist none).
        Raises SelectorError."""
        if data is None:
            return cls(())
        if not isinstance(data, Mapping):
            raise SelectorError("<selector>", f"must be a mapping, got {_describe(data)}")
        for name in data:
            if name not in ("matchLabels", "matchExpressions"):
                raise SelectorError(
                    str(name), "unknown field (a label selector has matchLabels and matchExpressions)"
                )
        requirements: list[Requirement] = []
        match_labels = data.get("matchLabels")
        if match_labels is not None:
            if not isinstance(match_labels, Mapping):
                raise SelectorError("matchLabels", f"must be a mapping, got {_describe(match_labels)}")
            for key, value in match_labels.items():
                path = f"matchLabels.{key}"
                if not isinstance(key, str):
                    raise SelectorError(path, f"label key must be a string, got {_describe(key)}")
                if not isinstance(value, str):
                    raise SelectorError(
                        path, f"label value must be a string (quote it in YAML), got {_describe(value)}"
                    )
                problem = label_key_error(key) or label_value_error(value)
                if problem:
                    raise SelectorError(path, problem)
                requirements.append(Requirement(key, "In", (value,)))
        expressions = data.get("matchExpressions")
        if expressions is not None:
            if not isinstance(expressions, list):
                raise SelectorError("matchExpressions", f"must be a list, got {_describe(expressions)}")
            for index, item in enumerate(expressions):
                requirements.append(_requirement(f"matchExpressions[{index}]", item))
        return cls(tuple(requirements))

    def to_dict(self) -> dict[str, object]:
        """A metav1.LabelSelector mapping that from_dict reads back to an equal selector."""
        expressions: list[dict[str, object]] = []
        for r in self.requirements:
            item: dict[str, object] = {"key": r.key, "operator": r.operator}
            if r.values:
                item["values"] = list(r.values)
            expressions.append(item)
        return {"matchExpressions": expressions}


def _requirement(path: str, item: object) -> Requirement:
    if not isinstance(item, Mapping):
        raise SelectorError(path, f"must be a mapping with key, operator and values, got {_describe(item)}")
    for name in item:
        if name not in ("key", "operator", "values"):
            raise SelectorError(f"{path}.{name}", "unknown field (expected key, operator, values)")
    key = item.get("key")
    if key is None:
        raise SelectorError(f"{path}.key", "is required")
    if not isinstance(key, str):
        raise SelectorError(f"{path}.key", f"must be a string, got {_describe(key)}")
    problem = label_key_error(key)
    if problem:
        raise SelectorError(f"{path}.key", problem)
    operator = item.get("operator")
    if operator is None:
        raise SelectorError(f"{path}.operator", "is required")
    if operator not in OPERATORS:
        raise SelectorError(
            f"{path}.operator", f"must be one of {', '.join(OPERATORS)} (case-sensitive), got {operator!r}"
        )
    raw_values = item.get("values")
    if raw_values is None:
        raw_values = []
    if not isinstance(raw_values, list):
        raise SelectorError(f"{path}.values", f"must be a list of strings, got {_describe(raw_values)}")
    values: list[str] = []
    for index, value in enumerate(raw_values):
        if not isinstance(value, str):
            raise SelectorError(
                f"{path}.values[{index}]", f"must be a string (quote it in YAML), got {_describe(value)}"
            )
        problem = label_value_error(value)
        if problem:
            raise SelectorError(f"{path}.values[{index}]", problem)
        values.append(value)
    if operator in ("In", "NotIn") and not values:
        raise SelectorError(f"{path}.values", f"must be non-empty when operator is {operator}")
    if operator in ("Exists", "DoesNotExist") and values:
        raise SelectorError(f"{path}.values", f"must be empty when operator is {operator}")
    return Requirement(key, str(operator), tuple(values))


DEFAULT_SELECTOR = AnySelector(
    (
        Requirement("statefulset.kubernetes.io/pod-name", "Exists"),
        Requirement("brokerId", "Exists"),
    )
)


@dataclass(frozen=True)
class NamespaceSelector:
    """`namespaceSelector`: a Kubernetes label selector (ALL requirements must match; empty
    matches every namespace), sent to the API server as the namespace watch's labelSelector."""

    requirements: tuple[Requirement, ...] = ()

    @classmethod
    def from_dict(cls, data: object) -> NamespaceSelector:
        """Same fields and validation as `AnySelector.from_dict`. Raises SelectorError."""
        return cls(AnySelector.from_dict(data).requirements)

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(r.matches(labels) for r in self.requirements)

    def query(self) -> str | None:
        """The `labelSelector` query parameter (kube-apiserver's string syntax); None if empty."""
        parts: list[str] = []
        for r in self.requirements:
            if r.operator == "In":
                parts.append(f"{r.key} in ({','.join(r.values)})")
            elif r.operator == "NotIn":
                parts.append(f"{r.key} notin ({','.join(r.values)})")
            elif r.operator == "Exists":
                parts.append(r.key)
            else:
                parts.append(f"!{r.key}")
        return ",".join(parts) or None

    def describe(self) -> str:
        return self.query() or "(every namespace)"
