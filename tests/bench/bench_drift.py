"""Drift report benchmark: mldeck against Evidently's DataDriftPreset and scipy's ks_2samp.

1,000,000 current rows × 20 numeric columns (5 shifted by 0.2 standard deviations) against a
100,000-row reference, seeded. Every tool runs in its own subprocess that reads the same
Parquet files, so its peak RSS (ru_maxrss) is its own; seconds are the best of --repeat runs
of the report alone (loading the data is not timed).

    python tests/bench/bench_drift.py
    python tests/bench/bench_drift.py --evidently-python /tmp/evenv/bin/python

Evidently needs pandas<3, so it lives in its own virtual environment:

    python -m venv /tmp/evenv && /tmp/evenv/bin/pip install evidently==0.7.23 'pandas<3' pyarrow

This is a script, not a timed test: pytest does not collect tests/bench.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]


def _peak_rss_mib() -> float:
    """This process's peak resident set size (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _best_of(repeat: int, run: Callable[[], dict[str, bool]]) -> tuple[float, dict[str, bool]]:
    """Best wall time of repeat runs, and the last run's per-column decisions."""
    best, decisions = float("inf"), {}
    for _ in range(repeat):
        start = time.perf_counter()
        decisions = run()
        best = min(best, time.perf_counter() - start)
    return best, decisions


def _read_arrays(path: Path) -> dict[str, np.ndarray]:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    return {name: table.column(name).to_numpy() for name in table.column_names}


def _worker(tool: str, folder: Path, repeat: int) -> dict[str, Any]:
    """Run one tool on the Parquet pair in folder; returns timing, memory and decisions."""
    if tool == "evidently":
        import pandas as pd
        from evidently import DataDefinition, Dataset, Report
        from evidently.presets import DataDriftPreset

        ref_df = pd.read_parquet(folder / "reference.parquet")
        cur_df = pd.read_parquet(folder / "current.parquet")
        loaded = _peak_rss_mib()
        definition = DataDefinition(numerical_columns=list(ref_df.columns))
        ref_ds = Dataset.from_pandas(ref_df, data_definition=definition)
        cur_ds = Dataset.from_pandas(cur_df, data_definition=definition)

        def run() -> dict[str, bool]:
            snapshot = Report([DataDriftPreset()]).run(current_data=cur_ds, reference_data=ref_ds)
            decisions = {}
            for metric in snapshot.dict()["metrics"]:
                config = metric["config"]
                if config["type"].endswith("ValueDrift"):
                    value, threshold = metric["value"], config["threshold"]
                    is_p_value = "p_value" in config["method"]
                    decisions[config["column"]] = bool(
                        value < threshold if is_p_value else value >= threshold
                    )
            return decisions

        version = __import__("evidently").__version__
        label = f"Evidently {version} DataDriftPreset"
    else:
        sys.path.insert(0, str(ROOT))
        from mldeck.core import drift

        ref = _read_arrays(folder / "reference.parquet")
        cur = _read_arrays(folder / "current.parquet")
        loaded = _peak_rss_mib()
        if tool == "mldeck":
            label = "mldeck drift_report (default tests)"

            def run() -> dict[str, bool]:
                return {c.column: c.drifted for c in drift.drift_report(ref, cur).columns}

        elif tool == "mldeck-ks":
            label = "mldeck drift_report, KS on every column"
            ks = {name: drift.ColumnTest(method="ks") for name in ref}

            def run() -> dict[str, bool]:
                return {c.column: c.drifted for c in drift.drift_report(ref, cur, overrides=ks).columns}

        elif tool == "mldeck-duckdb":
            import duckdb
            import pyarrow.parquet as pq

            label = "mldeck drift_report_duckdb (table in DuckDB)"
            con = duckdb.connect()
            con.register("arrow_current", pq.read_table(folder / "current.parquet"))
            con.execute("CREATE TABLE current_rows AS SELECT * FROM arrow_current")
            con.unregister("arrow_current")

            def run() -> dict[str, bool]:
                report = drift.drift_report_duckdb(con, "current_rows", ref)
                return {c.column: c.drifted for c in report.columns}

        else:
            from scipy import stats

            label = "scipy.stats.ks_2samp, 20 columns (p < 0.05)"

            def run() -> dict[str, bool]:
                return {name: bool(stats.ks_2samp(ref[name], cur[name]).pvalue < 0.05) for name in ref}

    seconds, decisions = _best_of(repeat, run)
    return {
        "tool": label,
        "seconds": seconds,
        "peak_rss_mib": _peak_rss_mib(),
        "rss_after_load_mib": loaded,
        "decisions": decisions,
    }


