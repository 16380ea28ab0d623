"""The agent's background work: one primitive for every loop, so no failure ends a loop or goes unseen.

A periodic task schedules its next tick when the last one ends (as Dolphie polls), so a slow tick never
piles up behind itself. A tick or a task that fails is logged once per distinct error, counted, and
shown in `agent status`; a periodic task goes on with its next tick.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("mldeck.agent")


@dataclass
class Failure:
    """How often one task failed, and the last error it hit."""

    count: int
    last: str
    last_at: float


class Tasks:
    """Owns every background task of the agent: starts them, counts their failures, stops them."""

    def __init__(self) -> None:
        self._tasks: list[asyncio.Task[Any]] = []
        self.failures: dict[str, Failure] = {}

    def failed(self, name: str, exc: BaseException) -> None:
        """Count one failure of `name`; log it only when it differs from the last one."""
        text = f"{type(exc).__name__}: {exc}"
        seen = self.failures.get(name)
        if seen is None or seen.last != text:
            log.error("%s failed: %s", name, text, exc_info=exc)
        self.failures[name] = Failure((seen.count if seen else 0) + 1, text, time.time())

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """A one-off or long-running task; if it dies of an error, that is counted and shown."""

        async def guarded() -> None:
            try:
                await coro
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.failed(name, exc)

        task = asyncio.create_task(guarded(), name=name)
        self._tasks.append(task)
        task.add_done_callback(self._forget)
        return task

    def every(
        self, seconds: float | Callable[[], float], tick: Callable[[], Awaitable[Any]], name: str,
        *, first: float | None = None, from_start: bool = False,
    ) -> asyncio.Task[Any]:
        """Call `tick` `seconds` after the last call ended (first after `first`, default `seconds`).

        With `from_start`, `seconds` counts from when the last call began, so ticks keep a steady
        rate (a sampler's); a call that takes longer is followed at once, never overlapped.
        """
        interval = seconds if callable(seconds) else (lambda: seconds)

        async def loop() -> None:
            clock = asyncio.get_running_loop().time
            await asyncio.sleep(interval() if first is None else first)
            while True:
                began = clock()
                try:
                    await tick()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    self.failed(name, exc)
                await asyncio.sleep(max(0.0, interval() - (clock() - began)) if from_start else interval())

        return self.spawn(loop(), name)

    def _forget(self, task: asyncio.Task[Any]) -> None:
        if task in self._tasks:
            self._tasks.remove(task)

    def status(self) -> dict[str, dict[str, Any]]:
        return {name: {"count": f.count, "last": f.last, "last_at": f.last_at}
                for name, f in self.failures.items()}

    async def stop(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
