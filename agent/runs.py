"""Every runs.* method: list, table, get, metrics, checkpoints, and launch, stop, resume, logs."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mldeck.agent.service import Context, rpc
from mldeck.core import jobs as q
from mldeck.core.errors import NotFound
from mldeck.core.jobs import LaunchParams, LogsParams, StopParams
from mldeck.core.protocol import RunRef, RunsCompareParams, RunsListParams, RunsMetricsParams, RunsTableParams
from mldeck.core.runlog import by_name, list_checkpoints, named

if TYPE_CHECKING:
    from mldeck.agent.jobs import Jobs
    from mldeck.agent.storeops import StoreOps


def no_run(run_id: str) -> NotFound:
    return NotFound(f"no run {run_id!r} on this host (`mldeck runs ls` lists them)")


def points_by_name(event: dict[str, Any]) -> dict[str, Any]:
    """A run.metrics event for the wire, its NaN and infinite values by name."""
    return {**event, "value": by_name(event["value"])}


def read_log(path: Path, offset: int | None, max_bytes: int) -> tuple[str, int, int]:
    """Up to max_bytes of a log from offset (the tail when None): the text, the next offset, the size."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return "", 0, 0
    start = max(0, size - max_bytes) if offset is None else min(offset, size)
    with open(path, "rb") as fh:
        fh.seek(start)
        data = fh.read(max_bytes)
    return data.decode("utf-8", errors="replace"), start + len(data), size


class Runs:
    """Reads of runs and their metrics; launching, stopping and resuming go to the job runner."""

    def __init__(self, ctx: Context, jobs: Jobs, store_ops: StoreOps) -> None:
        self.ctx = ctx
        self.store = ctx.store
        self.jobs = jobs
        self.store_ops = store_ops
        ctx.hub.declare("runs", "run.metrics", "run.event")
        ctx.hub.wire_form("run.metrics", points_by_name)

    async def get_run(self, run_id: str) -> dict[str, Any]:
        """The run's row, or NotFound in the words every runs.* method uses."""
        run = await self.ctx.read(self.store.get_run, run_id)
        if run is None:
            raise await self.missing(run_id)
        return run

    async def missing(self, run_id: str) -> NotFound:
        """Why a run is not in the store: it is archived (and where), or there is no such run."""
        archived = await self.store_ops.archived_run(run_id)
        if archived is None:
            return no_run(run_id)
        return NotFound(f"run {run_id!r} is archived in {archived['archived']['path']}; "
                        f"`mldeck runs restore {run_id}` brings it back")

    @rpc("runs.list")
    async def list(self, p: RunsListParams) -> list[dict[str, Any]]:
        return await self.ctx.read(self.store.runs_page, p.status, p.experiment, p.sweep_id, p.limit)

    @rpc("runs.table")
    async def table(self, p: RunsTableParams) -> dict[str, Any]:
        table, total, keys = await self.ctx.read(
            self.store.runs_table, p.offset, p.limit, p.status, p.experiment, p.columns, p.metrics,
            query=p.query, sort=p.sort, descending=p.descending)
        columns = table.to_pydict()
        for key in keys:
            columns[f"m:{key}"] = by_name(columns[f"m:{key}"])
        return {"columns": columns, "total": total, "offset": p.offset, "metrics": keys}

    @rpc("runs.get")
    async def get(self, p: RunRef) -> dict[str, Any]:
        found = await self.ctx.read(self.store.get_runs, [p.run_id])
        if found:
            run = found[0]
            run["metrics"] = named(run["metrics"])
        else:  # an archived run says where it is
            run = await self.store_ops.archived_run(p.run_id)
            if run is None:
                raise no_run(p.run_id)
        run["dir"] = str(self.ctx.layout.runs / p.run_id)
        return run

    @rpc("runs.compare")
    async def compare(self, p: RunsCompareParams) -> dict[str, Any]:
        """Compare's read of several runs in one turn on a reader: their rows, latest metrics and curves."""
        runs, series = await self.ctx.read(self._compared, p.run_ids, p.keys, p.max_points)
        if missing := [r for r in p.run_ids if r not in series]:
            raise await self.missing(missing[0])
        for run in runs:
            run["metrics"] = named(run["metrics"])
            run["dir"] = str(self.ctx.layout.runs / run["run_id"])
        for curves in series.values():
            for curve in curves.values():
                curve["value"] = by_name(curve["value"])
        return {"runs": runs, "series": series}

    def _compared(self, run_ids: list[str], keys: list[str] | None,
                  max_points: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        runs = self.store.get_runs(list(dict.fromkeys(run_ids)))
        found = [r["run_id"] for r in runs]
        return runs, self.store.runs_metrics(found, keys, max_points)

    @rpc("runs.checkpoints")
    async def checkpoints(self, p: RunRef) -> dict[str, Any]:
        await self.get_run(p.run_id)
        run_dir = self.ctx.layout.runs / p.run_id  # a known run's id: created through check_name
        return {"run_id": p.run_id, "checkpoints": await asyncio.to_thread(list_checkpoints, run_dir)}

    @rpc("runs.metrics")
    async def metrics(self, p: RunsMetricsParams) -> dict[str, Any]:
        series = await self.ctx.read(self.store.run_metrics, p.run_id, p.keys, p.max_points)
        if not any(curve["step"] for curve in series.values()):
            await self.get_run(p.run_id)  # no points: NotFound if there is no such run either
        for curve in series.values():
            curve["value"] = by_name(curve["value"])
        return {"run_id": p.run_id, "series": series}

    @rpc("runs.launch")
    async def launch(self, p: LaunchParams) -> dict[str, Any]:
        run_id = await self.jobs.launch(p)
        job = await self.ctx.read(q.get_job, self.store, run_id)
        spec = job["spec"] if job else {}
        return {"run_id": run_id, "status": "queued", "dir": str(self.ctx.layout.run_dir(run_id)),
                "command": spec.get("command"), "dist": spec.get("dist")}

    @rpc("runs.stop")
    async def stop_run(self, p: StopParams) -> dict[str, Any]:
        return await self.jobs.stop_run(p.run_id, "requeue" if p.requeue else "stop", p.grace_s)

    @rpc("runs.resume")
    async def resume(self, p: RunRef) -> dict[str, Any]:
        return await self.jobs.resume(p.run_id)

    @rpc("runs.logs")
    async def logs(self, p: LogsParams) -> dict[str, Any]:
        run = await self.get_run(p.run_id)
        path = self.ctx.layout.run_dir(p.run_id) / "stdout.log"
        data, offset, size = await asyncio.to_thread(read_log, path, p.offset, p.max_bytes)
        done = not self.jobs.pending(p.run_id) and offset >= size
        return {"run_id": p.run_id, "data": data, "offset": offset, "size": size,
                "status": run["status"], "done": done}
