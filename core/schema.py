"""The store's tables, and the migrations that bring an older file up to date."""

from __future__ import annotations

import duckdb

RELATIVE_OFFSETS = r"""
    CREATE TEMP TABLE _relative AS
        SELECT o.path AS abs, o."offset", o.lines,
               coalesce(starts_with(o.path, h.home || '/'), false) AS here,
               coalesce(
                   CASE WHEN starts_with(o.path, h.home || '/') THEN substr(o.path, length(h.home) + 2) END,
                   nullif(regexp_extract(o.path, '/((?:runs|serving)/[^/]+/[^/]+)$', 1), ''),
                   nullif(regexp_extract(o.path, '/(serving/[^/]+)$', 1), '')) AS rel
        FROM ingest_offsets o LEFT JOIN (
            SELECT regexp_replace(path, '/[^/]*$', '') AS home FROM duckdb_databases()
            WHERE database_name = current_database()) h ON true
        WHERE starts_with(o.path, '/');
    DELETE FROM ingest_offsets WHERE path IN (SELECT abs FROM _relative WHERE rel IS NOT NULL);
    INSERT INTO ingest_offsets
        SELECT rel, "offset", lines FROM _relative WHERE rel IS NOT NULL
        QUALIFY row_number() OVER (PARTITION BY rel ORDER BY here DESC, "offset" DESC) = 1
        ON CONFLICT (path) DO NOTHING;
    DROP TABLE _relative;
"""
"""Ingest offsets keyed by the path relative to the home (the store's folder), so a moved or copied home
is not ingested again. An absolute key under the home loses the home; one of a home moved before this
upgrade keeps its runs/… or serving/… tail; where both name one file, the one under the home wins."""

LEVEL_FROM = 16_384
"""A series (one run's key) with more points than this gets a level: min/max buckets to draw it from."""
LEVEL_BUCKETS = 2048
"""A level's buckets span 2**shift steps, the smallest power that keeps a series under this many."""
LEVEL_SHIFT = (f"CASE WHEN points > {LEVEL_FROM} THEN greatest(0, ceil(log2((last_step - first_step + 1) "
               f"/ {LEVEL_BUCKETS})))::INTEGER END")
"""A summary row's level shift, from its points and its first and last steps (NULL: no level)."""

METRIC_SUMMARY = """
    CREATE TABLE metric_summary (
        run_id VARCHAR, key VARCHAR, points BIGINT, first_step BIGINT, last_step BIGINT, last_value DOUBLE,
        min_value DOUBLE, min_step BIGINT, max_value DOUBLE, max_step BIGINT, level_shift INTEGER
    );
    CREATE TABLE metric_level (
        run_id VARCHAR, key VARCHAR, bucket BIGINT, points BIGINT, min_step BIGINT, min_ts DOUBLE,
        min_value DOUBLE, max_step BIGINT, max_ts DOUBLE, max_value DOUBLE
    );
"""
"""Per run and key: what its points say (count, first and last step, the last value, the best value each
way and the earliest step it was reached at, NaN ignored), and for long series a level of min/max buckets.
One row per series (per bucket): kept so by MERGE, without a primary key, whose index would cost memory
and make DuckDB count each commit as larger than it is (checkpointing early)."""

SUMMARY_FROM_POINTS = f"""
    INSERT INTO metric_summary
    SELECT *, {LEVEL_SHIFT} FROM (
        SELECT run_id, key, count(*) AS points, min(step) AS first_step, max(step) AS last_step,
               arg_max(value, (step, rowid)) AS last_value,
               min(value) FILTER (NOT isnan(value)), arg_min(step, (value, step)) FILTER (NOT isnan(value)),
               max(value) FILTER (NOT isnan(value)), arg_max(step, (value, -step)) FILTER (NOT isnan(value))
        FROM metrics WHERE {{runs}} GROUP BY run_id, key)
"""
"""Summaries from the points of the runs `{runs}` (a condition on run_id) selects: the last value is the
last one written at the last step."""

LEVEL_FROM_POINTS = """
    INSERT INTO metric_level
    SELECT run_id, key, bucket, points, lo.step, lo.ts, min_value, hi.step, hi.ts, max_value FROM (
        SELECT m.run_id, m.key, m.step >> s.level_shift AS bucket, count(*) AS points,
               min(m.value) FILTER (NOT isnan(m.value)) AS min_value,
               arg_min({{'step': m.step, 'ts': m.ts}}, m.value) FILTER (NOT isnan(m.value)) AS lo,
               max(m.value) FILTER (NOT isnan(m.value)) AS max_value,
               arg_max({{'step': m.step, 'ts': m.ts}}, m.value) FILTER (NOT isnan(m.value)) AS hi
        FROM metrics m JOIN {series} s USING (run_id, key) GROUP BY ALL)
"""
"""The level of each series `{series}` (run_id, key, level_shift) names, from its points."""

