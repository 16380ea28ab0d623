"""The store is not lost quietly: a deleted store is refused (and `agent recover` rebuilds it from the
home's files), a damaged one is found at start and named, `mldeck backup` copies it consistently while
runs are ingested, `mldeck restore` brings a copy back, and the agent keeps N daily backups by itself.
Real agents, real DuckDB files, the real CLI."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import duckdb
import pytest

from mldeck.core.backups import backup_name
from mldeck.core.client import connect_unix
from tests.conftest import REPO, AgentHome, AgentProc, agent_env, start_agent, wait_for

pytestmark = pytest.mark.timeout(180)

CONFIG = """
[agent]
collector_interval_s = 0.5
[serving]
autostart = false
[store]
backups = 0
"""
BLOCK_HEADER = 3 * 4096
"""A DuckDB file's own headers, before its first block."""

# Writes points (500 every 10 ms) until its stop file appears, then says how many; the SDK alone records it.
WRITER = """
import pathlib, sys, time
import mldeck
run = mldeck.init(name="writer")
print(run.id, flush=True)
stop = pathlib.Path(sys.argv[1])
step = 0
while not stop.exists():
    for _ in range(500):
        run.log({"loss": 1.0 / (step + 1)}, step=step)
        step += 1
    time.sleep(0.01)
run.finish()
print(step, flush=True)
"""


def rpc(home: Path, method: str, **params: Any) -> Any:
    async def call() -> Any:
        client = await connect_unix(home / "agent.sock")
        try:
            return await client.call(method, **params)
        finally:
            await client.close()

    return asyncio.run(call())


def count(home: Path, sql: str) -> Any:
    return rpc(home, "query", sql=sql)["rows"][0][0]


def fake_run(home: Path, run_id: str, points: int, model: str | None = None) -> None:
    """What an SDK run leaves in the home: run.json, its metrics and a model it asks to register, finished."""
    run_dir = home / "runs" / run_id
    run_dir.mkdir(parents=True)
    now = time.time()
    spec = {"run_id": run_id, "name": run_id, "experiment": "safety", "host": socket.gethostname(),
            "created_at": now, "pid": os.getpid(), "params": {"lr": 0.1}}
    (run_dir / "run.json").write_text(json.dumps(spec))
    lines = [{"t": now, "e": "init", "d": {k: v for k, v in spec.items() if k != "run_id"}}]
    lines += [{"t": now, "s": s, "m": {"loss": 1.0 / (s + 1), "acc": s / points}} for s in range(points)]
    if model:
        folder = run_dir / "artifacts" / "model"
        folder.mkdir(parents=True)
        (folder / "signature.json").write_text(json.dumps({"inputs": [], "outputs": [], "format": "fake"}))
        (folder / "sample.npz").write_bytes(os.urandom(256))  # each training's outputs differ
        (folder / "model.pt2").write_bytes(os.urandom(4096))
        lines.append({"t": now, "e": "register_model", "d": {"name": model, "artifact": "artifacts/model"}})
    lines.append({"t": now, "e": "finish", "d": {"status": "succeeded", "reason": None, "stop_seen": False}})
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))


def start_refused(home: Path) -> subprocess.CompletedProcess[str]:
    """`python -m mldeck.agent run`, expected to refuse at once (an old agent would run on: timeout)."""
    return subprocess.run([sys.executable, "-m", "mldeck.agent", "run", "--home", str(home)],
                          capture_output=True, text=True, env=agent_env(home), cwd=REPO, timeout=60)


def snapshot(home: Path) -> dict[str, Any]:
    """What a rebuilt store must hold again: runs, points, outcomes, versions and their runs, aliases."""
    return {
        "runs": count(home, "SELECT count(*) FROM runs"),
        "metrics": count(home, "SELECT count(*) FROM metrics"),
        "statuses": count(home, "SELECT list_sort(list(DISTINCT status)) FROM runs"),
        "versions": rpc(home, "query", sql="SELECT name, version, run_id FROM model_versions "
                                           "ORDER BY name, version")["rows"],
        "aliases": rpc(home, "query", sql="SELECT name, alias, version FROM aliases ORDER BY name")["rows"],
    }


