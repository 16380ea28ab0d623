"""`mldeck import mlflow`: a store made with the real mlflow package comes over point for point, its
registered PyTorch model as a verified mldeck version with its alias, and a second import changes nothing."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import AgentProc, agent_env
from tests.integrations.conftest import run_row, sql

pytest.importorskip("mlflow")

STORE_SCRIPT = Path(__file__).with_name("mlflow_store.py")


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Both stores, made by one process of the real mlflow: the tests only read them."""
    folder = tmp_path_factory.mktemp("mlflow")
    env = {**os.environ, "MLFLOW_ALLOW_FILE_STORE": "true"}
    done = subprocess.run([sys.executable, str(STORE_SCRIPT), str(folder)],
                          capture_output=True, text=True, cwd=folder, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def import_json(agent: AgentProc, uri: str) -> dict[str, Any]:
    return agent.cli("import", "mlflow", uri, "--json", check=True, timeout=300).json()


def mlflow_history(uri: str, run_ids: list[str]) -> dict[str, Any]:
    """Each run's params, tags, status, experiment and every metric point, read back through mlflow."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    out = {}
    for run_id in run_ids:
        run = client.get_run(run_id)
        points = {
            key: sorted((m.step, m.timestamp / 1000, m.value) for m in client.get_metric_history(run_id, key))
            for key in run.data.metrics
        }
        out[run_id] = {"params": run.data.params, "tags": run.data.tags, "status": run.info.status,
                       "experiment": client.get_experiment(run.info.experiment_id).name, "points": points}
    return out


def check_runs(agent: AgentProc, history: dict[str, Any]) -> None:
    statuses = {"FINISHED": "succeeded", "FAILED": "failed", "KILLED": "stopped"}
    for mlflow_id, want in history.items():
        run_id = f"mlflow-{mlflow_id}"
        run = run_row(agent, run_id)
        assert run["params"] == want["params"] and run["experiment"] == want["experiment"]
        assert run["tags"] == {**want["tags"], "mldeck.imported_from": f"mlflow run {mlflow_id}"}
        assert run["status"] == statuses[want["status"]]
        rows = sql(agent, f"SELECT key, step, ts, value, isnan(value) AS nan FROM metrics "
                          f"WHERE run_id = '{run_id}' ORDER BY key, step, ts")
        got: dict[str, list[tuple[int, float, float]]] = {}
        for r in rows:  # JSON has no NaN: the query answers null for one, and says it is one
            got.setdefault(r["key"], []).append((r["step"], r["ts"], math.nan if r["nan"] else r["value"]))
        assert got.keys() == want["points"].keys()
        for key, points in want["points"].items():
            assert len(got[key]) == len(points), (run_id, key)
            for (step, ts, value), (want_step, want_ts, want_value) in zip(got[key], points, strict=True):
                assert step == want_step and ts == pytest.approx(want_ts, abs=1e-6), (run_id, key, step)
                nan_both = math.isnan(value) and math.isnan(want_value)
                assert value == want_value or nan_both, (run_id, key, step)


def counts(agent: AgentProc) -> dict[str, int]:
    return {table: sql(agent, f"SELECT count(*) AS n FROM {table}")[0]["n"]
            for table in ("runs", "metrics", "model_versions", "aliases", "audit_log")}


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_sqlite_store_with_a_registered_model(agent: AgentProc, stores: dict[str, Any]) -> None:
    made = stores["sqlite"]
    uri = made["uri"]
    first = import_json(agent, uri)
    assert sorted(first["runs"]) == sorted(f"mlflow-{r}" for r in made["runs"])
    assert first["points"] == 3 * 2 * 1500 + 2 and first["skipped"] == []
    v1, v2 = first["versions"]
    assert (v1["mlflow_version"], v1["version"], v1["aliases"]) == (1, 1, ["champion"])
    assert v1["outcome"] == "registered; champion set"
    assert v2["version"] is None and v2["outcome"].startswith("import-only: ")
    assert "no input example" in v2["outcome"]

    check_runs(agent, mlflow_history(uri, made["runs"]))
    (version,) = agent.cli("models", "versions", "tiny", "--json", check=True).json()
    assert version["version"] == 1 and version["aliases"] == ["champion"]
    assert version["run_id"] == f"mlflow-{made['runs'][3]}"

    before = counts(agent)
    second = import_json(agent, uri)
    assert second["runs"] == [] and second["points"] == 0 and len(second["skipped"]) == 5
    assert all("imported before" in line for line in second["skipped"])
    assert [v["outcome"] for v in second["versions"]] == ["registered before; champion already set",
                                                          v2["outcome"]]
    assert counts(agent) == before
    text = agent.cli("import", "mlflow", uri, check=True, timeout=300).out
    assert "nothing new in" in text and "skipped 5:" in text and "import-only" in text


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_mlruns_folder(agent: AgentProc, stores: dict[str, Any], tmp_path: Path,
                      monkeypatch: pytest.MonkeyPatch) -> None:
    made = stores["mlruns"]
    folder = Path(made["uri"])
    env_without_flag = {k: v for k, v in agent_env(agent.home).items() if k != "MLFLOW_ALLOW_FILE_STORE"}
    done = subprocess.run([sys.executable, "-m", "mldeck.tui.cli", "import", "mlflow", str(folder), "--json"],
                          capture_output=True, text=True, env=env_without_flag, timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert len(result["runs"]) == 3 and result["points"] == 3 * 2 * 1500 and result["versions"] == []
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # for the test's own reading of the folder
    check_runs(agent, mlflow_history(str(folder), made["runs"]))
    missing = agent.cli("import", "mlflow", str(tmp_path / "nope"))
    assert missing.code == 1 and "no MLflow folder at" in missing.err
