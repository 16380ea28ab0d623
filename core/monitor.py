"""Monitoring: window specs and tumbling-window arithmetic, turning logged predictions into columns,
and the monitor's queries (drift rows, window summaries, alerts) as plain functions on a Store.

A window is either a span of time (`30s`, `5m`, `1h`), aligned to multiples of its size in
epoch seconds, or a count of rows (`500rows`: examples, however many a request holds). Windows
tumble: each request of the production version falls in exactly one, and a window is judged once,
when it closes. A tumbling row window closes at the request that brings it to its size, so it holds
that many rows or, when its last request (or requests sharing the last timestamp) straddles the
boundary, those few more; the latest N rows asked for on demand are exactly N, the oldest request
cut to the rows it contributes.
"""

from __future__ import annotations

import json
import math
import re
import secrets
import time
from collections.abc import Mapping, Sequence
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
MAX_FEATURES = 100_000
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


class ExplainParams(Params):
    """A logged request's row to explain; without request_id, the model's latest logged live request."""

    name: str
    request_id: Annotated[str, msgspec.Meta(min_length=1, max_length=1_000)] | None = None
    row: Annotated[int, msgspec.Meta(ge=0)] = 0
    top: Annotated[int, msgspec.Meta(ge=1, le=MAX_FEATURES)] = 10


class ExplainSummaryParams(Params):
    """Which features drive a version's predictions in a window (default: its latest judged one)."""

    name: str
    window: str | None = None
    version: int | None = None
    top: Annotated[int, msgspec.Meta(ge=1, le=MAX_FEATURES)] = 20


class AlertResolveParams(Params):
    alert_id: str
    reason: str | None = None
    actor: str | None = None


# windows ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class WindowSpec:
    """`time` windows are `size` seconds long; `rows` windows hold `size` rows (examples)."""

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


def row_windows(ts: Sequence[float], rows: Sequence[int], size: int) -> list[tuple[float, float, int]]:
    """Split requests (sorted timestamps, rows each) into full windows of `size` rows: (first ts, last ts,
    rows).

    A window closes at the request that brings it to `size` rows; requests that share that
    timestamp go into it too, so a window may hold a few more than `size`. The rest (a partial
    window) waits for more traffic.
    """
    out = []
    i = 0
    while i < len(ts):
        j, total = i, 0
        while j < len(ts) and total < size:
            total += rows[j]
            j += 1
        if total < size:
            break
        while j < len(ts) and ts[j] == ts[j - 1]:
            total += rows[j]
            j += 1
        out.append((ts[i], ts[j - 1], total))
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


def class_probabilities(outputs: np.ndarray) -> np.ndarray:
    """A classifier's outputs as probabilities: kept when they are (rows in [0, 1] summing to 1, or one
    column in [0, 1]), else read as logits (softmax over classes, the sigmoid of one column)."""
    x = np.asarray(outputs, dtype=np.float64)
    if x.size == 0:
        return x
    in_unit = bool(np.all((x >= 0) & (x <= 1)))
    if x.ndim == 1:
        return x if in_unit else 1 / (1 + np.exp(-x))
    if in_unit and np.allclose(x.sum(axis=1), 1, atol=1e-3):
        return x
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


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
# a request's rows: the batch size of its first input (of its first output when inputs were not logged)
_ROWS = ("coalesce(json_array_length(json_extract(inputs, '$.*')[1]), "
         "json_array_length(json_extract(outputs, '$.*')[1]), 1)")


def first_prediction_ts(store: Store, name: str, version: int) -> float | None:
    row = store.cur().execute(f"SELECT min(ts) FROM predictions WHERE {_LIVE}", [name, version]).fetchone()
    return row[0] if row else None


def prediction_rows_after(
    store: Store, name: str, version: int, after: float | None, limit: int
) -> tuple[list[float], list[int]]:
    """Timestamps and row counts of the next requests after `after`, oldest first (for row windows)."""
    rows = store.cur().execute(
        f"SELECT ts, {_ROWS} FROM predictions WHERE {_LIVE} AND ts > ? ORDER BY ts LIMIT ?",
        [name, version, after if after is not None else -1.0, limit],
    ).fetchall()
    return [r[0] for r in rows], [int(r[1]) for r in rows]