@pytest.mark.slow
def test_a_lost_store_is_refused_and_recover_rebuilds_it(tmp_path: Path) -> None:
    home = tmp_path / "home"
    for i, model in enumerate(["iris", "iris", None, "wine"]):
        fake_run(home, f"run-{i}", points=50 + i, model=model)
    agent = start_agent(home, config=CONFIG)
    try:
        wait_for(lambda: count(home, "SELECT count(*) FROM model_versions") == 3, what="3 registrations")
        rpc(home, "models.promote", name="iris", version=2, alias="production")
        rpc(home, "models.promote", name="wine", version=1, alias="staging")
        wait_for(lambda: '"production"' in (home / "serving" / "manifest.json").read_text(), what="manifest")
        before = snapshot(home)
    finally:
        agent.stop()
    assert before["versions"] == [["iris", 1, "run-0"], ["iris", 2, "run-1"], ["wine", 1, "run-3"]]
    (home / "mldeck.duckdb").unlink()

    refused = start_refused(home)
    assert refused.returncode == 2 and not (home / "mldeck.duckdb").exists()
    assert "no store" in refused.stderr and "3 model version(s)" in refused.stderr
    assert "`mldeck agent recover" in refused.stderr

    recovered = AgentHome(home).cli("agent", "recover", "--json", check=True).json()
    assert recovered["model_versions"] == 3 and recovered["versions_without_run"] == []
    assert recovered["aliases"] == 2 and recovered["runs"] == 4 and recovered["bad_lines"] == 0
    assert any("audit log" in item for item in recovered["not_recovered"])

    agent = start_agent(home, config=CONFIG)
    try:
        assert snapshot(home) == before
        version = rpc(home, "models.get", name="iris", alias="production")
        assert version["version"] == 2 and version["metrics"]["loss"] == pytest.approx(1 / 51)
        assert [r["action"] for r in rpc(home, "models.audit", name="iris")] == ["recover"] * 3
        again = AgentHome(home).cli("agent", "recover")
        assert again.code != 0 and "already running" in again.err
    finally:
        agent.stop()
    assert AgentHome(home).cli("agent", "recover").code != 0  # a healthy store is not rebuilt


