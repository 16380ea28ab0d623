"""Every cost.* method: what this host, its runs and its served models cost, live jobs included."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from mldeck.agent.runs import no_run
from mldeck.agent.service import Context, rpc
from mldeck.core import cost as costs
from mldeck.core.cost import CostParams
from mldeck.core.protocol import RunRef

if TYPE_CHECKING:
    from mldeck.agent.jobs import Jobs

RUN_COST_KEYS = ("cost_usd", "gpu_seconds", "cpu_seconds", "peak_gpu_mem", "held_gpu_mem", "price_per_hour")


class Cost:
    """Reads of the stored costs, with each running job's cost so far taken from the job runner."""

    def __init__(self, ctx: Context, jobs: Jobs) -> None:
        self.ctx = ctx
        self.store = ctx.store
        self.jobs = jobs

    @rpc("cost.host")
    async def host(self, p: CostParams) -> dict[str, Any]:
        now = time.time()
        first = await self.ctx.read(costs.first_sample_ts, self.store)
        since = max(now - p.since_s, first or now)
        held = await self.ctx.read(costs.held_gpu_seconds, self.store, since, now)
        window = await self.ctx.read(costs.cost_in_window, self.store, since)
        gpu_count, prices = self.jobs.gpu_count, self.jobs.prices
        idle = max(0.0, gpu_count * (now - since) - held)
        live = self.jobs.live_costs().values()
        return {
            **prices.as_dict(), "gpu_count": gpu_count, "gpus_busy": self.jobs.busy_gpus(),
            "running_jobs": len(live), "burn_per_hour": sum(c["price_per_hour"] for c in live),
            "host_per_hour": prices.gpu_per_hour * gpu_count, "since": since, "until": now,
            "runs": window["runs"], "runs_cost_usd": window["cost_usd"],
            "live_cost_usd": sum(c["cost_usd"] for c in live),
            "gpu_seconds_held": held, "idle_gpu_seconds": idle,
            "idle_cost_usd": idle / 3600 * prices.gpu_per_hour,
        }

    @rpc("cost.runs")
    async def runs(self, p: CostParams) -> list[dict[str, Any]]:
        rows = await self.ctx.read(costs.runs_by_cost, self.store, time.time() - p.since_s, p.limit)
        live = self.jobs.live_costs()
        for row in rows:
            row.update(live.get(row["run_id"], {}))
        return rows

    @rpc("cost.run")
    async def run(self, p: RunRef) -> dict[str, Any]:
        run = await self.ctx.read(self.store.get_run, p.run_id)
        if run is None:
            raise no_run(p.run_id)
        out = {"run_id": p.run_id, "status": run["status"], **{k: run.get(k) for k in RUN_COST_KEYS}}
        out.update(self.jobs.live_costs().get(p.run_id, {}))
        return out

    @rpc("cost.models")
    async def models(self, p: CostParams) -> list[dict[str, Any]]:
        since = time.time() - p.since_s
        return await self.ctx.read(costs.serving_cost_by_model, self.store, since, self.jobs.prices)
