"""Column types and default tests as Evidently picks them (integer with ≤ 10 values → categorical, strings and
booleans categorical, floats numeric), checked on a frame of every kind against the rules written out, with
every statistic recomputed by scipy; and against Evidently itself where EVIDENTLY_PYTHON names an interpreter
that has it (it needs pandas < 3, so it cannot share this environment):

    python -m venv /tmp/evenv && /tmp/evenv/bin/pip install evidently==0.7.23 'pandas<3' pyarrow
    EVIDENTLY_PYTHON=/tmp/evenv/bin/python pytest tests/monitor/test_column_types.py
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy import stats
from scipy.spatial import distance

from mldeck.core import drift
from mldeck.core.config import ConfigError, ModelPolicy, load_config
from mldeck.core.judge import Reference, judge_window

SHIFTED = {"grade", "level", "count", "score", "rating", "city", "flag"}
# the rules of /work/shared/NOTES.md "Drift conventions", written out per column: (type, reason, test when
# the reference has ≤ 1,000 rows, test when it has more)
RULES = {
    "grade": ("categorical", "integer with 4 distinct values (≤ 10)", "chisquare", "jensenshannon"),
    "level": ("categorical", "integer with 8 distinct values (≤ 10)", "chisquare", "jensenshannon"),
    "steady_level": ("categorical", "integer with 8 distinct values (≤ 10)", "chisquare", "jensenshannon"),
    "count": ("numeric", "integer with", "ks", "wasserstein"),
    "score": ("numeric", "float", "ks", "wasserstein"),
    "noise": ("numeric", "float", "ks", "wasserstein"),
    "rating": ("numeric", "float", "chisquare", "jensenshannon"),  # 3 values: tested as categories
    "city": ("categorical", "string", "chisquare", "jensenshannon"),
    "member": ("categorical", "boolean", "z", "jensenshannon"),
    "flag": ("categorical", "boolean", "z", "jensenshannon"),
}


def frame(rng: np.random.Generator, n: int, shifted: bool) -> dict[str, np.ndarray]:
    """Low-cardinality integers, many-valued integers, floats, few-valued floats, strings and booleans."""
    s = 1.0 if shifted else 0.0
    return {
        "grade": rng.choice([1, 2, 3, 4], n, p=[.25, .25, .25, .25] if shifted else [.4, .3, .2, .1]),
        "level": rng.choice(np.arange(8), n, p=np.r_[[0.2] * 2, [0.1] * 6] if shifted else np.full(8, 1 / 8)),
        "steady_level": rng.integers(0, 8, n),
        "count": rng.poisson(40 + 4 * s, n),
        "score": rng.normal(0.5 * s, 1, n),
        "noise": rng.normal(0, 1, n),
        "rating": rng.choice([1.0, 2.0, 3.0], n, p=[.2, .3, .5] if shifted else [.3, .4, .3]),
        "city": rng.choice(["ams", "ber", "lis", "osl", "rom"], n, p=[.4] + [.15] * 4 if shifted else None),
        "member": rng.random(n) < 0.3,
        "flag": rng.random(n) < (0.5 if shifted else 0.3),
    }


def frames(seed: int, n_reference: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return frame(rng, n_reference, False), frame(rng, 500, True)


def counts(ref: np.ndarray, cur: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    keys = sorted(set(ref.tolist()) | set(cur.tolist()))

    def tally(side: np.ndarray) -> np.ndarray:
        return np.array([np.sum(side == k) for k in keys], float)

    return tally(ref), tally(cur)


def scipy_decision(method: str, ref: np.ndarray, cur: np.ndarray) -> tuple[float, bool]:
    """The statistic (p-value for tests) and decision, computed by scipy the textbook way."""
    if method == "ks":
        p = stats.ks_2samp(ref, cur).pvalue
        return p, p < 0.05
    if method == "wasserstein":
        d = stats.wasserstein_distance(ref, cur) / np.std(ref)
        return d, d >= 0.1
    r, c = counts(ref, cur)
    if method == "chisquare":
        p = stats.chisquare(c, r / r.sum() * c.sum()).pvalue
        return p, p < 0.05
    if method == "z":  # two proportions, pooled: the same p as the 2×2 χ² without continuity correction
        p = stats.chi2_contingency(np.vstack([r, c]), correction=False).pvalue
        return p, p < 0.05
    d = distance.jensenshannon(r / r.sum(), c / c.sum())
    return d, d >= 0.1


def test_column_types_follow_evidentlys_integer_cardinality_rule() -> None:
    assert drift.column_type(np.arange(10) % 10) == ("categorical", "integer with 10 distinct values (≤ 10)")
    assert drift.column_type(np.arange(11)) == ("numeric", "integer with 11 distinct values (> 10)")
    assert drift.column_type(np.arange(11, dtype=np.uint8))[0] == "numeric"
    assert drift.column_type(np.array([0.5, 1.0])) == ("numeric", "float")
    assert drift.column_type(np.array([True, False])) == ("categorical", "boolean")
    assert drift.column_type(np.array(["a", None], dtype=object)) == ("categorical", "string")
    assert drift.column_type(np.array(["a", "b"])) == ("categorical", "string")


@pytest.mark.parametrize(("seed", "n_reference"), [(1, 600), (2, 3_000)])
def test_types_tests_and_decisions_follow_the_rules_on_every_column(seed: int, n_reference: int) -> None:
    ref, cur = frames(seed, n_reference)
    report = drift.drift_report(ref, cur)
    small = n_reference <= drift.SMALL_REFERENCE_ROWS
    assert [c.column for c in report.columns] == list(RULES)
    for col in report.columns:
        kind, reason, small_test, large_test = RULES[col.column]
        assert (col.kind, col.method) == (kind, small_test if small else large_test), col
        assert col.kind_reason.startswith(reason), col
        assert f"{n_reference:,} reference rows" in col.method_reason, col
        statistic, drifted = scipy_decision(col.method, ref[col.column], cur[col.column])
        measured = col.p_value if col.p_value is not None else col.statistic
        assert measured == pytest.approx(statistic, rel=1e-9, abs=1e-15), col
        assert col.drifted == drifted == (col.column in SHIFTED), col
    level = next(c for c in report.columns if c.column == "level")
    sign = "≤" if small else ">"
    assert level.method_reason == f"8 categories, {n_reference:,} reference rows ({sign} 1,000)"
    rating = next(c for c in report.columns if c.column == "rating")
    assert rating.method_reason.startswith("numeric with 3 values (≤ 5: tested as categories)")
    # the profile a registered version keeps types its columns the same way, from all of its rows
    profile = drift.ReferenceProfile.build(ref)
    assert {n: (k, profile.reasons[n]) for n, k in profile.kinds.items()} == {
        c.column: (c.kind, c.kind_reason) for c in report.columns}


EVIDENTLY = """
import json, sys
import pandas as pd
from evidently import Dataset, Report
from evidently.presets import DataDriftPreset
ref, cur = (Dataset.from_pandas(pd.read_parquet(p)) for p in sys.argv[1:3])
snapshot = Report([DataDriftPreset()]).run(current_data=cur, reference_data=ref)
out = {}
for metric in snapshot.dict()["metrics"]:
    config = metric["config"]
    if config["type"].endswith("ValueDrift"):
        column, value, threshold = config["column"], metric["value"], config["threshold"]
        drifted = value < threshold if "p_value" in config["method"] else value >= threshold
        kind = cur._data_definition.get_column_type(column).value
        out[column] = {"kind": kind, "method": config["method"], "drifted": bool(drifted)}
