"""Sweeps: trials generated from a search space, run through the job queue, stopped early by rule.

The controller listens to `run.metrics` in-process; when a trial's objective is clearly worse
(median stopping rule, or ASHA at its rungs) it stops the trial through the job runner, and the
trial ends `pruned` with the rule's sentence as its reason. sweeps.register registers the best
trial through the registry. Publishes `sweeps` events {sweep_id, status}.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgspec

from mldeck.agent.service import Context, rpc
from mldeck.core import sweep as sw
from mldeck.core.errors import Conflict, Invalid, NotFound
from mldeck.core.jobs import LaunchParams
from mldeck.core.paths import new_run_id
from mldeck.core.runlog import TERMINAL
from mldeck.core.sweep import SweepCreateParams, SweepListParams, SweepRef, SweepRegisterParams

if TYPE_CHECKING:
    from mldeck.agent.jobs import Jobs
    from mldeck.agent.registry import Registry

log = logging.getLogger("mldeck.sweeps")


@dataclass
class SweepState:
    """What early stopping needs in memory: each trial's objective points and status."""

    sweep_id: str
    metric: str
    mode: str
    early_stop: str | None
    spec: dict[str, Any]
    status: dict[str, str] = field(default_factory=dict)
    history: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    asha: sw.AshaState | None = None


