"""Fire-and-forget tasks of the emulator's actors (controllers, kubelet), all stopped together."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any


class Background:
    """Keeps a reference to each task (the loop holds only weak ones) until it finishes."""

    def __init__(self) -> None:
        self.tasks: set[asyncio.Task[None]] = set()

    def spawn(self, coro_fn: Callable[[], Any]) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro_fn())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def stop(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
