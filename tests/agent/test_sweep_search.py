"""Optuna as a sweep's search: a real agent asks a TPE study for each trial of the demo project, Optuna's
median pruner prunes the worse ones, and the study outlives an agent restart; without Optuna the agent
says how to install it."""

from __future__ import annotations

import re
from pathlib import Path

import msgspec
import optuna
import pytest

from mldeck.agent.search import SweepStudy
from mldeck.core.errors import Invalid
from mldeck.core.sweep import SweepCreateParams
from tests.agent.test_jobs import rpc
from tests.conftest import start_agent, wait_for

CONFIG = """
[agent]
collector_interval_s = 0.2
[jobs]
poll_interval_s = 0.1
grace_s = 10
max_cpu_jobs = 2
"""
EPOCHS = 8
TRIALS = 6
TRIAL = """
import sys, time
from mldeck.core import track
x = float(sys.argv[sys.argv.index("--x") + 1])
steps = int(sys.argv[sys.argv.index("--steps") + 1]) if "--steps" in sys.argv else 3
with track.init() as run:
    for step in range(steps):
        run.log({"val_loss": x + 1.0 / (step + 1)}, step=step)
        if run.should_stop:
            break
        time.sleep(0.1)
"""


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_tpe_sweep_with_the_median_pruner_on_the_demo_project(tmp_path: Path) -> None:
    """Six trials of the demo training, two at a time, each asked of a TPE study and told its result."""
    agent = start_agent(tmp_path / "home", config=CONFIG)
    try:
        created = agent.cli(
            "sweep", "-m", "mldeck.agent.demo.train", "--random", "lr=loguniform(1e-5,3e-2)",
            "--random", "hidden=int(4,32)", "--trials", str(TRIALS), "--search", "tpe", "--parallel", "2",
            "--early-stop", "median", "--warmup-steps", "1", "--min-trials", "1", "--metric", "val_loss",
            "--mode", "min", "--seed", "3", "--name", "tpe", "--json",
            "--", "--epochs", str(EPOCHS), "--slow-ms", "300", check=True,
        ).json()
        sweep_id = created["sweep_id"]
        assert len(created["run_ids"]) == 2, "two in flight; each next trial is asked when one ends"
        journal = agent.home / "sweeps" / sweep_id / "optuna.journal"
        assert journal.is_file()

        # the agent goes away mid-sweep and comes back: the study and the trials carry on
        def fourth_started() -> bool:
            runs = rpc(agent, "runs.list", sweep_id=sweep_id)
            return len(runs) >= 4 and all(r["status"] != "queued" for r in runs)

        wait_for(fourth_started, timeout=90, interval=0.3, what="the fourth trial to be asked and started")
        agent.kill()
        agent = start_agent(agent.home, config=CONFIG)
        wait_for(lambda: rpc(agent, "sweeps.show", sweep_id=sweep_id)["status"] == "done",
                 timeout=200, interval=0.2, what="the sweep to finish")
        trials = agent.cli("sweep", "show", sweep_id, "--json", check=True).json()["trials"]
        assert len(trials) == TRIALS, [(t["params"], t["status"]) for t in trials]
        assert len({t["params"]["lr"] for t in trials}) == TRIALS, "each trial's params come from the study"
        assert all(1e-5 <= t["params"]["lr"] <= 3e-2 and 4 <= t["params"]["hidden"] <= 32 for t in trials)
        pruned = [t for t in trials if t["status"] == "pruned"]
        assert pruned, [(t["params"], t["status"], t["best"]) for t in trials]
        assert all(t["status_reason"].startswith("Optuna MedianPruner: ") for t in pruned), pruned
        assert all(t["last_step"] < EPOCHS - 1 for t in pruned), "a pruned trial stops before its end"
        assert trials[0]["status"] == "succeeded"

        listed = {r["run_id"]: r for r in agent.cli("runs", "ls", "--json", check=True).json()}
        assert all(listed[t["run_id"]]["sweep_id"] == sweep_id for t in trials)
        by_sweep = rpc(agent, "runs.list", sweep_id=sweep_id)
        assert {r["run_id"] for r in by_sweep} == {t["run_id"] for t in trials}
        table = agent.cli("sweep", "show", sweep_id, check=True).out
        assert "search: tpe" in table and "Optuna MedianPruner" in table

        storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
        study = optuna.load_study(study_name=sweep_id, storage=storage)
        states = {t.user_attrs["run_id"]: t.state.name for t in study.trials}
        assert states == {t["run_id"]: {"succeeded": "COMPLETE", "pruned": "PRUNED"}[t["status"]]
                          for t in trials}
        assert study.best_trial.user_attrs["run_id"] == trials[0]["run_id"]
        assert study.best_value == pytest.approx(trials[0]["best"])
    finally:
        agent.stop()