print(json.dumps(out))
"""
EVIDENTLY_METHODS = {
    "K-S p_value": "ks", "chi-square p_value": "chisquare", "Z-test p_value": "z",
    "Wasserstein distance (normed)": "wasserstein", "Jensen-Shannon distance": "jensenshannon",
}


@pytest.mark.skipif(not os.environ.get("EVIDENTLY_PYTHON"), reason="EVIDENTLY_PYTHON names no interpreter "
                    "with evidently (it needs pandas < 3; this environment has pandas 3)")
@pytest.mark.parametrize(("seed", "n_reference"), [(1, 600), (2, 3_000)])
def test_types_tests_and_decisions_agree_with_evidently(seed: int, n_reference: int, tmp_path: Path) -> None:
    ref, cur = frames(seed, n_reference)
    for name, data in (("ref", ref), ("cur", cur)):
        pq.write_table(pa.table(data), tmp_path / f"{name}.parquet")
    done = subprocess.run([os.environ["EVIDENTLY_PYTHON"], "-c", EVIDENTLY, str(tmp_path / "ref.parquet"),
                           str(tmp_path / "cur.parquet")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    theirs = json.loads(done.stdout.strip().splitlines()[-1])
    ours = {c.column: {"kind": {"numeric": "num", "categorical": "cat"}[c.kind], "method": c.method,
                       "drifted": c.drifted} for c in drift.drift_report(ref, cur).columns}
    assert {c: {**t, "method": EVIDENTLY_METHODS[t["method"]]} for c, t in theirs.items()} == ours


def test_column_types_in_agent_toml_override_the_rule(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text('[monitor]\ncolumn_types = {level = "numeric", count = "categorical"}\n')
    kinds = load_config(path).monitor.column_types
    assert kinds == {"level": "numeric", "count": "categorical"}
    path.write_text('[monitor]\ncolumn_types = {level = "text"}\n')
    with pytest.raises(ConfigError, match="column_types"):
        load_config(path)

    ref, cur = frames(1, 600)
    names = ["level", "count", "score"]
    profile = drift.ReferenceProfile.build({n: ref[n] for n in names})
    reference = Reference(profile, {"x": names}, None, {}, {})
    rows = [(msgspec.json.encode({"x": np.column_stack([cur[n][i:i + 50] for n in names]).tolist()}).decode(),
             None, None) for i in range(0, 500, 50)]
    _, default = judge_window(reference, ModelPolicy(), rows)
    _, overridden = judge_window(reference, ModelPolicy(), rows, kinds)
    assert [(c["kind"], c["method"]) for c in default] == [
        ("categorical", "chisquare"), ("numeric", "ks"), ("numeric", "ks")]
    assert [(c["kind"], c["method"], c["kind_reason"]) for c in overridden] == [
        ("numeric", "ks", "set in column_types"), ("categorical", "chisquare", "set in column_types"),
        ("numeric", "ks", "float")]
