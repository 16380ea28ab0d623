"""Optuna as a sweep's search: one study per sweep, asked for each next trial's point and told each result.

The study lives in a journal file in the sweep's folder of the agent's home, so that it outlives an agent
restart; each Optuna trial names its run (user attribute `run_id`). The sweep's space maps onto Optuna's
suggestions (grid axes and choice → categorical, int → int, uniform and loguniform → float, log for
loguniform), and its early-stopping rule onto Optuna's pruners, fed with the metric points the agent
ingests. Optuna is an optional extra: it is imported here only, when a sweep asks for it. Every method is
blocking file work: the sweeps service calls them in a thread, one at a time per sweep.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType
from typing import Any

from mldeck.core import sweep as sw
from mldeck.core.errors import Invalid

INSTALL = "pip install 'mldeck[optuna]'"
JOURNAL = "optuna.journal"
RUN_ID = "run_id"
STOPPED = "stopped"
PRUNERS = {"median": "MedianPruner", "asha": "SuccessiveHalvingPruner", "hyperband": "HyperbandPruner"}


def load_optuna(search: str) -> ModuleType:
    """Optuna, or the line that says how to install it (cmaes too, which its CMA-ES sampler needs)."""
    try:
        import optuna
    except ImportError as exc:
        raise Invalid(f"--search {search} asks Optuna, which this agent's Python cannot import ({exc}): "
                      f"{INSTALL}") from None
    if search == "cmaes" and importlib.util.find_spec("cmaes") is None:
        raise Invalid(f"--search cmaes needs the cmaes package beside Optuna: {INSTALL}")
    optuna.logging.disable_default_handler()  # its lines go to the agent's log, through logging
    optuna.logging.enable_propagation()
    return optuna


def _sampler(optuna: ModuleType, spec: dict[str, Any], asked: int) -> Any:
    """The search's sampler, seeded past the trials already asked (a restarted study draws new points)."""
    seed = spec["seed"] + asked
    if spec["search"] == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if spec["search"] == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed)
    if spec["search"] == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.GridSampler(sw.parse_grid(spec["grid"]), seed=seed)


def _pruner(optuna: ModuleType, spec: dict[str, Any]) -> Any:
    """The sweep's early-stopping rule as Optuna's pruner, with the rule's own settings."""
    rule = spec["early_stop"]
    if rule == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=spec["min_trials"],
                                           n_warmup_steps=spec["warmup_steps"])
    if rule == "asha":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=spec["min_steps"],
                                                      reduction_factor=spec["reduction_factor"])
    if rule == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=spec["min_steps"], max_resource=spec["max_steps"],
                                              reduction_factor=spec["reduction_factor"])
    return optuna.pruners.NopPruner()


class SweepStudy:
    """One sweep's study, and its trials still running by run id."""

    def __init__(self, optuna: ModuleType, study: Any, spec: dict[str, Any]) -> None:
        self.optuna = optuna
        self.study = study
        self.grid = sw.parse_grid(spec["grid"])
        self.rand = sw.parse_random(spec["random"])
        self.metric = spec["metric"]
        self.rule = PRUNERS.get(spec["early_stop"] or "")
        self.running: dict[str, Any] = {}
        self.reported: dict[str, set[int]] = {}
        self.unlaunched: list[Any] = []
        self.asked = len(study.get_trials(deepcopy=False))
        self.stopped = bool(study.user_attrs.get(STOPPED))
        for frozen in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            trial = optuna.trial.Trial(study, frozen._trial_id)  # Optuna names a trial by its storage id
            run_id = frozen.user_attrs.get(RUN_ID)
            if run_id is None:
                self.unlaunched.append(trial)
            else:
                self.running[run_id] = trial
                self.reported[run_id] = set(frozen.intermediate_values)

    @classmethod
    def open(cls, folder: Path, sweep_id: str, spec: dict[str, Any]) -> SweepStudy:
        """The sweep's study: new, or as its journal left it."""
        optuna = load_optuna(spec["search"])
        folder.mkdir(parents=True, exist_ok=True)
        backend = optuna.storages.journal.JournalFileBackend(str(folder / JOURNAL))
        study = optuna.create_study(
            storage=optuna.storages.JournalStorage(backend), study_name=sweep_id, load_if_exists=True,
            direction="minimize" if spec["mode"] == "min" else "maximize", pruner=_pruner(optuna, spec),
        )
        study.sampler = _sampler(optuna, spec, len(study.get_trials(deepcopy=False)))
        return cls(optuna, study, spec)

    def stop(self) -> None:
        """Ask for no more trials (sweeps.stop), also after a restart."""
        self.study.set_user_attr(STOPPED, True)
        self.stopped = True

    def ask(self, run_id: str) -> dict[str, Any]:
        """The next trial's point of the sweep's space, for the run that will try it."""
        trial = self.study.ask()
        self.asked += 1
        trial.set_user_attr(RUN_ID, run_id)
        params: dict[str, Any] = {name: trial.suggest_categorical(name, values)
                                  for name, values in self.grid.items()}
        for name, dist in self.rand.items():
            if dist.kind == "choice":
                params[name] = trial.suggest_categorical(name, list(dist.args))
            elif dist.kind == "int":
                params[name] = trial.suggest_int(name, *dist.args)
            else:
                params[name] = trial.suggest_float(name, *dist.args, log=dist.kind == "loguniform")
        self.running[run_id] = trial
        self.reported[run_id] = set()
        return params

    def report(self, run_id: str, points: Iterable[tuple[int, float]], judge: bool) -> str | None:
        """Report the trial's new points of the metric; with judge, the pruner's reason to stop it, if any."""
        trial = self.running.get(run_id)
        if trial is None:
            return None
        seen = self.reported[run_id]
        last: tuple[int, float] | None = None
        for step, value in points:
            if step not in seen:
                trial.report(value, step)
                seen.add(step)
                last = (step, value)
        if last is None or not judge or self.rule is None or not trial.should_prune():
            return None
        step, value = last
        return (f"Optuna {self.rule}: {self.metric} {value:.4g} at step {step} is worse than the other "
                "trials there")

    def tell(self, run_id: str, status: str, value: float | None) -> None:
        """The trial's end: complete with its value, pruned, or failed (also a success that never logged
        the metric, or whose value is NaN or an infinity: none leaves the study anything to learn from,
        Optuna itself fails a trial told NaN, and an infinity it would take as the best or worst of all)."""
        trial = self.running.pop(run_id, None)
        self.reported.pop(run_id, None)
        if trial is not None:
            self._tell(trial, status, value)

    def fail_unlaunched(self) -> None:
        """The trials asked before an agent stopped, whose run was never launched."""
        for trial in self.unlaunched:
            self._tell(trial, "failed", None)
        self.unlaunched.clear()

    def _tell(self, trial: Any, status: str, value: float | None) -> None:
        state = self.optuna.trial.TrialState
        if status == "succeeded" and sw.usable(value):
            self.study.tell(trial, value)
        elif status == "pruned":
            self.study.tell(trial, state=state.PRUNED)
        else:
            self.study.tell(trial, state=state.FAIL)