def window_rows(
    store: Store, name: str, version: int, start: float, end: float, inclusive_end: bool
) -> tuple[list[tuple[str | None, str | None, str | None]], int]:
    """(inputs, outputs, latest label) of each live request with start ≤ ts < end (≤ end for rows), and
    how many rows they hold."""
    op = "<=" if inclusive_end else "<"
    found = store.cur().execute(
        f"SELECT p.inputs, p.outputs, f.label, {_ROWS} FROM predictions p "
        f"LEFT JOIN {LATEST_LABELS} f USING (request_id) "
        f"WHERE p.model = ? AND p.version = ? AND p.variant <> 'shadow' AND p.ts >= ? AND p.ts {op} ? "
        f"ORDER BY p.ts",
        [name, name, version, start, end],
    ).fetchall()
    return [(r[0], r[1], r[2]) for r in found], sum(int(r[3]) for r in found)


def latest_rows(store: Store, name: str, version: int, spec: WindowSpec, now: float) -> tuple[
    float, float, list[tuple[str | None, str | None, str | None]]
]:
    """The most recent window of a spec, whether closed or not (for an on-demand report): the last
    `size` seconds, or exactly the last `size` rows (the oldest request cut to the rows it gives)."""
    if spec.kind == "time":
        return now - spec.size, now, window_rows(store, name, version, now - spec.size, now, True)[0]
    size = int(spec.size)
    found = store.cur().execute(  # the newest `size` requests hold at least `size` rows
        f"SELECT ts, inputs, outputs, label, n, upto FROM ("
        f"  SELECT *, sum(n) OVER (ORDER BY ts DESC, request_id DESC ROWS UNBOUNDED PRECEDING) AS upto FROM ("
        f"    SELECT p.ts, p.request_id, p.inputs, p.outputs, f.label, {_ROWS} AS n "
        f"    FROM predictions p LEFT JOIN {LATEST_LABELS} f USING (request_id) "
        f"    WHERE p.model = ? AND p.version = ? AND p.variant <> 'shadow' "
        f"    ORDER BY p.ts DESC, p.request_id DESC LIMIT ?)) "
        f"WHERE upto - n < ? ORDER BY ts, request_id",
        [name, name, version, size, size],
    ).fetchall()
    if not found:
        return now, now, []
    rows = [(r[1], r[2], r[3]) for r in found]
    oldest_rows, upto = int(found[0][4]), int(found[0][5])
    keep = size - (upto - oldest_rows)
    if keep < oldest_rows:
        inputs, outputs, label = rows[0]
        rows[0] = (last_rows(inputs, keep), last_rows(outputs, keep), last_label(label, oldest_rows, keep))
    return found[0][0], found[-1][0], rows


def last_rows(tensors: str | None, keep: int) -> str | None:
    """Logged tensors ({name: rows}) cut to their last `keep` rows."""
    if not tensors:
        return tensors
    obj = msgspec.json.decode(tensors)
    if not isinstance(obj, dict):
        return tensors
    return msgspec.json.encode({k: v[-keep:] if isinstance(v, list) else v for k, v in obj.items()}).decode()


def last_label(label: str | None, n: int, keep: int) -> str | None:
    """A request's label for its last `keep` of `n` rows: a list of one per row is cut, one label stays."""
    if label is None:
        return None
    value = msgspec.json.decode(label)
    if isinstance(value, list) and len(value) == n:
        return msgspec.json.encode(value[-keep:]).decode()
    return label


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
        "kind_reason": pa.array(col("kind_reason"), pa.string()),
        "method_reason": pa.array(col("method_reason"), pa.string()),
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
        'SELECT "column", role, kind, method, statistic, p_value, threshold, drifted, n_rows, '
        "kind_reason, method_reason FROM drift_reports WHERE model = ? AND version = ? AND window_end = ? "
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


# explanations -------------------------------------------------------------------------------


def logged_request(store: Store, name: str, request_id: str) -> dict[str, Any] | None:
    """A model's logged request by id: the live prediction rather than its shadow."""
    registry.check_model_name(name)
    rows = rows_as_dicts(store.cur().execute(
        "SELECT ts, version, variant, inputs, outputs FROM predictions WHERE model = ? AND request_id = ? "
        "ORDER BY variant = 'shadow', ts DESC LIMIT 1", [name, request_id],
    ))
    return rows[0] if rows else None


def latest_request_id(store: Store, name: str) -> str | None:
    """The id of a model's newest logged live request (what the screens explain when asked to)."""
    registry.check_model_name(name)
    row = store.cur().execute(
        "SELECT request_id FROM predictions WHERE model = ? AND variant <> 'shadow' "
        "AND request_id IS NOT NULL ORDER BY ts DESC LIMIT 1", [name],
    ).fetchone()
    return row[0] if row else None


