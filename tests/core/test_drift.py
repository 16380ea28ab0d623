"""Drift statistics against scipy and hand arithmetic; test selection; SQL and profile paths."""

from __future__ import annotations

import json
import math
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pytest
from scipy import stats
from scipy.spatial import distance

from mldeck.core import drift
from mldeck.core.drift import ColumnTest, ReferenceProfile

RNG = np.random.default_rng(20240607)

KS_SIZES = [(5, 7), (30, 30), (200, 500), (1000, 1000), (10_000, 10_000), (20_000, 3_000), (50_000, 400_000)]


@pytest.mark.parametrize(("n", "m"), KS_SIZES)
def test_ks_matches_scipy(n: int, m: int) -> None:
    ref = RNG.normal(size=n)
    cur = RNG.normal(0.1, 1.1, size=m)
    d, p = drift.ks_2samp(ref, cur)
    expected = stats.ks_2samp(ref, cur)
    assert d == pytest.approx(expected.statistic, abs=1e-9)
    assert p == pytest.approx(expected.pvalue, abs=1e-9)


@pytest.mark.parametrize(("n", "m"), [(40, 60), (20_000, 30_000)])
def test_ks_with_ties_matches_scipy(n: int, m: int) -> None:
    ref = RNG.integers(0, 30, size=n).astype(float)
    cur = RNG.integers(0, 32, size=m).astype(float)
    d, p = drift.ks_2samp(ref, cur)
    expected = stats.ks_2samp(ref, cur)
    assert d == pytest.approx(expected.statistic, abs=1e-9)
    assert p == pytest.approx(expected.pvalue, abs=1e-9)


@pytest.mark.parametrize(
    ("n", "m"), [(1, 1), (5, 7), (7, 5), (100, 100), (999, 1000), (10_001, 500), (100_000, 999_983)]
)
def test_wasserstein_matches_scipy(n: int, m: int) -> None:
    ref = RNG.normal(3.0, 2.0, size=n)
    cur = RNG.normal(3.5, 2.0, size=m)
    assert drift.wasserstein_distance(ref, cur) == pytest.approx(
        stats.wasserstein_distance(ref, cur), rel=1e-9, abs=1e-12
    )
    expected = stats.wasserstein_distance(ref, cur) / max(np.std(ref), 0.001)
    assert drift.wasserstein_norm(ref, cur) == pytest.approx(expected, abs=1e-6)


def test_wasserstein_with_ties_and_large_offset() -> None:
    ref = np.round(RNG.normal(1e6, 1.0, size=3_000), 1)
    cur = np.round(RNG.normal(1e6 + 0.3, 1.0, size=40_000), 1)
    expected = stats.wasserstein_distance(ref, cur) / np.std(ref)
    assert drift.wasserstein_norm(ref, cur) == pytest.approx(expected, abs=1e-6)


def test_nan_and_inf_are_dropped() -> None:
    ref = RNG.normal(size=500)
    cur = RNG.normal(size=700)
    dirty = np.concatenate([cur, [np.nan, np.inf, -np.inf]])
    assert drift.ks_2samp(ref, dirty) == drift.ks_2samp(ref, cur)


@pytest.mark.parametrize(("n", "m"), [(300, 200), (5_000, 80_000)])
def test_chisquare_matches_scipy(n: int, m: int) -> None:
    cats = np.array(["a", "b", "c", "d"])
    ref = RNG.choice(cats, size=n, p=[0.4, 0.3, 0.2, 0.1])
    cur = RNG.choice(cats, size=m, p=[0.35, 0.3, 0.25, 0.1])
    stat, p = drift.chisquare_test(ref, cur)
    ref_counts = np.array([np.sum(ref == c) for c in cats])
    cur_counts = np.array([np.sum(cur == c) for c in cats])
    expected = stats.chisquare(cur_counts, ref_counts / n * m)
    assert stat == pytest.approx(expected.statistic, rel=1e-9)
    assert p == pytest.approx(expected.pvalue, abs=1e-9)


