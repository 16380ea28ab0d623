"""Sweeps: trials generated from a search space, run through the job queue, stopped early by rule.

The controller listens to `run.metrics` in-process; when a trial's objective is clearly worse
(median stopping rule, or ASHA at its rungs) it stops the trial through the job runner, with
the rule's sentence as the run's status reason. Publishes `sweeps` events {sweep_id, status}.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgspec

from mldeck.core import jobs as q
from mldeck.core import sweep as sw
from mldeck.core.errors import Invalid, NotFound
from mldeck.core.jobs import LaunchParams, SweepCreateParams, SweepListParams, SweepRef
from mldeck.core.paths import new_run_id
from mldeck.core.runlog import TERMINAL

if TYPE_CHECKING:
    from mldeck.agent.daemon import Agent
    from mldeck.agent.jobs import Jobs
    from mldeck.agent.rpc import Connection

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
    def __init__(self, agent: Agent, jobs: Jobs) -> None:
        self.agent = agent
        self.jobs = jobs
        self.active: dict[str, SweepState] = {}
        self.trial_of: dict[str, str] = {}
        self.stopping: set[str] = set()
        self._tasks: set[asyncio.Task[Any]] = set()

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
        store = self.agent.store
        for sweep in await self.agent.read(q.list_sweeps, store, 1000, "running"):
            state = self._state(sweep)
            runs = await self.agent.read(store.list_runs, None, None, sweep["sweep_id"], 100_000)
            for run in runs:
                state.status[run["run_id"]] = run["status"]
                self.trial_of[run["run_id"]] = state.sweep_id
            state.history = await self.agent.read(q.metric_history, store, list(state.status), state.metric)
            if state.asha:
                for run_id, points in state.history.items():
                    for step, value in points:
                        state.asha.report(run_id, step, value)
            self.active[state.sweep_id] = state
            await self._maybe_done(state)

    async def create(self, p: SweepCreateParams) -> dict[str, Any]:
        """Validate everything first, then write the sweep and queue its trials."""
        sw.check_mode(p.mode)
        if p.early_stop not in (None, *sw.EARLY_STOP):
            raise sw.SweepError(f"early_stop must be median or asha, not {p.early_stop!r}")
        if not p.metric.strip():
            raise sw.SweepError("metric must name the logged metric to optimize, e.g. val_loss")
        if p.early_stop == "asha":
            sw.asha_rungs(p.min_steps, p.reduction_factor, p.max_steps)
        grid, rand = sw.parse_grid(p.grid), sw.parse_random(p.random)
        points = sw.trials(grid, rand, p.trials, p.seed)
        if len(points) > 10_000:
            raise sw.SweepError(f"{len(points)} trials is too many for one sweep (at most 10000)")
        base = LaunchParams(
            script=p.script, module=p.module, args=p.args, params=p.params, gpus=p.gpus, amp=p.amp,
            cwd=p.cwd, env=p.env,
        )
        self.jobs._validate(base)
        sweep_id = "sweep-" + new_run_id()
        name = p.name or sweep_id
        spec = msgspec.to_builtins(p)
        sweep = {
            "sweep_id": sweep_id, "name": name, "experiment": p.experiment or name, "spec": spec,
            "metric": p.metric, "mode": p.mode, "early_stop": p.early_stop, "created_at": time.time(),
        }
        await self.agent.db(q.insert_sweep, self.agent.store, sweep)
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
        self.agent.hub.publish("sweeps", {"sweep_id": sweep_id, "status": "running", "trials": len(run_ids)})
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
            task = asyncio.get_running_loop().create_task(
                self.jobs.stop(run_id, reason=f"early stop ({decision.reason})")
            )
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def on_status(self, data: dict[str, Any]) -> None:
        sweep_id = self.trial_of.get(data.get("run_id", ""))
        state = self.active.get(sweep_id or "")
        if state is None or not data.get("managed"):
            return
        state.status[data["run_id"]] = data["status"]
        if data["status"] in TERMINAL:
            task = asyncio.get_running_loop().create_task(self._maybe_done(state))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _maybe_done(self, state: SweepState) -> None:
        if state.sweep_id not in self.active or not all(s in TERMINAL for s in state.status.values()):
            return
        del self.active[state.sweep_id]
        await self.agent.db(q.finish_sweep, self.agent.store, state.sweep_id, time.time())
        self.agent.hub.publish("sweeps", {"sweep_id": state.sweep_id, "status": "done"})

    async def show(self, sweep_id: str) -> dict[str, Any]:
        sweep = await self.agent.read(q.get_sweep, self.agent.store, sweep_id)
        if sweep is None:
            raise NotFound(f"no sweep {sweep_id!r} on this host (`mldeck sweep ls` lists them)")
        trials = await self.agent.read(
            q.sweep_trials, self.agent.store, sweep_id, sweep["metric"], sweep["mode"]
        )
        return {**sweep, "trials": trials}

    async def stop(self, sweep_id: str) -> dict[str, Any]:
        sweep = await self.show(sweep_id)
        stopped = []
        for trial in sweep["trials"]:
            if trial["status"] in ("queued", "running", "preempted"):
                await self.jobs.stop(trial["run_id"], reason="sweep stopped")
                stopped.append(trial["run_id"])
        return {"sweep_id": sweep_id, "stopped": stopped}


def register(agent: Agent) -> None:
    sweeps = Sweeps(agent, agent.jobs)  # type: ignore[attr-defined]
    agent.sweeps = sweeps  # type: ignore[attr-defined]
    agent.topics.add("sweeps")
    agent.hub.on("run.metrics", sweeps.on_metrics)
    agent.hub.on("runs", sweeps.on_status)
    d = agent.dispatcher

    async def create(p: SweepCreateParams, conn: Connection) -> dict[str, Any]:
        try:
            return await sweeps.create(p)
        except ValueError as exc:
            raise Invalid(str(exc)) from None

    async def show(p: SweepRef, conn: Connection) -> dict[str, Any]:
        return await sweeps.show(p.sweep_id)

    async def ls(p: SweepListParams, conn: Connection) -> list[dict[str, Any]]:
        if p.limit < 1:
            raise Invalid("limit must be at least 1")
        return await agent.read(q.list_sweeps, agent.store, p.limit)

    async def stop(p: SweepRef, conn: Connection) -> dict[str, Any]:
        return await sweeps.stop(p.sweep_id)

    d.add("sweeps.create", SweepCreateParams, create)
    d.add("sweeps.show", SweepRef, show)
    d.add("sweeps.list", SweepListParams, ls)
    d.add("sweeps.stop", SweepRef, stop)
    agent.spawn(sweeps.start(), "sweeps-start")
