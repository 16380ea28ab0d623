"""Exactly-once ingest through a real agent process, including kill -9 at arbitrary moments."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, AgentProc, agent_env, start_agent, wait_for


def count(agent: AgentProc, sql: str) -> int:
    return agent.cli("query", sql, "--json", check=True).json()[0]["n"]


def write_run(home: Path, run_id: str, lines: list[str]) -> Path:
    run_dir = home / "runs" / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "metrics.jsonl"
    with open(path, "a") as fh:
        fh.write("".join(lines))
    return path


def point(step: int, **values: float) -> str:
    return json.dumps({"t": time.time(), "s": step, "m": values}) + "\n"


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_kill_9_loses_nothing_and_doubles_nothing(tmp_path: Path) -> None:
    home = tmp_path / "home"
    agent = start_agent(home)
    steps = 60_000
    writer = subprocess.Popen(
        [sys.executable, "-c",
         "import time\nfrom core import track\n"
         "run = track.init(name='w')\n"
         f"for i in range({steps}):\n"
         "    run.log({'loss': 1.0 / (i + 1), 'acc': i * 1e-5, 'lr': 0.1, 'gn': 2.0}, step=i)\n"
         "    if i % 2000 == 0: time.sleep(0.05)\n"
         "run.finish()\n"],
        env=agent_env(home), cwd=REPO,
    )
    rng = random.Random(7)
    for _ in range(3):
        time.sleep(rng.uniform(0.2, 0.8))
        agent.kill(9)
        agent = start_agent(home)
    assert writer.wait(timeout=120) == 0
    try:
        wait_for(lambda: count(agent, "SELECT count(*) AS n FROM metrics") >= steps * 4,
                 timeout=60, what="all points ingested")
        time.sleep(0.5)
        assert count(agent, "SELECT count(*) AS n FROM metrics") == steps * 4
        dupes = "SELECT count(*) AS n FROM (SELECT run_id, key, step FROM metrics " \
                "GROUP BY ALL HAVING count(*) > 1)"
        assert count(agent, dupes) == 0
        runs = agent.cli("runs", "ls", "--json", check=True).json()
        assert [r["status"] for r in runs] == ["succeeded"]
    finally:
        agent.stop()


def test_half_written_line_waits_for_its_newline(agent_home: AgentProc) -> None:
    path = write_run(agent_home.home, "half", [point(0, x=1.0)])
    whole = point(1, x=2.0)
    with open(path, "a") as fh:
        fh.write(whole[:10])
    wait_for(lambda: count(agent_home, "SELECT count(*) AS n FROM metrics WHERE run_id='half'") == 1)
    time.sleep(1)
    assert count(agent_home, "SELECT count(*) AS n FROM metrics WHERE run_id='half'") == 1
    with open(path, "a") as fh:
        fh.write(whole[10:])
    wait_for(lambda: count(agent_home, "SELECT count(*) AS n FROM metrics WHERE run_id='half'") == 2)


def test_bad_lines_are_skipped_counted_and_named(agent_home: AgentProc) -> None:
    write_run(agent_home.home, "bad", [
        point(0, loss=1.0),
        "{not json\n",
        json.dumps({"t": 1.0, "s": 1, "m": {"loss": "high"}}) + "\n",
        point(2, loss=0.5),
    ])
    write_run(agent_home.home, "good", [point(0, loss=3.0)])
    wait_for(lambda: count(agent_home, "SELECT count(*) AS n FROM metrics") == 3, what="good lines")
    status = agent_home.cli("agent", "status", "--json", check=True).json()
    assert status["ingest"]["bad_lines"] == 2
    log = (agent_home.home / "agent.log").read_text()
    assert "runs/bad/metrics.jsonl:2: skipped a bad line" in log
    assert "runs/bad/metrics.jsonl:3: skipped a bad line" in log


def test_resume_event_supersedes_replayed_steps(agent_home: AgentProc) -> None:
    lines = [point(i, loss=float(i)) for i in range(10)]
    lines.append(json.dumps({"t": time.time(), "e": "resume", "d": {"step": 5}}) + "\n")
    lines += [point(i, loss=100.0 + i) for i in range(6, 10)]
    write_run(agent_home.home, "resumed", lines)
    sql = "SELECT count(*) AS n FROM metrics WHERE run_id='resumed'"
    wait_for(lambda: count(agent_home, sql) == 10, what="resumed run")
    rows = agent_home.cli("query", "SELECT step, value FROM metrics WHERE run_id='resumed' ORDER BY step",
                          "--json", check=True).json()
    assert [r["step"] for r in rows] == list(range(10))
    assert [r["value"] for r in rows][6:] == [106.0, 107.0, 108.0, 109.0]
