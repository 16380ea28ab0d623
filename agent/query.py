"""The `query` method: read-only SQL for power users."""

from __future__ import annotations

from typing import Any

import duckdb

from mldeck.agent.service import Context, rpc
from mldeck.core.errors import Invalid
from mldeck.core.protocol import QueryParams


class Query:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    @rpc("query")
    async def query(self, p: QueryParams) -> dict[str, Any]:
        try:
            return await self.ctx.read(self.ctx.store.read_only_query, p.sql, p.limit)
        except duckdb.Error as exc:
            raise Invalid(f"query failed: {str(exc).splitlines()[0]}") from None