def test_chisquare_category_missing_from_current_and_unseen_in_reference() -> None:
    ref = np.array(["a"] * 50 + ["b"] * 30 + ["c"] * 20)
    cur_without_c = np.array(["a"] * 60 + ["b"] * 40)
    stat, p = drift.chisquare_test(ref, cur_without_c)
    expected = stats.chisquare([60, 40, 0], [50, 30, 20])
    assert (stat, p) == pytest.approx((expected.statistic, expected.pvalue))
    # "z" never occurs in the reference: its expected count is 0, so χ² is infinite.
    assert drift.chisquare_test(ref, np.array(["a", "b", "z"])) == (math.inf, 0.0)
    assert drift.chisquare_test(np.array(["a", "a"]), np.array(["a"])) == (0.0, 1.0)


def test_proportion_z_test_equals_2x2_chi_squared() -> None:
    ref = RNG.random(800) < 0.30
    cur = RNG.random(600) < 0.36
    z, p = drift.proportion_z_test(ref, cur)
    table = [[ref.sum(), (~ref).sum()], [cur.sum(), (~cur).sum()]]
    chi2, p_chi2, _, _ = stats.chi2_contingency(table, correction=False)
    assert z**2 == pytest.approx(chi2, rel=1e-9)
    assert p == pytest.approx(p_chi2, abs=1e-12)
    # textbook form, category True as the "1" side
    p1, p2 = ref.mean(), cur.mean()
    pooled = (ref.sum() + cur.sum()) / (ref.size + cur.size)
    assert z == pytest.approx((p1 - p2) / math.sqrt(pooled * (1 - pooled) * (1 / 800 + 1 / 600)))
    assert drift.proportion_z_test(np.array(["x"] * 5), np.array(["x"] * 3)) == (0.0, 1.0)
    with pytest.raises(ValueError, match="binary"):
        drift.proportion_z_test(np.array(["a", "b"]), np.array(["c"]))


def test_jensenshannon_categorical_matches_scipy() -> None:
    ref = RNG.choice(["a", "b", "c"], size=2_000, p=[0.5, 0.3, 0.2])
    cur = RNG.choice(["a", "b", "c", "d"], size=3_000, p=[0.4, 0.3, 0.2, 0.1])
    keys = ["a", "b", "c", "d"]
    p = np.array([np.mean(ref == k) for k in keys])
    q = np.array([np.mean(cur == k) for k in keys])
    assert drift.jensenshannon_distance(ref, cur) == pytest.approx(distance.jensenshannon(p, q), abs=1e-12)


def test_jensenshannon_numeric_uses_sturges_bins_over_both_samples() -> None:
    ref = RNG.normal(size=4_000)
    cur = RNG.normal(0.3, 1.0, size=9_000)
    edges = np.histogram_bin_edges(np.concatenate([ref, cur]), bins="sturges")
    assert np.array_equal(
        drift.sturges_edges(min(ref.min(), cur.min()), max(ref.max(), cur.max()), 13_000), edges
    )
    p = np.histogram(ref, edges)[0] / ref.size
    q = np.histogram(cur, edges)[0] / cur.size
    assert drift.jensenshannon_distance(ref, cur) == pytest.approx(distance.jensenshannon(p, q), abs=1e-12)


def test_psi_by_hand() -> None:
    ref = np.arange(1.0, 11.0)  # 1..10; with 2 bins the cut is the median, 5.5
    assert drift.psi_edges(ref, bins=2).tolist() == [5.5]
    # reference: 5 | 5 → 0.5, 0.5; current [1, 2, 3, 7]: 3 | 1 → 0.75, 0.25
    # PSI = (0.5−0.75)·ln(0.5/0.75) + (0.5−0.25)·ln(0.5/0.25) = 0.25·ln 1.5 + 0.25·ln 2 = 0.25·ln 3
    value = drift.psi(ref, np.array([1.0, 2.0, 3.0, 7.0]), bins=2)
    assert value == pytest.approx(0.25 * math.log(3))
    assert drift.psi_level(value) == "major"
    # current [1, 2]: 2 | 0 → 1.0, 0 → empty bin counts as 1e-4
    # PSI = (0.5−1)·ln(0.5/1) + (0.5−1e-4)·ln(0.5/1e-4) = 0.5·ln 2 + 0.4999·ln 5000
    value = drift.psi(ref, np.array([1.0, 2.0]), bins=2)
    assert value == pytest.approx(0.5 * math.log(2) + 0.4999 * math.log(5000))
    assert drift.psi(ref, ref) == 0.0
    # categories: reference a,a,b,b → 0.5, 0.5; current a,a,a,b → 0.75, 0.25: the same 0.25·ln 3
    assert drift.psi(np.array(list("aabb")), np.array(list("aaab"))) == pytest.approx(0.25 * math.log(3))


