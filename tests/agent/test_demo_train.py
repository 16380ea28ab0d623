"""The demo training job: metrics, checkpoints, resume, preemption, failure and export."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch

from mldeck.agent.demo import data
from mldeck.agent.demo.train import main, parse_args
from mldeck.core import modelfile
from mldeck.core.provenance import fingerprint

REPO = Path(__file__).resolve().parents[2]

def env(home: Path, **extra: str) -> dict[str, str]:
    """A clean job environment: this home, no run folder or params inherited from the caller."""
    base = {
        k: v for k, v in os.environ.items()
        if k != "MLDECK_RUN_DIR" and not k.startswith("MLDECK_PARAM_")
    }
    return {**base, "MLDECK_HOME": str(home), "PYTHONPATH": str(REPO), **extra}


def train(home: Path, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mldeck.agent.demo.train", *args],
        capture_output=True, text=True, cwd=REPO, env=env(home, **extra), timeout=180,
    )


def lines(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def steps(run_dir: Path, key: str = "val_acc") -> list[int]:
    return [x["s"] for x in lines(run_dir) if key in (x.get("m") or {})]


def finish_status(run_dir: Path) -> str:
    return [x["d"]["status"] for x in lines(run_dir) if x.get("e") == "finish"][-1]


def only_run(home: Path) -> Path:
    (run_dir,) = (home / "runs").iterdir()
    return run_dir


@pytest.mark.slow
def test_demo_trains_checkpoints_and_exports_a_servable_model(tmp_path: Path) -> None:
    done = train(tmp_path, "--epochs", "3", "--lr", "0.01", "--amp", "bf16")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    run_dir = only_run(tmp_path)
    assert summary["run_id"] == run_dir.name and summary["val_acc"] > 0.8
    assert steps(run_dir) == [0, 1, 2]
    assert json.loads((run_dir / "checkpoints" / "latest.json").read_text())["step"] == 2
    assert json.loads((run_dir / "run.json").read_text())["params"]["amp"] == "bf16"

    artifact = run_dir / "artifacts" / "model"
    assert Path(summary["artifact"]) == artifact
    split = data.load_split()
    columns = json.loads((artifact / "columns.json").read_text())["features"]
    assert columns == split.columns and len(columns) == 30 and "mean_radius" in columns
    reference = pq.read_table(artifact / "reference.parquet")
    assert reference.column_names == columns and reference.num_rows == len(split.x_train)

    model = modelfile.load_model(artifact)
    assert [(s.name, s.shape) for s in model.signature.inputs] == [("features", [-1, 30])]
    probabilities = model.predict({"features": split.x_val})["probabilities"]
    assert probabilities.shape == (len(split.x_val), 2)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, atol=1e-5)
    assert (probabilities.argmax(axis=1) == split.y_val).mean() > 0.8


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """main() run in this process, in a clean environment, with torch's thread count restored."""
    for key in [k for k in os.environ if k == "MLDECK_RUN_DIR" or k.startswith("MLDECK_PARAM_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("MLDECK_HOME", str(tmp_path))
    threads = torch.get_num_threads()
    yield tmp_path
    torch.set_num_threads(threads)


def test_rerun_in_the_same_run_dir_continues_at_the_next_epoch(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert main(["--epochs", "2"]) == 0
    run_dir = only_run(home)
    monkeypatch.setenv("MLDECK_RUN_DIR", str(run_dir))
    assert main(["--epochs", "4"]) == 0
    assert steps(run_dir) == [0, 1, 2, 3]
    assert [x["d"]["step"] for x in lines(run_dir) if x.get("e") == "resume"] == [1]
    assert modelfile.verify_folder(run_dir / "artifacts" / "model").format == "torch.export"


def test_fail_at_epoch_fails_the_run(home: Path) -> None:
    with pytest.raises(RuntimeError, match="--fail-at-epoch"):
        main(["--epochs", "3", "--fail-at-epoch", "1"])
    run_dir = only_run(home)
    assert steps(run_dir) == [0] and finish_status(run_dir) == "failed"


@pytest.mark.slow
def test_sigterm_preempts_after_a_checkpoint(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "mldeck.agent.demo.train", "--epochs", "50", "--slow-ms", "300"],
        cwd=REPO, env=env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 120
        while not list(tmp_path.glob("runs/*/checkpoints/latest.json")):
            assert proc.poll() is None and time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 128 + signal.SIGTERM
    finally:
        proc.kill()
        proc.communicate()
    run_dir = only_run(tmp_path)
    assert finish_status(run_dir) == "preempted"
    assert steps(run_dir) and not (run_dir / "artifacts").exists()


def test_params_come_from_the_environment_unless_a_flag_says_otherwise(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("MLDECK_PARAM_EPOCHS", raising=False)
    monkeypatch.setenv("MLDECK_PARAM_LR", "0.5")
    monkeypatch.setenv("MLDECK_PARAM_HIDDEN", "8")
    args = parse_args(["--hidden", "16"])
    assert (args.lr, args.hidden, args.epochs) == (0.5, 16, 20)


def test_shift_moves_only_the_named_columns() -> None:
    split = data.load_split()
    frame = data.to_table(split.x_val, split.columns)
    shifted = data.shift(frame, ["mean_radius"], mean_shift_std=2.0)
    moved = pc.mean(shifted["mean_radius"]).as_py() - pc.mean(frame["mean_radius"]).as_py()
    assert moved == pytest.approx(2.0 * pc.stddev(frame["mean_radius"]).as_py(), rel=1e-4)
    assert shifted["mean_texture"].equals(frame["mean_texture"])
    assert shifted.schema == frame.schema


def test_a_pipelines_labelled_traffic_joins_the_training_and_becomes_the_reference(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    split = data.load_split()
    shifted = data.shift(data.to_table(split.x_train, split.columns), ["mean_radius", "mean_texture"], 2.0)
    step_dir = tmp_path / "data-step"
    (step_dir / "artifacts").mkdir(parents=True)
    labelled = step_dir / "artifacts" / "labelled.parquet"
    pq.write_table(shifted.append_column("label", [split.y_train]), labelled)
    monkeypatch.setenv("MLDECK_STEP_DATA_DIR", str(step_dir))
    assert main(["--epochs", "3"]) == 0
    run_dir = next(p for p in (home / "runs").iterdir() if p.is_dir())
    meta = json.loads((run_dir / "run.json").read_text())
    assert meta["params"]["labelled_rows"] == len(split.x_train)
    reference = pq.read_table(run_dir / "artifacts" / "model" / "reference.parquet")
    assert reference.num_rows == len(split.x_train)
    assert reference["mean_radius"].equals(shifted["mean_radius"])
    assert meta["data_hash"] != fingerprint([data.data_file()])  # the traffic is part of the run's data

    pq.write_table(shifted, labelled)
    with pytest.raises(ValueError, match="lacks the columns \\['label'\\]"):
        main(["--epochs", "1"])
