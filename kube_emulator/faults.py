"""Fault injection: error answers, latency and dropped watches on the API; failing webhook calls."""

from __future__ import annotations

import itertools
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from .errors import ApiError, bad_request


@dataclass
class Fault:
    id: int
    target: str  # "api" or "webhook"
    method: str = "*"
    path: str = ""  # regex searched in "path?query" (api)
    webhook: str = ""  # regex searched in the webhook name (webhook)
    status: int | None = None  # api: answer this code; webhook: 0 = unreachable, N = HTTP N
    latency: float = 0.0
    times: int | None = None  # None = until removed
    drop_watch: bool = False
    # On a watch request: answer 200 with one ERROR event carrying the status, the way
    # kube-apiserver reports an expired resourceVersion (410) to a watch; other requests as usual.
    watch_event: bool = False
    message: str = ""
    hits: int = field(default=0)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Faults:
    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self.faults: dict[int, Fault] = {}

    def add(self, spec: dict[str, Any]) -> Fault:
        target = spec.get("target", "api")
        if target not in ("api", "webhook"):
            raise bad_request("target must be 'api' or 'webhook'")
        fault = Fault(
            id=next(self._ids),
            target=target,
            method=str(spec.get("method") or "*").upper(),
            path=str(spec.get("path") or ""),
            webhook=str(spec.get("webhook") or ""),
            status=spec.get("status"),
            latency=float(spec.get("latency") or 0.0),
            times=spec.get("times"),
            drop_watch=bool(spec.get("drop_watch")),
            watch_event=bool(spec.get("watch_event")),
            message=str(spec.get("message") or ""),
        )
        for pattern in (fault.path, fault.webhook):
            try:
                re.compile(pattern)
            except re.error as exc:
                raise bad_request(f"bad regex {pattern!r}: {exc}") from exc
        if target == "webhook" and fault.status is None and not fault.latency:
            fault.status = 0
        self.faults[fault.id] = fault
        return fault

    def remove(self, fault_id: int) -> bool:
        return self.faults.pop(fault_id, None) is not None

    def clear(self) -> None:
        self.faults.clear()

    def _use(self, fault: Fault) -> None:
        fault.hits += 1
        if fault.times is not None:
            fault.times -= 1
            if fault.times <= 0:
                self.faults.pop(fault.id, None)

    def api_fault(self, method: str, target: str) -> Fault | None:
        """The first error/latency fault matching this request (consumes one of its ``times``)."""
        for fault in list(self.faults.values()):
            if fault.target != "api" or fault.drop_watch:
                continue
            if fault.method not in ("*", method):
                continue
            if fault.path and not re.search(fault.path, target):
                continue
            self._use(fault)
            return fault
        return None

    def watch_drop(self, target: str) -> Fault | None:
        for fault in list(self.faults.values()):
            if (
                fault.target == "api"
                and fault.drop_watch
                and fault.method in ("*", "GET")
                and (not fault.path or re.search(fault.path, target))
            ):
                self._use(fault)
                return fault
        return None

    def webhook_fault(self, name: str) -> Fault | None:
        for fault in list(self.faults.values()):
            if fault.target == "webhook" and (not fault.webhook or re.search(fault.webhook, name)):
                self._use(fault)
                return fault
        return None


def fault_error(fault: Fault) -> ApiError:
    code = int(fault.status or 500)
    headers = {"Retry-After": "1"} if code in (429, 503) else {}
    return ApiError(code, fault.message or f"injected fault {fault.id}", headers=headers)
