"""`mldeck runs archive`, `runs restore` and `store compact` (issue 18) on a real agent and store file: old
finished runs go to Parquet and come back whole; runs that must stay stay; a file a crash left behind is
written again; compaction gives space back with every table's rows the same."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import duckdb
import pyarrow.parquet as pq
import pytest

from mldeck.core import archive
from mldeck.core.archive import RUN_META
from mldeck.core.schema import LEVEL_FROM
from mldeck.core.store import Store
from tests.agent.test_summaries import LEVEL_WRONG, SUMMARY_WRONG, all_ingested, query
from tests.conftest import AgentProc, rpc, start_agent, wait_for

DAY = 86_400.0
SERIES = "SELECT * FROM metric_summary WHERE run_id = '{run}' ORDER BY key"
LEVEL = "SELECT * FROM metric_level WHERE run_id = '{run}' ORDER BY key, bucket"
COLLECTED = ("system_metrics", "gpu_processes")
ARCHIVED = "SELECT run_id, count(*) FROM archived_metrics GROUP BY run_id ORDER BY run_id"


def write_run(home: Path, run_id: str, ended: float | None, steps: int = 50, experiment: str = "exp",
              created: float | None = None) -> None:
    """A run's metrics.jsonl as the SDK writes it: init, points (a NaN and a repeated step among them),
    and a finish line at `ended` (none: still running)."""
    created = created if created is not None else (ended or time.time()) - 3600
    init = {"name": run_id, "experiment": experiment, "params": {"lr": 0.1}, "created_at": created}
    lines: list[dict[str, Any]] = [{"t": created, "e": "init", "d": init}]
    lines += [{"t": created + s, "s": s, "m": {"loss": 1 / (s + 1), "acc": "NaN" if s == 3 else s / steps}}
              for s in range(steps)]
    lines.append({"t": created + steps, "s": steps - 1, "m": {"loss": 42.0}})  # the last step, written twice
    if ended is not None:
        lines.append({"t": ended, "e": "finish", "d": {"status": "succeeded"}})
    path = home / "runs" / run_id / "metrics.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))


def call(home: Path, method: str, params: dict[str, Any] | None = None, timeout: float = 60) -> Any:
    reply = rpc(home, method, params, timeout=timeout)
    assert "result" in reply, reply
    return reply["result"]


def counts(home: Path) -> dict[str, int]:
    """Each table's rows, but the collector's (they grow while the test runs)."""
    tables = [r[0] for r in query(home, "SELECT table_name FROM duckdb_tables() ORDER BY 1")]
    return {t: query(home, f'SELECT count(*) FROM "{t}"')[0][0] for t in tables if t not in COLLECTED}


def live_ids(home: Path) -> set[str]:
    return {r["run_id"] for r in call(home, "runs.list", {"limit": 10_000})}


def ingested(home: Path, runs: int) -> None:
    wait_for(lambda: all_ingested(home) and query(home, "SELECT count(*) FROM runs")[0][0] == runs,
             timeout=60, what="every run ingested")


def test_archive_moves_old_finished_runs_out_and_restore_brings_one_back(tmp_path: Path) -> None:
    home = tmp_path / "home"
    old = time.time() - 100 * DAY
    write_run(home, "old-a", old, steps=LEVEL_FROM + 100)  # long enough for a level
    write_run(home, "old-b", old + 60, experiment="other")
    write_run(home, "old-model", old)
    write_run(home, "old-running", None, created=old)
    write_run(home, "recent", time.time() - DAY)
    agent = start_agent(home)
    ingested(home, 5)
    agent.stop()
    con = duckdb.connect(str(home / "mldeck.duckdb"))  # what the registry would have written
    con.execute("INSERT INTO model_versions (name, version, run_id) VALUES ('m', 1, 'old-model')")
    con.close()
    agent = start_agent(home)
    try:
        before = {run: (query(home, SERIES.format(run=run)), query(home, LEVEL.format(run=run)))
                  for run in ("old-a", "old-b")}
        everything = counts(home)
        dry = agent.cli("runs", "archive", "--before", "90d", "--dry-run", "--json", check=True).json()
        assert sorted(dry["runs"]) == ["old-a", "old-b"] and dry["points"] == 2 * (LEVEL_FROM + 100) + 1 + 101
        assert dry["kept"] == {"not finished": 1, "it backs a registered model version": 1}
        assert counts(home) == everything and not (home / "archive").exists()
        assert query(home, ARCHIVED) == []

        out = agent.cli("runs", "archive", "--before", "90d", check=True).out
        assert "archived 2 runs" in out and "1 because it backs a registered model version" in out
        assert live_ids(home) == {"old-model", "old-running", "recent"}
        for table in ("metrics", "metric_summary", "metric_level"):
            assert query(home, f"SELECT count(*) FROM {table} WHERE run_id IN ('old-a', 'old-b')") == [[0]]
        assert query(home, SUMMARY_WRONG.format(level_from=LEVEL_FROM)) == []
        assert query(home, LEVEL_WRONG) == []
        month = time.strftime("%Y-%m", time.gmtime(old - 3600))
        files = sorted(p.relative_to(home).as_posix() for p in (home / "archive").rglob("*") if p.is_file())
        assert files == [f"archive/{month}/old-a.parquet", f"archive/{month}/old-b.parquet"]
        table = pq.read_table(home / files[0])
        assert table.num_rows == 2 * (LEVEL_FROM + 100) + 1
        assert json.loads(table.schema.metadata[RUN_META])["params"] == '{"lr": 0.1}'
        points = {"old-a": 2 * (LEVEL_FROM + 100) + 1, "old-b": 101}
        assert query(home, ARCHIVED) == [[run, n] for run, n in points.items()]
        read = agent.cli("query", "SELECT max(value) AS loss FROM archived_metrics WHERE key = 'loss'",
                         "--json", check=True).json()
        assert read == [{"loss": 42.0}]

        listed = agent.cli("runs", "ls", "--archived", "--json", check=True).json()
        assert [r["run_id"] for r in listed] == ["old-b", "old-a"]
        assert listed[1]["archived"]["path"] == str(home / files[0]) and listed[1]["metrics"]["loss"] == 42.0
        assert listed[1]["params"] == {"lr": 0.1}
        shown = agent.cli("runs", "show", "old-a", check=True).out
        assert f"in {home / files[0]}" in shown and "mldeck runs restore old-a" in shown
        missing = rpc(home, "runs.metrics", {"run_id": "old-a"})["error"]["message"]
        assert "archived in" in missing and "runs restore old-a" in missing

        assert agent.cli("runs", "restore", "old-a", check=True).code == 0
        assert query(home, SERIES.format(run="old-a")) == before["old-a"][0]
        assert query(home, LEVEL.format(run="old-a")) == before["old-a"][1]
        assert call(home, "runs.get", {"run_id": "old-a"})["params"] == {"lr": 0.1}
        assert not (home / files[0]).exists() and "old-a" in live_ids(home)
        assert query(home, ARCHIVED) == [["old-b", 101]]
        again = agent.cli("runs", "restore", "old-a")
        assert again.code == 1 and "not archived" in again.err
        assert counts(home) == {**everything, "archived_runs": 1, "runs": everything["runs"] - 1,
                                "metrics": everything["metrics"] - 101, "metric_summary":
                                everything["metric_summary"] - 2}
    finally:
        agent.stop()


def test_recover_keeps_archived_runs_archived(tmp_path: Path) -> None:
    """A lost store rebuilt from the home's files (`agent recover`): the run folders of archived runs are
    still there, but those runs come back archived, as their files in archive/ say, not live."""
    home = tmp_path / "home"
    old = time.time() - 100 * DAY
    write_run(home, "old-a", old, steps=120)
    write_run(home, "old-b", old + 60, steps=4)  # its last acc is the NaN of step 3
    write_run(home, "recent", time.time() - DAY)
    agent = start_agent(home)
    try:
        ingested(home, 3)
        call(home, "runs.archive", {"before_s": 90 * DAY})
        listed = agent.cli("runs", "ls", "--archived", "--json", check=True).json()
        points = query(home, ARCHIVED)
    finally:
        agent.stop()
    (home / "mldeck.duckdb").unlink()
    recovered = agent.cli("agent", "recover", "--json", check=True).json()
    assert recovered["archived_runs"] == 2 and recovered["runs"] == 1
    agent = start_agent(home)
    try:
        assert live_ids(home) == {"recent"} and query(home, ARCHIVED) == points
        again = agent.cli("runs", "ls", "--archived", "--json", check=True).json()
        for run in (*listed, *again):
            del run["archived"]["at"]
        assert again == listed and again[0]["metrics"] == {"loss": 42.0, "acc": "NaN"}
        assert again[1]["metrics"] == {"loss": 42.0, "acc": 119 / 120}
        agent.cli("runs", "restore", "old-a", check=True)
        assert live_ids(home) == {"recent", "old-a"}
    finally:
        agent.stop()


def test_a_file_a_crash_left_is_written_again_and_nothing_is_lost(agent_home: AgentProc) -> None:
    """A crash between writing a run's file and deleting its rows leaves the run live and the file behind
    (here: half a file); the next archive writes it whole, and the run comes back point for point."""
    home = agent_home.home
    ended = time.time() - 10 * DAY
    write_run(home, "crashed", ended)
    ingested(home, 1)
    month = time.strftime("%Y-%m", time.gmtime(ended - 3600))
    left = home / "archive" / month / "crashed.parquet"
    left.parent.mkdir(parents=True)
    left.write_bytes(b"PAR1 half a file")
    (left.parent / ".crashed.parquet.partial").write_bytes(b"PAR1")
    points = query(home, "SELECT key, step, value FROM metrics ORDER BY rowid")
    assert call(home, "runs.archive", {"before_s": DAY})["runs"] == ["crashed"]
    assert pq.read_table(left).num_rows == len(points)
    call(home, "runs.restore", {"run_id": "crashed"})
    assert query(home, "SELECT key, step, value FROM metrics ORDER BY rowid") == points


def read_until(home: Path, done: threading.Event, replies: list[Any]) -> None:
    """Ask for the runs and one run over and over, as a screen would, until done."""
    while not done.is_set():
        replies.append(rpc(home, "runs.list", {"limit": 100}, timeout=60))
        replies.append(rpc(home, "runs.get", {"run_id": "kept"}, timeout=60))


def test_compact_gives_space_back_and_keeps_every_row(tmp_path: Path) -> None:
    """Fill, archive, compact: the file is smaller, every table's rows are the same, and the reads asked
    meanwhile are all answered (a read in flight ends before the swap, a new one waits for it)."""
    home = tmp_path / "home"
    old = time.time() - 100 * DAY
    for i in range(8):
        write_run(home, f"run-{i}", old + i, steps=20_000)
    write_run(home, "kept", time.time())
    agent = start_agent(home)
    try:
        ingested(home, 9)
        assert len(call(home, "runs.archive", {"before_s": 90 * DAY})["runs"]) == 8
        before = counts(home)
        size = (home / "mldeck.duckdb").stat().st_size
        done, replies = threading.Event(), []
        reader = threading.Thread(target=read_until, args=(home, done, replies))
        reader.start()
        try:
            out = agent.cli("store", "compact", "--json", check=True).json()
        finally:
            done.set()
            reader.join()
        assert len(replies) > 3 and [r for r in replies if "result" not in r] == []
        assert out["bytes_before"] >= size and out["bytes_after"] < size / 2
        assert (home / "mldeck.duckdb").stat().st_size == out["bytes_after"]
        assert {t: n for t, n in out["tables"].items() if t not in COLLECTED} == before == counts(home)
        assert not list(home.glob(".compact*"))
        assert query(home, SUMMARY_WRONG.format(level_from=LEVEL_FROM)) == []
        write_run(home, "after", time.time())  # the agent ingests into the new file
        ingested(home, 2)
        call(home, "runs.restore", {"run_id": "run-3"})
        assert live_ids(home) == {"kept", "after", "run-3"}
    finally:
        agent.stop()
    agent = start_agent(home)
    try:
        assert live_ids(home) == {"kept", "after", "run-3"}
        assert query(home, "SELECT count(*) FROM archived_runs") == [[7]]
    finally:
        agent.stop()


@pytest.mark.parametrize("before", ["90", "3y", "d"])
def test_an_age_that_is_not_one_is_a_usage_error(agent_home: AgentProc, before: str) -> None:
    result = agent_home.cli("runs", "archive", "--before", before)
    assert result.code == 2 and "give an age such as 90d" in result.err


def test_the_trials_of_a_running_sweep_and_queued_jobs_stay(tmp_path: Path) -> None:
    """What the agent would be busy with (plan, on a real store file): a running sweep's finished trials,
    a finished run whose job is queued again (a requeue), a run whose id cannot name a file."""
    store = Store(tmp_path / "mldeck.duckdb")
    try:
        for run_id, sweep in (("trial-1", "sw-on"), ("trial-2", "sw-done"), ("requeued", None),
                              ("run a/b", None), ("plain", None)):
            store.upsert_run({"run_id": run_id, "status": "succeeded", "created_at": 1.0, "ended_at": 2.0,
                              "sweep_id": sweep})
        cur = store.cur()
        cur.execute("INSERT INTO sweeps (sweep_id, status) VALUES ('sw-on', 'running'), ('sw-done', 'done')")
        cur.execute("INSERT INTO jobs (run_id, state) VALUES ('requeued', 'queued'), ('plain', 'done')")
        plan = archive.plan(store, 3.0, None, None)
        assert sorted(r for r, _ in plan.runs) == ["plain", "trial-2"]
        assert plan.kept == {"its sweep is still running": 1, "its job is still queued or running": 1,
                             "its id cannot name a file": 1}
        assert archive.plan(store, 1.5, None, None).runs == []  # none ended before the cutoff
    finally:
        store.close()