def _make_data(folder: Path, rows: int, ref_rows: int, cols: int, shifted: int, seed: int) -> list[str]:
    """Seeded normal columns; the first `shifted` current columns move by 0.2 std."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    names = [f"f{i:02d}" for i in range(cols)]
    scales = rng.uniform(0.5, 5.0, size=cols)
    ref = {n: rng.normal(0.0, s, size=ref_rows) for n, s in zip(names, scales, strict=True)}
    cur = {
        n: rng.normal(0.2 * s if i < shifted else 0.0, s, size=rows)
        for i, (n, s) in enumerate(zip(names, scales, strict=True))
    }
    pq.write_table(pa.table(ref), folder / "reference.parquet")
    pq.write_table(pa.table(cur), folder / "current.parquet")
    return names[:shifted]


def _images(n: int, ref_n: int, seed: int) -> None:
    """Image drift: summary features of n 28×28 images (brightened by 0.3) and a report against ref_n."""
    from mldeck.core import drift
    from mldeck.core.summaries import summarize

    rng = np.random.default_rng(seed)
    ref = rng.uniform(0.0, 1.0, (ref_n, 1, 28, 28)).astype(np.float32)
    cur = np.clip(rng.uniform(0.0, 1.0, (n, 1, 28, 28)) + 0.3, 0, 1).astype(np.float32)
    started = time.perf_counter()
    profile = drift.ReferenceProfile.build(summarize("pixels", "image", ref))
    built = time.perf_counter() - started
    started = time.perf_counter()
    report = drift.drift_report(profile, summarize("pixels", "image", cur))
    seconds = time.perf_counter() - started
    flagged = sum(c.drifted for c in report.columns)
    print(f"\nimages: {n:,} of 28×28 against {ref_n:,}: features + report {seconds:.2f} s "
          f"({flagged} of {len(report.columns)} summary features drifted), reference profile {built:.2f} s")


def _spawn(python: str, tool: str, folder: Path, repeat: int) -> dict[str, Any]:
    """Run a worker in a fresh interpreter so its peak RSS is its own."""
    script = str(Path(__file__).resolve())
    cmd = [python, script, "--worker", tool, "--data", str(folder), "--repeat", str(repeat)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"{tool} worker failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    """Generate the data, run every available tool, print the comparison table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--ref-rows", type=int, default=100_000)
    parser.add_argument("--cols", type=int, default=20)
    parser.add_argument("--shifted", type=int, default=5)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--evidently-python", help="interpreter of a venv with evidently==0.7.23")
    parser.add_argument("--no-scipy", action="store_true", help="skip the scipy ks_2samp row")
    parser.add_argument("--images", type=int, default=100_000, help="28×28 images in the image row (0: none)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        print(json.dumps(_worker(args.worker, args.data, args.repeat)))
        return

    tools = [(sys.executable, "mldeck"), (sys.executable, "mldeck-duckdb"), (sys.executable, "mldeck-ks")]
    if not args.no_scipy:
        tools.append((sys.executable, "scipy"))
    if args.evidently_python:
        tools.append((args.evidently_python, "evidently"))
    else:
        try:
            import evidently  # noqa: F401

            tools.append((sys.executable, "evidently"))
        except ImportError:
            print("(evidently not importable here; pass --evidently-python to compare)\n")

    with tempfile.TemporaryDirectory(prefix="bench-drift-") as tmp:
        folder = Path(tmp)
        truly_shifted = _make_data(folder, args.rows, args.ref_rows, args.cols, args.shifted, args.seed)
        results = [_spawn(python, tool, folder, args.repeat) for python, tool in tools]

    baseline = results[0]["decisions"]
    print(
        f"{args.rows:,} current × {args.cols} numeric columns vs {args.ref_rows:,} reference rows; "
        f"shifted by 0.2 std: {', '.join(truly_shifted)}; best of {args.repeat}"
    )
    print(f"python {platform.python_version()}, {platform.machine()}\n")
    print("| tool | seconds | peak RSS MiB (after load) | columns drifted | same decisions as mldeck |")
    print("| --- | ---: | ---: | ---: | --- |")
    for r in results:
        decisions = r["decisions"]
        drifted = sorted(c for c, d in decisions.items() if d)
        differ = sorted(c for c in baseline if decisions.get(c) != baseline[c])
        agrees = "yes" if not differ else "no: " + ", ".join(differ)
        print(
            f"| {r['tool']} | {r['seconds']:.2f} | {r['peak_rss_mib']:.0f} ({r['rss_after_load_mib']:.0f}) "
            f"| {len(drifted)} | {agrees} |"
        )
    if args.images:
        _images(args.images, args.images // 10, args.seed)


if __name__ == "__main__":
    main()