class Sweeps:
    """Every sweeps.* method, and the controller that stops clearly worse trials early."""

    def __init__(self, ctx: Context, jobs: Jobs, registry: Registry) -> None:
        self.ctx = ctx
        self.store = ctx.store
        self.jobs = jobs
        self.registry = registry
        self.active: dict[str, SweepState] = {}
        self.trial_of: dict[str, str] = {}
        self.stopping: set[str] = set()
        ctx.hub.declare("sweeps")
        ctx.hub.on("run.metrics", self.on_metrics)
        ctx.hub.on("runs", self.on_status)

    def _state(self, sweep: dict[str, Any]) -> SweepState:
        spec = sweep["spec"]
        state = SweepState(sweep["sweep_id"], sweep["metric"], sweep["mode"], sweep["early_stop"], spec)
        if state.early_stop == "asha":
            state.asha = sw.AshaState.new(
                spec["min_steps"], spec["reduction_factor"], spec["max_steps"], state.mode
            )
        return state

    async def start(self) -> None:
        """Pick up the sweeps that were running when the agent last stopped."""
        for sweep in await self.ctx.read(sw.list_sweeps, self.store, 1000, "running"):
            state = self._state(sweep)
            runs = await self.ctx.read(self.store.list_runs, None, None, sweep["sweep_id"], 100_000)
            for run in runs:
                state.status[run["run_id"]] = run["status"]
                self.trial_of[run["run_id"]] = state.sweep_id
            state.history = await self.ctx.read(
                sw.metric_history, self.store, list(state.status), state.metric
            )
            if state.asha:
                for run_id, points in state.history.items():
                    for step, value in points:
                        state.asha.report(run_id, step, value)
            self.active[state.sweep_id] = state
            await self._maybe_done(state)

    @rpc("sweeps.create")
    async def create(self, p: SweepCreateParams) -> dict[str, Any]:
        """Validate everything first, then write the sweep and queue its trials."""
        if not p.metric.strip():
            raise Invalid("metric must name the logged metric to optimize, e.g. val_loss")
        grid, rand = sw.parse_grid(p.grid), sw.parse_random(p.random)
        points = sw.trials(grid, rand, p.trials, p.seed)
        if len(points) > sw.MAX_TRIALS:
            raise Invalid(f"{len(points)} trials is too many for one sweep (at most {sw.MAX_TRIALS})")
        await self.jobs.check(p)
        sweep_id = "sweep-" + new_run_id()
        name = p.name or sweep_id
        spec = msgspec.to_builtins(p)
        sweep = {
            "sweep_id": sweep_id, "name": name, "experiment": p.experiment or name, "spec": spec,
            "metric": p.metric, "mode": p.mode, "early_stop": p.early_stop, "created_at": time.time(),
        }
        await self.ctx.db(sw.insert_sweep, self.store, sweep)
        state = self._state(sweep)
        self.active[sweep_id] = state
        run_ids = []
        for i, trial in enumerate(points):
            launch = LaunchParams(
                script=p.script, module=p.module, args=p.args, params={**p.params, **trial},
                gpus=p.gpus, amp=p.amp, cwd=p.cwd, env=p.env, name=f"{name}-{i}",
                experiment=sweep["experiment"], sweep_id=sweep_id,
            )
            run_id = await self.jobs.launch(launch)
            state.status[run_id] = "queued"
            self.trial_of[run_id] = sweep_id
            run_ids.append(run_id)
        self.ctx.hub.publish("sweeps", {"sweep_id": sweep_id, "status": "running", "trials": len(run_ids)})
        return {"sweep_id": sweep_id, "run_ids": run_ids, "trials": points}

    # early stopping -------------------------------------------------------------

    def on_metrics(self, data: dict[str, Any]) -> None:
        sweep_id = self.trial_of.get(data.get("run_id", ""))
        state = self.active.get(sweep_id or "")
        if state is None:
            return
        run_id = data["run_id"]
        points = [
            (int(s), float(v)) for k, s, v in zip(data["key"], data["step"], data["value"], strict=True)
            if k == state.metric and v is not None and not math.isnan(v)
        ]
        if not points:
            return
        history = state.history.setdefault(run_id, [])
        history.extend(points)
        if state.early_stop is None or run_id in self.stopping or state.status.get(run_id) != "running":
            return
        decision = sw.CONTINUE
        if state.asha is not None:
            for step, value in points:
                decision = state.asha.report(run_id, step, value)
                if decision.stop:
                    break
        else:
            others = [h for r, h in state.history.items() if r != run_id]
            decision = sw.median_rule(
                history, others, state.mode, state.spec["warmup_steps"], state.spec["min_trials"]
            )
        if decision.stop:
            self.stopping.add(run_id)
            log.info("sweep %s: stopping trial %s early: %s", state.sweep_id, run_id, decision.reason)
            self.ctx.tasks.spawn(self._stop_early(run_id, decision.reason), "sweep-early-stop")

    async def _stop_early(self, run_id: str, reason: str) -> None:
        """Stop the trial; it ends pruned, with the rule's sentence as its reason."""
        if self.jobs.pending(run_id):  # it may have ended since its last metrics
            await self.jobs.stop_run(run_id, "prune", reason=reason)

    def on_status(self, data: dict[str, Any]) -> None:
        sweep_id = self.trial_of.get(data.get("run_id", ""))
        state = self.active.get(sweep_id or "")
        if state is None or not data.get("managed"):
            return
        state.status[data["run_id"]] = data["status"]
        if data["status"] in TERMINAL:
            self.stopping.discard(data["run_id"])
            self.ctx.tasks.spawn(self._maybe_done(state), "sweep-done")

    async def _maybe_done(self, state: SweepState) -> None:
        if state.sweep_id not in self.active or not all(s in TERMINAL for s in state.status.values()):
            return
        del self.active[state.sweep_id]
        await self.ctx.db(sw.finish_sweep, self.store, state.sweep_id, time.time())
        self.ctx.hub.publish("sweeps", {"sweep_id": state.sweep_id, "status": "done"})

    @rpc("sweeps.show")
    async def show(self, p: SweepRef) -> dict[str, Any]:
        sweep = await self.ctx.read(sw.get_sweep, self.store, p.sweep_id)
        if sweep is None:
            raise NotFound(f"no sweep {p.sweep_id!r} on this host (`mldeck sweep ls` lists them)")
        trials = await self.ctx.read(sw.sweep_trials, self.store, p.sweep_id, sweep["metric"], sweep["mode"])
        return {**sweep, "trials": trials}

    @rpc("sweeps.list")
    async def list(self, p: SweepListParams) -> list[dict[str, Any]]:
        return await self.ctx.read(sw.list_sweeps, self.store, p.limit)

    @rpc("sweeps.stop")
    async def stop_sweep(self, p: SweepRef) -> dict[str, Any]:
        sweep = await self.show(p)
        stopped = []
        for trial in sweep["trials"]:
            if self.jobs.pending(trial["run_id"]):
                await self.jobs.stop_run(trial["run_id"], reason="sweep stopped")
                stopped.append(trial["run_id"])
        return {"sweep_id": p.sweep_id, "stopped": stopped}

    @rpc("sweeps.register")
    async def register(self, p: SweepRegisterParams) -> dict[str, Any]:
        """Register the finished sweep's best trial (by its metric) through the registry."""
        sweep = await self.show(SweepRef(sweep_id=p.sweep_id))
        if sweep["status"] != "done":
            raise Conflict(f"sweep {p.sweep_id} is still running; register its best trial once it is done "
                           "(`mldeck sweep show` shows its trials)")
        best = sw.best_trial(sweep["trials"])
        if best is None:
            raise Conflict(f"no trial of sweep {p.sweep_id} succeeded with a value of {sweep['metric']}; "
                           "there is nothing to register")
        row = await self.registry.register(best["run_id"], p.name, None, p.actor or self.registry.user)
        return {**row, "sweep_id": p.sweep_id, "metric": sweep["metric"], "best": best["best"]}
