"""`mldeck agent stop` says "stopped" only once the agent's process has exited (issue 13)."""

from __future__ import annotations

import os
import signal

import psutil

from tests.conftest import AgentProc


def test_an_agent_that_cannot_exit_is_reported_still_running(agent_home: AgentProc) -> None:
    """SIGSTOP holds the agent: it can neither answer nor exit. Stop says what it waits for, then that the
    agent still runs, its pid and what to do, and exits non-zero; let go, the agent ends by itself."""
    pid = agent_home.proc.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        stuck = agent_home.cli("agent", "stop", "--timeout", "2")
        assert agent_home.proc.poll() is None
    finally:
        os.kill(pid, signal.SIGCONT)
    assert stuck.code == 1, stuck
    assert f"(pid {pid})" in stuck.out and "waiting up to 2s" in stuck.out, stuck.out
    assert "stopped" not in stuck.out, stuck.out
    lines = stuck.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mldeck: "), stuck.err
    assert f"the agent (pid {pid}) is still running 2s after" in lines[0] and f"kill -9 {pid}" in lines[0]
    assert agent_home.proc.wait(timeout=30) == 0  # the SIGTERM it was sent while held: a clean stop
    again = agent_home.cli("agent", "stop")
    assert again.code == 0 and "no agent running" in again.out, again


def test_stopped_means_the_process_is_gone(agent_home: AgentProc) -> None:
    pid = agent_home.proc.pid
    done = agent_home.cli("agent", "stop", "--json")
    assert done.code == 0 and done.json() == {"stopped": True, "running": False, "pid": pid}, done
    # The agent is this test's child: exited, it stays a zombie until the test reads its exit status.
    assert psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert agent_home.proc.wait(timeout=5) == 0
