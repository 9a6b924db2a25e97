"""Lease-based leader election on coordination.k8s.io/v1 (controller-runtime's timings and rules).

Only the release and reconcile loops are leader-only. While leading, the elector runs the given
coroutine as a task; on losing the lease (renew deadline passed, or another holder seen) it cancels
that task at once. On graceful shutdown it releases the Lease (holderIdentity cleared,
leaseDurationSeconds=1) so a standby takes over without waiting for expiry.

Rules, as client-go's leaderelection package applies them:
- a Lease held by someone else is taken over only when it has not changed for its
  leaseDurationSeconds, measured on *this* process's monotonic clock from the moment we first saw
  its current contents (never by comparing renewTime with our wall clock: robust to clock skew);
- a Lease naming this identity is ours at once (a restart with the same identity);
- a leader renews every retry_period with a resourceVersion-checked update and steps down when no
  renewal has succeeded for renew_deadline (< lease_duration, so it stops before anyone may take over).

The Lease is read and written as plain JSON through CustomObjectsApi rather than CoordinationV1Api
models: the typed client serialises datetimes with `isoformat()`, which drops the fraction when the
microseconds are 0, and kube-apiserver's MicroTime parser then rejects the timestamp.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from kubernetes.aio import client as k8s

logger = logging.getLogger(__name__)

GROUP = "coordination.k8s.io"
VERSION = "v1"
PLURAL = "leases"


def micro_time(moment: datetime) -> str:
    """Kubernetes MicroTime: RFC 3339 UTC with exactly six fractional digits."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class _Observed:
    """What we last read or wrote, and when (loop time) its contents last changed."""

    holder: str
    duration: float
    transitions: int
    acquire_time: str | None
    renew_time: str | None
    resource_version: str | None
    body: dict[str, Any]

    def same_record(self, other: _Observed) -> bool:
        # The election record, not the resourceVersion: client-go compares the record's fields.
        return (self.holder, self.duration, self.transitions, self.acquire_time, self.renew_time) == (
            other.holder,
            other.duration,
            other.transitions,
            other.acquire_time,
            other.renew_time,
        )

    @classmethod
    def of(cls, body: dict[str, Any]) -> _Observed:
        spec = body.get("spec") or {}
        duration = spec.get("leaseDurationSeconds")
        return cls(
            holder=spec.get("holderIdentity") or "",
            duration=float(duration) if isinstance(duration, int | float) and duration > 0 else 0.0,
            transitions=int(spec.get("leaseTransitions") or 0),
            acquire_time=spec.get("acquireTime"),
            renew_time=spec.get("renewTime"),
            resource_version=(body.get("metadata") or {}).get("resourceVersion"),
            body=body,
        )


class LeadershipLost(Exception):
    """Another holder owns the Lease now."""


