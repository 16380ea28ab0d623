"""The whole loop on a real agent: a pipeline trains and registers, production is served, simulated
traffic drifts on chosen columns, the monitor sees exactly those, alerts, retrains through the
pipeline's gate into challenger, and a person promotes it with the CLI; every step audited. Clean
traffic then closes the alert by itself, and a worse version promoted after it is rolled back."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mldeck.core.errors import Invalid, NotFound, wire_code
from tests.conftest import REPO, AgentProc, agent_env, rpc, start_agent, wait_for
from tests.monitor.watch import call, judged_windows
from tests.serving.conftest import free_port

pytestmark = pytest.mark.timeout(600)

MODEL = "demo"
SHIFTED = ["mean_radius", "worst_texture", "mean_concavity"]
STEADY = "mean_texture"
WINDOW_ROWS = 200


def pipeline_file(folder: Path, name: str, epochs: int, promote: str, gate: str = "val_acc >= 0.9") -> Path:
    path = folder / f"{name}.toml"
    path.write_text(
        f'name = "{name}"\nmodel = "{MODEL}"\n\n[steps.train]\n'
        f'command = ["python", "-m", "mldeck.agent.demo.train", "--epochs", "{epochs}", "--hidden", "16"]\n\n'
        f'[register]\ngate = "{gate}"\npromote = "{promote}"\n'
    )
    return path


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProc]:
    root = tmp_path_factory.mktemp("loop")
    retrain = pipeline_file(root, "retrain", 3, "challenger")
    config = (
        f"[serving]\nport = {free_port()}\nmax_queue_delay_ms = 1\n\n"
        f'[monitor]\nwindow = "{WINDOW_ROWS}rows"\ninterval_s = 0.5\nmin_rows = 30\n\n'
        f"[monitor.models.{MODEL}]\ndrift_share = 0.05\ndrift_windows = 2\naccuracy_floor = 0.5\n"
        "rollback = true\n"
        f'retrain = "{retrain}"\n'
    )
    proc = start_agent(root / "home", config=config)
    yield proc
    proc.stop()


def cli_json(agent: AgentProc, *args: str, timeout: float = 120) -> Any:
    return agent.cli(*args, "--json", check=True, timeout=timeout).json()


def traffic(agent: AgentProc, url: str, *args: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "mldeck.agent.demo.traffic", "--url", url, "--model", MODEL, *args],
        capture_output=True, text=True, env=agent_env(agent.home), cwd=REPO, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def distribution(agent: AgentProc, **params: Any) -> dict[str, Any]:
    reply = rpc(agent.home, "drift.distribution", {"name": MODEL, **params})
    assert "result" in reply, reply
    return reply["result"]


def distribution_error(agent: AgentProc, code: int, **params: Any) -> str:
    reply = rpc(agent.home, "drift.distribution", {"name": MODEL, **params})
    assert reply["error"]["code"] == code, reply
    return str(reply["error"]["message"])


def total_variation(dist: dict[str, Any]) -> float:
    return 0.5 * float(np.abs(np.subtract(dist["reference"], dist["current"])).sum())


def check_distributions(agent: AgentProc, window: dict[str, Any]) -> None:
    """The latest window beside the reference: the shifted column moved, the steady one did not."""
    moved, steady = distribution(agent, column=SHIFTED[0]), distribution(agent, column=STEADY)
    for dist, column in [(moved, SHIFTED[0]), (steady, STEADY)]:
        assert dist["column"] == column and dist["version"] == 1 and dist["role"] == "input"
        assert (dist["window_start"], dist["window_end"]) == (window["window_start"], window["window_end"])
        assert dist["kind"] == "numeric" and len(dist["edges"]) == 21 and len(dist["current"]) == 20
        assert dist["n_reference"] > 400 and dist["n_current"] == WINDOW_ROWS
        assert sum(dist["reference"]) == pytest.approx(1) and sum(dist["current"]) == pytest.approx(1)
    assert total_variation(moved) > 0.5 and total_variation(steady) < 0.25, (moved, steady)
    centres = (np.asarray(moved["edges"][:-1]) + np.asarray(moved["edges"][1:])) / 2
    assert np.dot(centres, moved["current"]) > np.dot(centres, moved["reference"])  # shifted up by 2σ
    assert len(distribution(agent, column=SHIFTED[0], bins=5)["current"]) == 5
    report = rpc(agent.home, "drift.status", {"name": MODEL})["result"]
    output = next(r["column"] for r in report["rows"] if r["role"] == "output")
    assert distribution(agent, column=output)["role"] == "output"

    message = distribution_error(agent, wire_code(NotFound), column="mean_radiu")
    assert "no column 'mean_radiu'" in message and STEADY in message and output in message
    assert MODEL in distribution_error(agent, wire_code(NotFound), name="nosuch", column=STEADY)
    assert "bins" in distribution_error(agent, wire_code(Invalid), column=STEADY, bins=0)
    assert "colum" in distribution_error(agent, wire_code(Invalid), colum=STEADY)


@pytest.mark.slow
def test_shift_alert_retrain_gate_challenger_promotion(agent: AgentProc, tmp_path: Path) -> None:
    first = pipeline_file(tmp_path, "initial", 4, "staging")
    row = cli_json(agent, "pipeline", "run", str(first), timeout=300)
    assert row["status"] == "succeeded", row
    assert row["registered_version"] == 1 and row["promoted_alias"] == "staging"
    agent.cli("models", "promote", MODEL, "1", "--to", "production", "--yes", check=True)
    url = agent.cli("serve", "start", "--json", check=True, timeout=240).json()["url"]

    # 400 clean requests (two windows), then 400 with three columns shifted by 2 std
    sent = traffic(agent, url, "--rps", "200", "--duration", "4", "--shift-at", "2",
                   "--shift-columns", ",".join(SHIFTED), "--shift-std", "2", "--feedback-share", "0.6")
    assert sent["errors"] == 0 and sent["sent"] == 800 and sent["shifted"] == 400

    windows = judged_windows(agent, MODEL, 4, timeout=90)["windows"][:4]
    assert [w["n_requests"] for w in windows] == [WINDOW_ROWS] * 4
    assert [bool(w["dataset_drifted"]) for w in windows] == [False, False, True, True]
    for w in windows[2:]:
        assert sorted(w["drifted_columns"]) == sorted(SHIFTED)  # the shifted columns and no others
    for w in windows:
        assert w["n_labeled"] > 50 and 0 <= w["ece"] <= 1 and w["baseline_metric"] == "val_acc"
    assert windows[0]["accuracy"] > 0.85  # clean traffic: training rows, their true labels

    report = cli_json(agent, "drift", "report", MODEL)
    inputs = [c for c in report["columns"] if c["role"] == "input"]
    assert len(inputs) == 30 and {c["method"] for c in inputs} == {"ks"}
    assert sorted(c["column"] for c in inputs if c["drifted"]) == sorted(SHIFTED)
    assert any(c["role"] == "output" for c in report["columns"])
    text = agent.cli("drift", "report", MODEL, check=True).out
    assert "mean_radius" in text and "DRIFT" in text and "p-value" in text.lower()
    check_distributions(agent, windows[3])

    wait_for(lambda: call(agent, "alerts.list")["alerts"], timeout=30, interval=0.5, what="the drift alert")
    (alert,) = [a for a in cli_json(agent, "alerts") if a["kind"] == "drift"]
    assert alert["details"]["consecutive_windows"] == 2 and alert["version"] == 1
    assert alert["details"]["window_ends"] == [w["window_end"] for w in windows[2:4]]  # K = 2: at the 4th

    def retrained(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
        rows = [r for r in rows if r["trigger"].get("alert_id") == alert["alert_id"]]
        return rows[0] if rows and rows[0]["status"] != "running" else None

    wait_for(lambda: retrained(call(agent, "pipelines.list")), timeout=240, interval=0.5,
             what="the retraining pipeline")
    pipe = retrained(cli_json(agent, "pipeline", "ls"))
    assert pipe is not None
    assert pipe["status"] == "succeeded", pipe
    assert pipe["registered_version"] == 2 and pipe["promoted_alias"] == "challenger"
    lineage = cli_json(agent, "models", "lineage", f"{MODEL}/2")
    assert lineage["run"]["parent_run_id"] == pipe["pipeline_id"]
    assert lineage["parents"][0]["run_id"] == pipe["pipeline_id"]
    (run,) = cli_json(agent, "query", f"SELECT tags FROM runs WHERE run_id = '{lineage['run']['run_id']}'")
    tags = json.loads(run["tags"]) if isinstance(run["tags"], str) else run["tags"]
    assert tags["alert_id"] == alert["alert_id"] and tags["pipeline"] == pipe["pipeline_id"]

    unjudged = distribution_error(agent, wire_code(NotFound), column=STEADY, version=2)
    assert f"no judged {WINDOW_ROWS}rows window of {MODEL} v2 yet" in unjudged
    agent.cli("models", "promote", MODEL, "2", "--to", "production", "--yes", "--reason", "retrained",
              check=True)
    audit = cli_json(agent, "models", "audit", MODEL)
    steps = [(a["actor"], a["action"], a.get("alias"), a["version"]) for a in audit]
    monitor = [s for s in steps if s[0] == "mldeck-monitor"]
    assert ("mldeck-monitor", "alert", None, 1) in monitor
    assert ("mldeck-monitor", "retrain", None, 1) in monitor
    assert ("mldeck-monitor", "register", None, 2) in monitor
    assert ("mldeck-monitor", "promote", "challenger", 2) in monitor
    assert steps[-1][1:] == ("promote", "production", 2)
    retrain_row = next(a for a in audit if a["action"] == "retrain")
    assert retrain_row["details"]["pipeline_id"] == pipe["pipeline_id"]
    alert_row = next(a for a in audit if a["action"] == "alert")
    assert alert_row["details"]["drifted_columns"] and alert_row["details"]["share_drifted"]

    # v2 in production sees clean traffic: two clean windows close the drift alert by themselves
    assert traffic(agent, url, "--rps", "200", "--duration", "2", "--feedback-share", "0.6")["errors"] == 0

    def resolved(alert_id: str) -> bool:
        return any(a["alert_id"] == alert_id and a["status"] == "resolved"
                   for a in call(agent, "alerts.list", all=True)["alerts"])

    wait_for(lambda: resolved(alert["alert_id"]), timeout=60, interval=0.5, what="the alert closing itself")
    closing = next(a for a in cli_json(agent, "models", "audit", MODEL) if a["action"] == "resolve_alert")
    assert closing["actor"] == "mldeck-monitor" and closing["version"] == 1
    assert "v2 matched its reference in 2 consecutive windows" in closing["comment"]
    done = agent.cli("alerts", "resolve", alert["alert_id"])
    assert done.code != 0 and "already resolved" in done.err

    # an untrained v3 promoted over v2 does worse on live labels: the policy rolls production back
    trained = subprocess.run(
        [sys.executable, "-m", "mldeck.agent.demo.train", "--epochs", "0", "--hidden", "4",
         "--name", "untrained"],
        capture_output=True, text=True, env=agent_env(agent.home), cwd=REPO, timeout=180,
    )
    assert trained.returncode == 0, trained.stderr
    run_id = json.loads(trained.stdout.strip().splitlines()[-1])["run_id"]
    wait_for(lambda: rpc(agent.home, "runs.get", {"run_id": run_id}).get("result"), timeout=30,
             what="the untrained run")
    assert cli_json(agent, "models", "register", run_id, "--name", MODEL)["version"] == 3
    agent.cli("models", "promote", MODEL, "3", "--to", "production", "--yes", check=True)
    assert traffic(agent, url, "--rps", "200", "--duration", "2", "--feedback-share", "0.6")["errors"] == 0
    wait_for(lambda: any(a["kind"] == "rollback" for a in call(agent, "alerts.list", name=MODEL)["alerts"]),
             timeout=60, interval=0.5, what="the rollback")
    back = [a for a in cli_json(agent, "alerts", "--model", MODEL) if a["kind"] == "rollback"]
    numbers = back[0]["details"]
    assert (numbers["new_version"], numbers["old_version"]) == (3, 2)
    assert numbers["new_accuracy"] < numbers["old_accuracy"] - numbers["margin"]
    assert cli_json(agent, "models", "show", f"{MODEL}@production")["version"] == 2
    undo = [a for a in cli_json(agent, "models", "audit", MODEL) if a["action"] == "rollback"]
    assert [(a["actor"], a["version"]) for a in undo] == [("mldeck-monitor", 2)]
    assert "live accuracy" in undo[0]["comment"]
