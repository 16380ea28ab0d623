"""A run whose process died without a word (kill -9, the OOM killer, a reboot) does not stay "running":
the agent sees the process gone (its pid, and when it started: a pid used again is not the run's) and
ends the run as failed, saying why. Real agents, real SDK processes, real kills."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.agent.test_jobs import rpc
from tests.conftest import REPO, AgentProc, agent_env, start_agent, wait_for

pytestmark = pytest.mark.timeout(120)

CONFIG = """
[agent]
collector_interval_s = 0.5
[jobs]
poll_interval_s = 0.1
[serving]
autostart = false
[store]
backups = 0
"""

# A training script run by hand, outside the agent: the SDK alone records the run (and its pid).
PLAIN = """
import time
import mldeck
run = mldeck.init(name="plain")
print(run.id, flush=True)
step = 0
while True:
    run.log({"loss": 1.0 / (step + 1)}, step=step)
    step += 1
    time.sleep(0.05)
"""

WAITER = "import time\nprint('up', flush=True)\ntime.sleep(120)\n"


def status(agent: AgentProc, run_id: str) -> dict[str, Any] | None:
    rows = rpc(agent, "query", sql="SELECT status, status_reason, ended_at FROM runs "
                                   f"WHERE run_id = '{run_id}'")
    return dict(zip(rows["columns"], rows["rows"][0], strict=True)) if rows["rows"] else None


def wait_status(agent: AgentProc, run_id: str, wanted: str, timeout: float = 30) -> dict[str, Any]:
    return wait_for(lambda: (row := status(agent, run_id)) and row["status"] == wanted and row,
                    timeout=timeout, what=f"run {run_id} to be {wanted}")


def plain_run(agent: AgentProc, script: Path) -> tuple[subprocess.Popen[str], str]:
    """`python train.py` with the SDK, as a user runs it beside the agent: the process and its run id."""
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                            env=agent_env(agent.home), cwd=REPO)
    assert proc.stdout is not None
    return proc, proc.stdout.readline().strip()


def hard_kill(proc: subprocess.Popen[str]) -> None:
    proc.kill()
    proc.wait(timeout=10)


@pytest.fixture
def script(tmp_path: Path) -> Path:
    path = tmp_path / "train.py"
    path.write_text(PLAIN)
    return path


def test_a_plain_run_killed_ends_failed_saying_why(tmp_path: Path, script: Path) -> None:
    agent = start_agent(tmp_path / "home", config=CONFIG)
    killed, lost = plain_run(agent, script)
    alive, live = plain_run(agent, script)
    try:
        wait_status(agent, lost, "running")
        wait_status(agent, live, "running")
        hard_kill(killed)
        row = wait_status(agent, lost, "failed", timeout=20)
        assert f"its process (pid {killed.pid}) disappeared without an exit code" in row["status_reason"]
        assert "OOM killer" in row["status_reason"] and row["ended_at"] <= time.time()
        assert status(agent, live)["status"] == "running"  # its process still runs: not taken for lost
        assert f"run {lost}: its process (pid {killed.pid})" in (agent.home / "agent.log").read_text()
    finally:
        hard_kill(alive)
        agent.stop()


def test_a_run_that_died_while_the_agent_was_down_is_ended_at_start(tmp_path: Path, script: Path) -> None:
    first = start_agent(tmp_path / "home", config=CONFIG)
    proc, run_id = plain_run(first, script)
    try:
        wait_status(first, run_id, "running")
        first.kill(signal.SIGKILL)
        hard_kill(proc)
        second = start_agent(first.home, config=CONFIG)
        try:
            row = wait_status(second, run_id, "failed", timeout=20)
            assert f"pid {proc.pid}" in row["status_reason"]
        finally:
            second.stop()
    finally:
        first.stop()


def _hand_made_run(home: Path, run_id: str, pid: int, created_at: float) -> None:
    """What the SDK leaves for a run started outside the agent: run.json (with its pid) and an init line."""
    run_dir = home / "runs" / run_id
    run_dir.mkdir(parents=True)
    spec = {"run_id": run_id, "name": run_id, "experiment": "default", "host": socket.gethostname(),
            "created_at": created_at, "pid": pid}
    (run_dir / "run.json").write_text(json.dumps(spec))
    init = {k: v for k, v in spec.items() if k != "run_id"}
    (run_dir / "metrics.jsonl").write_text(json.dumps({"t": created_at, "e": "init", "d": init}) + "\n")


def test_a_pid_used_again_by_a_younger_process_is_not_the_run(tmp_path: Path) -> None:
    """After a reboot (or a long while) the run's pid may name another process: one that started after
    the run was created cannot be the run's."""
    agent = start_agent(tmp_path / "home", config=CONFIG)
    stranger = subprocess.Popen(["sleep", "60"])
    try:
        now = time.time()
        _hand_made_run(agent.home, "reused-pid", stranger.pid, now - 600)  # the sleep started just now
        _hand_made_run(agent.home, "still-alive", os.getpid(), now)  # this test began before it
        row = wait_status(agent, "reused-pid", "failed", timeout=20)
        assert f"pid {stranger.pid}" in row["status_reason"]
        assert psutil.pid_exists(stranger.pid)
        assert status(agent, "still-alive")["status"] == "running"
    finally:
        stranger.kill()
        stranger.wait()
        agent.stop()


def test_a_job_killed_under_a_restarted_agent_is_not_said_to_have_died_while_it_was_down(
    tmp_path: Path,
) -> None:
    """The agent launched it, then restarted (re-adopting it by pid and start time); kill -9 of the job's
    whole process group now leaves no exit code, and the reason says what happened, with the pid."""
    (tmp_path / "waiter.py").write_text(WAITER)
    first = start_agent(tmp_path / "home", config=CONFIG)
    try:
        run_id = rpc(first, "runs.launch", script=str(tmp_path / "waiter.py"))["run_id"]
        wait_status(first, run_id, "running")
        pid = int(rpc(first, "query", sql=f"SELECT pid FROM jobs WHERE run_id = '{run_id}'")["rows"][0][0])
        first.kill(signal.SIGKILL)
        second = start_agent(first.home, config=CONFIG)
        try:
            assert rpc(second, "jobs.queue")["running"][0]["run_id"] == run_id
            os.killpg(pid, signal.SIGKILL)
            row = wait_status(second, run_id, "failed", timeout=20)
            assert row["status_reason"].startswith(f"its process (pid {pid}) disappeared without an exit")
            assert "agent was down" not in row["status_reason"]
        finally:
            second.stop()
    finally:
        first.stop()
