"""Monitoring: window specs and tumbling-window arithmetic, turning logged predictions into columns,
and the monitor's queries (drift rows, window summaries, alerts) as plain functions on a Store.

A window is either a span of time (`30s`, `5m`, `1h`), aligned to multiples of its size in
epoch seconds, or a count of logged requests (`500rows`). Windows tumble: each request of
the production version falls in exactly one, and a window is judged once, when it closes.
"""

from __future__ import annotations

import json
import math
import re
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any

import msgspec
import numpy as np
import pyarrow as pa

from mldeck.core import registry
from mldeck.core.errors import Conflict, Invalid, NotFound
from mldeck.core.protocol import Params
from mldeck.core.serving import LATEST_LABELS, PRODUCTION
from mldeck.core.store import Store, decode_json_fields, rows_as_dicts

ACTOR = "mldeck-monitor"
_WINDOW = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|rows?|requests?)\s*$", re.IGNORECASE)
_UNITS = {"s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}
MAX_WINDOW_ROWS = 1_000_000
MAX_BINS = 200
Limit = Annotated[int, msgspec.Meta(ge=1, le=100_000)]


# params of the drift.* and alerts.* methods --------------------------------------------


class DriftStatusParams(Params):
    name: str | None = None


class DriftReportParams(Params):
    name: str
    window: str | None = None
    version: int | None = None


class DriftDistributionParams(Params):
    name: str
    column: str
    version: int | None = None
    bins: Annotated[int, msgspec.Meta(ge=1, le=MAX_BINS)] | None = None


class DriftHistoryParams(Params):
    name: str
    limit: Limit = 200


class DriftCheckParams(Params):
    name: str | None = None


class AlertsListParams(Params):
    all: bool = False
    name: str | None = None
    limit: Limit = 200


class AlertResolveParams(Params):
    alert_id: str
    reason: str | None = None
    actor: str | None = None


# windows ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class WindowSpec:
    """`time` windows are `size` seconds long; `rows` windows hold `size` logged requests."""

    kind: str
    size: float

    def __str__(self) -> str:
        return f"{int(self.size)}rows" if self.kind == "rows" else f"{self.size:g}s"


def parse_window(text: str) -> WindowSpec:
    """`30s`, `5m`, `1h` or `500rows`; anything else is Invalid, with the forms it may take."""
    match = _WINDOW.match(text) if isinstance(text, str) else None
    if not match:
        raise Invalid(f"window {text!r} is not a time like 30s, 5m, 1h or a count like 500rows")
    value, unit = float(match[1]), match[2].lower()
    if unit.startswith(("row", "request")):
        if value != int(value) or not 1 <= value <= MAX_WINDOW_ROWS:
            raise Invalid(f"a row window holds a whole number of rows from 1 to {MAX_WINDOW_ROWS}")
        return WindowSpec("rows", float(int(value)))
    seconds = value * _UNITS[unit]
    if seconds < 1:
        raise Invalid(f"window {text!r} is shorter than a second")
    return WindowSpec("time", seconds)


def time_windows(first_ts: float, after: float | None, now: float, size: float, grace: float) -> list[
    tuple[float, float]
]:
    """The closed, aligned time windows [k·size, (k+1)·size) not judged yet.

    Judging starts at the window holding first_ts (or right after `after`, the end of
    the last judged window); a window is closed once `now` is `grace` seconds past its end,
    so late log lines still land in it.
    """
    start = after if after is not None else math.floor(first_ts / size) * size
    out = []
    while start + size + grace <= now:
        out.append((start, start + size))
        start += size
    return out


def row_windows(ts: Sequence[float], size: int) -> list[tuple[float, float, int]]:
    """Split request timestamps (sorted) into full windows of `size`: (first ts, last ts, count).

    Requests that share the boundary timestamp go into the same window, so a window may
    hold a few more than `size`; the rest (a partial window) waits for more traffic.
    """
    out = []
    i = 0
    while i + size <= len(ts):
        j = i + size
        while j < len(ts) and ts[j] == ts[j - 1]:
            j += 1
        out.append((ts[i], ts[j - 1], j - i))
        i = j
    return out


def trailing_true(flags: Sequence[bool]) -> int:
    """How many of the newest flags (last first) are True in a row."""
    n = 0
    for flag in reversed(flags):
        if not flag:
            break
        n += 1
    return n


# predictions → columns ---------------------------------------------------------------------


def label_accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    """Share of labelled rows whose predicted class (argmax, or p ≥ 0.5 for one column) is the label."""
    predicted = probs.argmax(axis=1) if probs.ndim == 2 else (probs >= 0.5).astype(np.int64)
    return float(np.mean(predicted == labels))


def labelled_outputs(
    rows: Sequence[tuple[str | None, str | None]], output: str
) -> tuple[np.ndarray, np.ndarray]:
    """(outputs JSON, label JSON) per request → the output tensor's rows and integer labels.

    A request of several rows takes a label list of the same length, or one label for all.
    """
    probs: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    for out_text, label_text in rows:
        if not out_text or label_text is None:
            continue
        arr = np.asarray(msgspec.json.decode(out_text).get(output), dtype=np.float64)
        label = np.asarray(msgspec.json.decode(label_text)).reshape(-1)
        if arr.ndim == 0 or label.dtype.kind not in "iub" or label.size not in (1, len(arr)):
            continue
        probs.append(arr)
        labels.append(np.broadcast_to(label, (len(arr),)).astype(np.int64))
    if not probs:
        return np.empty((0, 0)), np.empty(0, dtype=np.int64)
    return np.concatenate(probs), np.concatenate(labels)


# queries -----------------------------------------------------------------------------------


def production_versions(store: Store) -> list[dict[str, Any]]:
    """Every model's production version with what the monitor needs: artifact, signature, metrics."""
    return [
        decode_json_fields(r, ("signature", "metrics")) for r in rows_as_dicts(store.cur().execute(
            "SELECT a.name, a.version, v.artifact, v.signature, v.metrics FROM aliases a "
            "JOIN model_versions v USING (name, version) WHERE a.alias = ? ORDER BY a.name",
            [PRODUCTION],
        ))
    ]


def last_window_end(store: Store, name: str, version: int) -> float | None:
    row = store.cur().execute(
        "SELECT max(window_end) FROM monitor_windows WHERE model = ? AND version = ?", [name, version]
    ).fetchone()
    return row[0] if row else None


_LIVE = "model = ? AND version = ? AND variant <> 'shadow'"


def first_prediction_ts(store: Store, name: str, version: int) -> float | None:
    row = store.cur().execute(f"SELECT min(ts) FROM predictions WHERE {_LIVE}", [name, version]).fetchone()
    return row[0] if row else None


def prediction_ts_after(
    store: Store, name: str, version: int, after: float | None, limit: int
) -> list[float]:
    """Timestamps of the next requests after `after`, oldest first (for row windows)."""
    rows = store.cur().execute(
        f"SELECT ts FROM predictions WHERE {_LIVE} AND ts > ? ORDER BY ts LIMIT ?",
        [name, version, after if after is not None else -1.0, limit],
    ).fetchall()
    return [r[0] for r in rows]


def window_rows(
    store: Store, name: str, version: int, start: float, end: float, inclusive_end: bool
) -> list[tuple[str | None, str | None, str | None]]:
    """(inputs, outputs, latest label) of each live request with start ≤ ts < end (≤ end for rows)."""
    op = "<=" if inclusive_end else "<"
    return [tuple(r) for r in store.cur().execute(  # type: ignore[misc]
        f"SELECT p.inputs, p.outputs, f.label FROM predictions p "
        f"LEFT JOIN {LATEST_LABELS} f USING (request_id) "
        f"WHERE p.model = ? AND p.version = ? AND p.variant <> 'shadow' AND p.ts >= ? AND p.ts {op} ? "
        f"ORDER BY p.ts",
        [name, name, version, start, end],
    ).fetchall()]


def latest_rows(store: Store, name: str, version: int, spec: WindowSpec, now: float) -> tuple[
    float, float, list[tuple[str | None, str | None, str | None]]
]:
    """The most recent window of a spec, whether closed or not (for an on-demand report)."""
    if spec.kind == "time":
        return now - spec.size, now, window_rows(store, name, version, now - spec.size, now, True)
    row = store.cur().execute(
        f"SELECT min(ts), max(ts) FROM (SELECT ts FROM predictions WHERE {_LIVE} ORDER BY ts DESC LIMIT ?)",
        [name, version, int(spec.size)],
    ).fetchone()
    if not row or row[0] is None:
        return now, now, []
    return row[0], row[1], window_rows(store, name, version, row[0], row[1], True)


def save_window(store: Store, summary: dict[str, Any], reports: pa.Table) -> None:
    """One window's per-column rows and its summary, committed together."""
    with store.transaction():
        store.append("drift_reports", reports)
        cols = list(summary)
        store.cur().execute(
            f"INSERT INTO monitor_windows ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
            [json.dumps(v) if isinstance(v, list) else v for v in summary.values()],
        )


def report_table(
    name: str, version: int, start: float, end: float, now: float, columns: Sequence[dict[str, Any]]
) -> pa.Table:
    """drift_reports rows for one window, from ColumnDrift.to_dict() records plus role and n_rows."""
    n = len(columns)

    def col(key: str) -> list[Any]:
        return [c.get(key) for c in columns]

    return pa.table({
        "ts": pa.array([now] * n, pa.float64()), "model": pa.array([name] * n, pa.string()),
        "version": pa.array([version] * n, pa.int32()),
        "window_start": pa.array([start] * n, pa.float64()), "window_end": pa.array([end] * n, pa.float64()),
        "column": pa.array(col("column"), pa.string()), "method": pa.array(col("method"), pa.string()),
        "statistic": pa.array(col("statistic"), pa.float64()),
        "p_value": pa.array(col("p_value"), pa.float64()),
        "drifted": pa.array(col("drifted"), pa.bool_()), "role": pa.array(col("role"), pa.string()),
        "kind": pa.array(col("kind"), pa.string()), "threshold": pa.array(col("threshold"), pa.float64()),
        "n_rows": pa.array(col("n_rows"), pa.int64()),
    })


_WINDOW_JSON = ("drifted_columns",)


def history(store: Store, name: str, limit: int) -> list[dict[str, Any]]:
    """A model's judged windows, oldest first (the newest `limit`)."""
    registry.check_model_name(name)
    rows = rows_as_dicts(store.cur().execute(
        "SELECT * FROM (SELECT * FROM monitor_windows WHERE model = ? ORDER BY window_end DESC LIMIT ?) "
        "ORDER BY window_end", [name, limit],
    ))
    return [decode_json_fields(r, _WINDOW_JSON) for r in rows]


def recent_windows(store: Store, name: str, version: int, limit: int) -> list[dict[str, Any]]:
    """A version's newest windows, oldest first: what the policies read."""
    rows = rows_as_dicts(store.cur().execute(
        "SELECT * FROM (SELECT * FROM monitor_windows WHERE model = ? AND version = ? "
        "ORDER BY window_end DESC LIMIT ?) ORDER BY window_end", [name, version, limit],
    ))
    return [decode_json_fields(r, _WINDOW_JSON) for r in rows]


def window_columns(store: Store, name: str, version: int, window_end: float) -> list[dict[str, Any]]:
    """The per-column rows of one judged window, inputs first."""
    return rows_as_dicts(store.cur().execute(
        'SELECT "column", role, kind, method, statistic, p_value, threshold, drifted, n_rows '
        "FROM drift_reports WHERE model = ? AND version = ? AND window_end = ? "
        "ORDER BY role = 'output', rowid",
        [name, version, window_end],
    ))


def live_accuracy(store: Store, name: str, version: int) -> tuple[float | None, int]:
    """Labelled-row-weighted accuracy over all of a version's judged windows, and the labels behind it."""
    row = store.cur().execute(
        "SELECT sum(accuracy * n_labeled) / nullif(sum(n_labeled), 0), coalesce(sum(n_labeled), 0) "
        "FROM monitor_windows WHERE model = ? AND version = ? AND accuracy IS NOT NULL",
        [name, version],
    ).fetchone()
    return (row[0], int(row[1])) if row else (None, 0)


def last_production_move(store: Store, name: str) -> dict[str, Any] | None:
    """The newest promotion to production that replaced a version: what an automatic rollback undoes."""
    rows = rows_as_dicts(store.cur().execute(
        "SELECT ts, version, from_version FROM audit_log WHERE name = ? AND alias = ? "
        "AND action IN ('promote', 'rollback') ORDER BY seq DESC NULLS LAST, ts DESC LIMIT 1",
        [name, PRODUCTION],
    ))
    return rows[0] if rows and rows[0]["from_version"] is not None else None


# alerts -------------------------------------------------------------------------------------


def open_alert(store: Store, name: str, version: int, kind: str) -> dict[str, Any] | None:
    rows = rows_as_dicts(store.cur().execute(
        "SELECT * FROM alerts WHERE model = ? AND version = ? AND kind = ? AND status = 'open' LIMIT 1",
        [name, version, kind],
    ))
    return rows[0] if rows else None


def raise_alert(
    store: Store, name: str, version: int, kind: str, message: str, details: dict[str, Any]
) -> dict[str, Any]:
    """Insert an open alert and its audit row (actor mldeck-monitor, with the numbers) together."""
    alert = {
        "alert_id": f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}", "ts": time.time(),
        "model": name, "version": version, "kind": kind, "message": message, "details": details,
        "status": "open",
    }
    with store.transaction() as cur:
        cur.execute(
            "INSERT INTO alerts (alert_id, ts, model, version, kind, message, details, status) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [*list(alert.values())[:6], json.dumps(details), "open"],
        )
        registry.append_audit(cur, ACTOR, "alert", name, version, comment=message,
                        details={"alert_id": alert["alert_id"], "kind": kind, **details})
    return alert


