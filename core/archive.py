"""Runs moved out of the live store into Parquet files, and back: `mldeck runs archive` and `runs restore`.

An archived run is one Parquet file, `archive/<yyyy-mm>/<run_id>.parquet` in the home (the month the run
was created, or ended): its points in the order they were written, and its row of the runs table in the file's
metadata. The store keeps a row in archived_runs to list and find it, and no point, summary or level.
Each batch of runs is written whole (a temporary name, fsync, rename) before their rows are deleted in one
transaction, both on the agent's writer thread: a crash in between leaves the runs live, and the next
archive writes their files again. A restore puts the points back, builds the summaries from them, and
deletes the row in one transaction; the file goes after. A run whose metrics.jsonl gets lines after its
archive (late lines of its script, a resume) is brought back so by ingest before they go in: a run that
writes is live.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import duckdb
import msgspec
import pyarrow as pa
import pyarrow.parquet as pq

from mldeck.core.atomic import fsync
from mldeck.core.errors import Conflict, Internal, NotFound
from mldeck.core.paths import ARCHIVE_DIR, BadName, check_name
from mldeck.core.protocol import Params
from mldeck.core.runlog import TERMINAL, by_name
from mldeck.core.store import Store, decode_json_fields, rows_as_dicts

RUN_META = b"mldeck.run"
"""The Parquet metadata key of the run's row (JSON): the file alone is enough to restore the run."""
BATCH_POINTS = 1_000_000
"""Points archived per turn of the writer thread (at least one run): ingest waits no longer than that."""
LAST_VALUES = ("SELECT key, arg_max(value, (step, i)) FROM "
               "(SELECT key, step, value, row_number() OVER () AS i FROM {points}) GROUP BY key")
"""Each key's value at its last step (of a step written twice, the later) in points as they were written."""
POINTS_SCHEMA = pa.schema([("run_id", pa.string()), ("key", pa.string()), ("step", pa.int64()),
                           ("ts", pa.float64()), ("value", pa.float64())])
_encode = msgspec.json.Encoder().encode  # NaN and the infinities become null: last values go by_name first

CANDIDATES = f"""
    SELECT r.run_id, coalesce((SELECT sum(points) FROM metric_summary s WHERE s.run_id = r.run_id), 0)::BIGINT
               AS points,
           CASE WHEN r.status IS NULL OR r.status NOT IN ({", ".join(f"'{s}'" for s in sorted(TERMINAL))})
                     THEN 'not finished'
                WHEN EXISTS (SELECT 1 FROM jobs j WHERE j.run_id = r.run_id AND j.state <> 'done')
                     THEN 'its job is still queued or running'
                WHEN EXISTS (SELECT 1 FROM model_versions v WHERE v.run_id = r.run_id)
                     THEN 'it backs a registered model version'
                WHEN EXISTS (SELECT 1 FROM sweeps w WHERE w.sweep_id = r.sweep_id AND w.status <> 'done')
                     THEN 'its sweep is still running'
           END AS kept
    FROM runs r
    WHERE coalesce(r.ended_at, r.created_at) < ? AND (? IS NULL OR r.experiment = ?)
      AND (? IS NULL OR r.status = ?) AND (? IS NULL OR r.run_id IN (SELECT unnest(?)))
    ORDER BY r.created_at, r.run_id
"""
"""The runs old enough for an archive (ended before the cutoff; one never ended by when it was created),
of an experiment and status (NULL: any), with their points and why one must stay (NULL: it may go)."""


class ArchiveParams(Params):
    """runs.archive: the runs that ended more than before_s ago (of an experiment, with a status)."""

    before_s: Annotated[float, msgspec.Meta(ge=0)]
    experiment: str | None = None
    status: str | None = None
    dry_run: bool = False


class ArchivedParams(Params):
    """runs.archived: the archived runs, newest first."""

    experiment: str | None = None
    limit: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 1000