def test_psi_levels() -> None:
    assert [drift.psi_level(v) for v in (0.0, 0.099, 0.1, 0.25, 0.2501)] == [
        "none",
        "none",
        "minor",
        "minor",
        "major",
    ]


def test_psi_ten_reference_quantile_bins() -> None:
    ref = RNG.normal(size=10_000)
    cur = RNG.normal(0.5, 1.0, size=10_000)
    edges = np.quantile(ref, np.linspace(0, 1, 11)[1:-1])
    p = np.bincount(np.searchsorted(edges, ref, side="right"), minlength=10) / ref.size
    q = np.bincount(np.searchsorted(edges, cur, side="right"), minlength=10) / cur.size
    assert drift.psi(ref, cur) == pytest.approx(np.sum((p - q) * np.log(p / q)), rel=1e-12)


def test_ece_binary_by_hand() -> None:
    # 5 bins of width 0.2. confidence = P(label 1), "accuracy" = label (torchmetrics binary).
    # bin 0: {0.1}, labels {0}: |0 − 0.1| · 1/4 = 0.025
    # bin 1: {0.3, 0.35}, labels {1, 0}: |0.5 − 0.325| · 2/4 = 0.0875
    # bin 4: {0.9}, labels {1}: |1 − 0.9| · 1/4 = 0.025          total 0.1375
    probs = np.array([0.1, 0.3, 0.35, 0.9])
    labels = np.array([0, 1, 0, 1])
    assert drift.expected_calibration_error(probs, labels, n_bins=5) == pytest.approx(0.1375)


def test_ece_multiclass_by_hand() -> None:
    # confidences (max prob) 0.72, 0.55, 0.45, 0.85; correct 1, 0, 1, 1; 4 bins of width 0.25
    # bin 1: {0.45} correct: |1 − 0.45| · 1/4 = 0.1375
    # bin 2: {0.72, 0.55}, one correct: |0.5 − 0.635| · 2/4 = 0.0675
    # bin 3: {0.85} correct: |1 − 0.85| · 1/4 = 0.0375                total 0.2425
    probs = np.array([[0.72, 0.18, 0.10], [0.30, 0.55, 0.15], [0.45, 0.30, 0.25], [0.05, 0.10, 0.85]])
    labels = np.array([0, 2, 0, 2])
    assert drift.expected_calibration_error(probs, labels, n_bins=4) == pytest.approx(0.2425)
    # default 15 bins: each confidence alone in its bin → mean |correct − confidence|
    # = (0.28 + 0.55 + 0.55 + 0.15) / 4 = 0.3825
    assert drift.expected_calibration_error(probs, labels) == pytest.approx(0.3825)
    assert drift.expected_calibration_error(np.array([1.0]), np.array([1])) == 0.0


@pytest.mark.parametrize(
    ("kind", "n_reference", "n_values", "method"),
    [
        ("numeric", 1_000, 6, "ks"),
        ("numeric", 1_001, 6, "wasserstein"),
        ("numeric", 1_000, 5, "chisquare"),
        ("numeric", 1_000, 2, "z"),
        ("numeric", 1_001, 5, "jensenshannon"),
        ("categorical", 1_000, 3, "chisquare"),
        ("categorical", 1_000, 2, "z"),
        ("categorical", 1_001, 50, "jensenshannon"),
        ("categorical", 1_001, 2, "jensenshannon"),
    ],
)
def test_default_method(kind: drift.Kind, n_reference: int, n_values: int, method: str) -> None:
    assert drift.choose_method(kind, n_reference, n_values)[0] == method