SAMPLE_SCALE = 1_000_000


def sampled_requests(
    store: Store, share: float, since: float, skip_versions: Sequence[str], skip_requests: Sequence[str],
    limit: int,
) -> list[dict[str, Any]]:
    """Logged live requests after `since` in the sample (a `share` of request ids, by their hash, so the
    choice is the same whenever it is made) that have no explanation yet, newest first. Versions
    (`model:version`) and requests that could not be explained are skipped."""
    return rows_as_dicts(store.cur().execute(
        "SELECT p.request_id, p.model, p.version, p.ts, p.inputs FROM predictions p "
        "WHERE p.variant <> 'shadow' AND p.request_id IS NOT NULL AND p.inputs IS NOT NULL AND p.ts > ? "
        "AND hash(p.request_id) % ? < ? "
        "AND NOT EXISTS (SELECT 1 FROM explanations e "
        "                WHERE e.model = p.model AND e.request_id = p.request_id) "
        "AND NOT list_contains(?::VARCHAR[], p.model || ':' || p.version) "
        "AND NOT list_contains(?::VARCHAR[], p.request_id) ORDER BY p.ts DESC LIMIT ?",
        [since, SAMPLE_SCALE, round(share * SAMPLE_SCALE), list(skip_versions), list(skip_requests), limit],
    ))


def latest_span(store: Store, name: str, version: int, spec: WindowSpec, now: float) -> tuple[float, float]:
    """Where the most recent window of a spec starts and ends: the last `size` seconds, or the requests
    holding the last `size` rows."""
    if spec.kind == "time":
        return now - spec.size, now
    row = store.cur().execute(
        f"SELECT min(ts), max(ts) FROM ("
        f"  SELECT ts, n, sum(n) OVER (ORDER BY ts DESC, request_id DESC ROWS UNBOUNDED PRECEDING) AS upto "
        f"  FROM ("
        f"    SELECT ts, request_id, {_ROWS} AS n FROM predictions WHERE {_LIVE} "
        f"    ORDER BY ts DESC, request_id DESC LIMIT ?)) WHERE upto - n < ?",
        [name, version, int(spec.size), int(spec.size)],
    ).fetchone()
    return (row[0], row[1]) if row and row[0] is not None else (now, now)


def mean_abs_attributions(explained: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Feature → mean |attribution| over explained rows: which features drive the predictions."""
    totals: dict[str, float] = {}
    for one in explained:
        for f in one["features"]:
            totals[f["feature"]] = totals.get(f["feature"], 0.0) + abs(f["attribution"])
    return {name: total / len(explained) for name, total in totals.items()}


def window_explanations(store: Store, name: str, version: int, start: float, end: float, limit: int) -> list[
    list[dict[str, Any]]
]:
    """The features of the newest `limit` explanations of a version's live requests with start ≤ ts ≤ end."""
    rows = store.cur().execute(
        "SELECT e.features FROM explanations e JOIN predictions p ON p.model = e.model "
        "AND p.request_id = e.request_id AND p.variant <> 'shadow' "
        "WHERE e.model = ? AND e.version = ? AND p.ts >= ? AND p.ts <= ? ORDER BY p.ts DESC LIMIT ?",
        [name, version, start, end, limit],
    ).fetchall()
    return [json.loads(r[0]) for r in rows]


_EXPLANATION = ("request_id", "model", "version", "row", "ts", "method", "baseline", "output", "target",
                "score", "baseline_score", "delta", "features")
_EXPLANATION_COLUMNS = ", ".join(f'"{c}"' for c in _EXPLANATION)


def save_explanation(store: Store, record: dict[str, Any]) -> None:
    """Keep one row's explanation next to its prediction (a newer one of the same row replaces it)."""
    with store.transaction() as cur:
        cur.execute('DELETE FROM explanations WHERE model = ? AND request_id = ? AND "row" = ?',
                    [record["model"], record["request_id"], record["row"]])
        cur.execute(
            f"INSERT INTO explanations ({_EXPLANATION_COLUMNS}) "
            f"VALUES ({', '.join('?' * len(_EXPLANATION))})",
            [json.dumps(record[c]) if c == "features" else record[c] for c in _EXPLANATION],
        )


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
