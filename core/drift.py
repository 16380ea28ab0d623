"""Drift statistics: per-column tests of live data against a reference, and the dataset verdict.

Every statistic is a plain function on numpy arrays that can be checked against a textbook
or scipy; the report picks a test per column the way Evidently does (`_get_default_stattest`)
and marks the dataset drifted when a share of columns drift.

Column types, as Evidently's ``infer_column_type`` (see ``column_type``): floats are numeric; an
integer column is categorical when it has at most INTEGER_CARDINALITY_LIMIT (10) distinct values,
else numeric; booleans and strings are categorical. Evidently types each column from the data it is
handed as current; we type it once, from the reference (all of its rows), so a column keeps its type
and its test from one window to the next. `kinds` (config `[monitor] column_types`) overrides it.
Every report row says which type and test the column got and why (``kind_reason``,
``method_reason``).

Conventions (the same in every function and in the report):

* Missing values are dropped first: NaN and ±inf for numeric columns, None/NaN for
  categorical ones (Evidently does the same before testing).
* p-value tests (``ks``, ``chisquare``, ``z``) drift when ``p < threshold`` (default 0.05);
  distances (``wasserstein``, ``jensenshannon``, ``psi``) drift when
  ``statistic >= threshold`` (default 0.1) and report ``p_value=None``.
* ``ks`` returns scipy.stats.ks_2samp's D and p (method='auto': exact when both samples have
  at most 10,000 values, else the asymptotic ``kstwo.sf(D, round(n*m/(n+m)))``).
* ``wasserstein`` is scipy.stats.wasserstein_distance divided by the reference's population
  standard deviation, floored at 0.001 as in Evidently.
* ``chisquare`` tests current counts against expected = reference proportion × current n over
  the union of categories. A category the reference never saw has expected count 0, so the
  statistic is +inf and p = 0: any amount of it is impossible under the reference. One
  category in all gives statistic 0, p = 1.
* ``z`` is the two-proportion Z-test for binary columns (pooled variance, two-sided p);
  the first category in sorted order is the "0" side, as in Evidently.
* ``jensenshannon`` is scipy.spatial.distance.jensenshannon (natural log, Evidently's
  default) on normalized frequencies. As Evidently does: numeric columns whose reference has
  more than 20 distinct values are binned with Sturges' rule over the reference and current
  together (``np.histogram_bin_edges(..., 'sturges')``); other columns use category counts.
* ``psi`` uses bins cut at the reference's quantiles (10 bins by default; repeated quantiles
  merge bins), replaces empty-bin proportions by 1e-4, and sums
  ``(p_ref - p_cur) * ln(p_ref / p_cur)``. Evidently bins PSI like JS instead; we use the
  textbook credit-scoring definition so the 0.1 / 0.25 reading applies.
* ``domain_classifier`` (for embeddings, as Evidently's classifier method; see
  ``domain_classifier_test``) is the held-out ROC AUC of a logistic regression telling current rows
  from reference rows, with a p-value from permuting the held-out labels; it drifts when
  ``p < threshold`` (default 0.05), i.e. when the AUC is above the permutations' 95th percentile.
  A model's output named ``embedding`` is tested this way as a whole (``embedding_drift``); any
  numeric column can ask for it in its override.
* ``distribution`` (what the Drift screen draws) drops missing values, then gives each side's
  fractions (summing to 1, or all 0 for an empty side) over shared bins. Numbers: 20 equal-width
  bins over the reference's range widened to the current's 1st–99th percentile, so the shifted
  bulk is in view while one wild value cannot squash the rest; values beyond the edges count in
  the end bins. Categories, and numbers with at most 5 values (tested as categories): the 12
  with the largest combined share, the rest folded into "other".
* A report built from a ReferenceProfile compares against the profile's stored sample (at
  most 10,000 rows), like Evidently compares against whatever reference it is handed; the
  default test therefore depends on the sample's size, not the full reference's.
"""

from __future__ import annotations

import functools
import json
import math
import os
from collections import Counter
from collections.abc import Callable, Hashable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import duckdb
import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from scipy import stats
from scipy.spatial import distance

from mldeck.core.summaries import TensorSummary, summarize_column

Kind = Literal["numeric", "categorical"]

SMALL_REFERENCE_ROWS = 1_000
INTEGER_CARDINALITY_LIMIT = 10
OVERRIDDEN = "set in column_types"
FEW_VALUES = 5
HISTOGRAM_MIN_VALUES = 20
EXACT_KS_MAX_N = 10_000
WASSERSTEIN_MIN_STD = 0.001
PSI_EPSILON = 1e-4
SAMPLE_ROWS = 10_000
QUANTILE_LEVELS: tuple[float, ...] = tuple(i / 100 for i in range(101))
DISTRIBUTION_BINS = 20
TOP_CATEGORIES = 12
OTHER = "other"
DOMAIN_CLASSIFIER = "domain_classifier"
DOMAIN_P_THRESHOLD = 0.05
DOMAIN_PERMUTATIONS = 1_000
DOMAIN_MAX_ROWS = 5_000


# --------------------------------------------------------------------------- results


class ColumnTest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A per-column override of the default test and/or its threshold."""

    method: str | None = None
    threshold: float | None = None


class ColumnDrift(msgspec.Struct, frozen=True):
    """One column's test result; p_value is None for distances; the reasons say why this type and test."""

    column: str
    kind: str
    method: str
    statistic: float
    p_value: float | None
    threshold: float
    drifted: bool
    kind_reason: str = ""
    method_reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types; a non-finite statistic (chi-squared on a new category) becomes None."""
        return {
            "column": self.column,
            "kind": self.kind,
            "method": self.method,
            "statistic": self.statistic if math.isfinite(self.statistic) else None,
            "p_value": self.p_value,
            "threshold": self.threshold,
            "drifted": self.drifted,
            "kind_reason": self.kind_reason,
            "method_reason": self.method_reason,
        }


class DriftReport(msgspec.Struct, frozen=True):
    """All columns' results and the dataset verdict (drifted when share_drifted >= drift_share)."""

    columns: list[ColumnDrift]
    share_drifted: float
    drift_share: float
    dataset_drifted: bool

    @property
    def drifted_columns(self) -> list[str]:
        """Names of the columns that drifted, in report order."""
        return [c.column for c in self.columns if c.drifted]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types, for the protocol, the CLI's --json and the store."""
        return {
            "columns": [c.to_dict() for c in self.columns],
            "n_drifted": len(self.drifted_columns),
            "share_drifted": self.share_drifted,
            "drift_share": self.drift_share,
            "dataset_drifted": self.dataset_drifted,
        }


