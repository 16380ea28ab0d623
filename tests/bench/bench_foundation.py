"""Foundation benchmarks (issue 2): ingest, SDK overhead, notification latency, agent at rest, downsampling.

Not a timed test: run it by hand on a quiet machine and read the table.

    python tests/bench/bench_foundation.py [--mlflow-python PATH] [--points 2000000]

The MLflow side runs in its own environment so mlflow never becomes a dependency:

    python -m venv /tmp/mlflow-bench-env && /tmp/mlflow-bench-env/bin/pip install mlflow
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import msgspec
import psutil

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from mldeck.core import track  # noqa: E402
from mldeck.core.client import connect_unix  # noqa: E402
from tests.conftest import rpc, start_agent  # noqa: E402

MLFLOW_SCRIPT = r"""
import json, sys, tempfile, time, statistics
import mlflow
from mlflow.entities import Metric
mode, n = sys.argv[1], int(sys.argv[2])
mlflow.set_tracking_uri("sqlite:///" + tempfile.mkdtemp() + "/mlflow.db")
client = mlflow.tracking.MlflowClient()
exp = client.create_experiment("bench")
run = client.create_run(exp)
if mode == "batch":
    t0 = time.perf_counter()
    step = 0
    for _ in range(n // 1000):
        now = int(time.time() * 1000)
        metrics = [Metric(f"m{i % 4}", 0.5, now, step + i // 4) for i in range(1000)]
        client.log_batch(run.info.run_id, metrics=metrics)
        step += 250
    print(json.dumps({"points_per_s": n / (time.perf_counter() - t0)}))
else:
    mlflow.start_run(run_id=run.info.run_id)
    times = []
    for step in range(n):
        t0 = time.perf_counter_ns()
        mlflow.log_metrics({"loss": 0.1, "acc": 0.2, "lr": 0.001, "gn": 1.5}, step=step)
        times.append(time.perf_counter_ns() - t0)
    print(json.dumps({"median_us": statistics.median(times) / 1000}))
"""


def mlflow(python: str | None, mode: str, n: int) -> dict[str, float] | None:
    if not python:
        return None
    done = subprocess.run([python, "-c", MLFLOW_SCRIPT, mode, str(n)], capture_output=True, text=True)
    if done.returncode != 0:
        print(f"(mlflow {mode} failed: {done.stderr.strip().splitlines()[-1:]})", file=sys.stderr)
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def ingested(home: Path) -> int:
    return rpc(home, "agent.status")["result"]["ingest"]["rows"]


def bench_ingest(home: Path, points: int) -> float:
    """Points per second from a JSONL file appearing in a run folder to rows committed."""
    lines = points // 4
    enc = msgspec.json.Encoder()
    now = time.time()
    init = enc.encode({"t": now, "e": "init", "d": {"name": "bench-ingest"}}) + b"\n"
    data = init + enc.encode_lines(
        {"t": now + i * 1e-3, "s": i, "m": {"loss": 1.0 / (i + 1), "acc": i / lines, "lr": 1e-3, "gn": 0.5}}
        for i in range(lines)
    )
    staging = home / "staging.jsonl"
    staging.write_bytes(data)
    run_dir = home / "runs" / "bench-ingest"
    run_dir.mkdir(parents=True)
    before = ingested(home)
    t0 = time.perf_counter()
    os.rename(staging, run_dir / "metrics.jsonl")
    while ingested(home) < before + lines + 1:
        time.sleep(0.05)
    return points / (time.perf_counter() - t0)


def bench_sdk(home: Path, calls: int = 200_000) -> float:
    """Median µs per run.log call with 4 metrics."""
    run = track.init(name="bench-sdk", home=home)
    times = []
    for step in range(calls):
        t0 = time.perf_counter_ns()
        run.log({"loss": 0.1, "acc": 0.2, "lr": 0.001, "gn": 1.5}, step=step)
        times.append(time.perf_counter_ns() - t0)
    run.finish()
    return statistics.median(times) / 1000


async def bench_latency(home: Path, n: int = 100) -> tuple[float, float]:
    """p50 and p95 ms from run.log to the run.metrics notification on a subscribed socket."""
    client = await connect_unix(home / "agent.sock")
    run = track.init(name="bench-latency", home=home)
    sub = await client.subscribe("run.metrics", run_id=run.id)
    events = sub.__aiter__()
    latencies = []
    for step in range(n):
        sent = time.perf_counter()
        run.log({"loss": 1.0}, step=step)
        while step not in (await asyncio.wait_for(events.__anext__(), 10))["step"]:
            pass
        latencies.append((time.perf_counter() - sent) * 1000)
        await asyncio.sleep(0.05)
    run.finish()
    await client.close()
    latencies.sort()
    return statistics.median(latencies), latencies[int(0.95 * n) - 1]


def bench_rest(pid: int, seconds: float = 30) -> tuple[float, float]:
    """CPU % of one core and RSS MB of the idle agent with the collector at 1 Hz."""
    proc = psutil.Process(pid)
    before = sum(proc.cpu_times()[:2])
    time.sleep(seconds)
    cpu = (sum(proc.cpu_times()[:2]) - before) / seconds * 100
    return cpu, proc.memory_info().rss / 2**20


async def bench_downsample(home: Path, run_id: str, reps: int = 5) -> float:
    """Median ms to fetch a 1M-point series downsampled to 1,000 points."""
    client = await connect_unix(home / "agent.sock")
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        result = await client.call("runs.metrics", run_id=run_id, keys=["loss"], max_points=1000)
        times.append((time.perf_counter() - t0) * 1000)
    assert len(result["series"]["loss"]["step"]) <= 1000
    await client.close()
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mlflow-python", help="a Python with mlflow installed")
    parser.add_argument("--points", type=int, default=4_000_000)
    args = parser.parse_args()
    os.environ.pop("MLDECK_SIMULATE_GPUS", None)
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        agent = start_agent(home)
        try:
            rest_cpu, rest_rss = bench_rest(agent.proc.pid)
            ingest = bench_ingest(home, args.points)
            sdk_us = bench_sdk(home)
            p50, p95 = asyncio.run(bench_latency(home))
            down_ms = asyncio.run(bench_downsample(home, "bench-ingest"))
        finally:
            agent.stop()
    ml_batch = mlflow(args.mlflow_python, "batch", 100_000)
    ml_call = mlflow(args.mlflow_python, "call", 300)

    def peer(value: float | None, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    rows = [
        ("ingest, JSONL → DuckDB via agent (points/s)", f"{ingest:,.0f}",
         peer(ml_batch and ml_batch["points_per_s"], ",.0f") + " (MLflow log_batch, SQLite)",
         f"{ingest / ml_batch['points_per_s']:.0f}x" if ml_batch else "-", ">= 1,000,000"),
        ("run.log, 4 metrics (median µs per call)", f"{sdk_us:.2f}",
         peer(ml_call and ml_call["median_us"], ",.0f") + " (mlflow.log_metrics)",
         f"{ml_call['median_us'] / sdk_us:,.0f}x" if ml_call else "-", "<= 3"),
        ("run.log → notification (ms, p50 / p95)", f"{p50:.0f} / {p95:.0f}", "-", "-", "p95 < 500"),
        ("idle agent, collector 1 Hz (% of a core)", f"{rest_cpu:.2f}", "-", "-", "< 2"),
        ("idle agent RSS (MB)", f"{rest_rss:.0f}", "-", "-", "< 150"),
        (f"{args.points // 4:,}-point series → 1,000 points (ms)", f"{down_ms:.1f}", "-", "-", "< 100"),
    ]
    widths = [max(len(r[i]) for r in [*rows, ("what", "mldeck", "peer", "ratio", "target")])
              for i in range(5)]
    for row in [("what", "mldeck", "peer", "ratio", "target"), *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))


if __name__ == "__main__":
    main()