def audit(store: Store, actor: str, action: str, name: str, version: int | None, comment: str,
          details: dict[str, Any]) -> None:
    """An automatic action's audit row (retrain started, rollback decided) with its numbers."""
    with store.transaction() as cur:
        registry.append_audit(cur, actor, action, name, version, comment=comment, details=details)


def list_alerts(store: Store, include_resolved: bool, name: str | None, limit: int) -> list[dict[str, Any]]:
    """Alerts newest first; only open ones unless include_resolved."""
    where, args = [], []
    if not include_resolved:
        where.append("status = 'open'")
    if name is not None:
        where.append("model = ?")
        args.append(name)
    clause = f"WHERE {' AND '.join(where)}" if where else ""
    rows = rows_as_dicts(store.cur().execute(
        f"SELECT * FROM alerts {clause} ORDER BY ts DESC LIMIT ?", [*args, limit]
    ))
    return [decode_json_fields(r, ("details",)) for r in rows]


def resolve_alert(store: Store, alert_id: str, actor: str, reason: str | None) -> dict[str, Any]:
    """Close an open alert (audited), so gates like no_open_drift_alert pass again."""
    with store.transaction() as cur:
        rows = rows_as_dicts(cur.execute("SELECT * FROM alerts WHERE alert_id = ?", [alert_id]))
        if not rows:
            raise NotFound(f"no alert {alert_id!r} (`mldeck alerts --all` lists them)")
        alert = rows[0]
        if alert["status"] != "open":
            raise Conflict(f"alert {alert_id} is already {alert['status']}")
        now = time.time()
        cur.execute(
            "UPDATE alerts SET status = 'resolved', resolved_at = ? WHERE alert_id = ?", [now, alert_id]
        )
        registry.append_audit(cur, actor, "resolve_alert", alert["model"], alert["version"], comment=reason,
                        details={"alert_id": alert_id, "kind": alert["kind"]})
    return {**decode_json_fields(alert, ("details",)), "status": "resolved", "resolved_at": now}