# --------------------------------------------------------------------------- cleaning


def column_type(values: np.ndarray) -> tuple[Kind, str]:
    """Evidently's column type (floats numeric, integers by their distinct values, the rest categorical)
    and the reason, as the report shows it."""
    arr = np.asarray(values)
    if arr.dtype.kind == "f":
        return "numeric", "float"
    if arr.dtype.kind in "iu":
        n = int(np.unique(arr).size)
        if n <= INTEGER_CARDINALITY_LIMIT:
            return "categorical", f"integer with {n} distinct values (≤ {INTEGER_CARDINALITY_LIMIT})"
        return "numeric", f"integer with {n:,} distinct values (> {INTEGER_CARDINALITY_LIMIT})"
    if arr.dtype.kind == "b":
        return "categorical", "boolean"
    if arr.dtype.kind in "US" or all(isinstance(v, str) for v in arr.tolist() if v is not None and v == v):
        return "categorical", "string"
    return "categorical", f"{arr.dtype} values"


def infer_kind(values: np.ndarray) -> Kind:
    """The column's type alone (see column_type)."""
    return column_type(values)[0]


def _clean(values: np.ndarray, kind: Kind) -> np.ndarray:
    """Drop what no test can use: NaN/±inf for numbers, None/NaN for categories."""
    arr = np.asarray(values)
    if kind == "numeric":
        arr = arr.astype(np.float64, copy=False)
        finite = np.isfinite(arr)
        return arr if finite.all() else arr[finite]
    if arr.dtype.kind in "biuUS":
        return arr
    if arr.dtype.kind == "f":
        return arr[~np.isnan(arr)]
    keep = np.fromiter((v is not None and v == v for v in arr.tolist()), bool, arr.size)
    return arr if keep.all() else arr[keep]


def _counts(values: np.ndarray) -> dict[Hashable, int]:
    """Category → count, keyed by plain Python values so SQL results compare equal."""
    if values.dtype.kind in "biufUS":
        uniq, cnt = np.unique(values, return_counts=True)
        return dict(zip(uniq.tolist(), cnt.tolist(), strict=True))
    return dict(Counter(values.tolist()))


# --------------------------------------------------------------------------- column access


class _Column(Protocol):
    """What the tests need from a column, whether it lives in numpy or in DuckDB."""

    def size(self) -> int: ...
    def sorted(self) -> np.ndarray: ...
    def counts(self) -> dict[Hashable, int]: ...
    def distinct_upto(self, limit: int) -> set[Hashable]: ...
    def bounds(self) -> tuple[float, float]: ...
    def bin_counts(self, interior_edges: np.ndarray) -> np.ndarray: ...


class _ArrayColumn:
    """A cleaned numpy column with its sort and counts computed once, when first needed."""

    def __init__(self, values: np.ndarray, kind: Kind) -> None:
        self.values = _clean(values, kind)
        self._sorted: np.ndarray | None = None
        self._counts: dict[Hashable, int] | None = None

    def size(self) -> int:
        return int(self.values.size)

    def sorted(self) -> np.ndarray:
        if self._sorted is None:
            self._sorted = np.sort(self.values)
        return self._sorted

    def counts(self) -> dict[Hashable, int]:
        if self._counts is None:
            self._counts = _counts(self.values)
        return self._counts

    def distinct_upto(self, limit: int) -> set[Hashable]:
        if self._counts is None and self.values.dtype.kind == "f":
            s = self.sorted()
            starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
            return set(s[starts[:limit]].tolist())
        return set(list(self.counts())[:limit])

    def bounds(self) -> tuple[float, float]:
        s = self.sorted()
        return float(s[0]), float(s[-1])

    def bin_counts(self, interior_edges: np.ndarray) -> np.ndarray:
        idx = np.searchsorted(interior_edges, self.values, side="right")
        return np.bincount(idx, minlength=interior_edges.size + 1)


def _quote(name: str) -> str:
    """A SQL identifier, quoted so any column name is safe."""
    return '"' + name.replace('"', '""') + '"'


class _SqlColumn:
    """A column of a DuckDB table or query: counts, bounds and histograms are computed in SQL."""

    def __init__(self, con: duckdb.DuckDBPyConnection, source: str, column: str, kind: Kind):
        self._con = con
        col = _quote(column)
        if kind == "numeric":
            self._rel = f"(SELECT {col}::DOUBLE AS v FROM {source}) WHERE isfinite(v)"
        else:
            self._rel = f"(SELECT {col} AS v FROM {source}) WHERE v IS NOT NULL"
        self._stats: tuple[int, float, float] | None = None
        self._counts: dict[Hashable, int] | None = None

    def _summary(self) -> tuple[int, float, float]:
        if self._stats is None:
            row = self._con.execute(f"SELECT count(*), min(v), max(v) FROM {self._rel}").fetchone()
            assert row is not None
            self._stats = (int(row[0]), row[1], row[2])
        return self._stats

    def size(self) -> int:
        return self._summary()[0]

    def sorted(self) -> np.ndarray:
        values = self._con.execute(f"SELECT v FROM {self._rel}").fetchnumpy()["v"]
        return np.sort(np.asarray(values, dtype=np.float64))

    def counts(self) -> dict[Hashable, int]:
        if self._counts is None:
            rows = self._con.execute(f"SELECT v, count(*) FROM {self._rel} GROUP BY v").fetchall()
            self._counts = {v: int(c) for v, c in rows}
        return self._counts

    def distinct_upto(self, limit: int) -> set[Hashable]:
        rows = self._con.execute(f"SELECT DISTINCT v FROM {self._rel} LIMIT {int(limit)}")
        return {r[0] for r in rows.fetchall()}

    def bounds(self) -> tuple[float, float]:
        _, lo, hi = self._summary()
        return float(lo), float(hi)

    def bin_counts(self, interior_edges: np.ndarray) -> np.ndarray:
        # count(v >= edge) for each edge is exact, and matches searchsorted(side='right').
        edges = [float(e) for e in interior_edges]
        select = ", ".join(["count(*)"] + ["count(*) FILTER (WHERE v >= ?)"] * len(edges))
        row = self._con.execute(f"SELECT {select} FROM {self._rel}", edges).fetchone()
        assert row is not None
        at_least = np.asarray((*row, 0), dtype=np.int64)
        return at_least[:-1] - at_least[1:]


