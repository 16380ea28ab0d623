"""The Backups service: `backups.create` (what `mldeck backup` calls) and the daily backups it keeps.

A backup is taken on the writer thread (core.backups.snapshot), so it is the store as of one commit
even while runs are being ingested; checking and naming the copy happen off that thread.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

from mldeck.agent.service import Context, rpc
from mldeck.core import backups
from mldeck.core.errors import Invalid
from mldeck.core.protocol import Params

log = logging.getLogger("mldeck.backups")

CHECK_S = 3600.0
"""How often the agent looks whether a daily backup is due."""
FIRST_CHECK_S = 1.0


class BackupParams(Params):
    to: str | None = None
    """A folder on the agent's host (absolute); the home's backups/ by default."""


class Backups:
    """Consistent copies of the store on request, and the newest `[store] backups` daily ones."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.folder = backups.backup_dir(ctx.layout.home)
        self._one_at_a_time = asyncio.Lock()

    async def start(self) -> None:
        if self.ctx.config.store.backups:
            self.ctx.tasks.every(CHECK_S, self.daily, "backups", first=FIRST_CHECK_S)

    @rpc("backups.create")
    async def create(self, p: BackupParams) -> dict[str, Any]:
        folder = Path(p.to) if p.to else self.folder
        if not folder.is_absolute():
            raise Invalid(f"the backup folder must be an absolute path on the agent's host, not {p.to!r}")
        return await self.backup(folder, backups.MANUAL)

    async def backup(self, folder: Path, kind: str) -> dict[str, Any]:
        """Copy the store into folder as a backup of this kind; its path, size and rows per table."""
        async with self._one_at_a_time:
            began = time.time()
            try:
                await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=True)
            except OSError as exc:
                raise Invalid(f"cannot make the backup folder {folder}: {exc.strerror}") from None
            target = folder / backups.backup_name(kind, began)
            staging = folder / f".{target.name}.partial"
            try:
                await self.ctx.db(backups.snapshot, self.ctx.store, staging)
            except BaseException:
                backups.discard(staging)
                raise
            counts = await asyncio.to_thread(backups.seal, staging, target,
                                             self.ctx.config.store.duckdb_settings())
            size = target.stat().st_size
        log.info("backup %s: %.1f MiB in %.1f s", target, size / 2**20, time.time() - began)
        return {"path": str(target), "bytes": size, "tables": counts, "took_s": time.time() - began}

    async def daily(self) -> None:
        """Make the day's backup once the newest is a day old, and keep the newest `[store] backups`."""
        if await asyncio.to_thread(backups.daily_due, self.folder, time.time()):
            await self.backup(self.folder, backups.DAILY)
        for old in await asyncio.to_thread(backups.prune_daily, self.folder, self.ctx.config.store.backups):
            log.info("removed the daily backup %s (keeping the newest %d)", old.name,
                     self.ctx.config.store.backups)