def test_report_picks_each_default() -> None:
    small, large = 800, 3_000
    ref = {
        "num_small": RNG.normal(size=small),
        "num_large": RNG.normal(size=large),
        "few_small": RNG.integers(0, 4, size=small),
        "few_large": RNG.integers(0, 4, size=large),
        "binary_small": RNG.integers(0, 2, size=small),
        "cat_small": RNG.choice(["a", "b", "c"], size=small),
        "flag_small": RNG.choice(["yes", "no"], size=small),
        "cat_large": RNG.choice(["a", "b", "c"], size=large),
    }
    cur = {name: values[:500] for name, values in ref.items()}
    # reference is binary, the current window adds a third value: three values in all → χ²
    ref["grows"] = np.array([0, 1] * 100)
    cur["grows"] = np.array([0, 1, 2] * 50)
    report = drift.drift_report(ref, cur)
    methods = {c.column: c.method for c in report.columns}
    assert methods == {
        "num_small": "ks",
        "num_large": "wasserstein",
        "few_small": "chisquare",
        "few_large": "jensenshannon",
        "binary_small": "z",
        "cat_small": "chisquare",
        "flag_small": "z",
        "cat_large": "jensenshannon",
        "grows": "chisquare",
    }
    by_name = {c.column: c for c in report.columns}
    assert by_name["num_small"].p_value is not None and by_name["num_large"].p_value is None
    assert by_name["grows"].drifted and by_name["grows"].statistic == math.inf


def test_override_method_and_threshold() -> None:
    ref = {"x": RNG.normal(size=5_000), "c": RNG.choice(["a", "b"], size=5_000)}
    cur = {"x": RNG.normal(0.05, 1.0, size=5_000), "c": RNG.choice(["a", "b"], size=5_000)}
    report = drift.drift_report(
        ref, cur, overrides={"x": ColumnTest(method="psi", threshold=0.001), "c": ColumnTest(threshold=0.5)}
    )
    x, c = report.columns
    assert (x.method, x.threshold, x.p_value) == ("psi", 0.001, None)
    assert x.statistic == pytest.approx(drift.psi(ref["x"], cur["x"]))
    assert x.drifted == (x.statistic >= 0.001)
    assert (c.method, c.threshold) == ("jensenshannon", 0.5)
    ks = drift.drift_report(ref, cur, overrides={"x": ColumnTest(method="ks")}).columns[0]
    assert (ks.statistic, ks.p_value) == drift.ks_2samp(ref["x"], cur["x"])
    with pytest.raises(ValueError, match="unknown drift method"):
        drift.drift_report(ref, cur, overrides={"x": ColumnTest(method="t-test")})
    with pytest.raises(ValueError, match="needs a numeric column"):
        drift.drift_report(ref, cur, overrides={"c": ColumnTest(method="ks")})


def test_dataset_drift_share() -> None:
    ref = {f"c{i}": RNG.normal(size=2_000) for i in range(4)}
    cur = {f"c{i}": RNG.normal(1.0 if i < 2 else 0.0, 1.0, size=2_000) for i in range(4)}
    report = drift.drift_report(ref, cur)
    assert report.drifted_columns == ["c0", "c1"]
    assert report.share_drifted == 0.5 and report.dataset_drifted
    assert not drift.drift_report(ref, cur, drift_share=0.75).dataset_drifted
    assert drift.drift_report(ref, cur, columns=["c2", "c3"]).share_drifted == 0.0
    payload = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert payload["n_drifted"] == 2 and payload["columns"][0]["column"] == "c0"
    assert set(payload["columns"][0]) == {
        "column",
        "kind",
        "method",
        "statistic",
        "p_value",
        "threshold",
        "drifted",
        "kind_reason",
        "method_reason",
    }


def _frames() -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    def frame(n: int, shift: float) -> dict[str, np.ndarray]:
        x = RNG.normal(shift, 1.0, size=n)
        x[::97] = np.nan
        cat = RNG.choice(["a", "b", "c", "d"], size=n, p=[0.4, 0.3, 0.2, 0.1]).astype(object)
        cat[::89] = None
        return {
            "x": x,
            "y": RNG.normal(size=n),
            "few": RNG.integers(0, 4, size=n).astype(float),
            "count": RNG.poisson(30 + shift, size=n),
            "cat": cat,
            "flag": RNG.random(n) < 0.3 + shift / 10,
        }

    return frame(3_000, 0.0), frame(20_000, 0.3)


