"""Per-run summaries and long series' levels (issue 18) always say what the points say: after seeded random
ingest with torn lines, resumes, archives, restores and kill -9 of a real agent (no point lost or doubled
on the way), and when an older store is upgraded."""

from __future__ import annotations

import json
import math
import random
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import duckdb
import pytest

from mldeck.core.schema import LEVEL_BUCKETS, LEVEL_FROM, MIGRATIONS
from tests.conftest import AgentProc, rpc, start_agent, wait_for

KEYS = ("loss", "acc", "lr")
SUMMARIES = next(i for i, sql in enumerate(MIGRATIONS) if "CREATE TABLE metric_summary" in sql)
"""The migration that brought summaries and levels: an older store has those before it."""
ODD_VALUES = (math.nan, math.inf, -math.inf, 0.5, 2.0, -3.0)

SUMMARY_WRONG = """
    WITH truth AS (
        SELECT run_id, key, count(*) AS points, min(step) AS first_step, max(step) AS last_step,
               min(value) FILTER (NOT isnan(value)) AS min_value,
               max(value) FILTER (NOT isnan(value)) AS max_value
        FROM metrics GROUP BY run_id, key),
    t AS (
        SELECT t.*, min(m.step) FILTER (m.value = t.min_value) AS min_step,
               min(m.step) FILTER (m.value = t.max_value) AS max_step,
               list(m.value) FILTER (m.step = t.last_step) AS last_values
        FROM truth t JOIN metrics m USING (run_id, key) GROUP BY ALL)
    SELECT coalesce(t.run_id, s.run_id), coalesce(t.key, s.key) FROM t FULL JOIN metric_summary s
        ON t.run_id = s.run_id AND t.key = s.key
    WHERE t.points IS DISTINCT FROM s.points OR t.first_step IS DISTINCT FROM s.first_step
       OR t.last_step IS DISTINCT FROM s.last_step
       OR NOT coalesce(list_contains(t.last_values, s.last_value), false)
       OR t.min_value IS DISTINCT FROM s.min_value OR t.min_step IS DISTINCT FROM s.min_step
       OR t.max_value IS DISTINCT FROM s.max_value OR t.max_step IS DISTINCT FROM s.max_step
       OR (s.points > {level_from}) IS DISTINCT FROM (s.level_shift IS NOT NULL)
    ORDER BY ALL LIMIT 5
"""
"""The series whose summary differs from what their points say (none, when summaries are kept right)."""

LEVEL_WRONG = """
    WITH b AS (
        SELECT m.run_id, m.key, m.step >> s.level_shift AS bucket, count(*) AS points,
               min(m.value) FILTER (NOT isnan(m.value)) AS min_value,
               max(m.value) FILTER (NOT isnan(m.value)) AS max_value
        FROM metrics m JOIN metric_summary s USING (run_id, key) WHERE s.level_shift IS NOT NULL GROUP BY ALL)
    SELECT run_id, key, bucket FROM b FULL JOIN metric_level l USING (run_id, key, bucket)
    WHERE b.points IS DISTINCT FROM l.points OR b.min_value IS DISTINCT FROM l.min_value
       OR b.max_value IS DISTINCT FROM l.max_value
       OR (l.min_value IS NOT NULL AND NOT EXISTS (
              SELECT 1 FROM metrics m WHERE m.run_id = l.run_id AND m.key = l.key AND m.step = l.min_step
              AND m.ts = l.min_ts AND m.value = l.min_value))
       OR (l.max_value IS NOT NULL AND NOT EXISTS (
              SELECT 1 FROM metrics m WHERE m.run_id = l.run_id AND m.key = l.key AND m.step = l.max_step
              AND m.ts = l.max_ts AND m.value = l.max_value))
    ORDER BY ALL LIMIT 5
"""
"""The buckets of long series' levels that differ from their points (count, least and greatest value, and
a point that has each)."""


def query(home: Path, sql: str) -> list[list[Any]]:
    reply = rpc(home, "query", {"sql": sql, "limit": 100_000}, timeout=60)
    assert "result" in reply, reply
    return reply["result"]["rows"]