# --------------------------------------------------------------------------- statistics


def _merged_ecdf_counts(ref: np.ndarray, cur: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Both sorted samples merged: values and, at each position, how many of each are <= it.

    Inside a run of equal values the counts are partial; only a run's last position holds
    the right-continuous ECDF, and the gaps inside a run are zero-width.
    """
    total = ref.size + cur.size
    pos_ref = np.arange(ref.size) + np.searchsorted(cur, ref, side="left")
    is_ref = np.zeros(total, dtype=bool)
    is_ref[pos_ref] = True
    merged = np.empty(total, dtype=np.float64)
    merged[pos_ref] = ref
    merged[~is_ref] = cur
    n_ref = np.cumsum(is_ref)
    n_cur = np.arange(1, total + 1) - n_ref
    return merged, n_ref, n_cur


def _ks_sorted(ref: np.ndarray, cur: np.ndarray) -> tuple[float, float]:
    """KS D and p for sorted, finite samples; the large-sample path avoids scipy's 2 full searches."""
    n, m = ref.size, cur.size
    if max(n, m) <= EXACT_KS_MAX_N:
        # Exact p-value: Hodges' (1958) lattice-path count, which scipy implements in compiled code.
        result = stats.ks_2samp(ref, cur)
        return float(result.statistic), float(result.pvalue)
    merged, n_ref, n_cur = _merged_ecdf_counts(ref, cur)
    run_end = np.empty(merged.size, dtype=bool)
    run_end[:-1] = merged[1:] != merged[:-1]
    run_end[-1] = True
    d = float(np.max(np.abs(n_ref[run_end] / n - n_cur[run_end] / m)))
    big, small = float(max(n, m)), float(min(n, m))
    en = big * small / (big + small)
    p = float(np.clip(stats.kstwo.sf(d, np.round(en)), 0.0, 1.0))
    return d, p


@functools.lru_cache(maxsize=4)
def _quantile_pairing(m: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """How the m steps of one quantile function overlap the n steps of another (m >= n).

    On t in (j/m, (j+1)/m] the larger sample's quantile is a[j] and the smaller's b[i],
    i = floor(j·n/m), except that it moves to b[i+1] at t = (i+1)/n when that point falls
    inside, which happens for at most n values of j. Returns every i, and for those split
    steps j and the length of their second piece times n·m (an integer, so exact). Cached:
    the columns of a report share their sizes.
    """
    j = np.arange(m, dtype=np.int64)
    lo = j * n // m
    second = (j + 1) * n - (lo + 1) * m
    split = np.flatnonzero((second > 0) & (lo + 1 < n))
    arrays = (lo, split, second[split].astype(np.float64))
    for a in arrays:
        a.flags.writeable = False
    return arrays


def _wasserstein_sorted(x: np.ndarray, y: np.ndarray) -> float:
    """W1 = ∫₀¹ |Q_x(t) − Q_y(t)| dt, the L1 distance between the sorted samples' quantile functions."""
    a, b = (x, y) if x.size >= y.size else (y, x)
    m, n = a.size, b.size
    lo, split, second = _quantile_pairing(m, n)
    gap = np.subtract(a, b[lo])
    np.abs(gap, out=gap)
    # Each step weighs n/(n·m); a split step moves its second piece from b[i] to b[i+1].
    moved = np.abs(a[split] - b[lo[split] + 1]) - gap[split]
    return float((n * np.sum(gap) + np.sum(moved * second)) / (float(n) * float(m)))


def _wasserstein_norm_sorted(ref: np.ndarray, cur: np.ndarray) -> float:
    """W1 in units of the reference's standard deviation, so one threshold fits every column."""
    return _wasserstein_sorted(ref, cur) / max(float(np.std(ref)), WASSERSTEIN_MIN_STD)


def _align(ref: Mapping[Hashable, int], cur: Mapping[Hashable, int]) -> tuple[np.ndarray, np.ndarray]:
    """Count vectors over the union of categories (reference order first)."""
    keys = list(dict.fromkeys([*ref, *cur]))
    return (
        np.array([ref.get(k, 0) for k in keys], dtype=np.float64),
        np.array([cur.get(k, 0) for k in keys], dtype=np.float64),
    )


def _chisquare_counts(ref: Mapping[Hashable, int], cur: Mapping[Hashable, int]) -> tuple[float, float]:
    """Pearson's χ² of current counts against the reference's proportions, k−1 dof."""
    ref_n, cur_n = _align(ref, cur)
    expected = ref_n / ref_n.sum() * cur_n.sum()
    if np.any((expected == 0) & (cur_n > 0)):
        return math.inf, 0.0
    if ref_n.size < 2:
        return 0.0, 1.0
    statistic = float(np.sum((cur_n - expected) ** 2 / expected))
    return statistic, float(stats.chi2.sf(statistic, ref_n.size - 1))


def _z_counts(ref: Mapping[Hashable, int], cur: Mapping[Hashable, int]) -> tuple[float, float]:
    """Two-proportion Z-test with pooled variance on a binary column."""
    keys = sorted(set(ref) | set(cur), key=lambda k: (str(type(k)), k))
    if len(keys) > 2:
        raise ValueError(f"the z-test needs a binary column, got {len(keys)} categories")
    if len(keys) < 2:
        return 0.0, 1.0
    n1, n2 = sum(ref.values()), sum(cur.values())
    p1, p2 = ref.get(keys[1], 0) / n1, cur.get(keys[1], 0) / n2
    pooled = (p1 * n1 + p2 * n2) / (n1 + n2)
    z = (p1 - p2) / math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    return z, float(2 * stats.norm.sf(abs(z)))


def _js_counts(ref: np.ndarray, cur: np.ndarray) -> float:
    """JS distance (natural log) between two count vectors over the same bins."""
    return float(distance.jensenshannon(ref / ref.sum(), cur / cur.sum()))


def _psi_counts(ref: np.ndarray, cur: np.ndarray, eps: float = PSI_EPSILON) -> float:
    """PSI = Σ (p_ref − p_cur)·ln(p_ref / p_cur), empty bins counted as eps."""
    p_ref = ref / ref.sum()
    p_cur = cur / cur.sum()
    p_ref = np.where(p_ref == 0, eps, p_ref)
    p_cur = np.where(p_cur == 0, eps, p_cur)
    return float(np.sum((p_ref - p_cur) * np.log(p_ref / p_cur)))


def sturges_edges(lo: float, hi: float, n: int) -> np.ndarray:
    """np.histogram_bin_edges(x, 'sturges') from x's min, max and size alone (for SQL)."""
    width = (hi - lo) / (np.log2(n) + 1.0)
    bins = int(np.ceil((hi - lo) / width)) if width else 1
    if lo == hi:
        lo, hi = lo - 0.5, hi + 0.5
    return np.linspace(lo, hi, bins + 1)


def _js_columns(ref: _Column, cur: _Column, kind: Kind) -> float:
    """Evidently's binning: Sturges over both samples for many-valued numbers, else categories."""
    if kind == "numeric" and len(ref.distinct_upto(HISTOGRAM_MIN_VALUES + 1)) > HISTOGRAM_MIN_VALUES:
        (rlo, rhi), (clo, chi) = ref.bounds(), cur.bounds()
        edges = sturges_edges(min(rlo, clo), max(rhi, chi), ref.size() + cur.size())
        return _js_counts(ref.bin_counts(edges[1:-1]), cur.bin_counts(edges[1:-1]))
    return _js_counts(*_align(ref.counts(), cur.counts()))


def psi_edges(reference_sorted: np.ndarray, bins: int = 10) -> np.ndarray:
    """Interior bin edges at the reference's quantiles; repeated quantiles collapse."""
    levels = np.linspace(0.0, 1.0, bins + 1)[1:-1]
    return np.unique(np.quantile(reference_sorted, levels))


def _psi_columns(ref: _Column, cur: _Column, kind: Kind, bins: int = 10) -> float:
    """PSI on reference-quantile bins for numbers, on categories otherwise."""
    if kind == "numeric":
        edges = psi_edges(ref.sorted(), bins)
        return _psi_counts(ref.bin_counts(edges).astype(np.float64), cur.bin_counts(edges).astype(np.float64))
    return _psi_counts(*_align(ref.counts(), cur.counts()))


def _pair(
    reference: np.ndarray, current: np.ndarray, kind: Kind | None
) -> tuple[_ArrayColumn, _ArrayColumn, Kind]:
    """Wrap two arrays as cleaned columns of one kind."""
    kind = kind or infer_kind(reference)
    ref, cur = _ArrayColumn(reference, kind), _ArrayColumn(current, kind)
    if ref.size() == 0 or cur.size() == 0:
        raise ValueError("both samples need at least one non-missing value")
    return ref, cur, kind


def ks_2samp(reference: np.ndarray, current: np.ndarray) -> tuple[float, float]:
    """Two-sided two-sample Kolmogorov–Smirnov (D, p), equal to scipy.stats.ks_2samp."""
    ref, cur, _ = _pair(reference, current, "numeric")
    return _ks_sorted(ref.sorted(), cur.sorted())


def wasserstein_distance(reference: np.ndarray, current: np.ndarray) -> float:
    """Earth mover's distance W1, equal to scipy.stats.wasserstein_distance, from sorted samples."""
    ref, cur, _ = _pair(reference, current, "numeric")
    return _wasserstein_sorted(ref.sorted(), cur.sorted())


def wasserstein_norm(reference: np.ndarray, current: np.ndarray) -> float:
    """W1 divided by the reference's standard deviation (floored at 0.001), as Evidently."""
    ref, cur, _ = _pair(reference, current, "numeric")
    return _wasserstein_norm_sorted(ref.sorted(), cur.sorted())


def chisquare_test(reference: np.ndarray, current: np.ndarray) -> tuple[float, float]:
    """χ² goodness of fit (statistic, p) of current categories to the reference's proportions."""
    ref, cur, _ = _pair(reference, current, "categorical")
    return _chisquare_counts(ref.counts(), cur.counts())


def proportion_z_test(reference: np.ndarray, current: np.ndarray) -> tuple[float, float]:
    """Two-proportion Z-test (z, two-sided p) for a binary column."""
    ref, cur, _ = _pair(reference, current, "categorical")
    return _z_counts(ref.counts(), cur.counts())


def jensenshannon_distance(reference: np.ndarray, current: np.ndarray, kind: Kind | None = None) -> float:
    """Jensen–Shannon distance (natural log) between the binned distributions, as Evidently."""
    ref, cur, kind = _pair(reference, current, kind)
    return _js_columns(ref, cur, kind)


def psi(reference: np.ndarray, current: np.ndarray, bins: int = 10, kind: Kind | None = None) -> float:
    """Population stability index on reference-quantile bins (or categories)."""
    ref, cur, kind = _pair(reference, current, kind)
    return _psi_columns(ref, cur, kind, bins)


def psi_level(value: float) -> str:
    """The usual reading of a PSI: below 0.1 "none", up to 0.25 "minor", above "major"."""
    if value < 0.1:
        return "none"
    return "minor" if value <= 0.25 else "major"


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float:
    """ECE (L1) over equal-width confidence bins, as torchmetrics' calibration_error.

    probs 1-D: binary, as torchmetrics' binary task (confidence = P(label 1), accuracy =
    label). probs 2-D (n, classes): confidence = max probability, accuracy = argmax == label.
    Bin b holds confidences in [b/n_bins, (b+1)/n_bins); 1.0 falls in the last bin.
    """
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels)
    if p.ndim == 1:
        confidence, correct = p, (y == 1).astype(np.float64)
    else:
        confidence, correct = p.max(axis=1), (p.argmax(axis=1) == y).astype(np.float64)
    if confidence.size == 0:
        raise ValueError("expected_calibration_error needs at least one prediction")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bin_of = np.clip(np.searchsorted(edges, confidence, side="right") - 1, 0, n_bins - 1)
    conf_sum = np.bincount(bin_of, weights=confidence, minlength=n_bins)
    acc_sum = np.bincount(bin_of, weights=correct, minlength=n_bins)
    # Σ_b (n_b/N)·|acc_b − conf_b| = Σ_b |Σacc_b − Σconf_b| / N
    return float(np.sum(np.abs(acc_sum - conf_sum)) / confidence.size)


# --------------------------------------------------------------------------- domain classifier


class DomainTest(msgspec.Struct, frozen=True):
    """A domain classifier's verdict: its held-out ROC AUC, the label permutations' p-value and the AUC
    a chance classifier reaches at the 1 − threshold quantile of those permutations (the drift line)."""

    auc: float
    p_value: float
    null_auc: float
    n_reference: int
    n_current: int
    dimensions: int


def _as_rows(values: np.ndarray) -> np.ndarray:
    """A column (n,) or embedding (n, d) as float rows (n, d), rows with a missing value dropped."""
    x = np.asarray(values, dtype=np.float64)
    x = x.reshape(len(x), -1)
    finite = np.isfinite(x).all(axis=1)
    return x if finite.all() else x[finite]


def _subsample(x: np.ndarray, limit: int, rng: np.random.Generator) -> np.ndarray:
    """At most limit rows, a random choice kept in order: a large window costs no more than this."""
    return x if len(x) <= limit else x[np.sort(rng.choice(len(x), limit, replace=False))]


def _auc(ranks: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """ROC AUC from the scores' (mid-)ranks: Mann–Whitney U / (n₁·n₀), for each row of label masks."""
    n1 = positive.sum(axis=-1)
    n0 = positive.shape[-1] - n1
    return ((positive * ranks).sum(axis=-1) - n1 * (n1 + 1) / 2) / (n1 * n0)


def domain_classifier_test(
    reference: np.ndarray, current: np.ndarray, *, threshold: float = DOMAIN_P_THRESHOLD,
    permutations: int = DOMAIN_PERMUTATIONS, max_rows: int = DOMAIN_MAX_ROWS, seed: int = 0,
) -> DomainTest:
    """Can a classifier tell current rows from reference rows? Evidently's test for embeddings.

    Each side (rows of an embedding, or one column) is split in halves, at most max_rows per side; an
    L2 logistic regression on standardized features learns reference (0) against current (1) on one half,
    and its ROC AUC on the other half is the statistic. The threshold comes from the labels permuted over
    the held-out scores `permutations` times (a chance classifier's AUCs): p is the share of them at least
    as high, and drift is p < threshold, that is an AUC above their 1 − threshold quantile. Seeded: the
    same rows give the same answer."""
    from sklearn.linear_model import LogisticRegression  # loads only when this test runs

    rng = np.random.default_rng(seed)
    ref, cur = (_subsample(_as_rows(v), max_rows, rng) for v in (reference, current))
    if min(len(ref), len(cur)) < 2:
        raise ValueError("the domain classifier needs at least 2 usable rows on each side")
    if ref.shape[1] != cur.shape[1]:
        raise ValueError(f"reference rows have {ref.shape[1]} values, current rows {cur.shape[1]}")
    halves = [np.array_split(rng.permutation(len(side)), 2) for side in (ref, cur)]
    train = np.concatenate([ref[halves[0][0]], cur[halves[1][0]]])
    test = np.concatenate([ref[halves[0][1]], cur[halves[1][1]]])
    y_train = np.r_[np.zeros(len(halves[0][0])), np.ones(len(halves[1][0]))]
    y_test = np.r_[np.zeros(len(halves[0][1]), bool), np.ones(len(halves[1][1]), bool)]
    mean, std = train.mean(axis=0), train.std(axis=0)
    std[std == 0] = 1.0
    model = LogisticRegression(class_weight="balanced", max_iter=1_000)
    model.fit((train - mean) / std, y_train)
    ranks = stats.rankdata(model.decision_function((test - mean) / std))
    auc = float(_auc(ranks, y_test))
    shuffled = rng.permuted(np.broadcast_to(y_test, (permutations, y_test.size)), axis=1)
    null = _auc(ranks, shuffled)
    return DomainTest(auc, float((1 + np.sum(null >= auc)) / (1 + permutations)),
                      float(np.quantile(null, 1 - threshold)), len(ref), len(cur), ref.shape[1])


def embedding_drift(name: str, reference: np.ndarray, current: np.ndarray) -> ColumnDrift:
    """One report row for a model's embedding output: the domain classifier on its vectors."""
    got = domain_classifier_test(reference, current)
    return ColumnDrift(
        name, "embedding", DOMAIN_CLASSIFIER, got.auc, got.p_value, DOMAIN_P_THRESHOLD,
        got.p_value < DOMAIN_P_THRESHOLD, f"{got.dimensions}-dimensional output {name!r}",
        f"logistic regression on {got.n_reference:,} reference and {got.n_current:,} current vectors, "
        f"AUC on a held-out half; drift above AUC {got.null_auc:.3f}, the {1 - DOMAIN_P_THRESHOLD:.0%} "
        f"quantile of {DOMAIN_PERMUTATIONS:,} label permutations",
    )


# --------------------------------------------------------------------------- test selection


def choose_method(kind: Kind, n_reference: int, n_values: int) -> tuple[str, str]:
    """Evidently's default test from the column kind, reference rows and distinct values, and why.

    n_values counts distinct values in reference and current together. Numbers with more
    than 5 values: KS up to 1,000 reference rows, else normalized Wasserstein. Categories
    (and numbers with at most 5 values): χ² up to 1,000 rows (Z-test when binary), else
    Jensen–Shannon.
    """
    small = n_reference <= SMALL_REFERENCE_ROWS
    rows = f"{n_reference:,} reference rows ({'≤' if small else '>'} {SMALL_REFERENCE_ROWS:,})"
    if kind == "numeric" and n_values > FEW_VALUES:
        return ("ks" if small else "wasserstein"), f"numeric with more than {FEW_VALUES} values, {rows}"
    if kind == "numeric":
        values = f"numeric with {n_values} values (≤ {FEW_VALUES}: tested as categories)"
    else:
        values = f"{n_values} categories"
    if small:
        return ("chisquare" if n_values > 2 else "z"), f"{values}, {rows}"
    return "jensenshannon", f"{values}, {rows}"


def _distinct_count(ref: _Column, cur: _Column, kind: Kind) -> int:
    """Distinct values of both samples together, counted only as far as the choice needs."""
    if kind == "categorical":
        return len(set(ref.counts()) | set(cur.counts()))
    ref_values = ref.distinct_upto(FEW_VALUES + 1)
    if len(ref_values) > FEW_VALUES:
        return len(ref_values)
    return len(ref_values | cur.distinct_upto(FEW_VALUES + 1))


def _domain_columns(ref: np.ndarray, cur: np.ndarray) -> tuple[float, float]:
    """The domain classifier on one column (sorted: the test shuffles its rows itself)."""
    got = domain_classifier_test(ref, cur)
    return got.auc, got.p_value


@dataclass(frozen=True)
class Statistic:
    """One drift test: its statistic (and p-value, for a hypothesis test) from a reference and a current
    column, and its default threshold: drift when p < threshold, or when a distance is >= threshold."""

    compute: Callable[[_ArrayColumn, _Column, Kind], tuple[float, float | None]]
    threshold: float
    numeric_only: bool = False


# Adding a statistic is one entry here (plus its test in tests/core/test_drift.py).
STATISTICS: dict[str, Statistic] = {
    "ks": Statistic(lambda r, c, k: _ks_sorted(r.sorted(), c.sorted()), 0.05, numeric_only=True),
    "wasserstein": Statistic(lambda r, c, k: (_wasserstein_norm_sorted(r.sorted(), c.sorted()), None), 0.1,
                             numeric_only=True),
    "chisquare": Statistic(lambda r, c, k: _chisquare_counts(r.counts(), c.counts()), 0.05),
    "z": Statistic(lambda r, c, k: _z_counts(r.counts(), c.counts()), 0.05),
    "jensenshannon": Statistic(lambda r, c, k: (_js_columns(r, c, k), None), 0.1),
    "psi": Statistic(lambda r, c, k: (_psi_columns(r, c, k), None), 0.1),
    DOMAIN_CLASSIFIER: Statistic(lambda r, c, k: _domain_columns(r.sorted(), c.sorted()), DOMAIN_P_THRESHOLD,
                                 numeric_only=True),
}


def _test_column(
    name: str, kind: Kind, kind_reason: str, ref: _ArrayColumn, cur: _Column, override: ColumnTest | None
) -> ColumnDrift:
    """Choose the column's test, run it, and judge it against its threshold."""
    if ref.size() == 0:
        raise ValueError(f"column {name!r} has no usable values in the reference")
    if cur.size() == 0:
        raise ValueError(f"column {name!r} has no usable values in the current data")
    if override and override.method:
        method, method_reason = override.method, "set in the column's override"
    else:
        method, method_reason = choose_method(kind, ref.size(), _distinct_count(ref, cur, kind))
    test = STATISTICS.get(method)
    if test is None:
        raise ValueError(
            f"unknown drift method {method!r} for column {name!r}; use one of {sorted(STATISTICS)}"
        )
    if kind == "categorical" and test.numeric_only:
        raise ValueError(f"{method} needs a numeric column; {name!r} is categorical")
    threshold = test.threshold
    if override and override.threshold is not None:
        threshold = override.threshold
    statistic, p_value = test.compute(ref, cur, kind)
    drifted = p_value < threshold if p_value is not None else statistic >= threshold
    return ColumnDrift(name, kind, method, float(statistic), p_value, threshold, bool(drifted),
                       kind_reason, method_reason)


# --------------------------------------------------------------------------- distributions


def _few_values(ref: _ArrayColumn, cur: _ArrayColumn) -> bool:
    """At most FEW_VALUES distinct numbers in both samples: the tests treat them as categories, so do we."""
    seen: set[Hashable] = set()
    for col in (ref, cur):
        if col.size():
            seen |= col.distinct_upto(FEW_VALUES + 1)
    return 0 < len(seen) <= FEW_VALUES


def _shares(counts: np.ndarray) -> np.ndarray:
    """Counts as fractions of their sum; all zeros for an empty side."""
    total = counts.sum()
    return counts / total if total else np.zeros(counts.size)


def _numeric_distribution(ref: _ArrayColumn, cur: _ArrayColumn, bins: int) -> dict[str, Any]:
    """Equal widths show a shift as mass moving sideways (reference quantile bins would look flat)."""
    span = list(ref.bounds()) if ref.size() else []
    if cur.size():
        span += np.quantile(cur.values, [0.01, 0.99]).tolist()
    lo, hi = (min(span), max(span)) if span else (0.0, 1.0)
    if lo == hi:
        lo, hi = lo - 0.5, hi + 0.5
    edges = np.linspace(lo, hi, bins + 1)
    return {
        "kind": "numeric",
        "edges": edges.tolist(),
        "reference": _shares(ref.bin_counts(edges[1:-1])).tolist(),
        "current": _shares(cur.bin_counts(edges[1:-1])).tolist(),
    }


def _categorical_distribution(ref: _ArrayColumn, cur: _ArrayColumn, by_value: bool) -> dict[str, Any]:
    """Categories by combined share (or by value, for few-valued numbers), the tail folded into OTHER."""
    keys = list(dict.fromkeys([*ref.counts(), *cur.counts()]))
    ref_share, cur_share = (_shares(c) for c in _align(ref.counts(), cur.counts()))
    if by_value:
        order = sorted(range(len(keys)), key=lambda i: keys[i])
    else:
        order = np.argsort(-(ref_share + cur_share), kind="stable").tolist()
    top, rest = order[:TOP_CATEGORIES], order[TOP_CATEGORIES:]
    categories = [keys[i] for i in top]
    ref_out, cur_out = ref_share[top].tolist(), cur_share[top].tolist()
    if rest:
        categories.append(OTHER if OTHER not in categories else f"{OTHER} (rest)")
        ref_out.append(float(ref_share[rest].sum()))
        cur_out.append(float(cur_share[rest].sum()))
    return {"kind": "categorical", "categories": categories, "reference": ref_out, "current": cur_out}


def distribution(
    reference: np.ndarray, current: np.ndarray, *, kind: Kind | None = None, bins: int = DISTRIBUTION_BINS
) -> dict[str, Any]:
    """Both sides as fractions over the same bins or categories, so one can be drawn over the other."""
    if bins < 1:
        raise ValueError(f"bins must be at least 1, got {bins}")
    kind = kind or infer_kind(reference)
    ref, cur = _ArrayColumn(reference, kind), _ArrayColumn(current, kind)
    if kind == "numeric" and not _few_values(ref, cur):
        out = _numeric_distribution(ref, cur, bins)
    else:
        numbers = ref.values.dtype.kind in "iuf" and cur.values.dtype.kind in "iuf"
        out = _categorical_distribution(ref, cur, by_value=numbers)
    return {**out, "n_reference": ref.size(), "n_current": cur.size()}


# --------------------------------------------------------------------------- reference profile


class ColumnProfile(msgspec.Struct, frozen=True):
    """Summary of one reference column over all its rows (not just the sample), and why it has its type."""

    kind: str
    n: int
    mean: float | None = None
    std: float | None = None
    quantiles: list[float] = msgspec.field(default_factory=list)
    categories: list[Any] = msgspec.field(default_factory=list)
    counts: list[int] = msgspec.field(default_factory=list)
    reason: str | None = None


def table_frame(table: pa.Table) -> dict[str, np.ndarray]:
    """A reference table's columns as arrays: a fixed-shape tensor column keeps its shape (n, *shape),
    a list column becomes one array per row."""
    frame: dict[str, np.ndarray] = {}
    for name in table.column_names:
        column = table.column(name)
        if isinstance(column.type, pa.FixedShapeTensorType):
            frame[name] = column.combine_chunks().to_numpy_ndarray()
        else:
            frame[name] = column.to_numpy(zero_copy_only=False)
    return frame


def _profile_column(values: np.ndarray, kind: Kind, reason: str) -> ColumnProfile:
    """Numbers: mean, std and percentiles; categories: their counts."""
    clean = _clean(values, kind)
    if kind == "numeric":
        return ColumnProfile(
            kind=kind, n=int(clean.size), reason=reason,
            mean=float(clean.mean()) if clean.size else None,
            std=float(clean.std()) if clean.size else None,
            quantiles=np.quantile(clean, QUANTILE_LEVELS).tolist() if clean.size else [],
        )
    counts = _counts(clean)
    return ColumnProfile(kind=kind, n=int(clean.size), reason=reason, categories=list(counts),
                         counts=list(counts.values()))


class ReferenceProfile:
    """A model version's training-data profile: per-column summaries plus a ≤10k-row sample.

    An N-D column (images, sequences; see core.summaries) is profiled as its summary features, and
    `tensors` records how, so that windows are summed up the same way.
    """

    JSON_NAME = "reference.json"
    PARQUET_NAME = "reference.parquet"

    def __init__(self, columns: dict[str, ColumnProfile], n_rows: int, sample: dict[str, np.ndarray],
                 tensors: dict[str, TensorSummary] | None = None):
        self.columns = columns
        self.n_rows = n_rows
        self.sample = sample
        self.tensors = tensors or {}

    @property
    def kinds(self) -> dict[str, Kind]:
        """Column → kind, as recorded when the profile was built."""
        return {name: "numeric" if c.kind == "numeric" else "categorical" for name, c in self.columns.items()}

    @property
    def reasons(self) -> dict[str, str]:
        """Column → why it has its kind."""
        return {name: c.reason or "" for name, c in self.columns.items()}

    @classmethod
    def build(
        cls,
        frame: Mapping[str, Any],
        *,
        kinds: Mapping[str, Kind] | None = None,
        sample_rows: int = SAMPLE_ROWS,
        seed: int = 0,
    ) -> ReferenceProfile:
        """Summarize every column and keep the same random rows of each as the test sample."""
        flat: dict[str, np.ndarray] = {}
        tensors: dict[str, TensorSummary] = {}
        for name, raw in frame.items():
            summed = summarize_column(name, raw)
            if summed is None:
                flat[name] = np.asarray(raw)
            else:
                tensors[name], features = summed
                flat.update(features)
        lengths = {len(v) for v in flat.values()}
        if len(lengths) > 1:
            raise ValueError(f"reference columns differ in length: {sorted(lengths)}")
        n_rows = lengths.pop() if lengths else 0
        rows = np.arange(n_rows)
        if n_rows > sample_rows:
            rows = np.sort(np.random.default_rng(seed).choice(n_rows, sample_rows, replace=False))
        columns: dict[str, ColumnProfile] = {}
        for name, values in flat.items():
            given = (kinds or {}).get(name)
            kind, reason = (given, OVERRIDDEN) if given else column_type(values)
            columns[name] = _profile_column(values, kind, reason)
        return cls(columns, n_rows, {name: values[rows] for name, values in flat.items()}, tensors)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summaries; the sample itself goes to Parquet (see save)."""
        return {
            "n_rows": self.n_rows,
            "sample_rows": len(next(iter(self.sample.values()), ())),
            "columns": {name: msgspec.to_builtins(c) for name, c in self.columns.items()},
            "tensors": {name: msgspec.to_builtins(t) for name, t in self.tensors.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], sample: Mapping[str, np.ndarray]) -> ReferenceProfile:
        """Rebuild a profile from to_dict()'s output and the sample read back from Parquet.

        A profile written before columns were typed as Evidently does is typed again from its sample."""
        columns = {name: msgspec.convert(c, ColumnProfile) for name, c in data["columns"].items()}
        missing = set(columns) - set(sample)
        if missing:
            raise ValueError(f"reference sample lacks columns {sorted(missing)}")
        arrays = {name: np.asarray(sample[name]) for name in columns}
        for name, c in columns.items():
            if c.reason is None:
                kind, reason = column_type(arrays[name])
                columns[name] = msgspec.structs.replace(c, kind=kind, reason=reason)
        tensors = {name: msgspec.convert(t, TensorSummary) for name, t in (data.get("tensors") or {}).items()}
        return cls(columns, int(data["n_rows"]), arrays, tensors)

    def save(self, folder: str | Path) -> None:
        """Write reference.json and reference.parquet into folder, each atomically."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        json_tmp = folder / (self.JSON_NAME + ".tmp")
        json_tmp.write_text(json.dumps(self.to_dict(), indent=1))
        parquet_tmp = folder / (self.PARQUET_NAME + ".tmp")
        pq.write_table(pa.table({k: pa.array(v) for k, v in self.sample.items()}), parquet_tmp)
        os.replace(parquet_tmp, folder / self.PARQUET_NAME)
        os.replace(json_tmp, folder / self.JSON_NAME)

    @classmethod
    def load(cls, folder: str | Path) -> ReferenceProfile:
        """Read a profile written by save()."""
        folder = Path(folder)
        data = json.loads((folder / cls.JSON_NAME).read_text())
        return cls.from_dict(data, table_frame(pq.read_table(folder / cls.PARQUET_NAME)))


# --------------------------------------------------------------------------- reports


def _reference_columns(
    reference: ReferenceProfile | Mapping[str, np.ndarray],
    columns: Sequence[str] | None,
    kinds: Mapping[str, Kind] | None,
) -> tuple[list[str], dict[str, tuple[Kind, str]], Mapping[str, np.ndarray]]:
    """The columns to test, their kinds with the reasons, and the reference arrays to compare against."""
    if isinstance(reference, ReferenceProfile):
        arrays: Mapping[str, np.ndarray] = reference.sample
        reasons = reference.reasons
        known = {name: (kind, reasons[name]) for name, kind in reference.kinds.items()}
    else:
        arrays = reference
        known = {name: column_type(np.asarray(v)) for name, v in reference.items()}
    known.update({name: (kind, OVERRIDDEN) for name, kind in (kinds or {}).items()})
    names = list(columns) if columns is not None else list(arrays)
    missing = [n for n in names if n not in arrays]
    if missing:
        raise ValueError(f"the reference has no columns {missing}")
    return names, known, arrays


def _assemble(results: list[ColumnDrift], drift_share: float) -> DriftReport:
    """The dataset verdict: drifted when at least drift_share of the columns drifted."""
    share = sum(r.drifted for r in results) / len(results) if results else 0.0
    return DriftReport(results, share, drift_share, bool(results) and share >= drift_share)


def _run_columns(names: list[str], task: Callable[[str], ColumnDrift]) -> list[ColumnDrift]:
    """Columns in parallel threads: numpy's sorts and searches release the GIL."""
    workers = min(len(names), os.cpu_count() or 1)
    if workers <= 1:
        return [task(n) for n in names]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(task, names))


def drift_report(
    reference: ReferenceProfile | Mapping[str, np.ndarray],
    current: Mapping[str, np.ndarray],
    *,
    columns: Sequence[str] | None = None,
    overrides: Mapping[str, ColumnTest] | None = None,
    kinds: Mapping[str, Kind] | None = None,
    drift_share: float = 0.5,
) -> DriftReport:
    """Test each column of current against the reference (a profile's sample or full arrays)."""
    names, known, arrays = _reference_columns(reference, columns, kinds)
    missing = [n for n in names if n not in current]
    if missing:
        raise ValueError(f"the current data has no columns {missing}")
    overrides = overrides or {}

    def task(name: str) -> ColumnDrift:
        kind, reason = known[name]
        ref = _ArrayColumn(arrays[name], kind)
        return _test_column(name, kind, reason, ref, _ArrayColumn(current[name], kind), overrides.get(name))

    return _assemble(_run_columns(names, task), drift_share)


def drift_report_duckdb(
    con: duckdb.DuckDBPyConnection,
    source: str,
    reference: ReferenceProfile | Mapping[str, np.ndarray],
    *,
    columns: Sequence[str] | None = None,
    overrides: Mapping[str, ColumnTest] | None = None,
    kinds: Mapping[str, Kind] | None = None,
    drift_share: float = 0.5,
) -> DriftReport:
    """drift_report with current data in DuckDB: counts and histograms run in SQL.

    source is a table name or a parenthesized query (trusted SQL, e.g. a window of the
    predictions table). Category counts, bounds, distinct values and bin counts are
    computed in SQL, exactly; KS and Wasserstein need the sorted sample, so those columns
    are fetched and tested in numpy. The results equal drift_report's on the same data.
    """
    names, known, arrays = _reference_columns(reference, columns, kinds)
    overrides = overrides or {}

    def task(name: str) -> ColumnDrift:
        kind, reason = known[name]
        ref = _ArrayColumn(arrays[name], kind)
        cursor = con.cursor()
        try:
            cur = _SqlColumn(cursor, source, name, kind)
            return _test_column(name, kind, reason, ref, cur, overrides.get(name))
        finally:
            cursor.close()

    return _assemble(_run_columns(names, task), drift_share)