@dataclass
class Plan:
    """What an archive would do: the runs that may go (with their points), and how many stay, by why."""

    runs: list[tuple[str, int]] = field(default_factory=list)
    kept: dict[str, int] = field(default_factory=dict)

    def batches(self) -> Iterator[list[str]]:
        """The runs in turns of about BATCH_POINTS points (a longer run alone)."""
        batch: list[str] = []
        points = 0
        for run_id, n in self.runs:
            if batch and points + n > BATCH_POINTS:
                yield batch
                batch, points = [], 0
            batch.append(run_id)
            points += n
        if batch:
            yield batch


def plan(store: Store, cutoff: float, experiment: str | None, status: str | None,
         run_ids: list[str] | None = None) -> Plan:
    """The runs an archive of this cutoff would take, and those it must leave (running, queued, backing a
    model version, in a running sweep, or with an id that cannot name a file)."""
    rows = store.cur().execute(CANDIDATES, [cutoff, experiment, experiment, status, status,
                                            run_ids, run_ids]).fetchall()
    out = Plan()
    for run_id, points, kept in rows:
        if kept is None and not _safe(run_id):
            kept = "its id cannot name a file"
        if kept is None:
            out.runs.append((run_id, points))
        else:
            out.kept[kept] = out.kept.get(kept, 0) + 1
    return out


def _safe(run_id: str) -> bool:
    try:
        check_name(run_id, "run id")
    except BadName:
        return False
    return True


def archive_path(at: float | None, run_id: str) -> str:
    """Where a run's file goes, relative to the home: the month it was created (or ended, when its SDK
    did not say when it was created; UTC) names the folder."""
    month = time.strftime("%Y-%m", time.gmtime(at or 0.0))
    return f"{ARCHIVE_DIR}/{month}/{check_name(run_id, 'run id')}.parquet"


