"""The DuckDB store: every query mldeck runs, behind a name a reader understands.

Only the agent opens the file (DuckDB allows one writing process). Each thread gets
its own cursor; the agent funnels writes through one thread so they never conflict.
"""

from __future__ import annotations

import glob
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import duckdb
import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mldeck.core.atomic import fsync
from mldeck.core.errors import Internal, Invalid, Refused, TooLarge
from mldeck.core.metric_series import Series, level_curves, level_partials, series, summary_partials
from mldeck.core.paths import ARCHIVE_DIR
from mldeck.core.runs_sql import Known, selection
from mldeck.core.schema import LEVEL_BUCKETS, LEVEL_FROM_POINTS, LEVEL_SHIFT, SUMMARY_FROM_POINTS, migrate

RUN_FIELDS = (
    "run_id", "experiment", "name", "status", "params", "tags", "command", "git_sha",
    "git_dirty", "data_hash", "host", "gpus", "sweep_id", "parent_run_id", "created_at",
    "started_at", "ended_at", "exit_code", "resumed_count", "status_reason", "managed", "total_steps",
)
NUMERIC_TYPES = {"DOUBLE", "FLOAT", "BIGINT", "INTEGER", "SMALLINT", "TINYINT", "HUGEINT", "UBIGINT"}
RUNS_TABLE_COLUMNS = (
    "run_id", "experiment", "name", "status", "sweep_id", "created_at", "started_at", "ended_at", "cost_usd",
    "total_steps",
)
_JSON_FIELDS = {"params", "tags", "command", "gpus"}
READ_ONLY_STATEMENTS = {"SELECT", "EXPLAIN SELECT"}
SANDBOX = {"enable_external_access": False, "lock_configuration": True}
"""A store file opened only to be checked reads no other file and changes no setting."""
ARCHIVED_METRICS = "archived_metrics"
"""The view of the archive's points (Parquet files): `mldeck query` reads archived runs through it."""
QUERY_FETCH_ROWS = 1000
SWAP_POLL_S = 0.01
MANAGED_FIELDS = ("status", "started_at", "created_at", "command", "host")
"""What the agent knows better than a run's SDK about the runs it launched: their init leaves these."""
_json = msgspec.json.Encoder()

SUMMARY_FOLD = f"""
    SELECT run_id, key, points, first_step, last_step, last_value, min_value, min_step, max_value, max_step,
           CASE WHEN level_shift IS NULL THEN want ELSE greatest(level_shift, want) END AS level_shift,
           level_shift AS had_shift
    FROM (
        SELECT *, {LEVEL_SHIFT} AS want FROM (
            SELECT run_id, key, sum(points) AS points, min(first_step) AS first_step,
                   max(last_step) AS last_step, arg_max(last_value, (last_step, seq)) AS last_value,
                   min(min_value) AS min_value,
                   arg_min(min_step, (min_value, min_step)) FILTER (min_value IS NOT NULL) AS min_step,
                   max(max_value) AS max_value,
                   arg_max(max_step, (max_value, -max_step)) FILTER (max_value IS NOT NULL) AS max_step,
                   max(level_shift) AS level_shift
            FROM (SELECT * FROM _partials UNION ALL BY NAME
                  SELECT s.*, -1 AS seq FROM metric_summary s SEMI JOIN _partials USING (run_id, key))
            GROUP BY run_id, key))
"""
"""A batch's summary partials (core.metric_series) folded into their series' summaries (the batch comes
after what they say), with the level shift each needs (had_shift: the one it had)."""

LEVEL_FOLD = """
    SELECT run_id, key, bucket, points, lo.step AS min_step, lo.ts AS min_ts, min_value,
           hi.step AS max_step, hi.ts AS max_ts, max_value FROM (
        SELECT run_id, key, bucket, sum(points) AS points, min(min_value) AS min_value,
               arg_min({'step': min_step, 'ts': min_ts}, min_value) FILTER (min_value IS NOT NULL) AS lo,
               max(max_value) AS max_value,
               arg_max({'step': max_step, 'ts': max_ts}, max_value) FILTER (max_value IS NOT NULL) AS hi
        FROM (SELECT * FROM _buckets UNION ALL BY NAME
              SELECT l.* FROM metric_level l SEMI JOIN _buckets USING (run_id, key, bucket))
        GROUP BY run_id, key, bucket)
"""
"""Level partials (`_buckets`: rows of metric_level, several per bucket allowed) folded into the buckets
they fall in."""

RAW_CURVES = """
    WITH s AS (SELECT key, step, ts, value FROM metrics WHERE run_id = ? AND key IN (SELECT unnest(?))),
         r AS (SELECT key, min(step) AS lo, max(step) AS hi, count(*) AS n FROM s GROUP BY key),
         b AS (
            SELECT s.*, CASE WHEN r.n <= ? THEN s.step
                   ELSE floor((s.step - r.lo) * ? / (r.hi - r.lo + 1)) END AS bucket
            FROM s JOIN r USING (key)
         ),
         picks AS (
            SELECT key, arg_min(step, value) AS a, arg_max(step, value) AS b FROM b GROUP BY key, bucket
         ),
         chosen AS (SELECT key, a AS step FROM picks UNION SELECT key, b FROM picks)
    SELECT s.key, s.step, any_value(s.ts), any_value(s.value) FROM s
    JOIN chosen USING (key, step) GROUP BY s.key, s.step ORDER BY s.key, s.step
"""
"""Each key's points, min/max-bucketed down to the points asked for (all of them when there are fewer)."""


