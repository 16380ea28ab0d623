"""The DuckDB store: every query mldeck runs, behind a name a reader understands.

Only the agent opens the file (DuckDB allows one writing process). Each thread gets
its own cursor; the agent funnels writes through one thread so they never conflict.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import duckdb
import msgspec
import pyarrow as pa

from mldeck.core.errors import Invalid, Refused, TooLarge
from mldeck.core.schema import migrate

RUN_FIELDS = (
    "run_id", "experiment", "name", "status", "params", "tags", "command", "git_sha",
    "git_dirty", "data_hash", "host", "gpus", "sweep_id", "parent_run_id", "created_at",
    "started_at", "ended_at", "exit_code", "resumed_count", "status_reason", "managed",
)
RUNS_TABLE_COLUMNS = (
    "run_id", "experiment", "name", "status", "sweep_id", "created_at", "started_at", "ended_at", "cost_usd",
)
_JSON_FIELDS = {"params", "tags", "command", "gpus"}
READ_ONLY_STATEMENTS = {"SELECT", "EXPLAIN"}
# The agent reads no files and changes no settings through DuckDB, so a user's query can't either.
SANDBOX = {"enable_external_access": False, "lock_configuration": True}
QUERY_FETCH_ROWS = 1000
_json = msgspec.json.Encoder()


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
            row[key] = json.loads(row[key])
    return row


def _decode_run(row: dict[str, Any]) -> dict[str, Any]:
    return decode_json_fields(row, tuple(_JSON_FIELDS))


class Store:
    """One open store file; methods are safe to call from any thread."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._queries: dict[duckdb.DuckDBPyConnection, str] = {}
        self._queries_lock = threading.Lock()
        self._open()

    def _open(self) -> None:
        self._con = duckdb.connect(str(self.path), config=SANDBOX)
        self._local = threading.local()
        migrate(self._con)

    def reopen(self) -> None:
        """Open the file again after DuckDB gave up on it (a checkpoint that failed on a full disk
        invalidates the open database; the file and its WAL are intact). Every thread gets a new cursor."""
        self._con.close()
        self._open()

    def close(self) -> None:
        self._con.close()

    def cur(self) -> duckdb.DuckDBPyConnection:
        """This thread's cursor on the shared database."""
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
        where, args = [], []
        for col, val in (("status", status), ("experiment", experiment), ("sweep_id", sweep_id)):
            if val is not None:
                where.append(f"{col} = ?")
                args.append(val)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        cur = self.cur().execute(
            f"SELECT * FROM runs {clause} ORDER BY created_at DESC LIMIT ?", [*args, limit]
        )
        return [_decode_run(r) for r in rows_as_dicts(cur)]

    def latest_metrics(self, run_ids: list[str]) -> dict[str, dict[str, float]]:
        """The last value of every key of each run: what a runs table shows."""
        if not run_ids:
            return {}
        cur = self.cur().execute(
            "SELECT run_id, key, arg_max(value, step) FROM metrics "
            "WHERE run_id IN (SELECT unnest(?)) GROUP BY run_id, key",
            [run_ids],
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
        max_metrics: int = 16,
    ) -> tuple[pa.Table, int, list[str]]:
        """A page of runs, newest first, as columns, with each chosen metric's latest value pivoted in.

        A runs table of 100,000 rows built from per-run dicts costs ~1 s of Python; this is one query.
        Without `metrics`, the keys most runs of the page have (at most max_metrics) become `m:<key>`.
        Returns (table, total matching runs, metric keys).
        """
        cur = self.cur()
        known = [r[0] for r in cur.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'runs' "
            "ORDER BY ordinal_position").fetchall()]
        cols = columns or [c for c in RUNS_TABLE_COLUMNS if c in known]
        unknown = [c for c in cols if c not in known]
        if unknown:
            raise Invalid(f"unknown run column(s) {', '.join(unknown)}; columns: {', '.join(known)}")
        if "run_id" not in cols:
            cols = ["run_id", *cols]
        where, args = [], []
        for col, val in (("status", status), ("experiment", experiment)):
            if val is not None:
                where.append(f"{col} = ?")
                args.append(val)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        total = cur.execute(f"SELECT count(*) FROM runs {clause}", args).fetchall()[0][0]
        page_sql = (f"SELECT {', '.join(_ident_q(c) for c in cols)}, created_at AS _at, run_id AS _id "
                    f"FROM runs {clause} ORDER BY _at DESC NULLS LAST, _id LIMIT ? OFFSET ?")
        page = cur.sql(page_sql, params=[*args, limit, offset]).to_arrow_table()
        cur.register("_runs_page", page)
        try:
            if metrics is None:
                common = cur.execute(
                    "SELECT key FROM metrics WHERE run_id IN (SELECT run_id FROM _runs_page) "
                    "GROUP BY key ORDER BY count(DISTINCT run_id) DESC, key LIMIT ?", [max_metrics])
                metrics = sorted(r[0] for r in common.fetchall())
            if not metrics:
                return page.drop_columns(["_at", "_id"]), total, []
            pivot = ", ".join(f"max(value) FILTER (WHERE key = ?) AS {_ident_q('m:' + k)}" for k in metrics)
            table = cur.sql(f"""
                WITH latest AS (
                    SELECT run_id, key, arg_max(value, step) AS value FROM metrics
                    WHERE run_id IN (SELECT run_id FROM _runs_page) AND key IN (SELECT unnest(?))
                    GROUP BY run_id, key),
                wide AS (SELECT run_id, {pivot} FROM latest GROUP BY run_id)
                SELECT p.* EXCLUDE (_at, _id), wide.* EXCLUDE (run_id)
                FROM _runs_page p LEFT JOIN wide USING (run_id) ORDER BY p._at DESC NULLS LAST, p._id
            """, params=[metrics, *metrics]).to_arrow_table()
        finally:
            cur.unregister("_runs_page")
        return table, total, metrics

    def metric_keys(self, run_id: str) -> list[str]:
        cur = self.cur().execute(
            "SELECT DISTINCT key FROM metrics WHERE run_id = ? ORDER BY key", [run_id]
        )
        return [r[0] for r in cur.fetchall()]

    def run_metrics(
        self, run_id: str, keys: list[str] | None, max_points: int
    ) -> dict[str, dict[str, list[float]]]:
        """Each key's series, min/max-bucketed in SQL so at most max_points cross the wire."""
        keys = keys if keys is not None else self.metric_keys(run_id)
        buckets = max(1, max_points // 2)
        out: dict[str, dict[str, list[float]]] = {}
        for key in keys:
            cur = self.cur().execute(
                """
                WITH s AS (SELECT step, ts, value FROM metrics WHERE run_id = ? AND key = ?),
                     r AS (SELECT min(step) AS lo, max(step) AS hi, count(*) AS n FROM s),
                     b AS (
                        SELECT s.*, CASE WHEN r.n <= ? THEN s.step
                               ELSE floor((s.step - r.lo) * ? / (r.hi - r.lo + 1)) END AS bucket
                        FROM s, r
                     ),
                     picks AS (
                        SELECT arg_min(step, value) AS a, arg_max(step, value) AS b
                        FROM b GROUP BY bucket
                     ),
                     chosen AS (SELECT a AS step FROM picks UNION SELECT b FROM picks)
                SELECT s.step, any_value(s.ts), any_value(s.value) FROM s
                JOIN chosen USING (step) GROUP BY s.step ORDER BY s.step
                """,
                [run_id, key, max_points, buckets],
            )
            steps, ts, values = [], [], []
            for step, t, v in cur.fetchall():
                steps.append(step)
                ts.append(t)
                values.append(v)
            out[key] = {"step": steps, "ts": ts, "value": values}
        return out

    def finish_unmanaged_run(self, run_id: str, status: str, ended_at: float, reason: str | None) -> None:
        """The SDK's own finish counts only for runs the agent did not launch (it knows better)."""
        self.cur().execute(
            "UPDATE runs SET status = ?, ended_at = ?, status_reason = ? "
            "WHERE run_id = ? AND NOT coalesce(managed, false)",
            [status, ended_at, reason, run_id],
        )

    def delete_metrics_after(self, run_id: str, step: int) -> None:
        """A resumed run replays from its checkpoint: points past it are superseded."""
        self.cur().execute("DELETE FROM metrics WHERE run_id = ? AND step > ?", [run_id, step])

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

    def set_offset(self, path: str, offset: int, lines: int) -> None:
        self.cur().execute(
            'INSERT INTO ingest_offsets VALUES (?, ?, ?) ON CONFLICT (path) DO UPDATE '
            'SET "offset" = excluded."offset", lines = excluded.lines',
            [path, offset, lines],
        )

    def append(self, table: str, batch: pa.Table) -> None:
        """Insert an Arrow batch whose columns are named after the table's."""
        if batch.num_rows == 0:
            return
        cur = self.cur()
        cur.register("_batch", batch)
        try:
            cols = ", ".join(f'"{c}"' for c in batch.column_names)
            cur.execute(f"INSERT INTO {table} ({cols}) SELECT {cols} FROM _batch")
        finally:
            cur.unregister("_batch")

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
    if kind not in READ_ONLY_STATEMENTS:
        raise Refused(f"only read-only queries (SELECT, EXPLAIN) are allowed here, not {kind}")


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


class _Transaction:
    """BEGIN/COMMIT around a block, ROLLBACK if it raises."""

    def __init__(self, cur: duckdb.DuckDBPyConnection) -> None:
        self.cur = cur

    def __enter__(self) -> duckdb.DuckDBPyConnection:
        self.cur.execute("BEGIN TRANSACTION")
        return self.cur

    def __exit__(self, exc_type: object, *_: object) -> None:
        self.cur.execute("ROLLBACK" if exc_type else "COMMIT")
