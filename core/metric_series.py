"""A batch of metric points folded into per-series partials (summaries, level buckets), column-wise.

A series is one run's key. Ingest keeps each series' summary (core.schema METRIC_SUMMARY) and, for long
series, its level of min/max buckets, in the transaction that adds the points; computing what a batch
adds takes a few vectorized passes over it, so that cost stays a small share of inserting the points.
The store merges these partials into its tables (core.store Store.add_points).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

_NO_STEP = np.iinfo(np.int64).max


@dataclass
class Series:
    """The batch cut into runs of rows of one series (a series may come back in a later run of rows)."""

    run_id: pa.Array
    key: pa.Array
    starts: np.ndarray
    lengths: np.ndarray
    step: np.ndarray
    ts: np.ndarray
    value: np.ndarray


def _dictionary(column: pa.ChunkedArray) -> pa.DictionaryArray:
    combined = column.combine_chunks()
    if not pa.types.is_dictionary(combined.type):
        combined = pc.dictionary_encode(combined)
    return combined


def _numbers(column: pa.ChunkedArray, kind: pa.DataType) -> np.ndarray:
    return np.asarray(pc.cast(column.combine_chunks(), kind).to_numpy(zero_copy_only=False))


def _starts(*codes: np.ndarray) -> np.ndarray:
    """Where a run of equal rows (in every code array) begins."""
    change = np.zeros(len(codes[0]), bool)
    change[0] = True
    for code in codes:
        change[1:] |= code[1:] != code[:-1]
    return np.flatnonzero(change)


def series(points: pa.Table) -> Series:
    """The batch's rows (run_id, key, step, ts, value) grouped into runs of one series, in row order."""
    run, key = _dictionary(points["run_id"]), _dictionary(points["key"])
    run_idx = run.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    key_idx = key.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    starts = _starts(run_idx, key_idx)
    lengths = np.diff(np.append(starts, len(run_idx)))
    return Series(
        run.dictionary.take(pa.array(run_idx[starts])), key.dictionary.take(pa.array(key_idx[starts])),
        starts, lengths, _numbers(points["step"], pa.int64()), _numbers(points["ts"], pa.float64()),
        _numbers(points["value"], pa.float64()),
    )


