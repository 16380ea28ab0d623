"""The StoreOps service: `runs.archive`, `runs.restore`, `runs.archived` and `store.compact`, and the
store's memory at rest.

Archiving moves finished runs' points into Parquet files under the home and out of the store
(core.archive); compacting rewrites the store into a fresh file to give the space back (core.compact).
Both write on the agent's writer thread, and one of them runs at a time. DuckDB keeps what it read or
wrote cached up to `[store] memory_limit`; once the store has been at rest a while, the cache above a
quarter of the limit is given back, so that an agent that ingested a backlog does not sit on it.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from typing import TYPE_CHECKING, Any

from mldeck.agent.service import Context, rpc
from mldeck.core import archive, compact
from mldeck.core.archive import ArchivedParams, ArchiveParams
from mldeck.core.errors import Refused
from mldeck.core.protocol import NoParams, RunRef

if TYPE_CHECKING:
    from mldeck.agent.ingest import Ingest

log = logging.getLogger("mldeck.storeops")

COMPACT_ROOM = 2.2
"""Free space a compaction needs beside the store, as a multiple of its size (a copy, and the new file)."""
REST_S = 5.0
"""Seconds without a line ingested after which the store is at rest (and its cache may be trimmed)."""
TRIM_ABOVE, TRIM_TO = 0.5, 0.25
"""At rest, a cache over TRIM_ABOVE of the memory limit is trimmed to TRIM_TO of it."""
TRIM_DRAIN_S = 1.0
"""How long a trim waits for the store work under way (new work waiting meanwhile) before it gives up."""


class StoreOps:
    """Archive and restore of runs, and compaction of the store."""

    def __init__(self, ctx: Context, ingest: Ingest) -> None:
        self.ctx = ctx
        self.ingest = ingest
        self.home = ctx.layout.home
        self._one_at_a_time = asyncio.Lock()
        self.trims = 0
        self.cache = (0, 0)
        """DuckDB's cache in use and its limit, bytes, as the last tick read them."""
        self._lines = -1

    async def start(self) -> None:
        self.cache = await self.ctx.read(self.ctx.store.memory)
        self.ctx.tasks.every(REST_S, self.trim_at_rest, "store-trim")

    async def trim_at_rest(self) -> None:
        """Give back the cache over TRIM_ABOVE of the limit once ingest has rested for a whole tick."""
        lines, self._lines = self._lines, self.ingest.rows_committed
        used, limit = self.cache = await self.ctx.read(self.ctx.store.memory)
        if lines != self._lines or used <= limit * TRIM_ABOVE:
            return
        after = await self.ctx.alone(self.ctx.store.trim_cache, int(limit * TRIM_TO), drain_s=TRIM_DRAIN_S)
        if after is not None:
            self.cache = (after, limit)
            self.trims += 1
            log.info("store at rest: cache trimmed from %d to %d MiB", used >> 20, after >> 20)

    def memory(self) -> dict[str, int]:
        """What `agent status` shows of the store's cache, as the last tick saw it (no query per status)."""
        return {"cache_bytes": self.cache[0], "limit_bytes": self.cache[1], "trims": self.trims}

    @rpc("runs.archive")
    async def archive(self, p: ArchiveParams) -> dict[str, Any]:
        cutoff = time.time() - p.before_s
        plan = await self.ctx.read(archive.plan, self.ctx.store, cutoff, p.experiment, p.status)
        out: dict[str, Any] = {"dry_run": p.dry_run, "kept": plan.kept, "folder": str(self.home / "archive")}
        if p.dry_run:
            points = sum(n for _, n in plan.runs)
            return {**out, "runs": [r for r, _ in plan.runs], "points": points, "bytes": 0}
        moved: list[dict[str, Any]] = []
        async with self._one_at_a_time:
            for batch in plan.batches():
                moved += await self.ctx.db(archive.archive_batch, self.ctx.store, self.home, batch,
                                           time.time())
            await self.ctx.db(self.ctx.store.show_archive)
        left = len(plan.runs) - len(moved)
        if left:
            out["kept"] = {**plan.kept, "it changed while the archive ran": left}
        points, size = sum(r["points"] for r in moved), sum(r["bytes"] for r in moved)
        if moved:
            log.info("archived %d runs (%d points, %d bytes of Parquet)", len(moved), points, size)
        return {**out, "runs": [r["run_id"] for r in moved], "points": points, "bytes": size}

    @rpc("runs.archived")
    async def archived(self, p: ArchivedParams) -> list[dict[str, Any]]:
        runs = await self.ctx.read(archive.list_archived, self.ctx.store, p.experiment, p.limit)
        return [self._where(run) for run in runs]

    async def archived_run(self, run_id: str) -> dict[str, Any] | None:
        """The archived run of this id as runs.archived shows it; None when it is not archived."""
        run = await self.ctx.read(archive.archived_run, self.ctx.store, run_id)
        return None if run is None else self._where(run)

    def _where(self, run: dict[str, Any]) -> dict[str, Any]:
        run["archived"]["path"] = str(self.home / run["archived"]["path"])
        return run

    @rpc("runs.restore")
    async def restore(self, p: RunRef) -> dict[str, Any]:
        async with self._one_at_a_time:
            path, points = await self.ctx.db(archive.bring_back, self.ctx.store, self.home, p.run_id)
        log.info("restored run %s (%d points) from %s", p.run_id, points, path)
        return {"run_id": p.run_id, "points": points, "path": str(path)}

    @rpc("store.compact")
    async def compact(self, _: NoParams) -> dict[str, Any]:
        size = await asyncio.to_thread(compact.store_bytes, self.ctx.store.path)
        free = (await asyncio.to_thread(shutil.disk_usage, self.home)).free
        if free < size * COMPACT_ROOM:
            raise Refused(f"compacting needs about {size * COMPACT_ROOM / 2**20:,.0f} MiB free beside the "
                          f"store (a copy and the new file); {free / 2**20:,.0f} MiB are")
        async with self._one_at_a_time:
            result = await self.ctx.db(compact.compact, self.ctx.store)
        log.info("compacted the store: %d -> %d bytes in %.1f s", result["bytes_before"],
                 result["bytes_after"], result["took_s"])
        return result