def _metrics_block(db: Path) -> tuple[int, int]:
    """(block size, id of a block only the metrics table uses) of a store file."""
    con = duckdb.connect(str(db), read_only=True)
    try:
        size = con.execute("SELECT block_size FROM pragma_database_size()").fetchall()[0][0]
        used: dict[str, set[int]] = {}
        for (table,) in con.execute("SELECT table_name FROM duckdb_tables()").fetchall():
            rows = con.execute(f"SELECT block_id FROM pragma_storage_info('{table}') WHERE block_id >= 0")
            used[table] = {r[0] for r in rows.fetchall()}
    finally:
        con.close()
    others = set().union(*(b for t, b in used.items() if t != "metrics"))
    return size, sorted(used["metrics"] - others)[len(used["metrics"] - others) // 2]


def damage_metrics(db: Path) -> None:
    size, block = _metrics_block(db)
    with open(db, "r+b") as fh:
        fh.seek(BLOCK_HEADER + block * size + size // 2)
        fh.write(os.urandom(512))


@pytest.mark.slow
def test_a_damaged_store_is_refused_naming_the_table_and_a_backup_brings_it_back(tmp_path: Path) -> None:
    home = tmp_path / "home"
    fake_run(home, "big", points=60_000)
    agent = start_agent(home, config=CONFIG)
    try:
        wait_for(lambda: count(home, "SELECT count(*) FROM metrics") == 120_000, timeout=60, what="ingest")
        backup = agent.cli("backup", "--json", check=True).json()
        assert backup["tables"]["metrics"] == 120_000
    finally:
        agent.stop()
    damage_metrics(home / "mldeck.duckdb")

    refused = start_refused(home)
    assert refused.returncode == 2
    assert "is damaged: table metrics cannot be read back" in refused.stderr
    assert f"`mldeck restore {backup['path']}`" in refused.stderr

    restored = AgentHome(home).cli("restore", backup["path"], "--json", check=True).json()
    assert restored["tables"] == backup["tables"] and Path(restored["replaced"]).exists()
    agent = start_agent(home, config=CONFIG)
    try:
        assert count(home, "SELECT count(*) FROM metrics") == 120_000
        assert count(home, "SELECT sum(value) FILTER (WHERE key = 'acc') FROM metrics") == pytest.approx(
            sum(s / 60_000 for s in range(60_000)))
    finally:
        agent.stop()

    damage_metrics(home / "mldeck.duckdb")  # and no backup to go back to: rebuild it from the run's files
    recovered = AgentHome(home).cli("agent", "recover", "--json", check=True).json()
    assert Path(recovered["set_aside"]).name.startswith("mldeck.duckdb.damaged-")
    agent = start_agent(home, config=CONFIG)
    try:
        assert count(home, "SELECT count(*) FROM metrics") == 120_000
    finally:
        agent.stop()


def _points_within(metrics_file: Path, offset: int) -> int:
    """Point lines (one key each) in the file's first `offset` bytes: what a consistent store holds."""
    with open(metrics_file, "rb") as fh:
        return sum(1 for line in fh.read(offset).splitlines() if b'"m"' in line)


@pytest.mark.slow
def test_a_backup_taken_while_a_run_is_ingested_is_consistent_and_restores(tmp_path: Path) -> None:
    home, copies = tmp_path / "home", tmp_path / "copies"
    (tmp_path / "writer.py").write_text(WRITER)
    agent = start_agent(home, config=CONFIG)
    try:
        writer = subprocess.Popen([sys.executable, str(tmp_path / "writer.py"), str(tmp_path / "stop")],
                                  stdout=subprocess.PIPE, text=True, env=agent_env(home), cwd=REPO)
        assert writer.stdout is not None
        run_id = writer.stdout.readline().strip()
        metrics_file = home / "runs" / run_id / "metrics.jsonl"
        wait_for(lambda: count(home, "SELECT count(*) FROM metrics") > 0, what="ingest to begin")
        taken = [agent.cli("backup", "--to", str(copies), "--json", check=True).json() for _ in range(3)]
        (tmp_path / "stop").touch()
        written = int(writer.stdout.readline())
        writer.wait(timeout=60)
        assert agent.cli("restore", taken[-1]["path"]).code == 1  # not while the agent runs
        final = wait_for(lambda: (n := count(home, "SELECT count(*) FROM metrics")) == written and n,
                         timeout=90, what="every point ingested")
    finally:
        agent.stop()
    partial = [b for b in taken if b["tables"]["metrics"] < final]
    assert len(partial) == 3 and partial[0]["tables"]["metrics"] < partial[2]["tables"]["metrics"]
    for backup in taken:
        con = duckdb.connect(backup["path"], read_only=True)
        try:
            offset = con.execute("SELECT \"offset\" FROM ingest_offsets WHERE path = ?",
                                 [f"runs/{run_id}/metrics.jsonl"]).fetchall()[0][0]
            assert con.execute("SELECT count(*) FROM metrics").fetchall()[0][0] == backup["tables"]["metrics"]
        finally:
            con.close()
        assert backup["tables"]["metrics"] == _points_within(metrics_file, offset)

    fresh = AgentHome(tmp_path / "fresh")
    restored = fresh.cli("restore", partial[0]["path"], "--json", check=True).json()
    assert restored["replaced"] is None and restored["tables"] == partial[0]["tables"]
    agent = start_agent(fresh.home, config=CONFIG)
    try:
        for table in ("runs", "metrics", "ingest_offsets", "audit_log"):
            assert count(fresh.home, f"SELECT count(*) FROM {table}") == partial[0]["tables"][table]
        (fresh.home / "runs" / run_id).mkdir(parents=True)
        shutil.copyfile(metrics_file, fresh.home / "runs" / run_id / "metrics.jsonl")
        wait_for(lambda: count(fresh.home, "SELECT count(*) FROM metrics") == written, timeout=90,
                 what="the rest ingested after the restore")
        time.sleep(1.5)
        assert count(fresh.home, "SELECT count(*) FROM metrics") == written  # once each, none twice
        assert count(fresh.home, f"SELECT status FROM runs WHERE run_id = '{run_id}'") == "succeeded"
    finally:
        agent.stop()


def test_the_agent_keeps_the_newest_daily_backups(tmp_path: Path) -> None:
    home = tmp_path / "home"
    folder = home / "backups"
    folder.mkdir(parents=True)
    now = time.time()
    old = [folder / backup_name("daily", now - days * 86_400) for days in (2, 3, 4, 5)]
    manual = folder / backup_name("backup", now - 10 * 86_400)
    for path in [*old, manual]:
        path.write_bytes(b"an older backup")
    config = CONFIG.replace("backups = 0", "backups = 3")

    def dailies() -> list[str]:
        return sorted(p.name for p in folder.glob("daily-*.duckdb"))

    agent: AgentProc = start_agent(home, config=config)
    try:
        kept = wait_for(lambda: (d := dailies()) and len(d) == 3 and old[0].name in d and d, timeout=30,
                        what="today's daily backup and the two newest before it")
        (today,) = set(kept) - {p.name for p in old}
        assert set(kept) == {today, old[0].name, old[1].name}
        assert (folder / today).stat().st_size > 1000  # a store, not one of the stand-ins
        assert manual.exists()  # made by hand: never rotated away
    finally:
        agent.stop()
    agent = start_agent(home, config=config)
    try:
        time.sleep(3)  # its first check has come: today's backup is less than a day old
        assert dailies() == kept
    finally:
        agent.stop()
