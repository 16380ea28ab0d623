"""Ingest under faults and hostile lines (issue 13): nothing stops it, nothing is lost or doubled.

Each test runs a real agent process on real files and a real DuckDB store. The full-disk tests mount a
small tmpfs (the agent and tests run as root here) and are skipped, saying why, where mounting is refused.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest

from mldeck.agent.ingest import FULL_SCAN_S, READ_CHUNK
from mldeck.core import track
from mldeck.core.schema import MIGRATIONS, RELATIVE_OFFSETS
from tests.conftest import AgentProc, rpc, start_agent, wait_for

METRICS = "metrics.jsonl"
MiB = 1 << 20


def one(home: Path, sql: str) -> Any:
    """The first value of the first row of a query asked of the agent over its socket; None if it failed
    (a store DuckDB gave up on refuses queries until ingest reopens it)."""
    result = rpc(home, "query", {"sql": sql}).get("result")
    return result["rows"][0][0] if result else None


def rows_of(home: Path, run_id: str) -> int:
    return one(home, f"SELECT count(*) FROM metrics WHERE run_id = '{run_id}'")


def ingest_status(home: Path) -> dict[str, Any]:
    return rpc(home, "agent.status")["result"]["ingest"]


def line(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj).encode() + b"\n"


def point(step: int, **values: float) -> bytes:
    return line({"t": time.time(), "s": step, "m": values})


def write_run(home: Path, run_id: str, *lines: bytes) -> Path:
    path = home / "runs" / run_id / METRICS
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab") as fh:
        fh.write(b"".join(lines))
    return path


@contextlib.contextmanager
def small_disk(where: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` mounted at `where` for the test's length (skipped where mounting is refused)."""
    where.mkdir(parents=True, exist_ok=True)
    mount = shutil.which("mount")
    if mount is None:
        pytest.skip("no mount command here, so no small disk to fill")
    done = subprocess.run([mount, "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill (needs root): {done.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def free_bytes(disk: Path) -> int:
    st = os.statvfs(disk)
    return st.f_bavail * st.f_frsize


def fill(disk: Path) -> Path:
    """Take every free byte of the disk with one file; remove it to give the space back."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as fh:
        for block in (1 << 20, 4096, 512, 1):
            with contextlib.suppress(OSError):
                while True:
                    fh.write(b"\0" * block)
    return filler


def deep_line(depth: int) -> bytes:
    return b'{"t":1.0,"e":"note","d":{"x":' + b"[" * depth + b"]" * depth + b"}}\n"


def test_deeply_nested_lines_cost_no_time(tmp_path: Path) -> None:
    """Arrow's JSON reader spends seconds on one deeply nested line that msgspec refuses at once (4-8 s
    each here): such lines, spaced as json.dumps writes them or shaped like points, must not reach it,
    or a dozen hostile runs hold ingest up for a minute."""
    home = tmp_path / "home"
    nested = b"[" * 5000 + b"]" * 5000
    hostile = [b'{"t": 1.0, "e": "note", "d": {"x": ' + nested + b"}}\n",
               b'{"t":1.0,"s":1,"m":{"loss":' + nested + b"}}\n",
               b'{"t":1.0,"s":2,"m":' + b'{"a":' * 3000 + b"1" + b"}" * 3000 + b"}\n"]
    runs = [f"deep-{n}" for n in range(12)]
    for n, run_id in enumerate(runs):
        write_run(home, run_id, hostile[n % len(hostile)], point(3, loss=0.5))
    agent = start_agent(home)
    try:
        wait_for(lambda: one(home, "SELECT count(*) FROM metrics") == len(runs), timeout=20,
                 what="the good line after each deep one")
        assert ingest_status(home)["bad_lines"] == len(runs)
    finally:
        agent.stop()


@pytest.mark.timeout(240)
def test_poison_lines_are_skipped_and_never_stop_ingest(tmp_path: Path) -> None:
    """Lines too deep, too long, not UTF-8 or refused by the store are skipped, counted and named; the
    lines after them and every other run go on, also after a restart."""
    home = tmp_path / "home"
    poison = write_run(
        home, "a-poison",
        point(0, loss=1.0),
        b'{"t":1.0,"s":9,"m":{"lo\xffss":1.0}}\n',  # Arrow reads it, with a key that is not UTF-8
        deep_line(5000),  # RecursionError in the decoder
        b'{"t":1.0,"s":9,"m":{"loss":\xff\xfe}}\n',  # not UTF-8, not JSON
        line({"t": 1.0, "e": "init", "d": {"git_dirty": "maybe"}}),  # the store refuses to convert it
        line({"t": 1.0, "e": "resume", "d": {"step": "x"}}),  # the parser raises on it
        point(1, loss=0.5),
    )
    long = write_run(home, "b-long", point(0, loss=1.0))
    with open(long, "ab") as fh:
        fh.write(b'{"t":1.0,"s":1,"m":{"loss":1.0},"pad":"' + b"x" * READ_CHUNK + b'"}\n')
        fh.write(point(2, loss=0.5))
    write_run(home, "c-good", point(0, loss=3.0), point(1, loss=2.0))

    agent = start_agent(home)
    try:
        for run_id in ("a-poison", "b-long", "c-good"):
            wait_for(lambda run_id=run_id: rows_of(home, run_id) == 2, timeout=90,
                     what=f"{run_id}'s good lines")
        status = ingest_status(home)
        assert status["bad_lines"] == 6
        assert status["errors"]["count"] == 0 and status["paused"] is None
        log = (home / "agent.log").read_text()
        for n in (2, 3, 4, 5, 6):
            assert f"{poison}:{n}: skipped a bad line" in log, n
        assert "runs/b-long/metrics.jsonl:2: skipped a bad line: a line of" in log

        agent.stop()
        agent = start_agent(home)
        write_run(home, "a-poison", point(2, loss=0.25))
        write_run(home, "c-good", point(2, loss=1.0))
        wait_for(lambda: rows_of(home, "a-poison") == 3 and rows_of(home, "c-good") == 3,
                 what="lines after a restart")
        assert rows_of(home, "b-long") == 2
        assert ingest_status(home)["bad_lines"] == 0, "nothing read twice after the restart"
    finally:
        agent.stop()


def test_a_failing_file_is_logged_once_counted_and_retried(agent_home: AgentProc) -> None:
    """A file that cannot be read fails only itself: logged once with its name, counted, shown, retried."""
    home = agent_home.home
    broken = home / "runs" / "broken" / METRICS
    broken.mkdir(parents=True)  # a folder where a file should be: every read fails
    write_run(home, "fine", point(0, x=1.0))
    wait_for(lambda: rows_of(home, "fine") == 1, what="the other run")
    wait_for(lambda: ingest_status(home)["errors"]["count"] >= 3, timeout=30, what="retries")
    errors = ingest_status(home)["errors"]
    assert f"{broken}:1: IsADirectoryError" in errors["last"]
    assert time.time() - 30 < errors["last_at"] <= time.time()
    assert errors["count"] < 12, "retried with backoff, not in a tight loop"
    assert (home / "agent.log").read_text().count(f"{broken}:1: IsADirectoryError") == 1
    write_run(home, "fine", point(1, x=2.0))
    wait_for(lambda: rows_of(home, "fine") == 2, what="ingest still running")


def test_a_moved_or_copied_home_is_not_ingested_again(tmp_path: Path) -> None:
    first = tmp_path / "first"
    agent = start_agent(first)
    try:
        write_run(first, "r", *(point(i, loss=1.0 / (i + 1), acc=i / 5000) for i in range(5000)))
        wait_for(lambda: rows_of(first, "r") == 10_000, what="the run ingested")
    finally:
        agent.stop()
    moved = tmp_path / "moved"
    first.rename(moved)
    copied = tmp_path / "copied"
    shutil.copytree(moved, copied)
    for home in (moved, copied):
        agent = start_agent(home)
        try:
            write_run(home, "r", point(5000, loss=0.0, acc=1.0))
            write_run(home, "z-marker", point(0, x=1.0))  # scanned after r: once it is in, r was read
            wait_for(lambda home=home: rows_of(home, "z-marker") == 1, what="the marker run")
            wait_for(lambda home=home: rows_of(home, "r") >= 10_002, what="the new line")
            time.sleep(1)
            assert rows_of(home, "r") == 10_002
        finally:
            agent.stop()


def test_absolute_offsets_of_an_older_store_become_relative(tmp_path: Path) -> None:
    """A store written before offsets were relative: its absolute keys (under this home, or under where
    the home was before it moved) are rewritten, so upgrading reads nothing twice."""
    home = tmp_path / "home"
    here = write_run(home, "a-here", *(point(i, x=1.0) for i in range(100)))
    moved = write_run(home, "b-moved", *(point(i, x=1.0) for i in range(50)))
    con = duckdb.connect(str(home / "mldeck.duckdb"))
    con.execute("CREATE TABLE schema_version (version INTEGER)")
    for version, sql in enumerate(MIGRATIONS[: MIGRATIONS.index(RELATIVE_OFFSETS)], start=1):
        con.execute(sql)
        con.execute("INSERT INTO schema_version VALUES (?)", [version])
    for run_id, path, key, n in (("a-here", here, str(here), 100),
                                 ("b-moved", moved, f"/old/place/runs/b-moved/{METRICS}", 50)):
        con.execute("INSERT INTO metrics SELECT ?, 'x', range, 0, 1.0 FROM range(?)", [run_id, n])
        con.execute("INSERT INTO ingest_offsets VALUES (?, ?, ?)", [key, path.stat().st_size, n])
    con.close()
    agent = start_agent(home)
    try:
        write_run(home, "z-marker", point(0, x=1.0))
        wait_for(lambda: rows_of(home, "z-marker") == 1, what="the marker run")
        assert (rows_of(home, "a-here"), rows_of(home, "b-moved")) == (100, 50)
        keys = rpc(home, "query", {"sql": "SELECT path FROM ingest_offsets ORDER BY path"})["result"]["rows"]
        assert [k[0] for k in keys] == [f"runs/{r}/{METRICS}" for r in ("a-here", "b-moved", "z-marker")]
    finally:
        agent.stop()


def test_nan_and_infinities_are_stored_as_they_are(agent_home: AgentProc) -> None:
    home = agent_home.home
    script = (
        "import math\nfrom mldeck.core import track\n"
        "run = track.init(name='diverging')\n"
        "for i, v in enumerate([1.0, math.nan, math.inf, -math.inf, 2.0]):\n"
        "    run.log({'loss': v, 'gn': math.nan}, step=i)\n"
        "run.finish()\n"
    )
    done = agent_home.python("-c", script)
    assert done.returncode == 0, done.stderr
    (run_dir,) = (home / "runs").iterdir()
    run_id = run_dir.name
    wait_for(lambda: rows_of(home, run_id) == 10, what="every point, NaN and infinities too")
    counts = one(home, f"""
        SELECT [count(*) FILTER (WHERE isnan(value)), count(*) FILTER (WHERE isinf(value) AND value > 0),
                count(*) FILTER (WHERE isinf(value) AND value < 0), count(*) FILTER (WHERE value IS NULL)]
        FROM metrics WHERE run_id = '{run_id}'""")
    assert counts == [6, 1, 1, 0]
    # A chunk of points whose values are all one name takes Arrow's fast path: the same values come out.
    write_run(home, "named", *(line({"t": 1.0, "s": i, "m": {"a": "NaN", "b": "-Infinity", "c": i}})
                               for i in range(100)))
    wait_for(lambda: rows_of(home, "named") == 300, what="the named values")
    assert one(home, "SELECT count(*) FROM metrics WHERE run_id = 'named' AND NOT isfinite(value)") == 200


def test_a_torn_line_does_not_swallow_the_next_attempt(agent_home: AgentProc) -> None:
    """A writer killed mid-line, then a resumed attempt appending to the same file: the torn fragment is
    skipped as a bad line and the new attempt's first line (its init, with its params) is kept."""
    home = agent_home.home
    run_dir = home / "runs" / "torn"
    write_run(home, "torn",
              line({"t": 1.0, "e": "init", "d": {"name": "torn", "params": {"attempt": 1}}}),
              *(point(i, loss=1.0) for i in range(5)))
    with open(run_dir / METRICS, "ab") as fh:
        fh.write(b'{"t":1.0,"s":5,"m":{"lo')
    wait_for(lambda: rows_of(home, "torn") == 5, what="the first attempt's points")
    script = ("from mldeck.core import track\n"
              "run = track.init(params={'attempt': 2})\n"
              "run.log({'loss': 0.5}, step=5)\n"
              "run.finish()\n")
    done = agent_home.python("-c", script, **{track.RUN_DIR_ENV: str(run_dir)})
    assert done.returncode == 0, done.stderr
    wait_for(lambda: rows_of(home, "torn") == 6, what="the second attempt's point")
    run = wait_for(lambda: (r := rpc(home, "runs.get", {"run_id": "torn"}).get("result"))
                   and r["status"] == "succeeded" and r, what="the run finished")
    assert run["params"] == {"attempt": 2}, "the second attempt's init line was kept"
    assert ingest_status(home)["bad_lines"] == 1


@pytest.mark.timeout(180)
def test_a_full_disk_pauses_ingest_and_it_resumes_by_itself(tmp_path: Path) -> None:
    """The store's disk fills: commits fail, ingest pauses ("disk full") and, once space is back, goes
    on by itself with every line exactly once. The run's file lives on another disk (a symlink), so
    lines keep coming while the store's disk is full."""
    with small_disk(tmp_path / "disk", "64m") as disk:
        home = disk / "home"
        agent = start_agent(home)
        try:
            outside = tmp_path / "outside.jsonl"
            outside.write_bytes(b"".join(point(i, loss=1.0) for i in range(1000)))
            (home / "runs" / "r").mkdir(parents=True)
            (home / "runs" / "r" / METRICS).symlink_to(outside)
            wait_for(lambda: rows_of(home, "r") == 1000, what="the first lines")
            filler = fill(disk)
            with open(outside, "ab") as fh:
                fh.write(b"".join(point(i, loss=1.0, acc=0.5) for i in range(1000, 21_000)))
            wait_for(lambda: ingest_status(home)["paused"] == "disk full", timeout=60, what="ingest paused")
            errors = ingest_status(home)["errors"]
            assert errors["count"] >= 1 and "No space left on device" in errors["last"]
            filler.unlink()
            wait_for(lambda: ingest_status(home)["paused"] is None, timeout=60, what="ingest resumed")
            wait_for(lambda: rows_of(home, "r") == 1000 + 40_000, timeout=60, what="every line")
            time.sleep(1)
            assert rows_of(home, "r") == 41_000
            assert one(home, "SELECT count(*) FROM (SELECT DISTINCT key, step FROM metrics "
                             "WHERE run_id = 'r')") == 41_000
        finally:
            agent.stop()


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_checkpoint_that_fails_on_a_full_disk_is_recovered_from(tmp_path: Path) -> None:
    """A commit whose WAL crosses DuckDB's checkpoint threshold on a full disk fails the checkpoint,
    which invalidates the open database for every service; ingest reopens it and goes on, exactly once."""
    with small_disk(tmp_path / "disk", "96m") as disk:
        home = disk / "home"
        agent = start_agent(home)
        try:
            wal = home / "mldeck.duckdb.wal"
            outside = tmp_path / "outside.jsonl"
            outside.touch()
            (home / "runs" / "r").mkdir(parents=True)
            (home / "runs" / "r" / METRICS).symlink_to(outside)
            steps = 0
            while not wal.exists() or wal.stat().st_size < 15 * MiB:  # commits small enough to go to the WAL
                write_run(home, "pre", *(point(i, x=1.0) for i in range(steps, steps + 20_000)))
                steps += 20_000
                wait_for(lambda steps=steps: rows_of(home, "pre") == steps, what="the WAL growing")
            filler = fill(disk)
            filler.unlink()
            with open(filler, "wb") as fh:
                fh.write(b"\0" * (free_bytes(disk) - 3 * MiB))
            with open(outside, "ab") as fh:  # ~2 MiB of WAL: it fits, but the checkpoint after it cannot
                fh.write(b"".join(point(i, x=1.0) for i in range(60_000)))
            wait_for(lambda: ingest_status(home)["paused"] == "disk full", timeout=60, what="ingest paused")
            filler.unlink()
            wait_for(lambda: rows_of(home, "r") == 60_000, timeout=90, what="every line after the reopen")
            wait_for(lambda: ingest_status(home)["paused"] is None, what="ingest resumed")
            assert "Failed to create checkpoint" in (home / "agent.log").read_text()
            assert (rows_of(home, "pre"), rows_of(home, "r")) == (steps, 60_000)
        finally:
            agent.stop()


@pytest.mark.timeout(180)
def test_a_full_disk_in_the_sdk_drops_counts_and_reports(
    agent_home: AgentProc, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run folder's disk fills mid-run: training goes on, the SDK keeps a bounded buffer, drops and
    counts the rest, writes on once space is back, and the count reaches the run's record."""
    home = agent_home.home
    run_dir = home / "runs" / "sdk-full"
    with small_disk(run_dir, "4m"):
        monkeypatch.setenv(track.RUN_DIR_ENV, str(run_dir))
        monkeypatch.setattr(track, "MAX_PENDING_LINES", 500)
        run = track.init(name="sdk-full")
        logged = 0

        def log(n: int) -> None:
            nonlocal logged
            for _ in range(n):
                run.log({"loss": 1.0})
                logged += 1

        log(100)
        run.flush()
        filler = fill(run_dir)
        deadline = time.monotonic() + 10
        while run.dropped == 0 and time.monotonic() < deadline:
            log(50)
            time.sleep(0.01)
        log(2000)
        assert run.dropped >= 2000
        filler.unlink()
        log(10)
        wait_for(lambda: b'"e":"dropped"' in (run_dir / METRICS).read_bytes(),
                 what="the flush thread writing on, unasked")
        run.finish()
        written = [json.loads(x) for x in (run_dir / METRICS).read_bytes().splitlines()]
        points = sum(1 for x in written if "m" in x)
        reported = sum(x["d"]["points"] for x in written if x.get("e") == "dropped")
        assert points + run.dropped == logged and reported == run.dropped
        # the watcher cannot see into a file system mounted after it looked (as with a shared one): the
        # agent's full scan finds the run
        found = FULL_SCAN_S + 30
        wait_for(lambda: rows_of(home, run.id) == points, timeout=found, what="the written points ingested")
        record = wait_for(lambda: (r := rpc(home, "runs.get", {"run_id": run.id}).get("result"))
                          and r.get("dropped_points") and r, timeout=found, what="the dropped count")
        assert record["dropped_points"] == run.dropped
