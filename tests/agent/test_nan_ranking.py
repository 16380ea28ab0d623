"""NaN is no best: a sweep ranks a trial whose every value of its metric is NaN last, with the trials that
never reported it, and ranks the others by their values that are numbers; a best or a model version's
metric that is NaN or infinite crosses the socket by name ("NaN", "Infinity", "-Infinity"), never as a
null that reads as "no value"; a promotion gate lets no NaN or infinity pass a threshold or count as no
worse; the early-stopping rules are never handed a NaN as a value (Optuna: test_nonfinite_objective)."""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from mldeck.core import registry
from mldeck.core import sweep as sw
from mldeck.core.client import connect_unix
from mldeck.core.config import GateSection
from mldeck.core.paths import Layout
from mldeck.core.runlog import NONFINITE
from mldeck.core.store import Store
from tests.agent.test_summaries import value_text
from tests.conftest import InProcessAgent, rpc, wait_for

NAN, INF = math.nan, math.inf
TRIALS: dict[str, list[float]] = {  # a trial's metric at steps 0, 1, ...; in the order they were created
    "diverged": [NAN, NAN, NAN],
    "spiky": [0.5, NAN, 0.6],
    "steady": [0.7, 0.65, 0.55],
    "overflow": [0.1, INF],
    "silent": [],  # logs another key only
}
RANKED = ["steady", "spiky", "overflow", "diverged", "silent"]
SWEEPS = {  # sweep id: (metric, mode, sign of its values, the trials it has)
    "sweep-max": ("acc", "max", 1.0, list(TRIALS)),
    "sweep-min": ("loss", "min", -1.0, list(TRIALS)),
    "sweep-void": ("acc", "max", 1.0, ["diverged", "silent"]),
}
BEST = {
    "sweep-max": {"overflow": 0.1, "steady": 0.7, "spiky": 0.6, "diverged": "NaN", "silent": None},
    "sweep-min": {"overflow": -0.1, "steady": -0.7, "spiky": -0.6, "diverged": "NaN", "silent": None},
}
VERSION_METRICS = {"loss": NAN, "acc": INF, "top": -INF, "f1": 0.5}
MODEL = "nanny"


def write_run(home: Path, run_id: str, created_at: float, points: list[dict[str, float]],
              events: list[tuple[str, dict[str, Any]]], **init: Any) -> None:
    """A run's metrics.jsonl as the SDK writes it (NaN and the infinities by name), then its events."""
    lines = [{"t": created_at, "e": "init", "d": {"name": run_id, "created_at": created_at, **init}}]
    lines += [{"t": created_at + step, "s": step, "m": {k: value_text(v) for k, v in values.items()}}
              for step, values in enumerate(points)]
    lines += [{"t": created_at + 100, "e": event, "d": data} for event, data in events]
    lines.append({"t": created_at + 101, "e": "finish", "d": {"status": "succeeded", "reason": None}})
    folder = home / "runs" / run_id
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessAgent]:
    """An agent whose store holds three finished sweeps; their trials and a run registering a model with
    non-finite metrics are ingested as the SDK writes them."""
    home = tmp_path_factory.mktemp("nan") / "home"
    home.mkdir()
    store = Store(Layout(home).db)
    for sweep_id, (metric, mode, _, _) in SWEEPS.items():
        sw.insert_sweep(store, {"sweep_id": sweep_id, "name": sweep_id, "experiment": "nan", "spec": {},
                                "metric": metric, "mode": mode, "early_stop": None, "created_at": 0.0})
        sw.finish_sweep(store, sweep_id, time.time())
    store.close()
    live = InProcessAgent(home)
    try:
        start = time.time()
        for i, (sweep_id, (metric, _, sign, names)) in enumerate(SWEEPS.items()):
            for j, name in enumerate(names):
                points = [{metric: sign * v} for v in TRIALS[name]] or [{"other": 1.0}]
                write_run(home, f"{sweep_id}-{name}", start + 10 * i + j, points, [], sweep_id=sweep_id)
        model = home / "runs" / "versioned" / "artifacts" / "model"
        model.mkdir(parents=True)
        (model / "signature.json").write_text(json.dumps({"inputs": [], "outputs": []}))
        write_run(home, "versioned", start + 50, [VERSION_METRICS],
                  [("register_model", {"name": MODEL, "artifact": "artifacts/model"})])
        runs = sum(len(names) for *_, names in SWEEPS.values()) + 1
        wait_for(lambda: len(rpc(home, "runs.list", {"status": "succeeded"})["result"]) == runs,
                 what="every run ingested")
        wait_for(lambda: "result" in rpc(home, "models.get", {"name": MODEL}), what="the model registered")
        yield live
    finally:
        live.stop()


def call(home: Path, method: str, **params: Any) -> Any:
    """One call through the client, which reads NaN and the infinities back as floats."""
    async def go() -> Any:
        client = await connect_unix(Layout(home).socket)
        try:
            return await client.call(method, **params)
        finally:
            await client.close()

    return asyncio.run(go())


def same(got: Any, want: Any) -> bool:
    """Equal, NaN for NaN."""
    if isinstance(want, float) and math.isnan(want):
        return isinstance(got, float) and math.isnan(got)
    return bool(got == want)