def _first_where(mask: np.ndarray, of: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Per run of rows, the smallest `of` where mask holds (_NO_STEP where it never does)."""
    return np.minimum.reduceat(np.where(mask, of, _NO_STEP), starts)


def summary_partials(s: Series) -> pa.Table:
    """One row per run of rows: count, first and last step, the last value written at the last step, the
    least and greatest value (NaN ignored) and the earliest step each was reached at; `seq` orders rows."""
    starts, lengths, step, value = s.starts, s.lengths, s.step, s.value
    first, last = np.minimum.reduceat(step, starts), np.maximum.reduceat(step, starts)
    at_last = step == np.repeat(last, lengths)
    last_row = np.maximum.reduceat(np.where(at_last, np.arange(len(step)), -1), starts)
    with np.errstate(invalid="ignore"):
        low, high = np.fmin.reduceat(value, starts), np.fmax.reduceat(value, starts)
    none = np.isnan(low)
    return pa.table({
        "run_id": s.run_id, "key": s.key, "seq": np.arange(len(starts)), "points": lengths,
        "first_step": first, "last_step": last, "last_value": value[last_row],
        "min_value": pa.array(low, mask=none),
        "min_step": pa.array(_first_where(value == np.repeat(low, lengths), step, starts), mask=none),
        "max_value": pa.array(high, mask=none),
        "max_step": pa.array(_first_where(value == np.repeat(high, lengths), step, starts), mask=none),
    })


LEVEL_COLUMNS = ("run_id", "key", "bucket", "points", "min_step", "min_ts", "min_value", "max_step", "max_ts",
                 "max_value")


def level_partials(s: Series, shifts: np.ndarray) -> pa.Table | None:
    """One row per run of rows of one bucket (step >> the series' shift) of the series whose shift is not
    negative: count, and the least and greatest value (NaN ignored) with the step and time of a point
    that has it. None when no series has a shift."""
    rows = np.flatnonzero(np.repeat(shifts >= 0, s.lengths))
    if not len(rows):
        return None
    of_series = np.repeat(np.arange(len(s.starts)), s.lengths)[rows]
    step, ts, value = s.step[rows], s.ts[rows], s.value[rows]
    bucket = step >> np.repeat(shifts, s.lengths)[rows]
    starts = _starts(of_series, bucket)
    lengths = np.diff(np.append(starts, len(rows)))
    with np.errstate(invalid="ignore"):
        low, high = np.fmin.reduceat(value, starts), np.fmax.reduceat(value, starts)
    none = np.isnan(low)
    index = np.arange(len(rows))
    low_row = np.where(none, 0, _first_where(value == np.repeat(low, lengths), index, starts))
    high_row = np.where(none, 0, _first_where(value == np.repeat(high, lengths), index, starts))
    which = pa.array(of_series[starts])
    columns = (s.run_id.take(which), s.key.take(which), bucket[starts], lengths,
               pa.array(step[low_row], mask=none), pa.array(ts[low_row], mask=none), pa.array(low, mask=none),
               pa.array(step[high_row], mask=none), pa.array(ts[high_row], mask=none),
               pa.array(high, mask=none))
    return pa.table(dict(zip(LEVEL_COLUMNS, columns, strict=True)))


def level_curves(level: pa.Table, groups: int) -> dict[tuple[str, str], dict[str, list[Any]]]:
    """The curves of many series at once from their level rows (in any order): each series' buckets
    regrouped into `groups` groups (each bucket its own while there are no more), each group drawn as its
    least and greatest point (NaN ignored; of equal values the first bucket's), in step order, a step
    once."""
    if not level.num_rows:
        return {}
    run, key = _dictionary(level["run_id"]), _dictionary(level["key"])
    run_idx = run.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    key_idx = key.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    order = np.lexsort((_numbers(level["bucket"], pa.int64()), key_idx, run_idx))
    level, run_idx, key_idx = level.take(pa.array(order)), run_idx[order], key_idx[order]
    series_at = _starts(run_idx, key_idx)
    lengths = np.diff(np.append(series_at, len(run_idx)))
    of_series = np.repeat(np.arange(len(series_at)), lengths)
    bucket = _numbers(level["bucket"], pa.int64())
    lo = np.repeat(bucket[series_at], lengths)
    hi = np.repeat(bucket[np.append(series_at[1:], len(bucket)) - 1], lengths)
    group = np.where(np.repeat(lengths, lengths) <= groups, bucket, (bucket - lo) * groups // (hi - lo + 1))
    starts = _starts(of_series, group)
    rows = np.arange(len(bucket))
    picked = []
    for side, reduce in (("min", np.fmin), ("max", np.fmax)):
        value = _numbers(level[f"{side}_value"], pa.float64())
        with np.errstate(invalid="ignore"):
            best = reduce.reduceat(value, starts)
        row = _first_where(value == np.repeat(best, np.diff(np.append(starts, len(value)))), rows, starts)
        row = row[~np.isnan(best)]
        picked.append((of_series[row], _numbers(level[f"{side}_step"], pa.int64())[row],
                       _numbers(level[f"{side}_ts"], pa.float64())[row], value[row]))
    which, step, ts, value = (np.concatenate(parts) for parts in zip(*picked, strict=True))
    order = np.lexsort((step, which))  # stable: of a least and a greatest point at one step, the least
    which, step, ts, value = which[order], step[order], ts[order], value[order]
    keep = np.append(True, (step[1:] != step[:-1]) | (which[1:] != which[:-1]))
    which, step, ts, value = which[keep], step[keep], ts[keep], value[keep]
    bounds = np.searchsorted(which, np.arange(len(series_at) + 1))
    runs = run.dictionary.take(pa.array(run_idx[series_at])).to_pylist()
    keys = key.dictionary.take(pa.array(key_idx[series_at])).to_pylist()
    return {(runs[i], keys[i]): {"step": step[a:b].tolist(), "ts": ts[a:b].tolist(),
                                 "value": value[a:b].tolist()}
            for i, (a, b) in enumerate(itertools.pairwise(bounds)) if b > a}