def archive_batch(store: Store, home: Path, run_ids: list[str], now: float) -> list[dict[str, Any]]:
    """On the writer thread: write each run's file whole, then move the runs out of the store in one
    transaction. Runs that may no longer go (the plan is re-checked here) are left; the ones moved."""
    cur = store.cur()
    run_ids = [r for r, _ in plan(store, float("inf"), None, None, run_ids).runs]
    if not run_ids:
        return []
    runs = {r["run_id"]: r for r in rows_as_dicts(cur.execute(
        "SELECT * FROM runs WHERE run_id IN (SELECT unnest(?))", [run_ids]))}
    latest: dict[str, dict[str, float]] = {}
    for run_id, key, value in cur.execute("SELECT run_id, key, last_value FROM metric_summary "
                                          "WHERE run_id IN (SELECT unnest(?))", [run_ids]).fetchall():
        latest.setdefault(run_id, {})[key] = value
    files = {r: archive_path(runs[r]["created_at"] or runs[r]["ended_at"], r) for r in run_ids}
    written = _write_files(cur, home, files, runs)
    rows = [_archived_row(runs[r], latest.get(r, {}), files[r], *written[r], now) for r in run_ids]
    with store.transaction() as tx:
        for table in ("archived_runs", "metrics", "metric_summary", "metric_level", "runs"):
            tx.execute(f"DELETE FROM {table} WHERE run_id IN (SELECT unnest(?))", [run_ids])
        tx.executemany("INSERT INTO archived_runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       [list(row.values()) for row in rows])
    return rows


def _write_files(cur: duckdb.DuckDBPyConnection, home: Path, files: dict[str, str],
                 runs: dict[str, dict[str, Any]]) -> dict[str, tuple[int, int]]:
    """Each run's points, streamed in the order they were written into its file; (points, bytes) by run.
    A failure leaves no temporary file behind."""
    reader = cur.sql("SELECT run_id, key, step, ts, value FROM metrics "
                     "WHERE run_id IN (SELECT unnest(?)) ORDER BY run_id, rowid",
                     params=[list(files)]).to_arrow_reader(64 * 1024)
    written: dict[str, tuple[int, int]] = {}
    current: _File | None = None
    try:
        for batch in reader:
            table = pa.Table.from_batches([batch]).cast(POINTS_SCHEMA)
            for run_id, part in _by_run(table):
                if current is not None and current.run_id != run_id:
                    written[current.run_id] = current.close()
                    current = None
                current = current or _File(home, files[run_id], run_id, runs[run_id])
                current.write(part)
        if current is not None:
            written[current.run_id] = current.close()
            current = None
        for run_id in files.keys() - written.keys():  # a run without points still gets its file
            current = _File(home, files[run_id], run_id, runs[run_id])
            written[run_id] = current.close()
            current = None
    except BaseException:
        if current is not None:
            current.abandon()
        raise
    return written


def _by_run(table: pa.Table) -> Iterator[tuple[str, pa.Table]]:
    """The slices of a table sorted by run_id, one per run."""
    ids = table["run_id"].to_pylist()
    start = 0
    for end in range(1, len(ids) + 1):
        if end == len(ids) or ids[end] != ids[start]:
            yield ids[start], table.slice(start, end - start)
            start = end


class _File:
    """One run's Parquet file being written under a temporary name; close() makes it whole and named."""

    def __init__(self, home: Path, rel: str, run_id: str, run: dict[str, Any]) -> None:
        self.run_id = run_id
        self.path = home / rel
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.partial = self.path.with_name(f".{self.path.name}.partial")
        schema = POINTS_SCHEMA.with_metadata({RUN_META: _encode(run)})
        self.writer = pq.ParquetWriter(self.partial, schema, compression="zstd")
        self.points = 0

    def write(self, table: pa.Table) -> None:
        self.writer.write_table(table)
        self.points += table.num_rows

    def abandon(self) -> None:
        self.writer.close()
        self.partial.unlink(missing_ok=True)

    def close(self) -> tuple[int, int]:
        """fsync, rename over any older file of the run (a crash left it), fsync the folder."""
        self.writer.close()
        fsync(self.partial)
        os.replace(self.partial, self.path)
        fsync(self.path.parent)
        return self.points, self.path.stat().st_size


def _archived_row(run: dict[str, Any], latest: dict[str, float], rel: str, points: int, size: int,
                  now: float) -> dict[str, Any]:
    """The archived_runs row of a run (in the table's column order)."""
    return {"run_id": run["run_id"], "experiment": run.get("experiment"), "name": run.get("name"),
            "status": run.get("status"), "sweep_id": run.get("sweep_id"), "created_at": run.get("created_at"),
            "ended_at": run.get("ended_at"), "archived_at": now, "path": rel, "points": points, "bytes": size,
            "metrics": _encode(dict(zip(latest, by_name(list(latest.values())), strict=True))).decode(),
            "run": _encode(run).decode()}


def list_archived(store: Store, experiment: str | None, limit: int) -> list[dict[str, Any]]:
    """The archived runs, newest first, each as runs.list shows a run plus where it is."""
    rows = rows_as_dicts(store.cur().execute(
        "SELECT * FROM archived_runs WHERE ? IS NULL OR experiment = ? "
        "ORDER BY created_at DESC, run_id LIMIT ?", [experiment, experiment, limit]))
    json_cols = _json_columns(store)
    return [_shown(row, json_cols) for row in rows]


def archived_run(store: Store, run_id: str) -> dict[str, Any] | None:
    """One archived run as list_archived shows it; None when the run is not archived."""
    rows = rows_as_dicts(store.cur().execute("SELECT * FROM archived_runs WHERE run_id = ?", [run_id]))
    return _shown(rows[0], _json_columns(store)) if rows else None


def _json_columns(store: Store) -> tuple[str, ...]:
    """The runs table's JSON columns, whose values an archived row keeps as text."""
    return tuple(r[0] for r in store.cur().execute(
        "SELECT column_name FROM information_schema.columns WHERE table_name = 'runs' AND data_type = 'JSON'"
    ).fetchall())


def _shown(row: dict[str, Any], json_cols: tuple[str, ...]) -> dict[str, Any]:
    """An archived_runs row as a run: its row as it was, its last values, and `archived` (where, when)."""
    run = decode_json_fields(msgspec.json.decode(row["run"]), json_cols)
    return {**run, "metrics": msgspec.json.decode(row["metrics"]),
            "archived": {"path": row["path"], "at": row["archived_at"], "points": row["points"],
                         "bytes": row["bytes"]}}


def read_archive(path: Path, points: int) -> tuple[dict[str, Any], pa.Table]:
    """A run's file: its runs row and its points, checked against the count archived_runs holds."""
    if not path.is_file():
        raise NotFound(f"the archive file {path} is missing: the run's points cannot be brought back")
    table = pq.read_table(path)
    meta = (table.schema.metadata or {}).get(RUN_META)
    table = table.cast(POINTS_SCHEMA)
    if meta is None or table.num_rows != points:
        raise Internal(f"{path} is not the file archived (it has {table.num_rows:,} points of {points:,}"
                       f"{'' if meta else ' and no run row'})")
    return msgspec.json.decode(meta), table


def recover_archived(store: Store, home: Path, now: float) -> int:
    """After a rebuild from the run folders (`agent recover`): each run with a file in the archive is
    archived again, its points out of the store and its archived_runs row back (from the file alone).
    The runs so recovered."""
    runs = 0
    for path in sorted((home / ARCHIVE_DIR).glob("*/*.parquet")):
        meta = (pq.read_schema(path).metadata or {}).get(RUN_META)
        if meta is None:
            continue
        run = msgspec.json.decode(meta)
        table = pq.read_table(path).cast(POINTS_SCHEMA)
        with store.transaction() as cur:
            cur.register("_archived", table)
            try:
                latest = dict(cur.execute(LAST_VALUES.format(points="_archived")).fetchall())
            finally:
                cur.unregister("_archived")
            for name in ("archived_runs", "metrics", "metric_summary", "metric_level", "runs"):
                cur.execute(f"DELETE FROM {name} WHERE run_id = ?", [run["run_id"]])
            row = _archived_row(run, latest, path.relative_to(home).as_posix(), table.num_rows,
                                path.stat().st_size, now)
            cur.execute("INSERT INTO archived_runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        list(row.values()))
        runs += 1
    store.show_archive()
    return runs


def restore(store: Store, run: dict[str, Any], points: pa.Table) -> None:
    """On the writer thread, in one transaction: an archived run's row and points back in the store, its
    summaries and levels built from them, its archived_runs row gone. Conflict when the run is live."""
    run_id = run["run_id"]
    with store.transaction() as cur:
        if cur.execute("SELECT 1 FROM runs WHERE run_id = ?", [run_id]).fetchall():
            raise Conflict(f"run {run_id!r} is in the store already; its archive file stays where it is")
        known = {r[0] for r in cur.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'runs'").fetchall()}
        cols = [c for c in run if c in known]
        names = ", ".join(f'"{c}"' for c in cols)
        marks = ", ".join("?" * len(cols))
        cur.execute(f"INSERT INTO runs ({names}) VALUES ({marks})", [run[c] for c in cols])
        cur.register("_restored", points)
        try:
            cur.execute("INSERT INTO metrics SELECT run_id, key, step, ts, value FROM _restored")
        finally:
            cur.unregister("_restored")
        store.rebuild_summaries(run_id)
        cur.execute("DELETE FROM archived_runs WHERE run_id = ?", [run_id])


def archived_among(store: Store, run_ids: list[str]) -> list[str]:
    """The runs of these that are archived (one query a commit of ingest; none for no runs)."""
    return [r[0] for r in store.cur().execute(
        "SELECT run_id FROM archived_runs WHERE run_id IN (SELECT unnest(?))", [run_ids]).fetchall()
            ] if run_ids else []


def bring_back(store: Store, home: Path, run_id: str) -> tuple[Path, int]:
    """On the writer thread: an archived run back in the store from its file (see restore), then the file
    deleted and the archive's view redefined. Where the file was, and the points it held."""
    found = store.cur().execute("SELECT path, points FROM archived_runs WHERE run_id = ?",
                                [run_id]).fetchone()
    if found is None:
        raise NotFound(f"run {run_id!r} is not archived (`mldeck runs ls --archived` lists those that are)")
    path = home / found[0]
    run, points = read_archive(path, found[1])
    restore(store, run, points)
    path.unlink(missing_ok=True)
    store.show_archive()
    return path, points.num_rows
