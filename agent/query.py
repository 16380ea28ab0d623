"""The `query` method: read-only SQL for power users, in the store's sandbox (Store.read_only_query)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
from typing import Any

from mldeck.agent.service import Context, rpc
from mldeck.core import protocol
from mldeck.core.protocol import QueryParams

QUERY_THREADS = 2
RESULT_BYTES = protocol.MAX_MESSAGE - 2**20  # the rest of the reply fits in the last MiB


class Query:
    """User SQL on threads of its own: a slow query never delays the agent's own reads."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self._threads = concurrent.futures.ThreadPoolExecutor(QUERY_THREADS, thread_name_prefix="user-query")

    @rpc("query")
    async def query(self, p: QueryParams) -> dict[str, Any]:
        run = functools.partial(
            self.ctx.store.read_only_query, p.sql, p.limit, self.ctx.config.query.time_limit_s, RESULT_BYTES
        )
        return await self.ctx.on(self._threads, run)

    async def stop(self) -> None:
        """Cancel the queries still running, so that the store can close and the agent exit."""
        self.ctx.store.cancel_queries("the agent is stopping")
        await asyncio.to_thread(self._threads.shutdown, cancel_futures=True)
