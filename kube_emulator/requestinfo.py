"""What a request asks for, in kube-apiserver's terms (apiserver ``endpoints/request/requestinfo.go``).

Parsed from the path, method and query alone, before routing, exactly as the real server does it,
so authorization sees the same attributes: a path that is not under ``/api/v1/...`` or
``/apis/GROUP/VERSION/...`` is a non-resource request (``/api``, ``/apis/apps/v1`` included); a GET
without a name is a list or (``watch`` set) a watch; a list or watch whose ``fieldSelector`` requires
``metadata.name`` to equal a valid name is a request for that name (since 1.11); a DELETE without a name is a
deletecollection; ``GET /api/v1/namespaces/NAME`` is in namespace NAME.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

_SPECIAL_VERBS = ("proxy", "watch")
_NAMESPACE_SUBRESOURCES = ("status", "finalize")
_METHOD_VERBS = {"POST": "create", "GET": "get", "HEAD": "get", "PUT": "update", "PATCH": "patch"}
_METHOD_VERBS["DELETE"] = "delete"


@dataclass(frozen=True)
class RequestInfo:
    is_resource: bool
    path: str
    verb: str
    api_group: str = ""
    api_version: str = ""
    namespace: str = ""
    resource: str = ""
    subresource: str = ""
    name: str = ""


def _valid_path_segment(name: str) -> bool:
    return name not in (".", "..") and "/" not in name and "%" not in name


def _exact_name(field_selector: str) -> str | None:
    """The value ``metadata.name`` must equal under this selector, if it requires one."""
    for term in field_selector.split(","):
        term = term.strip()
        for op in ("==", "="):
            key, sep, value = term.partition(op)
            if sep and not key.endswith("!") and key.strip() == "metadata.name":
                return value.strip()
    return None


def _watching(values: list[str]) -> bool:
    # The real server decodes ``watch`` as a Go bool; anything else but false/0 also counts as a watch.
    return bool(values) and values[0].lower() not in ("false", "0", "f")


def parse(method: str, path: str, query: Mapping[str, str] | None = None) -> RequestInfo:
    query = query or {}
    parts = [p for p in path.strip("/").split("/")] if path.strip("/") else []
    non_resource = RequestInfo(False, path, method.lower())
    if len(parts) < 3 or parts[0] not in ("api", "apis"):
        return non_resource
    prefix, parts = parts[0], parts[1:]
    group = ""
    if prefix == "apis":
        if len(parts) < 3:
            return non_resource
        group, parts = parts[0], parts[1:]
    version, parts = parts[0], parts[1:]
    if parts[0] in _SPECIAL_VERBS:
        if len(parts) < 2:
            return non_resource  # the real server fails such a request; nothing serves it here either
        verb, parts = parts[0], parts[1:]
    else:
        verb = _METHOD_VERBS.get(method.upper(), "")
    namespace = ""
    if parts[0] == "namespaces" and len(parts) > 1:
        namespace = parts[1]
        if len(parts) > 2 and parts[2] not in _NAMESPACE_SUBRESOURCES:
            parts = parts[2:]
    resource = parts[0]
    name = parts[1] if len(parts) >= 2 else ""
    subresource = parts[2] if len(parts) >= 3 and verb != "proxy" else ""
    if not name and verb == "get":
        verb = "watch" if _watching([query["watch"]] if "watch" in query else []) else "list"
        selected = _exact_name(query.get("fieldSelector", ""))
        if selected and _valid_path_segment(selected):
            name = selected
    if not name and verb == "delete":
        verb = "deletecollection"
    return RequestInfo(True, path, verb, group, version, namespace, resource, subresource, name)
