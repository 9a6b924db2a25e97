"""Polling with deadlines: tests wait for an outcome, never for a fixed time."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


async def eventually(
    probe: Callable[[], Awaitable[T]],
    check: Callable[[T], bool],
    *,
    within: float,
    what: str,
    interval: float = 0.1,
    diagnostics: Callable[[], str] | None = None,
) -> T:
    """Poll `probe` until `check(value)` holds; else fail saying what was expected and last seen."""
    deadline = time.monotonic() + within
    last: T | None = None
    error: BaseException | None = None
    while True:
        try:
            last = await probe()
            error = None
            if check(last):
                return last
        except (AssertionError, OSError, TimeoutError) as exc:
            error = exc
        if time.monotonic() >= deadline:
            break
        await asyncio.sleep(interval)
    seen = f"last error: {error!r}" if error is not None else f"last value: {last!r}"
    extra = f"\n{diagnostics()}" if diagnostics else ""
    raise AssertionError(f"timed out after {within}s waiting for {what}; {seen}{extra}")


async def stays(
    probe: Callable[[], Awaitable[T]],
    check: Callable[[T], bool],
    *,
    duration: float,
    what: str,
    interval: float = 0.1,
    diagnostics: Callable[[], str] | None = None,
) -> T:
    """`check` holds on every poll for `duration` seconds (for "never happens" assertions)."""
    deadline = time.monotonic() + duration
    while True:
        value = await probe()
        if not check(value):
            extra = f"\n{diagnostics()}" if diagnostics else ""
            raise AssertionError(f"expected {what} to hold, but saw {value!r}{extra}")
        if time.monotonic() >= deadline:
            return value
        await asyncio.sleep(interval)
