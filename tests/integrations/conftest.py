"""A real agent for the integration tests, and the stop-with-requeue check every framework goes through."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import AgentProc, rpc, start_agent, wait_for

CONFIG = """
[agent]
collector_interval_s = 0.5
[jobs]
poll_interval_s = 0.1
grace_s = 60
"""


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[AgentProc]:
    proc = start_agent(tmp_path / "home", config=CONFIG)
    yield proc
    proc.stop()


def sql(agent: AgentProc, query: str) -> list[dict[str, Any]]:
    reply = rpc(agent.home, "query", {"sql": query})
    result = reply["result"]
    return [dict(zip(result["columns"], row, strict=True)) for row in result["rows"]]


def run_row(agent: AgentProc, run_id: str) -> dict[str, Any]:
    return rpc(agent.home, "runs.get", {"run_id": run_id}).get("result") or {}


def requeue_midway(agent: AgentProc, script: Path, args: list[str], key: str, at_step: int) -> dict[str, Any]:
    """Launch the script with `mldeck run`, stop it with `--requeue` once `key` reached at_step, and return
    the run once its second attempt has succeeded."""
    run_id = agent.cli("run", str(script), "--", *args, check=True).out.strip()

    def reached() -> bool:
        if run_row(agent, run_id).get("status") in ("failed", "stopped"):
            raise AssertionError(agent.cli("runs", "logs", run_id).out)
        rows = sql(agent, f"SELECT max(step) AS s FROM metrics WHERE run_id = '{run_id}' AND key = '{key}'")
        return (rows[0]["s"] or -1) >= at_step

    wait_for(reached, timeout=240, interval=0.2, what=f"{key} at step {at_step}")
    stop = agent.cli("runs", "stop", run_id, "--requeue", check=True)
    assert "requeue" in stop.out, stop.out
    wait_for(lambda: run_row(agent, run_id).get("status") in ("succeeded", "failed", "stopped"), timeout=300,
             interval=0.3, what="the requeued run to end")
    run = run_row(agent, run_id)
    assert run["status"] == "succeeded", agent.cli("runs", "logs", run_id).out
    return run


def points_per_step(agent: AgentProc, run_id: str) -> dict[str, list[int]]:
    """Each key's steps in order, after checking that no (key, step) point is stored twice."""
    rows = sql(agent, f"SELECT key, step, count(*) AS n FROM metrics WHERE run_id = '{run_id}' "
                      "GROUP BY key, step ORDER BY key, step")
    twice = [r for r in rows if r["n"] != 1]
    assert not twice, f"points stored more than once: {twice}"
    steps: dict[str, list[int]] = {}
    for r in rows:
        steps.setdefault(r["key"], []).append(r["step"])
    return steps


def attempt_starts(agent: AgentProc, run_id: str) -> list[int]:
    """The step each attempt started at, as the scripts print it: `starting at N`."""
    log = agent.cli("runs", "logs", run_id, check=True).out
    return [int(line.split()[-1]) for line in log.splitlines() if line.startswith("starting at")]
