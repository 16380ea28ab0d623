"""Every runs.* method: list, table, get, metrics, checkpoints."""

from __future__ import annotations

import asyncio
from typing import Any

from mldeck.agent.service import Context, rpc
from mldeck.core.errors import NotFound
from mldeck.core.protocol import RunRef, RunsListParams, RunsMetricsParams, RunsTableParams
from mldeck.core.runlog import list_checkpoints


def no_run(run_id: str) -> NotFound:
    return NotFound(f"no run {run_id!r} on this host (`mldeck runs ls` lists them)")


class Runs:
    """Reads of runs and their metrics; launching and stopping are the job runner's, reached from here."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.store = ctx.store
        ctx.hub.declare("runs", "run.metrics", "run.event")

    async def get_run(self, run_id: str) -> dict[str, Any]:
        """The run's row, or NotFound in the words every runs.* method uses."""
        run = await self.ctx.read(self.store.get_run, run_id)
        if run is None:
            raise no_run(run_id)
        return run

    @rpc("runs.list")
    async def list(self, p: RunsListParams) -> list[dict[str, Any]]:
        runs = await self.ctx.read(self.store.list_runs, p.status, p.experiment, p.sweep_id, p.limit)
        latest = await self.ctx.read(self.store.latest_metrics, [r["run_id"] for r in runs])
        for r in runs:
            r["metrics"] = latest.get(r["run_id"], {})
        return runs

    @rpc("runs.table")
    async def table(self, p: RunsTableParams) -> dict[str, Any]:
        table, total, keys = await self.ctx.read(
            self.store.runs_table, p.offset, p.limit, p.status, p.experiment, p.columns, p.metrics
        )
        return {"columns": table.to_pydict(), "total": total, "offset": p.offset, "metrics": keys}

    @rpc("runs.get")
    async def get(self, p: RunRef) -> dict[str, Any]:
        run = await self.get_run(p.run_id)
        run["metrics"] = (await self.ctx.read(self.store.latest_metrics, [p.run_id])).get(p.run_id, {})
        run["dir"] = str(self.ctx.layout.runs / p.run_id)
        return run

    @rpc("runs.checkpoints")
    async def checkpoints(self, p: RunRef) -> dict[str, Any]:
        await self.get_run(p.run_id)
        run_dir = self.ctx.layout.runs / p.run_id  # a known run's id: created through check_name
        return {"run_id": p.run_id, "checkpoints": await asyncio.to_thread(list_checkpoints, run_dir)}

    @rpc("runs.metrics")
    async def metrics(self, p: RunsMetricsParams) -> dict[str, Any]:
        await self.get_run(p.run_id)
        series = await self.ctx.read(self.store.run_metrics, p.run_id, p.keys, p.max_points)
        return {"run_id": p.run_id, "series": series}
