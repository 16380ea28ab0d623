"""A diverged trial is no reference and no best: a value of a sweep's metric that is an infinity is no
measurement, as a NaN is none. The early-stopping rules never judge another trial by it (a -inf running
average is not a median that prunes everyone), a trial ranks by its best value that is a number, a trial
with none ranks last and is never registered, and the study is told such a trial failed."""

from __future__ import annotations

import math
import time
import warnings
from pathlib import Path

import msgspec
import optuna
import pyarrow as pa
import pytest

from mldeck.agent.search import SweepStudy
from mldeck.core import sweep as sw
from mldeck.core.store import Store
from tests.agent.test_jobs import rpc
from tests.agent.test_sweep_search import CONFIG as SWEEP_CONFIG
from tests.conftest import start_agent, wait_for

INF = math.inf
CONFIG = SWEEP_CONFIG.replace("max_cpu_jobs = 2", "max_cpu_jobs = 4")
STEPS = 8
TRIAL = f"""
import math, sys, time
from mldeck.core import track
kind = sys.argv[sys.argv.index("--kind") + 1]
with track.init() as run:
    for step in range({STEPS}):
        value = 0.5 if kind == "steady" else 0.9 if step == 0 else -math.inf
        run.log({{"val_loss": value}}, step=step)
        if run.should_stop:
            break
        time.sleep(0.3 if kind == "steady" else 0.01)
"""


@pytest.mark.timeout(300)
@pytest.mark.parametrize(("rule", "options"), [
    ("median", ["--warmup-steps", "1", "--min-trials", "1"]),
    ("asha", ["--min-steps", "1", "--reduction-factor", "2", "--max-steps", str(STEPS)]),
])
def test_a_trial_that_diverged_to_minus_inf_prunes_no_one_and_is_not_the_best(
    tmp_path: Path, rule: str, options: list[str]
) -> None:
    """Two trials diverge at once (0.9, then -inf at every step) while two steady ones (0.5) run on: the
    steady ones are judged only against each other and the diverged ones' 0.9, so no one is pruned; the
    steady ones rank first, the diverged ones after them by their 0.9."""
    script = tmp_path / "trial.py"
    script.write_text(TRIAL)
    agent = start_agent(tmp_path / "home", config=CONFIG)
    try:
        created = agent.cli(
            "sweep", str(script), "--grid", "kind=diverged,steady", "--grid", "copy=1,2", "--metric",
            "val_loss", "--mode", "min", "--early-stop", rule, *options, "--name", f"inf-{rule}",
            "--cwd", str(tmp_path), "--json", check=True,
        ).json()
        sweep_id = created["sweep_id"]
        wait_for(lambda: rpc(agent, "sweeps.show", sweep_id=sweep_id)["status"] == "done",
                 timeout=200, interval=0.2, what="the sweep to finish")
        trials = agent.cli("sweep", "show", sweep_id, "--json", check=True).json()["trials"]
        seen = [(t["params"]["kind"], t["status"], t["status_reason"], t["best"]) for t in trials]
        assert [t["status"] for t in trials] == ["succeeded"] * 4, seen
        assert [(t["params"]["kind"], t["best"]) for t in trials] == [
            ("steady", 0.5), ("steady", 0.5), ("diverged", 0.9), ("diverged", 0.9)], seen
        reply = agent.cli("sweep", "register", sweep_id, "--name", f"inf-{rule}")
        assert f"runs/{trials[0]['run_id']}/artifacts/model" in reply.err, reply.err
    finally:
        agent.stop()


def add_trials(store: Store, sweep_id: str, trials: dict[str, list[float]]) -> None:
    """Finished trials of a sweep and their points of `m`, at steps 0, 1, ..., in the store."""
    for i, (name, values) in enumerate(trials.items()):
        store.upsert_run({"run_id": name, "name": name, "sweep_id": sweep_id, "status": "succeeded",
                          "created_at": time.time() + i})
        store.add_points(pa.table({"run_id": [name] * len(values), "key": ["m"] * len(values),
                                   "step": list(range(len(values))), "ts": [0.0] * len(values),
                                   "value": values}))


@pytest.mark.parametrize(("mode", "sign"), [("max", 1.0), ("min", -1.0)])
def test_a_trial_ranks_by_its_best_number_and_one_without_is_no_best(
    tmp_path: Path, mode: str, sign: float
) -> None:
    """In a real store: a trial that overflowed after 0.1 ranks by its 0.1; one that logged only infinities
    ranks last, has no objective for the study and is never registered."""
    store = Store(tmp_path / "s.duckdb")
    try:
        add_trials(store, "sw", {name: [sign * v for v in values] for name, values in {
            "overflow": [0.1, INF], "steady": [0.7, 0.65], "blown": [INF, INF]}.items()})
        trials = sw.sweep_trials(store, "sw", "m", mode)
        assert [(t["run_id"], t["best"]) for t in trials] == [
            ("steady", sign * 0.7), ("overflow", sign * 0.1), ("blown", sign * INF)]
        assert sw.best_trial(trials)["run_id"] == "steady"
        assert sw.objective(store, "overflow", "m", mode) == sign * 0.1
        assert not sw.usable(sw.objective(store, "blown", "m", mode))
        assert sw.best_trial([t for t in trials if t["run_id"] == "blown"]) is None
        assert sw.metric_history(store, ["overflow", "blown"], "m") == {"overflow": [(0, sign * 0.1)]}
    finally:
        store.close()


def test_the_median_and_asha_rules_take_no_infinity_from_a_restart(tmp_path: Path) -> None:
    """What the rules are fed again after an agent restart (metric_history) holds no infinity, so a trial
    that diverged is no median and no rung value for the others."""
    store = Store(tmp_path / "s.duckdb")
    try:
        add_trials(store, "sw", {"diverged": [-INF, -INF, -INF], "steady": [0.5, 0.5, 0.5]})
        history = sw.metric_history(store, ["diverged", "steady"], "m")
        assert sw.median_rule(history["steady"], [history.get("diverged", [])], "min", 1, 1) == sw.CONTINUE
        asha = sw.AshaState.new(1, 2, 10, "min")
        for run_id, points in history.items():
            for step, value in points:
                assert asha.report(run_id, step, value) == sw.CONTINUE, (run_id, step, value)
    finally:
        store.close()


@pytest.mark.parametrize(("mode", "value"), [("max", INF), ("min", -INF), ("min", INF), ("min", math.nan)])
def test_a_nonfinite_objective_is_a_failed_trial_not_a_value(tmp_path: Path, mode: str, value: float) -> None:
    """Optuna takes an infinity as a value (a -inf minimum would be the study's best) and warns at a NaN: the
    study is told the trial failed instead, without a warning."""
    spec = msgspec.to_builtins(msgspec.convert(
        {"metric": "val_loss", "mode": mode, "search": "random", "module": "m", "trials": 2,
         "random": ["lr=uniform(0,1)"]}, sw.SweepCreateParams))
    study = SweepStudy.open(tmp_path, "sweep-i", spec)
    study.ask("diverged")
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        study.tell("diverged", "succeeded", value)
    assert study.study.trials[0].state == optuna.trial.TrialState.FAIL
    assert not said, [str(w.message) for w in said]
