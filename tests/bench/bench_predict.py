"""`mldeck predict` against plain torch: 200,000 8×8 images through a small CNN, on one thread.

    .venv/bin/python tests/bench/bench_predict.py [--rows 200000] [--repeat 3]

Two CNNs, exported with export_model and registered in a fresh agent home: the small CNN of an 8×8
digits classifier (conv 1→16, conv 16→32, pool, linear 512→64→10), whose forward pass costs about what
the issue reported (7.1 s for 200,000 rows on one thread), and a tiny one (conv 1→8, pool, conv 8→16,
pool, linear 64→10) four times cheaper, where reading and writing weigh most. Plain torch is the eager
model's forward pass over the images already in memory (batches of 4096, inference_mode); "plain torch,
file to file" adds reading the Parquet file and writing the logits with pyarrow, as a hand-written
script would. `mldeck predict` runs as a user runs it, a CLI process, on three layouts of the same
images: one 64-value fixed-size list column, 64 per-pixel columns `pixels[i]`, and the nested
[1][8][8] lists the old version required. Its seconds are the ones it reports (reading, inference and
writing, overlapped on threads); the process's wall time (Python start, torch import, model load) is
beside them. Everything runs with OMP_NUM_THREADS=1: torch on one thread, Arrow's pool of one. The runs
are interleaved, round after round, and each figure is the best of --repeat rounds, so that a loaded
machine slows each row alike.

This is a script, not a timed test: pytest does not collect tests/bench.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
os.environ["OMP_NUM_THREADS"] = "1"  # before torch and pyarrow start their thread pools

BATCH = 4096
FIXED = "one fixed-size list column of 64"


def small_cnn() -> Any:
    from torch import nn

    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1),
                         nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(512, 64), nn.ReLU(),
                         nn.Linear(64, 10))


def tiny_cnn() -> Any:
    from torch import nn

    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(64, 10))


MODELS = {"small CNN": small_cnn, "tiny CNN": tiny_cnn}


def model(name: str) -> Any:
    import torch

    torch.manual_seed(0)
    return MODELS[name]().eval()


def write_inputs(folder: Path, images: np.ndarray) -> dict[str, Path]:
    """The same images in three layouts, each with an id column."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = len(images)
    flat = pa.array(images.reshape(-1))
    ids = pa.array(np.arange(n))
    rows = images.reshape(n, 64)
    nested = pa.ListArray.from_arrays(np.arange(0, n * 64 + 1, 8, dtype=np.int32), flat)
    nested = pa.ListArray.from_arrays(np.arange(0, n * 8 + 1, 8, dtype=np.int32), nested)
    nested = pa.ListArray.from_arrays(np.arange(0, n + 1, dtype=np.int32), nested)
    layouts = {
        FIXED: {"id": ids, "pixels": pa.FixedSizeListArray.from_arrays(flat, 64)},
        "64 columns pixels[i]": {"id": ids, **{f"pixels[{i}]": rows[:, i] for i in range(64)}},
        "nested lists [1][8][8]": {"id": ids, "pixels": nested},
    }
    paths = {}
    for i, (name, columns) in enumerate(layouts.items()):
        paths[name] = folder / f"in{i}.parquet"
        pq.write_table(pa.table(columns), paths[name])
    return paths


def plain_forward(name: str, images: np.ndarray) -> float:
    import torch

    net, x = model(name), torch.from_numpy(images)
    start = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(x), BATCH):
            net(x[i:i + BATCH])
    return time.perf_counter() - start


