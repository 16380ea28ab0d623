"""What an agent service is made of: the shared context it is given, and how its RPC methods are named.

A service is a plain class whose constructor takes a Context and the sibling services it uses; the
daemon builds them in one visible order (`agent/daemon.py`). A method becomes an RPC method by
`@rpc("noun.verb")`; its params type is the annotation of its first argument, and it may take the
calling Connection as a second. Errors are raised as `mldeck.core.errors` classes and mapped to
wire codes in one place, the Dispatcher. A service with work to do at start or stop defines
`async def start(self)` / `async def stop(self)`; the daemon calls them in order (stop in reverse).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from mldeck.core.config import AgentConfig
from mldeck.core.paths import Layout

if TYPE_CHECKING:
    import concurrent.futures

    from mldeck.agent.rpc import Hub
    from mldeck.agent.tasks import Tasks
    from mldeck.core.store import Store

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class Context:
    """What every service may use: the store and its two executors, the event hub, paths, config, tasks."""

    config: AgentConfig
    layout: Layout
    store: Store
    hub: Hub
    tasks: Tasks
    writer: concurrent.futures.Executor
    readers: concurrent.futures.Executor
    _open: asyncio.Event = field(default_factory=asyncio.Event, init=False, repr=False)
    """Cleared while store work must wait (the cache being trimmed)."""
    _busy: int = field(default=0, init=False, repr=False)
    _idle: asyncio.Event = field(default_factory=asyncio.Event, init=False, repr=False)

    def __post_init__(self) -> None:
        self._open.set()
        self._idle.set()

    async def db(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run store work on the single writer thread: writes never race each other."""
        return await self.on(self.writer, functools.partial(fn, *args, **kwargs))

    async def read(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a read-only query off the writer thread, on its own cursor."""
        return await self.on(self.readers, functools.partial(fn, *args, **kwargs))

    async def on(self, executor: concurrent.futures.Executor, call: Callable[[], T]) -> T:
        """Run store work on this executor, counted: work that must run alone waits until none is."""
        await self._open.wait()
        self._busy += 1
        self._idle.clear()
        try:
            return await asyncio.get_running_loop().run_in_executor(executor, call)
        finally:
            self._busy -= 1
            if not self._busy:
                self._idle.set()

    async def alone(self, fn: Callable[..., T], *args: Any, drain_s: float) -> T | None:
        """Run fn on the writer thread with no other store work beside it: what comes meanwhile waits, what
        is under way may end within drain_s. None, and nothing run, when it did not."""
        if not self._open.is_set():
            return None
        self._open.clear()
        try:
            await asyncio.wait_for(self._idle.wait(), drain_s)
        except TimeoutError:
            self._open.set()
            return None
        try:
            return await asyncio.get_running_loop().run_in_executor(self.writer, functools.partial(fn, *args))
        finally:
            self._open.set()


def rpc(method: str) -> Callable[[F], F]:
    """Name a service method as the RPC method `method` (the Dispatcher binds it)."""

    def mark(fn: F) -> F:
        fn.__rpc_method__ = method  # type: ignore[attr-defined]
        return fn

    return mark