def _assert_same(a: drift.DriftReport, b: drift.DriftReport) -> None:
    assert [c.column for c in a.columns] == [c.column for c in b.columns]
    for x, y in zip(a.columns, b.columns, strict=True):
        assert (x.method, x.kind, x.threshold, x.drifted) == (y.method, y.kind, y.threshold, y.drifted)
        assert x.statistic == pytest.approx(y.statistic, rel=1e-12, abs=1e-15)
        if x.p_value is None:
            assert y.p_value is None
        else:
            assert x.p_value == pytest.approx(y.p_value, rel=1e-9, abs=1e-15)
    assert (a.share_drifted, a.dataset_drifted) == (b.share_drifted, b.dataset_drifted)


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"x": ColumnTest("ks"), "few": ColumnTest("chisquare"), "flag": ColumnTest("z")},
        {"x": ColumnTest("psi"), "count": ColumnTest("jensenshannon"), "cat": ColumnTest("psi")},
        {"x": ColumnTest("jensenshannon"), "y": ColumnTest("psi"), "count": ColumnTest("ks")},
    ],
)
def test_duckdb_pushdown_equals_array_path(overrides: dict[str, ColumnTest]) -> None:
    ref, cur = _frames()
    con = duckdb.connect()
    con.register("cur_arrow", pa.table(cur))
    con.execute("CREATE TABLE window_rows AS SELECT * FROM cur_arrow")
    expected = drift.drift_report(ref, cur, overrides=overrides)
    got = drift.drift_report_duckdb(con, "window_rows", ref, overrides=overrides)
    _assert_same(expected, got)
    query = drift.drift_report_duckdb(
        con, "(SELECT * FROM window_rows WHERE x IS NULL OR x > -100)", ref, overrides=overrides
    )
    _assert_same(expected, query)
    if not overrides:
        assert {c.method for c in expected.columns} == {"wasserstein", "jensenshannon"}


def test_profile_round_trip(tmp_path) -> None:
    ref, cur = _frames()
    profile = ReferenceProfile.build(ref)
    assert profile.n_rows == 3_000 and len(profile.sample["x"]) == 3_000
    x = profile.columns["x"]
    finite = ref["x"][np.isfinite(ref["x"])]
    assert (x.kind, x.n) == ("numeric", finite.size)
    assert x.mean == pytest.approx(finite.mean()) and x.std == pytest.approx(finite.std())
    assert x.quantiles[50] == pytest.approx(np.median(finite))
    cat = profile.columns["cat"]
    assert cat.kind == "categorical" and sum(cat.counts) == cat.n
    assert dict(zip(cat.categories, cat.counts, strict=True))["a"] == int(np.sum(ref["cat"] == "a"))

    profile.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reference.json", "reference.parquet"]
    loaded = ReferenceProfile.load(tmp_path)
    assert loaded.to_dict() == json.loads(json.dumps(profile.to_dict()))
    assert loaded.kinds == profile.kinds
    for name, values in profile.sample.items():
        np.testing.assert_array_equal(loaded.sample[name], values)
    _assert_same(drift.drift_report(profile, cur), drift.drift_report(loaded, cur))
    _assert_same(drift.drift_report(profile, cur), drift.drift_report(ref, cur))


def test_profile_keeps_a_capped_sample_that_drives_the_method() -> None:
    ref = {"x": RNG.normal(size=25_000), "label": RNG.choice(["a", "b", "c"], size=25_000)}
    profile = ReferenceProfile.build(ref, sample_rows=900, seed=3)
    assert profile.n_rows == 25_000 and profile.columns["x"].n == 25_000
    assert len(profile.sample["x"]) == len(profile.sample["label"]) == 900
    # the same rows in every column
    rows = np.flatnonzero(np.isin(ref["x"], profile.sample["x"]))
    np.testing.assert_array_equal(ref["label"][rows], profile.sample["label"])
    # 900 sampled rows ≤ 1,000: the report runs KS / χ² against the sample
    report = drift.drift_report(profile, {"x": RNG.normal(size=5_000), "label": ref["label"][:5_000]})
    assert [c.method for c in report.columns] == ["ks", "chisquare"]
    assert drift.drift_report(ref, {"x": ref["x"], "label": ref["label"]}).columns[0].method == "wasserstein"


