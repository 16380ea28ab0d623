"""Sweeps: trials generated from a search space, run through the job queue, stopped early by rule.

The controller listens to `run.metrics` in-process; when a trial's objective is clearly worse
(median stopping rule, or ASHA at its rungs) it stops the trial through the job runner, and the
trial ends `pruned` with the rule's sentence as its reason. With a search (agent/search.py), an
Optuna study picks each trial's point instead: `parallel` trials run at once, the next asked when
one ends and its result told, and Optuna's pruner judges the points. sweeps.register registers the
best trial through the registry. Publishes `sweeps` events {sweep_id, status}.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from mldeck.agent.registry import version_by_name
from mldeck.agent.search import SweepStudy
from mldeck.agent.service import Context, rpc
from mldeck.core import sweep as sw
from mldeck.core.errors import Conflict, Invalid, MldeckError, NotFound
from mldeck.core.jobs import LaunchParams
from mldeck.core.paths import check_name, new_run_id
from mldeck.core.runlog import TERMINAL, by_name
from mldeck.core.sweep import SweepCreateParams, SweepListParams, SweepRef, SweepRegisterParams

if TYPE_CHECKING:
    from mldeck.agent.jobs import Jobs
    from mldeck.agent.registry import Registry

log = logging.getLogger("mldeck.sweeps")


def best_by_name(row: dict[str, Any]) -> dict[str, Any]:
    """A trial, or a registered best trial, for the wire: its best value by name when it is NaN (every value
    was) or infinite, as JSON has neither (null says it never reported the metric)."""
    (best,) = by_name([row["best"]])
    return {**row, "best": best}


@dataclass
class SweepState:
    """What early stopping and a search need in memory: each trial's objective points and status, and
    the study (its calls one at a time, under the lock)."""

    sweep_id: str
    name: str
    experiment: str
    metric: str
    mode: str
    early_stop: str | None
    spec: dict[str, Any]
    status: dict[str, str] = field(default_factory=dict)
    history: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    asha: sw.AshaState | None = None
    search: SweepStudy | None = None
    total: int = 0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def parallel(self) -> int:
        return self.spec.get("parallel") or 1

    def in_flight(self) -> int:
        return sum(1 for status in self.status.values() if status not in TERMINAL)


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
        state = SweepState(sweep["sweep_id"], sweep["name"], sweep["experiment"], sweep["metric"],
                           sweep["mode"], sweep["early_stop"], spec)
        if spec.get("search"):  # the number of trials it asks the study for, one by one
            state.total = len(sw.trials(sw.parse_grid(spec["grid"]), sw.parse_random(spec["random"]),
                                        spec["trials"], spec["seed"]))
        elif state.early_stop == "asha":
            state.asha = sw.AshaState.new(
                spec["min_steps"], spec["reduction_factor"], spec["max_steps"], state.mode
            )
        return state

    def _folder(self, sweep_id: str) -> Path:
        """The sweep's folder in the agent's home (its Optuna study's journal)."""
        return self.ctx.layout.home / "sweeps" / check_name(sweep_id, "sweep id")

    async def start(self) -> None:
        """Pick up the sweeps that were running when the agent last stopped."""
        for sweep in await self.ctx.read(sw.list_sweeps, self.store, 1000, "running"):
            state = self._state(sweep)
            if sweep["spec"].get("search"):
                await self._resume_search(state)
                continue
            await self._adopt_trials(state)
            if state.asha:
                for run_id, points in state.history.items():
                    for step, value in points:
                        state.asha.report(run_id, step, value)
            self.active[state.sweep_id] = state
            await self._maybe_done(state)

    async def _adopt_trials(self, state: SweepState) -> None:
        """The sweep's trials as the store has them: status and points of the metric."""
        runs = await self.ctx.read(self.store.list_runs, None, None, state.sweep_id, 100_000)
        run_ids = [run["run_id"] for run in runs]
        state.history = await self.ctx.read(sw.metric_history, self.store, run_ids, state.metric)
        for run in runs:
            state.status[run["run_id"]] = run["status"]
            self.trial_of[run["run_id"]] = state.sweep_id

    async def _resume_search(self, state: SweepState) -> None:
        """Reopen the sweep's study, tell it what ended while no agent watched, and ask for what is left."""
        try:
            search = await asyncio.to_thread(SweepStudy.open, self._folder(state.sweep_id), state.sweep_id,
                                             state.spec)
        except MldeckError as exc:
            log.error("sweep %s cannot go on with its search until the agent can open it: %s",
                      state.sweep_id, exc.message)
            return
        state.search = search
        await self._adopt_trials(state)
        self.active[state.sweep_id] = state
        async with state.lock:
            await asyncio.to_thread(search.fail_unlaunched)
            for run_id in list(search.running):
                status = state.status.get(run_id, "failed")  # asked, but the agent stopped before its launch
                if status in TERMINAL:
                    await self._tell(state, search, run_id, status)
                else:
                    await asyncio.to_thread(search.report, run_id, state.history.get(run_id, []), False)
            state.history.clear()
            await self._ask(state, search)
        await self._maybe_done(state)

    @rpc("sweeps.create")
    async def create(self, p: SweepCreateParams) -> dict[str, Any]:
        """Validate everything first, then write the sweep and queue its trials."""
        if not p.metric.strip():
            raise Invalid("metric must name the logged metric to optimize, e.g. val_loss")
        grid, rand = sw.parse_grid(p.grid), sw.parse_random(p.random)
        sw.check_search(grid, rand, p.search, p.early_stop, p.parallel)
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
        state = self._state(sweep)
        folder = self._folder(sweep_id)
        if p.search:
            state.search = await asyncio.to_thread(SweepStudy.open, folder, sweep_id, spec)
        try:
            await self.ctx.db(sw.insert_sweep, self.store, sweep)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        self.active[sweep_id] = state
        if state.search is None:
            launched = [(await self._launch(state, trial), trial) for trial in points]
        else:
            async with state.lock:
                launched = await self._ask(state, state.search)
        self.ctx.hub.publish("sweeps", {"sweep_id": sweep_id, "status": "running", "trials": len(points)})
        return {"sweep_id": sweep_id, "run_ids": [run_id for run_id, _ in launched],
                "trials": [trial for _, trial in launched], "planned": len(points)}

    async def _launch(self, state: SweepState, trial: dict[str, Any], run_id: str | None = None) -> str:
        """Queue one trial: the sweep's job with the trial's params, named after its place in the sweep."""
        spec = state.spec
        launch = LaunchParams(
            script=spec["script"], module=spec["module"], args=spec["args"],
            params={**spec["params"], **trial},
            gpus=spec["gpus"], amp=spec["amp"], cwd=spec["cwd"], env=spec["env"],
            name=f"{state.name}-{len(state.status)}", experiment=state.experiment, sweep_id=state.sweep_id,
            run_id=run_id,
        )
        run_id = await self.jobs.launch(launch)
        state.status[run_id] = "queued"
        self.trial_of[run_id] = state.sweep_id
        return run_id

    # search ---------------------------------------------------------------------

    async def _ask(self, state: SweepState, search: SweepStudy) -> list[tuple[str, dict[str, Any]]]:
        """Under the lock: launch the study's next trials while fewer than `parallel` run and the sweep
        has trials left; a trial whose launch fails is told failed."""
        launched = []
        while not search.stopped and search.asked < state.total and state.in_flight() < state.parallel:
            run_id = new_run_id()
            trial = await asyncio.to_thread(search.ask, run_id)
            try:
                await self._launch(state, trial, run_id)
            except BaseException:
                await asyncio.to_thread(search.tell, run_id, "failed", None)
                raise
            launched.append((run_id, trial))
        return launched

    async def _tell(self, state: SweepState, search: SweepStudy, run_id: str, status: str) -> None:
        """Under the lock: the trial's result for the study (its best value of the metric if it succeeded)."""
        value = None
        if status == "succeeded":
            value = await self.ctx.read(sw.objective, self.store, run_id, state.metric, state.mode)
            if not sw.usable(value):
                why = "without logging" if value is None else "with NaN or an infinity at every step of"
                log.warning("sweep %s: trial %s succeeded %s %s; the study counts it failed",
                            state.sweep_id, run_id, why, state.metric)
        await asyncio.to_thread(search.tell, run_id, status, value)

    async def _trial_ended(self, state: SweepState, search: SweepStudy, run_id: str, status: str) -> None:
        """Tell the study, ask for the next trials, and end the sweep after its last."""
        async with state.lock:
            await self._tell(state, search, run_id, status)
            try:
                await self._ask(state, search)
            except MldeckError as exc:
                log.error("sweep %s asks for no more trials: its next could not be launched: %s",
                          state.sweep_id, exc.message)
                await asyncio.to_thread(search.stop)
        await self._maybe_done(state)

    async def _report(
        self, state: SweepState, search: SweepStudy, run_id: str, points: list[tuple[int, float]]
    ) -> None:
        """Report a trial's new points to the study; stop the trial when its pruner says so."""
        async with state.lock:
            judge = state.status.get(run_id) == "running" and run_id not in self.stopping
            reason = await asyncio.to_thread(search.report, run_id, points, judge)
        if reason and run_id not in self.stopping:
            self._prune(state, run_id, reason)

    # early stopping -------------------------------------------------------------

    def on_metrics(self, data: dict[str, Any]) -> None:
        sweep_id = self.trial_of.get(data.get("run_id", ""))
        state = self.active.get(sweep_id or "")
        if state is None:
            return
        run_id = data["run_id"]
        points = [
            (int(s), float(v)) for k, s, v in zip(data["key"], data["step"], data["value"], strict=True)
            if k == state.metric and sw.usable(v)
        ]
        if not points:
            return
        if state.search is not None:
            self.ctx.tasks.spawn(self._report(state, state.search, run_id, points), "sweep-search-report")
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
            self._prune(state, run_id, decision.reason)

    def _prune(self, state: SweepState, run_id: str, reason: str) -> None:
        self.stopping.add(run_id)
        log.info("sweep %s: stopping trial %s early: %s", state.sweep_id, run_id, reason)
        self.ctx.tasks.spawn(self._stop_early(run_id, reason), "sweep-early-stop")

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
            if state.search is not None:
                self.ctx.tasks.spawn(self._trial_ended(state, state.search, data["run_id"], data["status"]),
                                     "sweep-search-tell")
            else:
                self.ctx.tasks.spawn(self._maybe_done(state), "sweep-done")

    async def _maybe_done(self, state: SweepState) -> None:
        if state.sweep_id not in self.active or not all(s in TERMINAL for s in state.status.values()):
            return
        if state.search is not None and not state.search.stopped and state.search.asked < state.total:
            return
        del self.active[state.sweep_id]
        await self.ctx.db(sw.finish_sweep, self.store, state.sweep_id, time.time())
        self.ctx.hub.publish("sweeps", {"sweep_id": state.sweep_id, "status": "done"})

    async def _sweep(self, sweep_id: str) -> dict[str, Any]:
        """The sweep and its ranked trials, their bests as floats."""
        sweep = await self.ctx.read(sw.get_sweep, self.store, sweep_id)
        if sweep is None:
            raise NotFound(f"no sweep {sweep_id!r} on this host (`mldeck sweep ls` lists them)")
        trials = await self.ctx.read(sw.sweep_trials, self.store, sweep_id, sweep["metric"], sweep["mode"])
        return {**sweep, "trials": trials}

    @rpc("sweeps.show")
    async def show(self, p: SweepRef) -> dict[str, Any]:
        sweep = await self._sweep(p.sweep_id)
        return {**sweep, "trials": [best_by_name(t) for t in sweep["trials"]]}

    @rpc("sweeps.list")
    async def list(self, p: SweepListParams) -> list[dict[str, Any]]:
        return await self.ctx.read(sw.list_sweeps, self.store, p.limit)

    @rpc("sweeps.stop")
    async def stop_sweep(self, p: SweepRef) -> dict[str, Any]:
        sweep = await self._sweep(p.sweep_id)
        state = self.active.get(p.sweep_id)
        if state is not None and state.search is not None:
            async with state.lock:
                await asyncio.to_thread(state.search.stop)
        stopped = []
        for trial in sweep["trials"]:
            if self.jobs.pending(trial["run_id"]):
                await self.jobs.stop_run(trial["run_id"], reason="sweep stopped")
                stopped.append(trial["run_id"])
        return {"sweep_id": p.sweep_id, "stopped": stopped}

    @rpc("sweeps.register")
    async def register(self, p: SweepRegisterParams) -> dict[str, Any]:
        """Register the finished sweep's best trial (by its metric) through the registry."""
        sweep = await self._sweep(p.sweep_id)
        if sweep["status"] != "done":
            raise Conflict(f"sweep {p.sweep_id} is still running; register its best trial once it is done "
                           "(`mldeck sweep show` shows its trials)")
        best = sw.best_trial(sweep["trials"])
        if best is None:
            raise Conflict(f"no trial of sweep {p.sweep_id} succeeded with a value of {sweep['metric']} "
                           "(NaN and the infinities are none); there is nothing to register")
        row = await self.registry.register(best["run_id"], p.name, None, p.actor or self.registry.user)
        return best_by_name({**version_by_name(row), "sweep_id": p.sweep_id, "metric": sweep["metric"],
                             "best": best["best"]})