def value_text(value: float) -> Any:
    """A metric value as the SDK writes it (NaN and the infinities by name)."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return value


class Writer:
    """Writes runs' metrics.jsonl as jobs do, at random: points with repeated and odd values, steps that
    repeat, resumes, lines torn in two and finished by the next write."""

    def __init__(self, home: Path, rng: random.Random) -> None:
        self.home, self.rng = home, rng
        self.next_step: dict[str, int] = {}
        self.torn: dict[str, bytes] = {}

    def write(self, run_id: str, lines: list[dict[str, Any]], whole: bool = False) -> None:
        data = self.torn.pop(run_id, b"") + b"".join(json.dumps(line).encode() + b"\n" for line in lines)
        path = self.home / "runs" / run_id / "metrics.jsonl"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            data = json.dumps({"t": time.time(), "e": "init", "d": {"name": run_id}}).encode() + b"\n" + data
        cut = len(data) if whole or self.rng.random() < 0.7 else self.rng.randrange(1, len(data))
        with open(path, "ab") as fh:
            fh.write(data[:cut])
        if cut < len(data):
            self.torn[run_id] = data[cut:]

    def value(self) -> float:
        return self.rng.choice(ODD_VALUES) if self.rng.random() < 0.2 else round(self.rng.random(), 2)

    def points(self, run_id: str, n: int, keys: tuple[str, ...] = KEYS) -> None:
        step = self.next_step.get(run_id, 0)
        lines = []
        for _ in range(n):
            step += self.rng.choice((0, 1, 1, 1, 1, 2))  # a step logged twice now and then
            present = [k for k in keys if self.rng.random() < 0.8] or [keys[0]]
            lines.append({"t": time.time(), "s": step, "m": {k: value_text(self.value()) for k in present}})
        self.next_step[run_id] = step
        self.write(run_id, lines)

    def resume(self, run_id: str) -> None:
        """A job requeued from a checkpoint: the points after it are superseded."""
        step = self.rng.randrange(0, self.next_step.get(run_id, 0) + 1)
        self.write(run_id, [{"t": time.time(), "e": "resume", "d": {"step": step}}])
        self.next_step[run_id] = step

    def finish(self, run_id: str) -> None:
        """The run ends: its finish line is its file's last, written whole."""
        self.write(run_id, [{"t": time.time(), "e": "finish", "d": {"status": "succeeded"}}], whole=True)

    def close(self) -> None:
        """Finish the torn lines (every file ends with a whole line)."""
        for run_id in list(self.torn):
            self.write(run_id, [])
            self.torn.pop(run_id, None)


def all_ingested(home: Path) -> bool:
    offsets = dict(query(home, 'SELECT path, "offset" FROM ingest_offsets'))
    files = list((home / "runs").glob("*/metrics.jsonl"))
    return all(offsets.get(p.relative_to(home).as_posix()) == p.stat().st_size for p in files)