MIGRATIONS: list[str] = [
    # 1: the tables of DESIGN.md. Timestamps are epoch seconds (DOUBLE) throughout.
    """
    CREATE TABLE runs (
        run_id VARCHAR PRIMARY KEY, experiment VARCHAR, name VARCHAR, status VARCHAR,
        params JSON, tags JSON, command JSON, git_sha VARCHAR, git_dirty BOOLEAN,
        data_hash VARCHAR, host VARCHAR, gpus JSON, sweep_id VARCHAR, parent_run_id VARCHAR,
        created_at DOUBLE, started_at DOUBLE, ended_at DOUBLE, exit_code INTEGER,
        resumed_count INTEGER DEFAULT 0, status_reason VARCHAR, managed BOOLEAN DEFAULT false
    );
    CREATE TABLE metrics (run_id VARCHAR, key VARCHAR, step BIGINT, ts DOUBLE, value DOUBLE);
    CREATE TABLE ingest_offsets (path VARCHAR PRIMARY KEY, "offset" BIGINT, lines BIGINT);
    CREATE TABLE system_metrics (
        ts DOUBLE, gpu_index INTEGER, util_pct DOUBLE, mem_used BIGINT, mem_total BIGINT,
        power_w DOUBLE, temp_c DOUBLE, cpu_pct DOUBLE, ram_used BIGINT, ram_total BIGINT,
        sm_clock_mhz DOUBLE, energy_j DOUBLE, sm_active_pct DOUBLE, tensor_active_pct DOUBLE
    );
    CREATE TABLE gpu_processes (ts DOUBLE, gpu_index INTEGER, pid INTEGER, mem_used BIGINT);
    CREATE TABLE model_versions (
        name VARCHAR, version INTEGER, run_id VARCHAR, artifact VARCHAR, signature JSON,
        metrics JSON, data_hash VARCHAR, git_sha VARCHAR, git_dirty BOOLEAN,
        archived BOOLEAN DEFAULT false, created_at DOUBLE, PRIMARY KEY (name, version)
    );
    CREATE TABLE aliases (name VARCHAR, alias VARCHAR, version INTEGER, PRIMARY KEY (name, alias));
    CREATE TABLE audit_log (
        ts DOUBLE, actor VARCHAR, action VARCHAR, name VARCHAR, version INTEGER,
        from_version INTEGER, comment VARCHAR, details JSON
    );
    CREATE TABLE predictions (
        ts DOUBLE, model VARCHAR, version INTEGER, variant VARCHAR, request_id VARCHAR,
        inputs JSON, outputs JSON, latency_ms DOUBLE
    );
    CREATE TABLE feedback (request_id VARCHAR, label JSON, ts DOUBLE);
    CREATE TABLE drift_reports (
        ts DOUBLE, model VARCHAR, version INTEGER, window_start DOUBLE, window_end DOUBLE,
        "column" VARCHAR, method VARCHAR, statistic DOUBLE, p_value DOUBLE, drifted BOOLEAN
    );
    """,
    # 2: alerts raised by monitoring (drift, accuracy) and by the server (a model that failed to load)
    """
    CREATE TABLE alerts (
        alert_id VARCHAR PRIMARY KEY, ts DOUBLE, model VARCHAR, version INTEGER, kind VARCHAR,
        message VARCHAR, details JSON, status VARCHAR DEFAULT 'open', resolved_at DOUBLE
    );
    """,
    # 3: model registry: the alias an audit row is about, and an order that survives equal timestamps
    """
    ALTER TABLE audit_log ADD COLUMN alias VARCHAR;
    ALTER TABLE audit_log ADD COLUMN seq BIGINT;
    """,
    # serving: the traffic split per model (shadow on/off, canary share), and feedback per model
    """
    CREATE TABLE serving_traffic (
        name VARCHAR PRIMARY KEY, shadow BOOLEAN DEFAULT false, canary DOUBLE DEFAULT 0,
        updated_at DOUBLE
    );
    ALTER TABLE feedback ADD COLUMN model VARCHAR;
    """,
    # jobs: the persistent queue of agent-launched runs, sweeps, and what each run cost
    """
    CREATE TABLE jobs (
        run_id VARCHAR PRIMARY KEY, state VARCHAR, spec JSON, gpus_requested INTEGER,
        gpus_assigned JSON, pid INTEGER, pgid INTEGER, pid_create_time DOUBLE,
        priority INTEGER DEFAULT 0, enqueued_at DOUBLE, attempts INTEGER DEFAULT 0
    );
    CREATE TABLE sweeps (
        sweep_id VARCHAR PRIMARY KEY, name VARCHAR, experiment VARCHAR, spec JSON,
        metric VARCHAR, mode VARCHAR, early_stop VARCHAR, status VARCHAR,
        created_at DOUBLE, ended_at DOUBLE
    );
    ALTER TABLE runs ADD COLUMN cost_usd DOUBLE;
    ALTER TABLE runs ADD COLUMN gpu_seconds DOUBLE;
    ALTER TABLE runs ADD COLUMN cpu_seconds DOUBLE;
    ALTER TABLE runs ADD COLUMN peak_gpu_mem BIGINT;
    ALTER TABLE runs ADD COLUMN held_gpu_mem BIGINT;
    ALTER TABLE runs ADD COLUMN price_per_hour DOUBLE;
    """,
    # monitoring and pipelines: what each drift row is about, one summary row per monitored window
    # (accuracy and ECE from feedback), and the pipeline runs with their steps and gate
    """
    ALTER TABLE drift_reports ADD COLUMN role VARCHAR;
    ALTER TABLE drift_reports ADD COLUMN kind VARCHAR;
    ALTER TABLE drift_reports ADD COLUMN threshold DOUBLE;
    ALTER TABLE drift_reports ADD COLUMN n_rows BIGINT;
    CREATE TABLE monitor_windows (
        model VARCHAR, version INTEGER, window_start DOUBLE, window_end DOUBLE, ts DOUBLE,
        n_rows BIGINT, n_requests BIGINT, n_columns INTEGER, n_drifted INTEGER, share_drifted DOUBLE,
        drift_share DOUBLE, dataset_drifted BOOLEAN, drifted_columns JSON, output_drifted BOOLEAN,
        n_labeled BIGINT, accuracy DOUBLE, ece DOUBLE, baseline_metric VARCHAR, baseline DOUBLE
    );
    CREATE TABLE pipelines (
        pipeline_id VARCHAR PRIMARY KEY, name VARCHAR, file VARCHAR, spec JSON, "trigger" JSON,
        actor VARCHAR, status VARCHAR, steps JSON, gate VARCHAR, gate_failed JSON, model VARCHAR,
        registered_version INTEGER, promoted_alias VARCHAR, message VARCHAR,
        created_at DOUBLE, ended_at DOUBLE
    );
    """,
    # a stop asked of a running job survives an agent restart (stop, or requeue, and why)
    """
    ALTER TABLE jobs ADD COLUMN stop_requested VARCHAR;
    ALTER TABLE jobs ADD COLUMN stop_reason VARCHAR;
    """,
    # what the model server used, as increments per accounting tick (cost per model from serving)
    """
    CREATE TABLE serving_usage (ts DOUBLE, pid INTEGER, gpu_seconds DOUBLE, cpu_seconds DOUBLE);
    """,
    RELATIVE_OFFSETS,
    # points a run's SDK dropped while its disk refused writes
    """
    ALTER TABLE runs ADD COLUMN dropped_points BIGINT;
    """,
    # drift: why each column got its type and its test; explanations kept next to served predictions
    """
    ALTER TABLE drift_reports ADD COLUMN kind_reason VARCHAR;
    ALTER TABLE drift_reports ADD COLUMN method_reason VARCHAR;
    CREATE TABLE explanations (
        request_id VARCHAR, model VARCHAR, version INTEGER, "row" INTEGER, ts DOUBLE, method VARCHAR,
        baseline VARCHAR, output VARCHAR, target INTEGER, score DOUBLE, baseline_score DOUBLE, delta DOUBLE,
        features JSON
    );
    """,
    # issue 18: per-run summaries and long series' levels, kept at ingest; built here for existing points
    METRIC_SUMMARY + SUMMARY_FROM_POINTS.format(runs="true") + ";"
    + LEVEL_FROM_POINTS.format(series="(SELECT * FROM metric_summary WHERE level_shift IS NOT NULL)"),
    # issue 17: how many steps a run will take (mldeck.init(total_steps=...)), for its progress and ETA
    """
    ALTER TABLE runs ADD COLUMN total_steps BIGINT;
    """,
    # issue 18: runs moved out into Parquet files (`mldeck runs archive`): a row each to list and find them
    """
    CREATE TABLE archived_runs (
        run_id VARCHAR, experiment VARCHAR, name VARCHAR, status VARCHAR, sweep_id VARCHAR,
        created_at DOUBLE, ended_at DOUBLE, archived_at DOUBLE, path VARCHAR, points BIGINT, bytes BIGINT,
        metrics JSON, run JSON
    );
    """,
]

SCHEMA_VERSION = len(MIGRATIONS)


def migrate(con: duckdb.DuckDBPyConnection) -> int:
    """Apply every migration the file has not seen, each in its own transaction."""
    con.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER)")
    row = con.execute("SELECT max(version) FROM schema_version").fetchone()
    current = (row[0] if row else None) or 0
    if current > SCHEMA_VERSION:
        raise RuntimeError(
            f"this store was written by a newer mldeck (schema {current}, this one knows "
            f"{SCHEMA_VERSION}); upgrade mldeck on this host"
        )
    for version in range(current + 1, SCHEMA_VERSION + 1):
        con.execute("BEGIN")
        try:
            con.execute(MIGRATIONS[version - 1])
            con.execute("INSERT INTO schema_version VALUES (?)", [version])
            con.execute("COMMIT")
        except Exception:
            con.execute("ROLLBACK")
            raise
    return SCHEMA_VERSION