@pytest.mark.timeout(120)
def test_a_search_without_optuna_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An agent whose Python cannot import optuna refuses `--search tpe` with the install line, creates
    nothing, and still runs mldeck's own search and early stopping."""
    shadow = tmp_path / "no-optuna"
    shadow.mkdir()
    (shadow / "optuna.py").write_text("raise ImportError('No module named optuna')\n")
    (tmp_path / "trial.py").write_text(TRIAL)
    monkeypatch.setenv("PYTHONPATH", str(shadow))
    agent = start_agent(tmp_path / "home", config=CONFIG)
    try:
        done = agent.cli("sweep", str(tmp_path / "trial.py"), "--random", "x=uniform(0,1)", "--trials", "2",
                         "--search", "tpe", "--metric", "val_loss")
        assert done.code == 1, done
        assert done.err.strip() == (
            "mldeck: --search tpe asks Optuna, which this agent's Python cannot import "
            "(No module named optuna): pip install 'mldeck[optuna]'"
        ), done.err
        assert "Traceback" not in done.err
        job = {"script": str(tmp_path / "trial.py"), "metric": "val_loss"}
        for params, message in [
            ({"random": ["x=uniform(0,1)"], "early_stop": "hyperband"}, "add --search"),
            ({"random": ["x=uniform(0,1)"], "parallel": 2}, "--parallel is for --search"),
            ({"grid": ["y=1,2"], "random": ["x=uniform(0,1)"], "search": "grid"}, "walks --grid axes only"),
            ({"random": ["x=uniform(0,1)"], "search": "tpe", "parallel": 0}, "$.parallel"),
            ({"random": ["x=uniform(0,1)"], "search": "bayes"}, "$.search"),
        ]:
            with pytest.raises(Invalid, match=re.escape(message)):
                rpc(agent, "sweeps.create", **job, **params)
        assert rpc(agent, "sweeps.list") == [] and rpc(agent, "runs.list") == []
        plain = agent.cli("sweep", str(tmp_path / "trial.py"), "--grid", "x=0,1", "--random",
                          "y=uniform(0,1)", "--early-stop", "asha", "--metric", "val_loss", "--json",
                          check=True).json()
        assert len(plain["run_ids"]) == 2, "mldeck's own grid queues every trial at once"
        wait_for(lambda: rpc(agent, "sweeps.show", sweep_id=plain["sweep_id"])["status"] == "done",
                 timeout=90, interval=0.3, what="the plain sweep to finish")
        ended = {t["status"] for t in rpc(agent, "sweeps.show", sweep_id=plain["sweep_id"])["trials"]}
        assert ended <= {"succeeded", "pruned"} and "succeeded" in ended, ended
        assert not (agent.home / "sweeps").exists()
    finally:
        agent.stop()


@pytest.mark.timeout(120)
def test_stopping_a_search_sweep_asks_for_no_more_trials(tmp_path: Path) -> None:
    (tmp_path / "trial.py").write_text(TRIAL)
    agent = start_agent(tmp_path / "home", config=CONFIG)
    try:
        created = agent.cli(
            "sweep", str(tmp_path / "trial.py"), "--random", "x=uniform(0,1)", "--trials", "6", "--search",
            "random", "--metric", "val_loss", "--json", "--", "--steps", "600", check=True,
        ).json()
        (run_id,) = created["run_ids"]
        wait_for(lambda: rpc(agent, "runs.get", run_id=run_id)["status"] == "running", timeout=60,
                 what="the first trial to start")
        stopped = agent.cli("sweep", "stop", created["sweep_id"], check=True).out
        assert stopped.strip().endswith("stopped 1 trials")
        wait_for(lambda: rpc(agent, "sweeps.show", sweep_id=created["sweep_id"])["status"] == "done",
                 timeout=60, interval=0.3, what="the stopped sweep to be done")
        (trial,) = rpc(agent, "sweeps.show", sweep_id=created["sweep_id"])["trials"]
        assert trial["run_id"] == run_id and trial["status"] == "stopped"
    finally:
        agent.stop()


