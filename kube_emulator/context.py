"""Per-request context: who is calling, dry run, and the warnings to send back."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any


@dataclass(frozen=True)
class UserInfo:
    username: str
    groups: tuple[str, ...] = ("system:authenticated",)
    uid: str = ""

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"username": self.username, "groups": list(self.groups)}
        if self.uid:
            body["uid"] = self.uid
        return body


ADMIN = UserInfo("kubernetes-admin", ("kubeadm:cluster-admins", "system:authenticated"))
NAMESPACE_CONTROLLER = UserInfo(
    "system:serviceaccount:kube-system:namespace-controller",
    ("system:serviceaccounts", "system:serviceaccounts:kube-system", "system:authenticated"),
)
GARBAGE_COLLECTOR = UserInfo(
    "system:serviceaccount:kube-system:generic-garbage-collector",
    ("system:serviceaccounts", "system:serviceaccounts:kube-system", "system:authenticated"),
)
SCHEDULER = UserInfo("system:kube-scheduler", ("system:authenticated",))


def node_user(node: str) -> UserInfo:
    return UserInfo(f"system:node:{node}", ("system:nodes", "system:authenticated"))


@dataclass
class RequestContext:
    user: UserInfo = ADMIN
    dry_run: bool = False
    warnings: list[str] = field(default_factory=list)


def now() -> datetime:
    return datetime.now(UTC)


def rfc3339(moment: datetime | None = None) -> str:
    return (moment or now()).strftime("%Y-%m-%dT%H:%M:%SZ")