def plain_file_to_file(name: str, source: Path, target: Path) -> float:
    """What a hand-written script does: read the fixed-size list column, forward, write the logits."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch

    net = model(name)
    start = time.perf_counter()
    table = pq.read_table(source)
    pixels = table.column("pixels").combine_chunks().flatten().to_numpy(zero_copy_only=False, writable=True)
    x = torch.from_numpy(pixels.reshape(-1, 1, 8, 8))
    with torch.inference_mode():
        out = torch.cat([net(x[i:i + BATCH]) for i in range(0, len(x), BATCH)]).numpy()
    logits = pa.FixedSizeListArray.from_arrays(pa.array(out.reshape(-1)), out.shape[1])
    pq.write_table(table.append_column("logits", logits), target)
    return time.perf_counter() - start


def mldeck_predict(home: Path, name: str, source: Path, target: Path) -> tuple[float, float]:
    """(seconds mldeck reports, wall seconds of the CLI process)."""
    from tests.conftest import agent_env

    start = time.perf_counter()
    command = ["predict", f"{registered(name)}/1", "--input", str(source), "--output", str(target), "--json"]
    done = subprocess.run([sys.executable, "-m", "mldeck.tui.cli", *command, "--batch-size", str(BATCH)],
                          capture_output=True, text=True, env=agent_env(home), cwd=REPO, check=False)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"mldeck predict failed: {done.stderr}")
    return json.loads(done.stdout)["seconds"], wall


def registered(name: str) -> str:
    return name.split()[0]


def register(home: Path, images: np.ndarray) -> None:
    from mldeck.core import track
    from tests.conftest import rpc, wait_for

    run = track.init(name="bench-predict", home=home)
    for name in MODELS:
        run.register_model(model(name), sample=images[:64], name=registered(name), input_names=["pixels"],
                           output_names=["logits"], artifact=registered(name))
    run.finish()
    for name in MODELS:
        wait_for(lambda n=name: rpc(home, "models.versions", {"name": registered(n)}).get("result"),
                 timeout=120, what=f"the registered {name}")


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--rows", type=int, default=200_000)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()

    import pyarrow
    import torch

    from tests.conftest import start_agent

    torch.set_num_threads(1)
    images = np.random.default_rng(0).random((args.rows, 1, 8, 8), dtype=np.float32)
    times: dict[tuple[str, str], list[tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-predict-") as tmp:
        root = Path(tmp)
        home = root / "home"
        agent = start_agent(home)
        load = os.getloadavg()[0]
        try:
            register(home, images)
            paths = write_inputs(root, images)
            for _ in range(args.repeat):
                for name in MODELS:
                    forward = plain_forward(name, images)
                    times.setdefault((name, "forward"), []).append((forward, forward))
                    by_hand = plain_file_to_file(name, paths[FIXED], root / "plain.parquet")
                    times.setdefault((name, "by hand"), []).append((by_hand, by_hand))
                    for layout, path in paths.items():
                        times.setdefault((name, layout), []).append(
                            mldeck_predict(home, name, path, root / "out.parquet"))
                load = max(load, os.getloadavg()[0])
        finally:
            agent.stop()
    best = {key: (min(r[0] for r in runs), min(r[1] for r in runs)) for key, runs in times.items()}

    print(f"# mldeck predict benchmark, {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} CPUs "
          f"({platform.processor() or platform.machine()}), load average up to {load:.1f}; torch "
          f"{torch.__version__}, pyarrow {pyarrow.__version__}; OMP_NUM_THREADS=1; best of {args.repeat}\n")
    print(f"{args.rows:,} images 1×8×8 float32 → logits of 10, batches of {BATCH}")
    for name in MODELS:
        forward = best[(name, "forward")][0]
        print(f"\n## {name}\n")
        print("| what | seconds | × plain torch forward | process wall s |\n| --- | ---: | ---: | ---: |")
        print(f"| plain torch forward, images in memory | {forward:.2f} | 1.00 | |")
        by_hand = best[(name, "by hand")][0]
        print(f"| plain torch, Parquet file to file (pyarrow) | {by_hand:.2f} | {by_hand / forward:.2f} | |")
        for layout in paths:
            seconds, wall = best[(name, layout)]
            print(f"| mldeck predict, {layout} | {seconds:.2f} | {seconds / forward:.2f} | {wall:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