def spec(search: str, early_stop: str | None = None, **over: object) -> dict:
    """A sweeps.create spec as the agent keeps it."""
    params = {"metric": "val_loss", "search": search, "early_stop": early_stop, "module": "m", "trials": 6,
              "grid": ["opt=sgd,adam"], "random": ["lr=loguniform(1e-5,1e-1)", "layers=int(1,4)",
                                                   "act=choice(relu,gelu)", "drop=uniform(0,0.5)"]}
    return msgspec.to_builtins(msgspec.convert({**params, **over}, SweepCreateParams))


@pytest.mark.parametrize("search", ["tpe", "cmaes", "random"])
def test_each_sampler_draws_from_the_space_and_a_reopened_study_goes_on(tmp_path: Path, search: str) -> None:
    study = SweepStudy.open(tmp_path, "sweep-x", spec(search))
    points = {f"run-{i}": study.ask(f"run-{i}") for i in range(3)}
    for run_id, point in points.items():
        assert point["opt"] in ("sgd", "adam") and point["act"] in ("relu", "gelu")
        assert 1e-5 <= point["lr"] <= 1e-1 and 0 <= point["drop"] <= 0.5
        assert isinstance(point["layers"], int) and 1 <= point["layers"] <= 4
        study.tell(run_id, "succeeded", point["lr"])
    study.ask("run-3")  # the agent stops while it runs

    again = SweepStudy.open(tmp_path, "sweep-x", spec(search))
    assert again.asked == 4 and list(again.running) == ["run-3"]
    assert again.study.best_trial.user_attrs["run_id"] == min(points, key=lambda r: points[r]["lr"])
    assert again.ask("run-4")["lr"] not in {p["lr"] for p in points.values()}, "a reopened study draws anew"


def test_the_grid_search_walks_each_grid_point_once(tmp_path: Path) -> None:
    grid = spec("grid", grid=["opt=sgd,adam", "lr=0.1,0.01"], random=[])
    study = SweepStudy.open(tmp_path, "sweep-g", grid)
    walked = [study.ask(f"run-{i}") for i in range(4)]
    assert sorted((p["opt"], p["lr"]) for p in walked) == [("adam", 0.01), ("adam", 0.1), ("sgd", 0.01),
                                                          ("sgd", 0.1)]


@pytest.mark.parametrize(("rule", "pruner"), [
    ("median", "MedianPruner"), ("asha", "SuccessiveHalvingPruner"), ("hyperband", "HyperbandPruner"),
])
def test_the_early_stopping_rules_are_optunas_pruners(tmp_path: Path, rule: str, pruner: str) -> None:
    """Eight trials at 0.1 at every step, then one at 5: the rule's pruner stops only that one."""
    rules = spec("random", rule, warmup_steps=0, min_trials=1, min_steps=1, reduction_factor=2, max_steps=8)
    study = SweepStudy.open(tmp_path, "sweep-p", rules)
    for run_id in [*(f"good-{i}" for i in range(8)), "bad"]:
        study.ask(run_id)
        value = 5.0 if run_id == "bad" else 0.1
        reasons = [study.report(run_id, [(step, value)], judge=True) for step in range(8)]
        pruned = [r for r in reasons if r]
        assert bool(pruned) == (run_id == "bad"), (run_id, pruned)
        study.tell(run_id, "pruned" if pruned else "succeeded", value)
    assert pruned[0].startswith(f"Optuna {pruner}: val_loss 5 at step ")
    states = [t.state for t in study.study.trials]
    assert states == [optuna.trial.TrialState.COMPLETE] * 8 + [optuna.trial.TrialState.PRUNED]


def test_a_trial_that_never_logged_the_metric_fails_in_the_study(tmp_path: Path) -> None:
    study = SweepStudy.open(tmp_path, "sweep-f", spec("tpe"))
    study.ask("silent")
    study.tell("silent", "succeeded", None)
    assert study.study.trials[0].state == optuna.trial.TrialState.FAIL and not study.running
