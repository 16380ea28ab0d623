"""The foundation's CLI as a user runs it: agent lifecycle, runs, query, and one-line errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO, AgentProc, CliResult, agent_env, wait_for


def mldeck(home: Path, *args: str) -> CliResult:
    done = subprocess.run([sys.executable, "-m", "mldeck.tui.cli", *args], capture_output=True, text=True,
                          env=agent_env(home), cwd=REPO, timeout=60)
    return CliResult(done.returncode, done.stdout, done.stderr)


def test_agent_start_status_stop(tmp_path: Path) -> None:
    home = tmp_path / "h"
    down = mldeck(home, "agent", "status")
    assert down.code == 3 and "not running" in down.out
    started = mldeck(home, "agent", "start")
    assert started.code == 0 and "agent started" in started.out, started.err
    try:
        again = mldeck(home, "agent", "start", "--json")
        assert again.code == 0 and again.json()["already_running"] is True
        status = mldeck(home, "agent", "status", "--json").json()
        assert status["running"] and status["nvml"] == "simulated" and status["home"] == str(home)
    finally:
        stopped = mldeck(home, "agent", "stop")
    assert stopped.code == 0 and "agent stopped" in stopped.out
    assert not (home / "agent.sock").exists()


def test_commands_without_an_agent_say_what_to_do(tmp_path: Path) -> None:
    result = mldeck(tmp_path / "nowhere", "runs", "ls")
    assert result.code == 3  # unavailable, as `agent status` says of an agent that does not run
    assert result.err.count("\n") == 1 and "mldeck agent start" in result.err


def test_runs_ls_show_and_query_json(agent_home: AgentProc) -> None:
    script = ("from core import track\n"
              "run = track.init(name='cli', experiment='e1', params={'lr': 0.01})\n"
              "for i in range(5): run.log({'loss': 1.0 / (i + 1)}, step=i)\n"
              "run.finish()\n")
    assert agent_home.python("-c", script).returncode == 0
    runs = wait_for(lambda: [r for r in agent_home.cli("runs", "ls", "--json").json()
                             if r["status"] == "succeeded"], what="the run")
    run = runs[0]
    assert {"run_id", "name", "experiment", "status", "params", "created_at"} <= run.keys()
    assert run["params"] == {"lr": 0.01} and run["experiment"] == "e1"
    table = agent_home.cli("runs", "ls", check=True).out
    assert run["run_id"] in table and "succeeded" in table
    shown = agent_home.cli("runs", "show", run["run_id"], "--json", check=True).json()
    assert shown["metrics"]["loss"] == 0.2 and shown["name"] == "cli"
    rows = agent_home.cli("query", "SELECT step, value FROM metrics ORDER BY step", "--json",
                          check=True).json()
    assert [r["step"] for r in rows] == [0, 1, 2, 3, 4]


def test_bad_input_is_one_line_and_non_zero(agent_home: AgentProc) -> None:
    for args, words in [
        (("runs", "show", "no-such-run"), "no run 'no-such-run'"),
        (("query", "DELETE FROM runs"), "only read-only queries"),
        (("query", "SELECT * FROM nope"), "query failed"),
    ]:
        result = agent_home.cli(*args)
        assert result.code != 0 and words in result.err and result.err.count("\n") == 1, result
    assert agent_home.proc.poll() is None