def test_kinds_override_treats_codes_as_categories() -> None:
    codes = RNG.integers(0, 12, size=600)
    profile = ReferenceProfile.build({"code": codes}, kinds={"code": "categorical"})
    assert profile.kinds == {"code": "categorical"}
    assert drift.drift_report(profile, {"code": codes[:300]}).columns[0].method == "chisquare"
    assert drift.drift_report({"code": codes}, {"code": codes[:300]}).columns[0].method == "ks"


def test_empty_column_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="no usable values in the current data"):
        drift.drift_report({"x": np.arange(10.0)}, {"x": np.array([np.nan])})


# --------------------------------------------------------------------------- distributions


def _centre_of_mass(dist: dict[str, Any]) -> float:
    edges = np.asarray(dist["edges"])
    return float(np.dot((edges[:-1] + edges[1:]) / 2, dist["current"]))


def test_distribution_shares_edges_between_both_sides() -> None:
    ref, cur = RNG.normal(size=5_000), RNG.normal(0.5, 1.5, size=800)
    dist = drift.distribution(ref, cur)
    assert dist["kind"] == "numeric" and dist["n_reference"] == 5_000 and dist["n_current"] == 800
    edges = np.asarray(dist["edges"])
    assert edges.size == drift.DISTRIBUTION_BINS + 1 and np.all(np.diff(edges) > 0)
    assert len(dist["reference"]) == len(dist["current"]) == drift.DISTRIBUTION_BINS
    assert sum(dist["reference"]) == pytest.approx(1) and sum(dist["current"]) == pytest.approx(1)
    # the reference's whole range and the current's 1st–99th percentile are inside the edges
    lo, hi = np.quantile(cur, [0.01, 0.99])
    assert edges[0] == min(ref.min(), lo) and edges[-1] == pytest.approx(max(ref.max(), hi))
    # each fraction is the share of values in its bin (the last bin closed on the right)
    inside = np.histogram(ref, edges)[0] / ref.size
    np.testing.assert_allclose(dist["reference"], inside, atol=1e-12)
    assert len(drift.distribution(ref, cur, bins=7)["edges"]) == 8


def test_distribution_of_a_shifted_normal_moves_its_mass() -> None:
    ref = RNG.normal(size=10_000)
    same = drift.distribution(ref, RNG.normal(size=500))
    moved = drift.distribution(ref, RNG.normal(2.0, 1.0, size=500))

    def total_variation(d: dict[str, Any]) -> float:
        return 0.5 * float(np.abs(np.subtract(d["reference"], d["current"])).sum())

    assert total_variation(same) < 0.15 and total_variation(moved) > 0.6
    assert _centre_of_mass(same) == pytest.approx(0.0, abs=0.2)
    assert _centre_of_mass(moved) == pytest.approx(2.0, abs=0.2)


def test_distribution_counts_outliers_in_the_end_bins_without_stretching() -> None:
    ref = np.linspace(0.0, 10.0, 1_001)
    cur = np.r_[np.linspace(2.0, 8.0, 300), 1e9, -1e9]
    dist = drift.distribution(ref, cur)
    assert dist["edges"][0] == 0.0 and dist["edges"][-1] == 10.0
    assert dist["current"][0] == dist["current"][-1] == pytest.approx(1 / 302)
    assert sum(dist["current"]) == pytest.approx(1)


def test_distribution_drops_missing_values_and_handles_an_empty_side() -> None:
    ref = np.r_[RNG.normal(size=200), np.nan, np.inf]
    dist = drift.distribution(ref, np.array([np.nan, -np.inf]))
    assert dist["n_reference"] == 200 and dist["n_current"] == 0
    assert sum(dist["reference"]) == pytest.approx(1) and dist["current"] == [0.0] * drift.DISTRIBUTION_BINS
    empty = drift.distribution(ref, np.empty(0))
    assert empty["edges"] == dist["edges"] and sum(empty["current"]) == 0
    cats = drift.distribution(np.array(["a", None, "b"], dtype=object), np.array([None], dtype=object))
    assert cats == {"kind": "categorical", "categories": ["a", "b"], "reference": [0.5, 0.5],
                    "current": [0.0, 0.0], "n_reference": 2, "n_current": 0}