class LeaseElector:
    def __init__(
        self,
        api: k8s.ApiClient,
        *,
        namespace: str,
        name: str,
        identity: str,
        lease_duration: timedelta = timedelta(seconds=15),
        renew_deadline: timedelta = timedelta(seconds=10),
        retry_period: timedelta = timedelta(seconds=2),
        on_change: Callable[[bool], None] | None = None,
        release_on_cancel: bool = True,
    ) -> None:
        """`release_on_cancel=False` leaves the Lease to expire on shutdown (controller-runtime's
        LeaderElectionReleaseOnCancel=false; also how tests simulate a killed process)."""
        if not identity:
            raise ValueError("leader election needs a non-empty identity")
        if not lease_duration > renew_deadline > retry_period > timedelta(0):
            raise ValueError(
                "leader election timings need lease_duration > renew_deadline > retry_period > 0"
            )
        self.api = api
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.lease_duration = lease_duration
        self.renew_deadline = renew_deadline
        self.retry_period = retry_period
        self.on_change = on_change
        self.release_on_cancel = release_on_cancel
        self._custom = k8s.CustomObjectsApi(api)
        self._leader = False
        self._observed: _Observed | None = None
        self._observed_at = 0.0  # loop time when the observed record last changed
        self._sent_at = 0.0  # loop time when the last Lease write was sent

    @property
    def is_leader(self) -> bool:
        return self._leader

    def _set_leader(self, leader: bool) -> None:
        if leader == self._leader:
            return
        self._leader = leader
        logger.info(
            "%s leadership of Lease %s/%s",
            "acquired" if leader else "lost",
            self.namespace,
            self.name,
            extra={"identity": self.identity},
        )
        if self.on_change is not None:
            try:
                self.on_change(leader)
            except Exception:  # a metrics callback must not break the election
                logger.exception("leader on_change callback failed")

    # -- API ------------------------------------------------------------------------------------------

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    def _observe(self, body: dict[str, Any]) -> _Observed:
        # Called when the response has arrived: for a standby judging someone else's Lease, the later
        # the observation time, the more conservative the expiry.
        seen = _Observed.of(body)
        if self._observed is None or not self._observed.same_record(seen):
            self._observed_at = self._now()
        self._observed = seen
        return seen

    def _record(self, previous: _Observed | None, *, release: bool = False) -> dict[str, Any]:
        now = micro_time(datetime.now(UTC))
        if release:
            return {
                "leaseDurationSeconds": 1,
                "acquireTime": now,
                "renewTime": now,
                "leaseTransitions": previous.transitions if previous else 0,
            }
        ours = previous is not None and previous.holder == self.identity
        return {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": max(1, round(self.lease_duration.total_seconds())),
            "acquireTime": previous.acquire_time if ours and previous and previous.acquire_time else now,
            "renewTime": now,
            "leaseTransitions": (previous.transitions if previous else 0)
            + (0 if ours or previous is None else 1),
        }

    async def _get(self) -> dict[str, Any] | None:
        try:
            body = cast(
                dict[str, Any],
                await self._custom.get_namespaced_custom_object(
                    GROUP, VERSION, self.namespace, PLURAL, self.name
                ),
            )
        except k8s.ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return body

    async def _create(self) -> bool:
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "Lease",
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": self._record(None),
        }
        self._sent_at = self._now()
        try:
            created = cast(
                dict[str, Any],
                await self._custom.create_namespaced_custom_object(
                    GROUP, VERSION, self.namespace, PLURAL, body
                ),
            )
        except k8s.ApiException as exc:
            if exc.status == 409:  # someone else created it first
                return False
            raise
        self._observe(created)
        return True

    async def _update(self, current: _Observed, spec: dict[str, Any]) -> bool:
        """resourceVersion-checked update; False on a conflict or a vanished Lease."""
        body = dict(current.body)
        metadata = current.body.get("metadata") or {}
        body["metadata"] = {**metadata, "resourceVersion": current.resource_version}
        old_spec = current.body.get("spec") or {}
        body["spec"] = {**{k: v for k, v in old_spec.items() if k not in ("holderIdentity",)}, **spec}
        self._sent_at = self._now()
        try:
            updated = cast(
                dict[str, Any],
                await self._custom.replace_namespaced_custom_object(
                    GROUP, VERSION, self.namespace, PLURAL, self.name, body
                ),
            )
        except k8s.ApiException as exc:
            if exc.status in (404, 409):
                return False
            raise
        self._observe(updated)
        return True

    async def _try_acquire_or_renew(self) -> bool:
        """One attempt, like client-go's tryAcquireOrRenew. Raises LeadershipLost when we were the
        leader and the Lease names someone else who holds it validly."""
        body = await self._get()
        if body is None:
            return await self._create()
        seen = self._observe(body)
        if seen.holder and seen.holder != self.identity:
            valid = self._observed_at + seen.duration > self._now()
            if self._leader:
                raise LeadershipLost(f"Lease {self.namespace}/{self.name} is now held by {seen.holder!r}")
            if valid:
                return False
        return await self._update(seen, self._record(seen))

    async def _renew(self) -> bool:
        """A leader's renewal: an update on the resourceVersion we hold (no read); on a conflict,
        read and decide again."""
        current = self._observed
        if (
            current is not None
            and current.holder == self.identity
            and await self._update(current, self._record(current))
        ):
            return True
        return await self._try_acquire_or_renew()

    async def _release(self) -> None:
        current = self._observed
        if current is None or current.holder != self.identity:
            return
        try:
            async with asyncio.timeout(max(1.0, self.retry_period.total_seconds())):
                if not await self._update(current, self._record(current, release=True)):
                    body = await self._get()  # our cached resourceVersion is stale: once more
                    if body is None:
                        return
                    fresh = self._observe(body)
                    if fresh.holder != self.identity:
                        return
                    await self._update(fresh, self._record(fresh, release=True))
        except Exception as exc:  # shutting down anyway: the Lease then expires on its own
            logger.warning("could not release Lease %s/%s: %s", self.namespace, self.name, exc)
        else:
            logger.info("released Lease %s/%s", self.namespace, self.name)

    # -- loops ---------------------------------------------------------------------------------------

    def _pause(self) -> float:
        # client-go's JitterUntil(retryPeriod, 1.2): standbys do not poll in lock-step.
        return self.retry_period.total_seconds() * (1 + 0.2 * random.random())

    async def _acquire(self) -> None:
        while True:
            try:
                async with asyncio.timeout(self.renew_deadline.total_seconds()):
                    if await self._try_acquire_or_renew():
                        return
            except (LeadershipLost, TimeoutError):
                pass
            except Exception as exc:
                logger.warning("leader election attempt failed: %s", exc)
            await asyncio.sleep(self._pause())

    async def _keep(self, lead_task: asyncio.Task[None]) -> None:
        """Renew until leadership is lost or the lead task ends."""
        last_renewed = self._sent_at  # the acquiring write
        while True:
            done, _ = await asyncio.wait({lead_task}, timeout=self.retry_period.total_seconds())
            if done:
                return
            deadline = last_renewed + self.renew_deadline.total_seconds()
            while True:
                attempt_started = self._now()
                remaining = deadline - attempt_started
                if remaining <= 0:
                    logger.warning(
                        "could not renew Lease %s/%s within %ss: stepping down",
                        self.namespace,
                        self.name,
                        self.renew_deadline.total_seconds(),
                    )
                    return
                try:
                    async with asyncio.timeout(remaining):
                        renewed = await self._renew()
                except LeadershipLost as exc:
                    logger.warning("%s: stepping down", exc)
                    return
                except TimeoutError:
                    renewed = False
                except Exception as exc:
                    logger.warning("renewing Lease %s/%s failed: %s", self.namespace, self.name, exc)
                    renewed = False
                if renewed:
                    # Measured from when the request left: the Lease's renewTime is no older than that.
                    last_renewed = attempt_started
                    break
                done, _ = await asyncio.wait(
                    {lead_task},
                    timeout=min(self.retry_period.total_seconds(), max(0.0, deadline - self._now())),
                )
                if done:
                    return

    async def run(self, lead: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Elect forever (until cancelled). Each time this process becomes leader, `lead()` runs as a
        task; it is cancelled when leadership is lost. If `lead()` raises, leadership is given up
        (and re-contested after retry_period). On cancellation the Lease is released if held.
        If `lead()` returns normally, leadership is given up the same way."""
        lead_task: asyncio.Task[None] | None = None
        try:
            while True:
                await self._acquire()
                self._set_leader(True)
                lead_task = asyncio.create_task(lead(), name=f"leader:{self.name}")
                await self._keep(lead_task)
                ended = lead_task.done()
                self._set_leader(False)
                await self._stop(lead_task)
                lead_task = None
                if ended:
                    # Let a standby lead now rather than after the lease expires.
                    await self._release()
                await asyncio.sleep(self._pause())
        finally:
            held = self._leader
            self._set_leader(False)
            if lead_task is not None:
                await self._stop(lead_task)
            if held and self.release_on_cancel:
                await self._release()

    @staticmethod
    async def _stop(task: asyncio.Task[None]) -> None:
        """Cancel the lead task and wait for it to finish (asyncio.wait: our own cancellation, if any,
        still propagates, while the task's CancelledError does not)."""
        task.cancel()
        await asyncio.wait({task})
        if not task.cancelled() and task.exception() is not None:
            logger.error("the leader-only task failed", exc_info=task.exception())