@pytest.mark.parametrize("sweep_id", ["sweep-max", "sweep-min"])
def test_a_trial_of_nans_ranks_last_and_bests_go_by_name(agent: InProcessAgent, sweep_id: str) -> None:
    trials = rpc(agent.home, "sweeps.show", {"sweep_id": sweep_id})["result"]["trials"]
    assert [t["name"].removeprefix(f"{sweep_id}-") for t in trials] == RANKED
    assert [t["rank"] for t in trials] == [1, 2, 3, 4, 5]
    best = {t["name"].removeprefix(f"{sweep_id}-"): t["best"] for t in trials}
    assert best == BEST[sweep_id], "NaN and the infinities by name; null only where the metric never came"

    read = call(agent.home, "sweeps.show", sweep_id=sweep_id)["trials"]
    floats = {name: NONFINITE.get(v, v) for name, v in best.items()}
    assert all(same(t["best"], floats[t["name"].removeprefix(f"{sweep_id}-")]) for t in read), read

    shown = agent.cli("sweep", "show", sweep_id, "--json", check=True).json()["trials"]
    assert [t["best"] for t in shown] == [best[name] for name in RANKED]


def test_register_takes_the_best_number_and_never_a_trial_of_nans(agent: InProcessAgent) -> None:
    """The trials have no model folder: the error names the one register chose."""
    reply = rpc(agent.home, "sweeps.register", {"sweep_id": "sweep-max", "name": "m"})
    assert "runs/sweep-max-steady/artifacts/model" in reply["error"]["message"], reply
    void = rpc(agent.home, "sweeps.register", {"sweep_id": "sweep-void", "name": "m"})
    assert "no trial of sweep sweep-void succeeded with a value of acc" in void["error"]["message"], void


def test_a_versions_nan_and_infinite_metrics_go_by_name(agent: InProcessAgent) -> None:
    named = {"loss": "NaN", "acc": "Infinity", "top": "-Infinity", "f1": 0.5}
    home = agent.home
    assert rpc(home, "models.get", {"name": MODEL})["result"]["metrics"] == named
    (listed,) = rpc(home, "models.versions", {"name": MODEL})["result"]
    assert listed["metrics"] == named
    assert rpc(home, "models.lineage", {"name": MODEL, "version": 1})["result"]["version"]["metrics"] == named
    preview = rpc(home, "models.promote", {"name": MODEL, "version": 1, "alias": "staging", "dry_run": True})
    assert {k: d["candidate"] for k, d in preview["result"]["deltas"].items()} == named

    for version in (call(home, "models.get", name=MODEL), call(home, "models.versions", name=MODEL)[0],
                    call(home, "models.lineage", name=MODEL, version=1)["version"]):
        assert version["metrics"].keys() == VERSION_METRICS.keys()
        assert all(same(version["metrics"][k], v) for k, v in VERSION_METRICS.items()), version["metrics"]
    deltas = call(home, "models.promote", name=MODEL, version=1, alias="staging", dry_run=True)["deltas"]
    assert all(same(deltas[k]["candidate"], v) for k, v in VERSION_METRICS.items()), deltas
    shown = agent.cli("models", "show", MODEL, check=True).out
    assert "loss = nan" in shown and "acc = inf" in shown and "f1 = 0.5" in shown, shown


def test_a_nan_metric_is_not_no_worse_than_the_current_version() -> None:
    gate = GateSection(no_worse_than_current="val_loss")
    current = {"version": 1, "metrics": {"val_loss": 0.3}}
    candidate = {"version": 2, "name": "m", "metrics": {"val_loss": NAN}}
    failed = registry.evaluate_gate(gate, "production", candidate, current, set(), [])
    assert failed == ["val_loss is NaN, so it cannot be compared with production's v1"]
    better = {"version": 2, "name": "m", "metrics": {"val_loss": 0.2}}
    for broken in (NAN, INF, -INF):
        held = {**current, "metrics": {"val_loss": broken}}
        assert registry.evaluate_gate(gate, "production", better, held, set(), []) == [], broken


@pytest.mark.parametrize(("value", "named"), [(-INF, "-Infinity"), (INF, "Infinity"), (NAN, "NaN")])
def test_an_infinite_or_nan_metric_passes_no_gate(value: float, named: str) -> None:
    """A diverged run's loss of -inf is not the best loss ever, nor an accuracy of inf the best accuracy."""
    candidate = {"version": 2, "name": "m", "metrics": {"val_loss": value, "val_acc": -value}}
    current = {"version": 1, "metrics": {"val_loss": 0.3, "val_acc": 0.9}}
    lower = GateSection(no_worse_than_current="val_loss", metrics=["val_loss <= 0.5"])
    assert registry.evaluate_gate(lower, "production", candidate, current, set(), []) == [
        f"val_loss is {named}, not a number a gate can pass (gate needs val_loss <= 0.5)",
        f"val_loss is {named}, so it cannot be compared with production's v1",
    ]
    higher = GateSection(no_worse_than_current="max:val_acc", metrics=["val_acc >= 0.92", "val_acc != 0"])
    failed = registry.evaluate_gate(higher, "production", candidate, current, set(), [])
    assert len(failed) == 3 and all("cannot" in f or "not a number" in f for f in failed), failed


def test_early_stopping_after_a_restart_reads_no_nan(tmp_path: Path) -> None:
    """What the rules and the study are fed again after an agent restart: the points that are numbers."""
    store = Store(tmp_path / "s.duckdb")
    try:
        values = [0.5, NAN, 0.4, INF]
        store.add_points(pa.table({"run_id": ["r"] * 4, "key": ["loss"] * 4, "step": [0, 1, 2, 3],
                                   "ts": [0.0] * 4, "value": values}))
        assert sw.metric_history(store, ["r"], "loss") == {"r": [(0, 0.5), (2, 0.4)]}
    finally:
        store.close()