def assert_summaries_true(home: Path) -> None:
    wait_for(lambda: all_ingested(home), timeout=60, what="every line committed")
    assert query(home, SUMMARY_WRONG.format(level_from=LEVEL_FROM)) == []
    assert query(home, LEVEL_WRONG) == []
    widest = query(home, "SELECT max(n) FROM (SELECT count(*) AS n FROM metric_level GROUP BY run_id, key)")
    assert (widest[0][0] or 0) <= LEVEL_BUCKETS + 1


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("seed", [1, 2])
def test_summaries_equal_the_points_after_random_ingest_resumes_and_kill_9(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    home = tmp_path / "home"
    writer = Writer(home, rng)
    runs = [f"run-{i}" for i in range(5)]
    agent = start_agent(home)
    try:
        for round_ in range(30):
            op = rng.random()
            if round_ in (10, 22) or op < 0.05:
                agent.kill(9)
                agent = start_agent(home)
            elif op < 0.2:
                writer.resume(rng.choice([*runs, "long"]))
            elif op < 0.4:  # one long series: it gets a level, outgrows its shift, is resumed
                writer.points("long", rng.randrange(4000, 12_000), keys=("loss",))
            else:
                writer.points(rng.choice(runs), rng.randrange(1, 400))
            time.sleep(rng.uniform(0, 0.3))
        writer.points("long", LEVEL_FROM + 1, keys=("loss",))  # long enough for a level, whatever came before
        writer.close()
        assert_summaries_true(home)
        assert query(home, "SELECT count(*) FROM metric_summary WHERE level_shift IS NOT NULL")[0][0] >= 1
    finally:
        agent.stop()


DIGEST = """SELECT run_id, key, count(*), sum(hash(step, ts, value))::VARCHAR FROM metrics
              GROUP BY ALL ORDER BY ALL"""
"""Each series' points as a multiset: equal digests, the same points (none lost, none twice)."""


def archive_maybe_killed(home: Path, agent: AgentProc, rng: random.Random) -> AgentProc:
    """Archive every finished run; half the time kill -9 the agent while it may be at it."""
    if rng.random() < 0.5:
        assert "result" in rpc(home, "runs.archive", {"before_s": 0}, timeout=60)
        return agent
    asked = threading.Thread(target=rpc, args=(home, "runs.archive", {"before_s": 0}), kwargs={"timeout": 60})
    asked.start()
    time.sleep(rng.uniform(0, 0.2))
    agent.kill(9)
    asked.join()
    return start_agent(home)


def restore_one(home: Path, rng: random.Random) -> None:
    archived = query(home, "SELECT run_id FROM archived_runs ORDER BY run_id")
    if archived:
        run_id = rng.choice(archived)[0]
        assert "result" in rpc(home, "runs.restore", {"run_id": run_id}, timeout=60)


def reference_digest(tmp_path: Path, home: Path) -> list[list[Any]]:
    """What a fresh agent makes of the same run files: every point they hold, once."""
    fresh = tmp_path / "fresh"
    shutil.copytree(home / "runs", fresh / "runs")
    agent = start_agent(fresh)
    try:
        wait_for(lambda: all_ingested(fresh), timeout=60, what="every line committed")
        return query(fresh, DIGEST)
    finally:
        agent.stop()


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("seed", [3, 4])
def test_summaries_equal_the_points_after_random_ingest_crash_and_archive(tmp_path: Path, seed: int) -> None:
    """Issue 18's done-when: runs written, resumed and finished at random, finished ones archived (the
    agent killed mid-archive now and then) and restored, the agent killed in between: the summaries say
    what the live points say at the end; restoring every archived run gives back each point once."""
    rng = random.Random(seed)
    home = tmp_path / "home"
    writer = Writer(home, rng)
    active, made = ["long", *(f"run-{i}" for i in range(4))], 4
    agent = start_agent(home)
    try:
        for round_ in range(30):
            op = rng.random()
            if op < 0.08:
                agent.kill(9)
                agent = start_agent(home)
            elif op < 0.2:
                agent = archive_maybe_killed(home, agent, rng)
            elif op < 0.28:
                restore_one(home, rng)
            elif op < 0.4:  # the long run (past its level) ends half way
                run_id = rng.choice([r for r in active if r != "long" or round_ > 15])
                writer.finish(run_id)
                active.remove(run_id)
                active.append(f"run-{made}")
                made += 1
            elif op < 0.5:
                writer.resume(rng.choice(active))
            elif op < 0.65 and "long" in active:
                writer.points("long", rng.randrange(4000, 12_000), keys=("loss",))
            else:
                writer.points(rng.choice(active), rng.randrange(1, 400))
            time.sleep(rng.uniform(0, 0.3))
        for run_id in active:
            writer.finish(run_id)
        wait_for(lambda: all_ingested(home), timeout=60, what="every line committed")
        assert "result" in rpc(home, "runs.archive", {"before_s": 0}, timeout=60)  # every run, now all ended
        restore_one(home, rng)
        assert_summaries_true(home)
        archived = {r[0] for r in query(home, "SELECT run_id FROM archived_runs")}
        live = {r[0] for r in query(home, "SELECT run_id FROM runs")}
        assert len(archived) == made and len(live) == 1 and not archived & live
        for run_id in sorted(archived):
            assert "result" in rpc(home, "runs.restore", {"run_id": run_id}, timeout=60)
        assert_summaries_true(home)
        assert query(home, "SELECT count(*) FROM archived_runs") == [[0]]
        assert not list((home / "archive").rglob("*.parquet"))  # one a killed archive left was written again
        assert query(home, DIGEST) == reference_digest(tmp_path, home)
    finally:
        agent.stop()


def test_the_last_value_is_the_last_written_at_the_last_step(agent_home: AgentProc) -> None:
    home = agent_home.home
    path = home / "runs" / "twice" / "metrics.jsonl"
    path.parent.mkdir(parents=True)
    lines = [{"t": 0.0, "e": "init", "d": {}}, {"t": 1.0, "s": 0, "m": {"x": 5.0}},
             {"t": 2.0, "s": 1, "m": {"x": 1.0}}, {"t": 3.0, "s": 1, "m": {"x": 3.0}},
             {"t": 4.0, "s": 0, "m": {"x": 9.0}}]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    run = wait_for(lambda: (r := rpc(home, "runs.get", {"run_id": "twice"}).get("result")) and r["metrics"]
                   and r, what="the run's summary")
    assert run["metrics"] == {"x": 3.0}
    assert query(home, "SELECT points, first_step, last_step, min_value, min_step, max_value, max_step "
                       "FROM metric_summary WHERE run_id = 'twice'") == [[4, 0, 1, 1.0, 1, 9.0, 0]]


def test_an_older_store_gets_summaries_and_levels_from_its_points(tmp_path: Path) -> None:
    """The migration builds every series' summary and long series' levels from the points already stored."""
    home = tmp_path / "home"
    home.mkdir()
    con = duckdb.connect(str(home / "mldeck.duckdb"))
    con.execute("CREATE TABLE schema_version (version INTEGER)")
    for version, sql in enumerate(MIGRATIONS[:SUMMARIES], start=1):
        con.execute(sql)
        con.execute("INSERT INTO schema_version VALUES (?)", [version])
    con.execute("INSERT INTO metrics SELECT 'short', 'loss', range, range, "
                "CASE WHEN range % 7 = 3 THEN 'NaN' ELSE (range % 13)::DOUBLE END FROM range(500)")
    con.execute("INSERT INTO metrics SELECT 'long', 'loss', range, range, sin(range / 1000) FROM range(?)",
                [LEVEL_FROM * 3])
    con.close()
    agent = start_agent(home)
    try:
        assert_summaries_true(home)
        assert query(home, "SELECT run_id, level_shift IS NOT NULL FROM metric_summary ORDER BY run_id") == [
            ["long", True], ["short", False]]
    finally:
        agent.stop()


def test_a_long_curve_comes_from_its_level_with_its_extremes(agent_home: AgentProc) -> None:
    """runs.metrics draws a long series from its level: at most max_points points, its least and greatest
    values among them; asked for more points than a level holds, from the points themselves."""
    home = agent_home.home
    n = LEVEL_FROM * 4
    path = home / "runs" / "long" / "metrics.jsonl"
    path.parent.mkdir(parents=True)
    values = [math.sin(i / 500) for i in range(n)]
    values[12_345], values[54_321] = 5.0, -7.0
    path.write_text(json.dumps({"t": 0.0, "e": "init", "d": {}}) + "\n" + "".join(
        json.dumps({"t": float(i), "s": i, "m": {"y": v}}) + "\n" for i, v in enumerate(values)))
    wait_for(lambda: query(home, "SELECT count(*) FROM metric_level")[0][0] > 0, timeout=60, what="the level")
    curve = rpc(home, "runs.metrics", {"run_id": "long", "max_points": 500})["result"]["series"]["y"]
    assert 200 < len(curve["step"]) <= 500
    assert max(curve["value"]) == max(values) and min(curve["value"]) == min(values)
    assert curve["step"] == sorted(curve["step"]) and curve["ts"] == [float(s) for s in curve["step"]]
    fine = rpc(home, "runs.metrics", {"run_id": "long", "max_points": 20_000})["result"]["series"]["y"]
    assert LEVEL_BUCKETS * 2 < len(fine["step"]) <= 20_000


def test_the_store_settings_reach_duckdb(tmp_path: Path) -> None:
    """[store] memory_limit and threads are what DuckDB runs with (set at connect)."""
    agent = start_agent(tmp_path / "home", config='[store]\nmemory_limit = "300MB"\nthreads = 1\n')
    try:
        expected = duckdb.connect(config={"memory_limit": "300MB"}).execute(
            "SELECT current_setting('memory_limit')").fetchall()[0][0]
        assert query(agent.home, "SELECT current_setting('memory_limit'), current_setting('threads')") == [
            [expected, 1]]
    finally:
        agent.stop()