def _literal(text: str) -> str:
    return text.replace("'", "''")


_UNITS = {"bytes": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40,
          "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}


def _bytes(size: str) -> int:
    """DuckDB's way of writing a size ("488.2 MiB") as bytes."""
    number, unit = size.split()
    return round(float(number) * _UNITS[unit])


def _ident(name: str) -> str:
    """A name safe inside double quotes in SQL."""
    return name.replace('"', '""')


def _ident_q(name: str) -> str:
    return f'"{_ident(name)}"'


def rows_as_dicts(cur: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    cols = [d[0] for d in cur.description or []]
    return [dict(zip(cols, row, strict=True)) for row in cur.fetchall()]


def decode_json_fields(row: dict[str, Any], fields: tuple[str, ...]) -> dict[str, Any]:
    """DuckDB returns JSON columns as text; callers want the values."""
    for key in fields:
        if isinstance(row.get(key), str):
            row[key] = _loads(row[key])
    return row


def _loads(text: str) -> Any:
    """msgspec's decoder first (several times faster); Python's for what only it reads (NaN, Infinity)."""
    try:
        return msgspec.json.decode(text)
    except msgspec.DecodeError:
        return json.loads(text)


def _strict(text: str) -> bytes:
    """DuckDB's JSON as the wire's: a run's JSON fields were written by json.dumps and its DOUBLE columns
    may hold NaN or infinities, which only Python's reader takes; re-encoded, they go out as null."""
    if "NaN" in text or "Infinity" in text:
        return _json.encode(json.loads(text))
    return text.encode()


def _runs_filter(status: str | None, experiment: str | None, sweep_id: str | None) -> tuple[str, list[str]]:
    """The WHERE clause and its arguments for runs of a status, an experiment, a sweep (None: any)."""
    where, args = [], []
    for col, val in (("status", status), ("experiment", experiment), ("sweep_id", sweep_id)):
        if val is not None:
            where.append(f"{col} = ?")
            args.append(val)
    return (f"WHERE {' AND '.join(where)}" if where else ""), args


def _wire_value(column: str) -> str:
    """SQL for a DOUBLE column as the wire carries metric values (core.runlog.by_name): JSON numbers,
    NaN and infinities as their names."""
    return (f"CASE WHEN isnan({column}) THEN '\"NaN\"'::JSON WHEN {column} = 'inf' THEN '\"Infinity\"'::JSON "
            f"WHEN {column} = '-inf' THEN '\"-Infinity\"'::JSON ELSE to_json({column}) END")


def _decode_run(row: dict[str, Any]) -> dict[str, Any]:
    return decode_json_fields(row, tuple(_JSON_FIELDS))


class Store:
    """One open store file; methods are safe to call from any thread."""

    def __init__(self, path: Path | str, settings: dict[str, Any] | None = None) -> None:
        """settings: DuckDB's (memory_limit, threads), given at connect: the configuration is locked after."""
        self.path = Path(path)
        self.settings = dict(settings or {})
        self._queries: dict[duckdb.DuckDBPyConnection, str] = {}
        self._queries_lock = threading.Lock()
        self._usable = threading.Event()
        """Cleared while swap() replaces the file: new reads wait for the store that comes after."""
        self._usable.set()
        self._open()

    def _open(self) -> None:
        """Connect, then close the sandbox: no file outside the archive can be read, from then on, by
        anyone (DuckDB takes allowed_directories only once running, and never widens it after)."""
        self._con = duckdb.connect(str(self.path), config=self.settings)
        archive = self.path.parent / ARCHIVE_DIR
        self._con.execute(f"SET allowed_directories = ['{_literal(str(archive))}/']")
        self._con.execute("SET enable_external_access = false")
        self._local = threading.local()
        migrate(self._con)
        self.show_archive(self._con)

    def show_archive(self, con: duckdb.DuckDBPyConnection | None = None) -> None:
        """(Re)define the view archived_metrics over the archive's Parquet files as they are now: the
        points of every archived run, or none. A view that already says so is left (no write at open)."""
        con = con or self.cur()
        folder = str(self.path.parent / ARCHIVE_DIR)
        files = _literal(f"{folder}/*/*.parquet")
        reads = bool(glob.glob(f"{glob.escape(folder)}/*/*.parquet"))
        now = con.execute("SELECT sql FROM duckdb_views() WHERE view_name = ? AND NOT internal",
                          [ARCHIVED_METRICS]).fetchall()
        if now and (f"'{files}'" in now[0][0]) == reads and ("read_parquet" in now[0][0]) == reads:
            return
        points = (f"SELECT run_id, key, step, ts, value FROM read_parquet('{files}')" if reads else
                  "SELECT NULL::VARCHAR AS run_id, NULL::VARCHAR AS key, NULL::BIGINT AS step, "
                  "NULL::DOUBLE AS ts, NULL::DOUBLE AS value WHERE false")
        con.execute(f"CREATE OR REPLACE VIEW {ARCHIVED_METRICS} AS {points}")

    def memory(self) -> tuple[int, int]:
        """DuckDB's buffer memory in use and its limit, in bytes."""
        used, limit = self.cur().execute(
            "SELECT sum(memory_usage_bytes), current_setting('memory_limit') FROM duckdb_memory()").fetchone()
        return int(used or 0), _bytes(limit)

    def trim_cache(self, to_bytes: int) -> int:
        """Give back the cached blocks above to_bytes (the least recently used go), then allow the whole
        limit again; on the writer thread, at rest. The bytes in use after."""
        cur = self.cur()
        limit = self.settings.get("memory_limit") or cur.execute(
            "SELECT current_setting('memory_limit')").fetchone()[0]
        try:
            cur.execute(f"SET memory_limit = '{to_bytes}B'")
        finally:
            cur.execute(f"SET memory_limit = '{_literal(limit)}'")
        return self.memory()[0]

    def reopen(self) -> None:
        """Open the file again after DuckDB gave up on it (a checkpoint that failed on a full disk
        invalidates the open database; the file and its WAL are intact). Every thread gets a new cursor."""
        self._con.close()
        self._open()

    def close(self) -> None:
        self._con.close()

    def swap(self, replacement: Path) -> None:
        """Make another store file this one (a compacted copy), on the writer thread, nothing uncommitted:
        new reads wait, user queries are cancelled, the file is replaced, fsynced and opened again."""
        self._usable.clear()
        try:
            self.cancel_queries("the store is being compacted; run it again")
            while True:
                try:
                    self._con.close()
                    break
                except duckdb.ResourceInUseException:  # a read in flight: it ends; new ones wait
                    time.sleep(SWAP_POLL_S)
            wal = self.path.with_name(self.path.name + ".wal")
            if wal.exists() and wal.stat().st_size:
                self._open()
                raise Internal(f"{wal} holds commits after the copy was made; the store was left as it was")
            os.replace(replacement, self.path)
            fsync(self.path.parent)
            self._open()
        finally:
            self._usable.set()

    def cur(self) -> duckdb.DuckDBPyConnection:
        """This thread's cursor on the shared database."""
        self._usable.wait()
        cur = getattr(self._local, "cur", None)
        if cur is None:
            cur = self._local.cur = self._con.cursor()
        return cur

    def transaction(self) -> _Transaction:
        return _Transaction(self.cur())

    # runs ---------------------------------------------------------------

    def upsert_run(self, fields: dict[str, Any]) -> None:
        """Insert a run or update the fields given; unknown keys are ignored."""
        row = {k: v for k, v in fields.items() if k in RUN_FIELDS}
        for key in _JSON_FIELDS & row.keys():
            row[key] = json.dumps(row[key])
        cols = list(row)
        updates = ", ".join(f"{c} = excluded.{c}" for c in cols if c != "run_id") or "run_id = run_id"
        self.cur().execute(
            f"INSERT INTO runs ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))}) "
            f"ON CONFLICT (run_id) DO UPDATE SET {updates}",
            [row[c] for c in cols],
        )

    def get_run(self, run_id: str) -> dict[str, Any] | None:
        cur = self.cur().execute("SELECT * FROM runs WHERE run_id = ?", [run_id])
        rows = rows_as_dicts(cur)
        return _decode_run(rows[0]) if rows else None

    def list_runs(
        self,
        status: str | None = None,
        experiment: str | None = None,
        sweep_id: str | None = None,
        limit: int = 1000,
    ) -> list[dict[str, Any]]:
        clause, args = _runs_filter(status, experiment, sweep_id)
        cur = self.cur().execute(
            f"SELECT * FROM runs {clause} ORDER BY created_at DESC LIMIT ?", [*args, limit]
        )
        return [_decode_run(r) for r in rows_as_dicts(cur)]

    def runs_page(
        self,
        status: str | None = None,
        experiment: str | None = None,
        sweep_id: str | None = None,
        limit: int = 1000,
    ) -> msgspec.Raw:
        """The newest runs with their latest metric values (what `runs ls` shows) as the wire's JSON array,
        made by DuckDB in one query: no row or value becomes a Python object on the way."""
        clause, args = _runs_filter(status, experiment, sweep_id)
        cur = self.cur().execute(f"""
            WITH page AS (SELECT * FROM runs {clause} ORDER BY created_at DESC LIMIT ?),
                 latest AS (SELECT run_id, json_group_object(key, {_wire_value("last_value")}) AS metrics
                            FROM metric_summary SEMI JOIN page USING (run_id) GROUP BY run_id)
            SELECT to_json(row)::VARCHAR FROM (
                SELECT page.*, coalesce(latest.metrics, '{{}}'::JSON) AS metrics
                FROM page LEFT JOIN latest USING (run_id) ORDER BY page.created_at DESC) row
            """, [*args, limit])
        return msgspec.Raw(b"[" + b",".join(_strict(row) for (row,) in cur.fetchall()) + b"]")

    def latest_metrics(self, run_ids: list[str]) -> dict[str, dict[str, float]]:
        """The last value of every key of each run: what a runs table shows."""
        if not run_ids:
            return {}
        cur = self.cur().execute(
            "SELECT run_id, key, last_value FROM metric_summary WHERE run_id IN (SELECT unnest(?))", [run_ids]
        )
        out: dict[str, dict[str, float]] = {}
        for run_id, key, value in cur.fetchall():
            out.setdefault(run_id, {})[key] = value
        return out

    def runs_table(
        self,
        offset: int = 0,
        limit: int = 20_000,
        status: str | None = None,
        experiment: str | None = None,
        columns: list[str] | None = None,
        metrics: list[str] | None = None,
        query: str | None = None,
        sort: str | None = None,
        descending: bool = True,
        max_metrics: int = 16,
    ) -> tuple[pa.Table, int, list[str]]:
        """A page of runs as columns, filtered by `query` (the `/` words) and ordered by `sort` (newest first
        without), with each chosen metric's latest value pivoted in (and the last step logged, with
        `total_steps`).

        A runs table of 100,000 rows built from per-run dicts costs ~1 s of Python; this is one query.
        Without `metrics`, the keys most runs of the page have (at most max_metrics) become `m:<key>`, and
        those the filter or sort name. Returns (table, total matching runs, metric keys).
        """
        cur = self.cur()
        types = dict(cur.execute(
            "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = 'runs' "
            "ORDER BY ordinal_position").fetchall())
        cols = columns or [c for c in RUNS_TABLE_COLUMNS if c in types]
        unknown = [c for c in cols if c not in types]
        if unknown:
            raise Invalid(f"unknown run column(s) {', '.join(unknown)}; columns: {', '.join(types)}")
        if "run_id" not in cols:
            cols = ["run_id", *cols]
        known = Known(cols, lambda key: bool(cur.execute(
            "SELECT 1 FROM metric_summary WHERE key = ? LIMIT 1", [key]).fetchall()))
        numeric = {c for c, t in types.items() if t in NUMERIC_TYPES}
        equal = {col: val for col, val in (("status", status), ("experiment", experiment)) if val is not None}
        chosen = selection(known, numeric, query, sort, descending, equal)
        total = cur.execute(f"SELECT count(*) {chosen.source}", chosen.args).fetchall()[0][0]
        page = cur.sql(f"SELECT {', '.join('runs.' + _ident_q(c) for c in cols)} {chosen.source} "
                       f"ORDER BY {chosen.order} LIMIT ? OFFSET ?", params=[*chosen.args, limit, offset]
                       ).to_arrow_table()
        page = page.append_column("_at", pa.array(np.arange(page.num_rows)))
        cur.register("_runs_page", page)
        try:
            if metrics is None:
                common = cur.execute(
                    "SELECT key FROM metric_summary WHERE run_id IN (SELECT run_id FROM _runs_page) "
                    "GROUP BY key ORDER BY count(*) DESC, key LIMIT ?", [max_metrics])
                metrics = sorted({*(r[0] for r in common.fetchall()), *chosen.metrics})
            steps = ", max(last_step) AS last_step" if "total_steps" in cols else ""
            if not metrics and not steps:
                return page.drop_columns(["_at"]), total, []
            pivot = "".join(f", any_value(last_value) FILTER (WHERE key = ?) AS {_ident_q('m:' + k)}"
                            for k in metrics)
            table = cur.sql(f"""
                WITH wide AS (
                    SELECT run_id {steps} {pivot} FROM metric_summary
                    WHERE run_id IN (SELECT run_id FROM _runs_page) GROUP BY run_id)
                SELECT p.* EXCLUDE (_at), wide.* EXCLUDE (run_id)
                FROM _runs_page p LEFT JOIN wide USING (run_id) ORDER BY p._at
            """, params=metrics).to_arrow_table()
        finally:
            cur.unregister("_runs_page")
        return table, total, metrics

    def metric_keys(self, run_id: str) -> list[str]:
        cur = self.cur().execute("SELECT key FROM metric_summary WHERE run_id = ? ORDER BY key", [run_id])
        return [r[0] for r in cur.fetchall()]

    def run_metrics(
        self, run_id: str, keys: list[str] | None, max_points: int
    ) -> dict[str, dict[str, list[float]]]:
        """Each key's curve in at most max_points points (min/max buckets): a long key's from its level,
        the others' from their points."""
        return self.runs_metrics([run_id], keys, max_points)[run_id]

    def runs_metrics(
        self, run_ids: list[str], keys: list[str] | None, max_points: int
    ) -> dict[str, dict[str, dict[str, list[float]]]]:
        """run_metrics of several runs (Compare's), the summaries and levels of all of them read at once."""
        cur = self.cur()
        found: dict[str, dict[str, int | None]] = {r: {} for r in run_ids}
        for run_id, key, shift in cur.execute(
                "SELECT run_id, key, level_shift FROM metric_summary WHERE run_id IN (SELECT unnest(?)) "
                "ORDER BY run_id, key", [run_ids]).fetchall():
            found[run_id][key] = shift
        leveled = max_points <= LEVEL_BUCKETS
        out: dict[str, dict[str, dict[str, list[float]]]] = {}
        long: dict[str, list[str]] = {}
        for run_id in run_ids:
            wanted = keys if keys is not None else list(found[run_id])
            curves = out[run_id] = {k: {"step": [], "ts": [], "value": []} for k in wanted}
            long[run_id] = [k for k in wanted if leveled and found[run_id].get(k) is not None]
            short = [k for k in wanted if k in found[run_id] and k not in long[run_id]]
            if short:
                raw = cur.execute(RAW_CURVES, [run_id, short, max_points, max(1, max_points // 2)])
                for key, step, ts, value in raw.fetchall():
                    curve = curves[key]
                    curve["step"].append(step)
                    curve["ts"].append(ts)
                    curve["value"].append(value)
        if any(long.values()):
            level = cur.sql("SELECT run_id, key, bucket, min_step, min_ts, min_value, max_step, max_ts, "
                            "max_value FROM metric_level WHERE run_id IN (SELECT unnest(?))",
                            params=[[r for r, ks in long.items() if ks]]).to_arrow_table()
            for (run_id, key), curve in level_curves(level, max(1, max_points // 2)).items():
                if key in long[run_id]:
                    out[run_id][key] = curve
        return out

    def get_runs(self, run_ids: list[str]) -> list[dict[str, Any]]:
        """The runs' rows, with their latest metric values and last step, in the order asked (runs.get and
        Compare's runs.compare)."""
        cur = self.cur().execute("SELECT * FROM runs WHERE run_id IN (SELECT unnest(?))", [run_ids])
        rows = {r["run_id"]: _decode_run(r) for r in rows_as_dicts(cur)}
        latest = self.latest_metrics(run_ids)
        steps = dict(self.cur().execute(
            "SELECT run_id, max(last_step) FROM metric_summary WHERE run_id IN (SELECT unnest(?)) "
            "GROUP BY run_id", [run_ids]).fetchall())
        for run_id, row in rows.items():
            row["metrics"] = latest.get(run_id, {})
            row["last_step"] = steps.get(run_id)
        return [rows[r] for r in run_ids if r in rows]

    def finish_unmanaged_run(self, run_id: str, status: str, ended_at: float, reason: str | None) -> None:
        """The SDK's own finish counts only for runs the agent did not launch (it knows better)."""
        self.finish_unmanaged_runs([(run_id, status, ended_at, reason)])

    def finish_unmanaged_runs(self, finished: list[tuple[str, str, float, Any]]) -> None:
        """finish_unmanaged_run of many runs (each once) at once: (run_id, status, ended_at, reason) rows."""
        run_ids, statuses, ended, reasons = zip(*finished, strict=True)
        table = pa.table({"run_id": pa.array(run_ids, pa.string()), "status": pa.array(statuses, pa.string()),
                          "ended_at": pa.array(ended, pa.float64()), "reason": pa.array(reasons)})
        with _registered(self.cur(), "_finished", table) as cur:
            cur.execute(
                "UPDATE runs SET status = f.status, ended_at = f.ended_at, status_reason = f.reason "
                "FROM _finished f WHERE runs.run_id = f.run_id AND NOT coalesce(runs.managed, false)")

    def init_runs(self, inits: list[dict[str, Any]]) -> None:
        """Runs as their SDK's init line describes them (each run once), in a statement per set of fields:
        a new run is inserted; for one the agent launched, MANAGED_FIELDS keep the agent's values."""
        by_fields: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        for fields in inits:
            row = {k: v for k, v in fields.items() if k in RUN_FIELDS}
            for key in _JSON_FIELDS & row.keys():
                row[key] = json.dumps(row[key])
            by_fields.setdefault(tuple(sorted(row)), []).append(row)
        for cols, rows in by_fields.items():
            table = pa.table({c: pa.array([r[c] for r in rows]) for c in cols})
            updates = ", ".join(
                f"{c} = CASE WHEN coalesce(runs.managed, false) THEN runs.{c} ELSE excluded.{c} END"
                if c in MANAGED_FIELDS else f"{c} = excluded.{c}"
                for c in cols if c != "run_id") or "run_id = runs.run_id"
            with _registered(self.cur(), "_inits", table) as cur:
                cur.execute(f"INSERT INTO runs ({', '.join(cols)}) SELECT {', '.join(cols)} FROM _inits "
                            f"ON CONFLICT (run_id) DO UPDATE SET {updates}")

    def delete_metrics_after(self, run_id: str, step: int) -> None:
        """A resumed run replays from its checkpoint: points past it are superseded (and its summaries
        and levels are built again from the points that stay)."""
        cur = self.cur()
        deleted = cur.execute("DELETE FROM metrics WHERE run_id = ? AND step > ?", [run_id, step]).fetchall()
        if deleted and deleted[0][0]:
            self.rebuild_summaries(run_id)

    def rebuild_summaries(self, run_id: str) -> None:
        """The run's summaries and levels, built again from its points (after points went or came back)."""
        cur = self.cur()
        cur.execute("DELETE FROM metric_summary WHERE run_id = ?", [run_id])
        cur.execute("DELETE FROM metric_level WHERE run_id = ?", [run_id])
        cur.execute(SUMMARY_FROM_POINTS.format(runs="run_id = ?"), [run_id])
        cur.execute(LEVEL_FROM_POINTS.format(
            series="(SELECT * FROM metric_summary WHERE run_id = ? AND level_shift IS NOT NULL)"), [run_id])

    def add_points(self, points: pa.Table) -> None:
        """Insert metric points (run_id, key, step, ts, value) and fold them into their series' summaries
        and levels. Call it in a transaction: points, summaries and levels commit together. Rows are
        replaced (deleted and inserted), never updated in place."""
        if points.num_rows == 0:
            return
        with _registered(self.cur(), "_points", points) as cur:
            cur.execute("INSERT INTO metrics SELECT run_id, key, step, ts, value FROM _points")
        batch = series(points)
        with _registered(self.cur(), "_partials", summary_partials(batch)) as cur:
            folded = cur.sql(SUMMARY_FOLD).to_arrow_table()
        leveled = folded.filter(pc.is_valid(folded["level_shift"]))
        with _registered(self.cur(), "_folded", folded.drop_columns(["had_shift"])) as cur:
            cur.execute("DELETE FROM metric_summary s USING _folded f "
                        "WHERE s.run_id = f.run_id AND s.key = f.key")
            cur.execute("INSERT INTO metric_summary SELECT * FROM _folded")
        if leveled.num_rows:
            self._level(batch, leveled.select(["run_id", "key", "had_shift", "level_shift"]).to_pylist())

    def _level(self, batch: Series, state: list[dict[str, Any]]) -> None:
        """Bring the levels of a batch's long series up to date: built from the points for a series that
        has none yet (this batch included), regrouped where the series outgrew its shift, then the batch's
        points folded in."""
        cur = self.cur()
        build = [(s["run_id"], s["key"], s["level_shift"]) for s in state if s["had_shift"] is None]
        grow = [(s["run_id"], s["key"], s["level_shift"] - s["had_shift"]) for s in state
                if s["had_shift"] is not None and s["level_shift"] > s["had_shift"]]
        shift = {(s["run_id"], s["key"]): s["level_shift"] for s in state if s["had_shift"] is not None}
        if build:
            with _registered(cur, "_build", _series_table(build, "level_shift")):
                cur.execute(LEVEL_FROM_POINTS.format(series="_build"))
        parts = []
        if grow:
            with _registered(cur, "_grow", _series_table(grow, "by")):
                parts.append(cur.sql(
                    "SELECT run_id, key, bucket >> g.by AS bucket, points, min_step, min_ts, min_value, "
                    "max_step, max_ts, max_value FROM metric_level JOIN _grow g USING (run_id, key)"
                ).to_arrow_table())
                cur.execute("DELETE FROM metric_level l USING _grow g "
                            "WHERE l.run_id = g.run_id AND l.key = g.key")
        if shift:
            names = zip(batch.run_id.to_pylist(), batch.key.to_pylist(), strict=True)
            parts.append(level_partials(batch, np.array([shift.get(name, -1) for name in names], np.int64)))
        parts = [part for part in parts if part is not None and part.num_rows]
        if not parts:
            return
        with _registered(cur, "_buckets", pa.concat_tables(parts, promote_options="permissive")):
            folded = cur.sql(LEVEL_FOLD).to_arrow_table()
        with _registered(cur, "_folded", folded):
            cur.execute("DELETE FROM metric_level l USING _folded f "
                        "WHERE l.run_id = f.run_id AND l.key = f.key AND l.bucket = f.bucket")
            cur.execute("INSERT INTO metric_level SELECT * FROM _folded")

    # ingest ------------------------------------------------------------

    def ingest_offsets(self) -> dict[str, tuple[int, int]]:
        """Each ingested file's committed byte offset and line count, by its path relative to the home."""
        cur = self.cur().execute('SELECT path, "offset", lines FROM ingest_offsets')
        return {p: (o, n) for p, o, n in cur.fetchall()}

    def forget_offsets(self, paths: list[str]) -> None:
        """Drop the offsets of files deleted after they were ingested (paths relative to the home)."""
        with self.transaction() as cur:
            cur.executemany("DELETE FROM ingest_offsets WHERE path = ?", [[p] for p in paths])

    def add_dropped_points(self, run_id: str, points: int) -> None:
        """Count points the run's SDK had to drop (its disk refused writes) into the run's record."""
        self.cur().execute(
            "INSERT INTO runs (run_id, dropped_points) VALUES (?, ?) ON CONFLICT (run_id) DO UPDATE "
            "SET dropped_points = coalesce(runs.dropped_points, 0) + excluded.dropped_points",
            [run_id, points],
        )

    def set_offsets(self, offsets: list[tuple[str, int, int]]) -> None:
        """Each file's committed (path relative to the home, byte offset, line count), in one statement."""
        paths, ends, lines = zip(*offsets, strict=True)
        table = pa.table({"path": pa.array(paths, pa.string()), "offset": pa.array(ends, pa.int64()),
                          "lines": pa.array(lines, pa.int64())})
        with _registered(self.cur(), "_offsets", table) as cur:
            cur.execute('INSERT INTO ingest_offsets SELECT path, "offset", lines FROM _offsets ON CONFLICT '
                        '(path) DO UPDATE SET "offset" = excluded."offset", lines = excluded.lines')

    def append(self, table: str, batch: pa.Table) -> None:
        """Insert an Arrow batch whose columns are named after the table's (metric points through
        add_points, so that their summaries stay true)."""
        if batch.num_rows == 0:
            return
        if table == "metrics":
            self.add_points(batch)
            return
        with _registered(self.cur(), "_batch", batch) as cur:
            cols = ", ".join(f'"{c}"' for c in batch.column_names)
            cur.execute(f"INSERT INTO {table} ({cols}) SELECT {cols} FROM _batch")

    # host metrics ---------------------------------------------------------

    def host_metrics(self, since: float, max_points: int) -> list[dict[str, Any]]:
        """System samples since a time, thinned to about max_points per GPU (or host)."""
        cur = self.cur().execute(
            """
            WITH s AS (SELECT * FROM system_metrics WHERE ts >= ?),
                 n AS (SELECT greatest(1, ceil(count(*) / ?)) AS every FROM s
                       GROUP BY gpu_index ORDER BY 1 DESC LIMIT 1)
            SELECT * EXCLUDE (rn) FROM (
                SELECT s.*, row_number() OVER (PARTITION BY gpu_index ORDER BY ts) AS rn FROM s
            ), n WHERE (rn - 1) % n.every = 0 ORDER BY ts, gpu_index
            """,
            [since, max(1, max_points)],
        )
        rows = rows_as_dicts(cur)
        for row in rows:
            row.pop("every", None)
        return rows

    # power users -----------------------------------------------------------

    def read_only_query(self, sql: str, limit: int, time_limit_s: float, max_bytes: int) -> dict[str, Any]:
        """Run one user statement where it can do no harm: SELECT or EXPLAIN only, in a read-only
        transaction on a cursor of its own, in a store that has no file access and locked settings
        (SANDBOX); interrupted past time_limit_s; its result capped at limit rows and max_bytes of JSON."""
        self._usable.wait()
        cur = self._con.cursor()
        over_time = f"it ran past the time limit of {time_limit_s:g} s ([query] time_limit_s in agent.toml)"
        with self._queries_lock:
            self._queries[cur] = over_time
        timer = threading.Timer(time_limit_s, self.cancel_queries, (over_time, cur))
        timer.start()
        try:
            _check_statement(cur, sql)
            cur.execute("BEGIN TRANSACTION READ ONLY")
            cur.execute(sql)
            return _capped_result(cur, limit, max_bytes)
        except duckdb.InterruptException:
            raise Refused(f"query cancelled: {self._queries[cur]}; narrow it with WHERE or LIMIT") from None
        except duckdb.Error as exc:
            raise Invalid(f"query failed: {_first_line(exc)}") from None
        finally:
            timer.cancel()
            with self._queries_lock:
                del self._queries[cur]
            cur.close()

    def cancel_queries(self, why: str, only: duckdb.DuckDBPyConnection | None = None) -> None:
        """Interrupt the user queries running now (or just `only`); their error says why."""
        with self._queries_lock:
            for cur in list(self._queries) if only is None else [only]:
                if cur in self._queries:
                    self._queries[cur] = why
                    cur.interrupt()

    def damaged_tables(self) -> dict[str, str]:
        """Each table whose data cannot be read back, with why: checked at every start."""
        return damaged_tables(self.cur())


def tables(con: duckdb.DuckDBPyConnection) -> list[str]:
    """The store's own tables, by name."""
    return [r[0] for r in con.execute(
        "SELECT table_name FROM duckdb_tables() WHERE database_name = current_database() "
        "AND NOT temporary ORDER BY table_name").fetchall()]


def damaged_tables(con: duckdb.DuckDBPyConnection) -> dict[str, str]:
    """Each table whose data cannot be read back, with DuckDB's error (a block whose checksum fails).

    Every value of every column is read (hashed): count(*), min and max are answered from the file's
    statistics without reading a data block, so they would call a damaged table healthy."""
    damaged = {}
    for table in tables(con):
        try:
            con.execute(f"SELECT min(hash(COLUMNS(*))) FROM {_ident_q(table)}").fetchall()
        except duckdb.Error as exc:
            damaged[table] = _first_line(exc)
    return damaged


def _first_line(exc: Exception) -> str:
    """A DuckDB error's first line (the rest repeats the SQL), kept short: it may quote the query."""
    return (str(exc).splitlines() or [type(exc).__name__])[0][:500]


def _check_statement(cur: duckdb.DuckDBPyConnection, sql: str) -> None:
    """Exactly one statement, and one that only reads (what it reads is the transaction's business)."""
    statements = cur.extract_statements(sql)
    if len(statements) != 1:
        raise Invalid(f"send exactly one statement (got {len(statements)})")
    kind = statements[0].type.name
    if kind == "EXPLAIN":  # EXPLAIN ANALYZE runs what it explains: that must be a SELECT too
        explained = cur.extract_statements(sql[_explained_at(sql):])
        kind = "EXPLAIN " + (explained[0].type.name if len(explained) == 1 else "of several statements")
    if kind not in READ_ONLY_STATEMENTS:
        raise Refused(f"only read-only queries (SELECT, EXPLAIN SELECT) are allowed here, not {kind}")


def _explained_at(sql: str) -> int:
    """Where the statement an EXPLAIN explains begins: past EXPLAIN, its (options) and ANALYZE."""
    tokens = [(at, kind) for at, kind in duckdb.tokenize(sql) if kind != duckdb.token_type.comment][1:]
    depth = 0
    for n, (at, kind) in enumerate(tokens):
        if kind == duckdb.token_type.operator and sql[at] in "()" and (depth or n == 0):
            depth += 1 if sql[at] == "(" else -1
        elif depth == 0 and not (kind == duckdb.token_type.keyword and sql[at:at + 7].upper() == "ANALYZE"):
            return at
    return len(sql)


def _capped_result(cur: duckdb.DuckDBPyConnection, limit: int, max_bytes: int) -> dict[str, Any]:
    """The statement's rows, streamed until `limit` rows or max_bytes of JSON, saying where it stopped."""
    columns = [d[0] for d in cur.description or []]
    size = len(_json.encode(columns))
    if size > max_bytes:
        raise TooLarge(f"the column names alone are {size / 2**20:.1f} MiB; name the columns shorter")
    rows: list[list[Any]] = []
    message = None
    while message is None and (chunk := cur.fetchmany(min(QUERY_FETCH_ROWS, limit + 1 - len(rows)))):
        for row in chunk:
            values = list(row)
            if len(rows) == limit:
                message = f"result truncated at {limit} rows (the limit); add LIMIT or raise the limit"
                break
            size += len(_encode_row(columns, values)) + 1
            if size > max_bytes:
                message = (f"result truncated at {len(rows)} rows / {max_bytes / 2**20:.1f} MiB; "
                           "add LIMIT or select fewer columns")
                break
            rows.append(values)
    return {"columns": columns, "rows": rows, "truncated": message is not None, "message": message}


def _encode_row(columns: list[str], values: list[Any]) -> bytes:
    """A row as the reply will carry it; a value JSON cannot carry names its column."""
    try:
        return _json.encode(values)
    except TypeError as exc:
        for name, value in zip(columns, values, strict=True):
            try:
                _json.encode(value)
            except TypeError:
                raise Invalid(f"column {name!r} holds values JSON cannot carry ({exc}); "
                              "CAST it to VARCHAR") from None
        raise


def _series_table(rows: list[tuple[str, str, int]], name: str) -> pa.Table:
    """(run_id, key, number) rows as a table, the number's column called name."""
    run_ids, keys, numbers = zip(*rows, strict=True)
    return pa.table({"run_id": pa.array(run_ids, pa.string()), "key": pa.array(keys, pa.string()),
                     name: pa.array(numbers, pa.int64())})


class _registered:
    """An Arrow table visible to SQL on a cursor under a name, for the length of a with block."""

    def __init__(self, cur: duckdb.DuckDBPyConnection, name: str, table: pa.Table) -> None:
        self.cur, self.name, self.table = cur, name, table

    def __enter__(self) -> duckdb.DuckDBPyConnection:
        self.cur.register(self.name, self.table)
        return self.cur

    def __exit__(self, *_: object) -> None:
        self.cur.unregister(self.name)


class _Transaction:
    """BEGIN/COMMIT around a block, ROLLBACK if it raises."""

    def __init__(self, cur: duckdb.DuckDBPyConnection) -> None:
        self.cur = cur

    def __enter__(self) -> duckdb.DuckDBPyConnection:
        self.cur.execute("BEGIN TRANSACTION")
        return self.cur

    def __exit__(self, exc_type: object, *_: object) -> None:
        self.cur.execute("ROLLBACK" if exc_type else "COMMIT")