def test_distribution_of_constant_and_few_valued_numbers() -> None:
    # the drift tests treat numbers with at most 5 values as categories; so does the picture
    assert drift.distribution(np.full(50, 3.0), np.full(9, 3.0)) == {
        "kind": "categorical", "categories": [3.0], "reference": [1.0], "current": [1.0],
        "n_reference": 50, "n_current": 9}
    flags = drift.distribution(np.array([1, 0, 1, 1]), np.array([0, 0, 2]))
    assert flags["categories"] == [0, 1, 2]  # in value order, not by share
    assert flags["reference"] == [0.25, 0.75, 0.0] and flags["current"] == pytest.approx([2 / 3, 0, 1 / 3])
    # a constant reference beside a current that is constant at its 1st–99th percentile: one unit wide
    cur = np.r_[np.full(1_000, 5.0), np.arange(6.0) + 100]
    dist = drift.distribution(np.full(100, 5.0), cur)
    assert dist["kind"] == "numeric" and (dist["edges"][0], dist["edges"][-1]) == (4.5, 5.5)
    assert dist["current"][-1] == pytest.approx(6 / 1_006)


def test_distribution_folds_rare_categories_into_other() -> None:
    names = [f"c{i:02d}" for i in range(20)]
    weights = np.arange(20, 0, -1.0)
    ref = RNG.choice(names, size=4_000, p=weights / weights.sum())
    cur = np.array(["new"] * 1_000 + list(ref[:1_000]), dtype=object)
    dist = drift.distribution(ref.astype(object), cur)
    assert len(dist["categories"]) == drift.TOP_CATEGORIES + 1 and dist["categories"][-1] == "other"
    assert dist["categories"][0] == "new"  # half of current: the largest combined share
    combined = np.add(dist["reference"], dist["current"])[:-1]
    assert np.all(np.diff(combined) <= 1e-12)  # biggest first
    assert sum(dist["reference"]) == pytest.approx(1) and sum(dist["current"]) == pytest.approx(1)
    shown = set(dist["categories"][:-1])
    rest = np.isin(ref, [n for n in names if n not in shown]).mean()
    assert dist["reference"][-1] == pytest.approx(rest)
    # a real category called "other" keeps its name; the fold is labelled apart from it
    named = np.array(["other"] * 50 + [f"k{i}" for i in range(20)], dtype=object)
    labels = drift.distribution(named, named)["categories"]
    assert labels[0] == "other" and labels[-1] == "other (rest)"


def test_domain_classifier_auc_is_chance_on_one_distribution_and_one_on_disjoint_ones() -> None:
    rng = np.random.default_rng(7)
    reference = rng.normal(size=(600, 16))
    same = drift.domain_classifier_test(reference, rng.normal(size=(400, 16)))
    assert same.auc == pytest.approx(0.5, abs=0.06) and same.p_value >= 0.05
    assert 0.5 < same.null_auc < 0.6 and (same.n_reference, same.n_current, same.dimensions) == (600, 400, 16)
    apart = drift.domain_classifier_test(reference, rng.normal(size=(400, 16)) + 6.0)
    assert apart.auc == pytest.approx(1.0) and apart.p_value == pytest.approx(1 / 1_001)
    assert drift.domain_classifier_test(reference, rng.normal(size=(400, 16)) + 6.0) != apart  # new rows
    again = drift.domain_classifier_test(reference, np.asarray(reference[:400]))
    assert again == drift.domain_classifier_test(reference, np.asarray(reference[:400]))  # seeded

    row = drift.embedding_drift("embedding", reference, rng.normal(size=(400, 16)) + 0.5)
    assert (row.column, row.kind, row.method, row.drifted) == ("embedding", "embedding", "domain_classifier",
                                                                True)
    assert row.statistic > 0.8 and "16-dimensional" in row.kind_reason
    assert "label permutations" in row.method_reason
    one = drift.drift_report({"x": reference[:, 0]}, {"x": rng.normal(2.0, 1.0, 400)},
                             overrides={"x": ColumnTest("domain_classifier")}).columns[0]
    assert (one.method, one.drifted, one.threshold) == ("domain_classifier", True, 0.05)
    assert one.statistic > 0.8
    with pytest.raises(ValueError, match="at least 2 usable rows"):
        drift.domain_classifier_test(reference, np.full((3, 16), np.nan))
