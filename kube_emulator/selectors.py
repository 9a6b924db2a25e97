"""Label selectors (string and structured forms) and field selectors, with the real semantics."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import bad_request


@dataclass(frozen=True)
class Requirement:
    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!"
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        value = labels.get(self.key)
        if self.op == "=":
            return present and value == self.values[0]
        if self.op == "!=":
            # As in Kubernetes, a missing key satisfies "!=".
            return not present or value != self.values[0]
        if self.op == "in":
            return present and value in self.values
        if self.op == "notin":
            return not present or value not in self.values
        if self.op == "exists":
            return present
        if self.op == "!":
            return not present
        raise AssertionError(self.op)


Selector = tuple[Requirement, ...]

_TOKEN = re.compile(r"\s*(!=|==|=|!|\(|\)|,|[^\s!=(),]+)")


def parse_label_selector(text: str | None) -> Selector:
    """Parse ``a=b,c!=d,e in (f,g),h notin (i),j,!k``; 400 BadRequest on a syntax error."""
    if not text or not text.strip():
        return ()
    tokens = _tokenize(text)
    reqs: list[Requirement] = []
    pos = 0

    def fail(msg: str) -> Exception:
        return bad_request(f"unable to parse requirement: {msg}")

    while pos < len(tokens):
        tok = tokens[pos]
        if tok == "!":
            if pos + 1 >= len(tokens):
                raise fail("found '', expected: identifier")
            reqs.append(Requirement(_check_key(tokens[pos + 1]), "!"))
            pos += 2
        else:
            key = _check_key(tok)
            pos += 1
            nxt = tokens[pos] if pos < len(tokens) else ","
            if nxt == ",":
                reqs.append(Requirement(key, "exists"))
            elif nxt in ("=", "==", "!="):
                if pos + 1 >= len(tokens) or tokens[pos + 1] in (",", "(", ")"):
                    value = ""
                    pos += 1
                else:
                    value = tokens[pos + 1]
                    pos += 2
                _check_value(value)
                reqs.append(Requirement(key, "!=" if nxt == "!=" else "=", (value,)))
            elif nxt in ("in", "notin"):
                pos += 1
                if pos >= len(tokens) or tokens[pos] != "(":
                    raise fail(f"found '{tokens[pos] if pos < len(tokens) else ''}', expected: '('")
                pos += 1
                values: list[str] = []
                while pos < len(tokens) and tokens[pos] != ")":
                    if tokens[pos] != ",":
                        values.append(_check_value(tokens[pos]))
                    pos += 1
                if pos >= len(tokens):
                    raise fail("found '', expected: ')'")
                pos += 1
                reqs.append(Requirement(key, nxt, tuple(values)))
            else:
                raise fail(f"found '{nxt}', expected: in, notin, =, ==, !=, gt, lt")
        if pos < len(tokens):
            if tokens[pos] != ",":
                raise fail(f"found '{tokens[pos]}', expected: ','")
            pos += 1
    return tuple(reqs)


def _tokenize(text: str) -> list[str]:
    tokens = []
    pos = 0
    while pos < len(text):
        if text[pos].isspace():
            pos += 1
            continue
        m = _TOKEN.match(text, pos)
        if not m:
            raise bad_request(f"unable to parse requirement: unexpected character at {pos}")
        tokens.append(m.group(1))
        pos = m.end()
    return tokens


_KEY_RE = re.compile(r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_VALUE_RE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")


def _check_key(key: str) -> str:
    if not _KEY_RE.match(key):
        raise bad_request(f'unable to parse requirement: invalid label key "{key}"')
    return key


def _check_value(value: str) -> str:
    if len(value) > 63 or not _VALUE_RE.match(value):
        raise bad_request(f'unable to parse requirement: invalid label value: "{value}"')
    return value


def matches(selector: Selector, labels: Mapping[str, str] | None) -> bool:
    labels = labels or {}
    return all(r.matches(labels) for r in selector)


def from_label_selector(spec: Mapping[str, Any] | None) -> Selector | None:
    """A structured ``LabelSelector`` (matchLabels/matchExpressions); ``None`` for a null selector."""
    if spec is None:
        return None
    reqs = [Requirement(k, "=", (str(v),)) for k, v in (spec.get("matchLabels") or {}).items()]
    ops = {"In": "in", "NotIn": "notin", "Exists": "exists", "DoesNotExist": "!"}
    for expr in spec.get("matchExpressions") or []:
        op = ops.get(expr.get("operator", ""))
        if op is None:
            raise bad_request(f"{expr.get('operator')!r} is not a valid label selector operator")
        reqs.append(Requirement(expr["key"], op, tuple(expr.get("values") or ())))
    return tuple(reqs)


# Field selectors -----------------------------------------------------------------------------

FieldGetter = Callable[[Mapping[str, Any]], str]


def _path(*keys: str) -> FieldGetter:
    def get(obj: Mapping[str, Any]) -> str:
        cur: Any = obj
        for k in keys:
            if not isinstance(cur, Mapping):
                return ""
            cur = cur.get(k)
        if cur is None:
            return ""
        if isinstance(cur, bool):
            return "true" if cur else "false"
        return str(cur)

    return get


_COMMON: dict[str, FieldGetter] = {
    "metadata.name": _path("metadata", "name"),
    "metadata.namespace": _path("metadata", "namespace"),
}

# The fields each resource supports (as registered by the real server); others answer 400.
_EXTRA: dict[tuple[str, str], dict[str, FieldGetter]] = {
    ("", "pods"): {
        f: _path(*f.split("."))
        for f in (
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        )
    },
    ("", "events"): {
        f: _path(*f.split("."))
        for f in (
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type",
        )
    },
    ("events.k8s.io", "events"): {
        f: _path(*f.split("."))
        for f in (
            "regarding.kind",
            "regarding.namespace",
            "regarding.name",
            "regarding.uid",
            "reason",
            "type",
        )
    },
    ("", "namespaces"): {"status.phase": _path("status", "phase")},
    ("", "secrets"): {"type": _path("type")},
    ("", "nodes"): {"spec.unschedulable": _path("spec", "unschedulable")},
}
_EXTRA[("", "pods")]["spec.hostNetwork"] = lambda o: (
    "true" if (o.get("spec") or {}).get("hostNetwork") else "false"
)


@dataclass(frozen=True)
class FieldRequirement:
    getter: FieldGetter
    negate: bool
    value: str

    def matches(self, obj: Mapping[str, Any]) -> bool:
        return (self.getter(obj) == self.value) != self.negate


FieldSelector = tuple[FieldRequirement, ...]


def parse_field_selector(text: str | None, group: str, plural: str) -> FieldSelector:
    if not text or not text.strip():
        return ()
    fields = dict(_COMMON)
    fields.update(_EXTRA.get((group, plural), {}))
    reqs = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        m = re.match(r"^([^=!]+)(==|!=|=)(.*)$", part)
        if not m:
            raise bad_request(f"invalid selector: '{text}'; can't understand '{part}'")
        name, op, value = m.group(1).strip(), m.group(2), m.group(3).strip()
        getter = fields.get(name)
        if getter is None:
            raise bad_request(f"field label not supported: {name}")
        reqs.append(FieldRequirement(getter, op == "!=", value))
    return tuple(reqs)


def fields_match(selector: FieldSelector, obj: Mapping[str, Any]) -> bool:
    return all(r.matches(obj) for r in selector)
