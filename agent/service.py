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
from dataclasses import dataclass
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

    async def db(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run store work on the single writer thread: writes never race each other."""
        call = functools.partial(fn, *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(self.writer, call)

    async def read(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a read-only query off the writer thread, on its own cursor."""
        call = functools.partial(fn, *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(self.readers, call)


def rpc(method: str) -> Callable[[F], F]:
    """Name a service method as the RPC method `method` (the Dispatcher binds it)."""

    def mark(fn: F) -> F:
        fn.__rpc_method__ = method  # type: ignore[attr-defined]
        return fn

    return mark
