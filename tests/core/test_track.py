"""The SDK: cheap buffered logging, atomic checkpoints, resume, a plain `python train.py` tracked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mldeck.core import track
from mldeck.core.provenance import fingerprint
from mldeck.core.runlog import Line, finish_line
from tests.conftest import REPO, agent_env


def read_lines(run_dir: Path) -> list[Line]:
    return msgspec.json.Decoder(Line).decode_lines((run_dir / "metrics.jsonl").read_bytes())


def test_init_outside_agent_creates_run_folder(tmp_path: Path) -> None:
    data = tmp_path / "data.csv"
    data.write_text("a,b\n1,2\n")
    run = track.init(name="r", experiment="e", params={"lr": 0.1}, data_files=[data], home=tmp_path)
    run.log({"loss": 0.5, "acc": 0.25}, step=3)
    run.log({"loss": 0.4})
    run.finish()
    spec = json.loads((run.dir / "run.json").read_text())
    assert spec["name"] == "r" and spec["params"] == {"lr": 0.1}
    assert spec["data_hash"] == fingerprint([data])
    lines = read_lines(run.dir)
    assert lines[0].e == "init"
    points = [ln for ln in lines if ln.m]
    assert [(p.s, p.m) for p in points] == [(3, {"loss": 0.5, "acc": 0.25}), (4, {"loss": 0.4})]
    assert lines[-1].e == "finish" and lines[-1].d["status"] == "succeeded"


def test_fingerprint_changes_with_content(tmp_path: Path) -> None:
    f = tmp_path / "d.bin"
    f.write_bytes(b"one")
    first = fingerprint([f])
    f.write_bytes(b"two")
    assert fingerprint([f]) != first


def test_log_is_flushed_without_finish(tmp_path: Path) -> None:
    run = track.init(name="live", home=tmp_path)
    run.log({"x": 1.0}, step=0)
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline and not any(ln.m for ln in read_lines(run.dir)):
        time.sleep(0.05)
    assert any(ln.m == {"x": 1.0} for ln in read_lines(run.dir)), "not flushed within 2 s"
    run.finish()


def test_non_numeric_metric_is_refused_at_the_call(tmp_path: Path) -> None:
    run = track.init(name="bad", home=tmp_path)
    with pytest.raises(TypeError, match="metric values must be numbers"):
        run.log({"loss": "high"})
    run.finish()


def test_nan_and_infinities_are_written_by_name(tmp_path: Path) -> None:
    run = track.init(name="nan", home=tmp_path)
    run.log({"loss": float("nan"), "up": float("inf"), "down": float("-inf"), "ok": 1.5}, step=0)
    run.log({"loss": np.float32("nan"), "up": np.float64("inf"), "down": np.float16("-inf")}, step=1)
    run.finish()
    names = {"loss": "NaN", "up": "Infinity", "down": "-Infinity"}
    assert [ln.m for ln in read_lines(run.dir) if ln.m] == [{**names, "ok": 1.5}, names]


def test_a_resumed_attempt_starts_on_a_line_of_its_own(tmp_path: Path) -> None:
    """A writer killed mid-line leaves a torn last line; the next attempt must not append to it."""
    run_dir = tmp_path / "runs" / "torn"
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.jsonl").write_bytes(b'{"t":1.0,"s":0,"m":{"loss":1.0}}\n{"t":1.0,"s":1,"m":{"lo')
    again = track.Run(run_dir, {"run_id": "torn"})
    again.log({"loss": 0.5}, step=1)
    again.finish()
    raw = (run_dir / "metrics.jsonl").read_bytes().split(b"\n")
    assert raw[1] == b'{"t":1.0,"s":1,"m":{"lo'
    assert msgspec.json.decode(raw[2])["m"] == {"loss": 0.5}


def test_a_full_disk_neither_stops_training_nor_raises(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """/dev/full refuses every write (ENOSPC): the flush thread lives on, the buffer stays bounded, and
    the points past the bound are dropped and counted."""
    monkeypatch.setattr(track, "MAX_PENDING_LINES", 100)
    monkeypatch.setattr(track, "FINISH_RETRY_S", 0.5)
    run_dir = tmp_path / "runs" / "full"
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.jsonl").symlink_to("/dev/full")
    run = track.Run(run_dir, {"run_id": "full"})
    deadline = time.monotonic() + 5
    while run.dropped == 0 and time.monotonic() < deadline:  # until the flush thread has met the full disk
        run.log({"loss": 1.0})
        time.sleep(0.001)
    for _ in range(1000):
        run.log({"loss": 1.0})
    assert run.dropped >= 1000, "with the buffer at its bound, every further point is dropped and counted"
    run.finish()


def test_checkpoint_is_atomic_and_resume_returns_it(tmp_path: Path) -> None:
    run = track.init(name="ck", home=tmp_path)
    for step in range(3):
        run.log({"loss": 1.0 / (step + 1)}, step=step)
        run.checkpoint({"weights": [step] * 4}, step=step)
    folder = run.dir / "checkpoints"
    assert not list(folder.glob(".*tmp")), "temporary files left behind"
    assert len(list(folder.glob("ckpt-*.pt"))) == 2, "older checkpoints are pruned to the last two"
    run.finish()
    again = track.Run(run.dir, {"run_id": run.id})
    state, step = again.resume()
    assert state == {"weights": [2, 2, 2, 2]} and step == 2
    again.finish()


def test_killed_mid_checkpoint_keeps_the_previous_one(tmp_path: Path) -> None:
    """A writer killed while writing leaves the last complete checkpoint readable."""
    script = tmp_path / "writer.py"
    script.write_text(
        "import os, signal\n"
        "from core import track\n"
        "run = track.init(name='k')\n"
        "run.checkpoint({'good': 1}, step=1)\n"
        "orig = os.fsync\n"
        "def die(fd):\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "os.fsync = die\n"
        "run.checkpoint({'good': 2}, step=2)\n"
    )
    env = agent_env(tmp_path / "home")
    done = subprocess.run([sys.executable, str(script)], env=env, cwd=REPO, timeout=60)
    assert done.returncode == -9
    (run_dir,) = (tmp_path / "home" / "runs").iterdir()
    resumed = track.Run(run_dir, {"run_id": run_dir.name}).resume()
    assert resumed is not None and resumed[0] == {"good": 1} and resumed[1] == 1


def test_inside_agent_job_uses_run_dir(tmp_path: Path) -> None:
    run_dir = tmp_path / "runs" / "job-1"
    run_dir.mkdir(parents=True)
    (run_dir / "run.json").write_text(json.dumps({"run_id": "job-1", "params": {"lr": 0.3}}))
    script = "from core import track; r = track.init(params={'bs': 8}); r.log({'a': 1}); r.finish()"
    env = {**agent_env(tmp_path), track.RUN_DIR_ENV: str(run_dir)}
    subprocess.run([sys.executable, "-c", script], env=env, cwd=REPO, check=True, timeout=60)
    init = read_lines(run_dir)[0]
    assert init.e == "init" and init.d["params"] == {"lr": 0.3, "bs": 8}
    assert not any(p.name != "run.json" and p.suffix == ".json" for p in run_dir.iterdir())
    assert os.path.exists(run_dir / "metrics.jsonl")


def _tiny_cnn() -> Any:
    """A real small model on 8×8 one-channel images, in eval mode as an export wants it."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(256, 3)).eval()


def test_register_model_takes_a_numpy_reference_of_images(tmp_path: Path) -> None:
    """`reference=x_train` as the README writes it: an N-D numpy array becomes one column per pixel."""
    images = np.random.default_rng(0).random((200, 1, 8, 8), dtype=np.float32)
    run = track.init(name="cnn", home=tmp_path)
    folder = run.register_model(_tiny_cnn(), sample=images[:32], name="digits", reference=images)
    run.finish()
    table = pq.read_table(folder / "reference.parquet")
    assert table.num_rows == 200 and table.column_names == [f"input__0[{i}]" for i in range(64)]
    assert np.array_equal(table.column("input__0[9]").to_numpy(), images.reshape(200, 64)[:, 9])
    events = [(ln.e, ln.d) for ln in read_lines(run.dir) if ln.e in ("log_model", "register_model")]
    assert [e for e, _ in events] == ["log_model", "register_model"]
    assert events[1][1] == {"name": "digits", "artifact": "artifacts/model"}


def test_log_model_takes_tensors_dicts_and_tables_as_reference(tmp_path: Path) -> None:
    """reference takes what sample takes: a tensor (with grad), a dict per input, a pyarrow Table."""
    import torch
    from torch import nn

    class TwoInputs(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = nn.Linear(3, 1)

        def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return self.linear(b) + a[:, None]

    rng = np.random.default_rng(1)
    a, b = rng.random(50, dtype=np.float32), rng.random((50, 3), dtype=np.float32)
    run = track.init(name="two", home=tmp_path)
    model = TwoInputs().eval()
    folder = run.log_model(model, sample={"a": a, "b": b},
                           reference={"b": torch.from_numpy(b).requires_grad_(), "a": torch.from_numpy(a)})
    table = pq.read_table(folder / "reference.parquet")
    assert table.column_names == ["a", "b[0]", "b[1]", "b[2]"]
    assert np.array_equal(table.column("b[2]").to_numpy(), b[:, 2])
    flat = pa.table({"x": b[:, 0], "y": b[:, 1], "z": b[:, 2]})
    single = run.log_model(nn.Linear(3, 2).eval(), sample=b, reference=flat, artifact="single")
    assert pq.read_table(single / "reference.parquet").column_names == ["x", "y", "z"]  # a Table's names
    with pytest.raises(ValueError, match=r"rows of shape \[2\]; the model takes \[3\]"):
        run.log_model(nn.Linear(3, 2).eval(), sample=b, reference=b[:, :2], artifact="bad")
    assert not (run.dir / "artifacts" / "bad").exists()
    run.finish()


def test_a_polars_reference(tmp_path: Path) -> None:
    pl = pytest.importorskip("polars")
    from torch import nn

    x = np.random.default_rng(2).random((40, 3), dtype=np.float32)
    run = track.init(name="polars", home=tmp_path)
    folder = run.log_model(nn.Linear(3, 1).eval(), sample=x, reference=pl.DataFrame(x))
    assert pq.read_table(folder / "reference.parquet").num_rows == 40
    run.finish()


STOPS_ITSELF = """
import os, signal
from mldeck.core import track
run = track.init(name="stops")
for step in range(5):
    if step == 2:
        os.kill(os.getpid(), signal.SIGTERM)
    run.log({"loss": 1.0 / (step + 1)}, step=step)
    run.checkpoint({"step": step}, step=step)
    if run.should_stop:
        break
run.finish()
print("ended at", step)
"""


def test_a_script_that_reads_should_stop_ends_by_itself_and_records_the_stop(tmp_path: Path) -> None:
    """The README's pattern: log() does not exit under it, the loop checkpoints and breaks, and the
    finish line says the stop was seen, so the agent gives the run the stop's outcome."""
    script = tmp_path / "stops.py"
    script.write_text(STOPS_ITSELF)
    done = subprocess.run([sys.executable, str(script)], env=agent_env(tmp_path / "home"), cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "ended at 2" in done.stdout, done.stderr
    (run_dir,) = (tmp_path / "home" / "runs").iterdir()
    lines = read_lines(run_dir)
    assert [ln.s for ln in lines if ln.m] == [0, 1, 2]
    assert [ln.d["step"] for ln in lines if ln.e == "checkpoint"] == [0, 1, 2]
    assert lines[-1].e == "finish"
    assert lines[-1].d == {"status": "stopped", "reason": "SIGTERM", "stop_seen": True}
    assert finish_line(run_dir) == lines[-1].d


def test_a_run_that_saw_no_stop_says_so(tmp_path: Path) -> None:
    run = track.init(name="plain", home=tmp_path)
    run.log({"loss": 1.0}, step=0)
    assert not run.should_stop
    run.finish()
    assert finish_line(run.dir) == {"status": "succeeded", "reason": None, "stop_seen": False}


def test_a_later_attempt_without_a_checkpoint_supersedes_the_earlier_steps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stopped with --requeue before its first checkpoint, a run starts over: its resume line at step -1
    tells the agent to drop the first attempt's points, so no step is stored twice."""
    monkeypatch.setenv(track.ATTEMPT_ENV, "2")
    run = track.init(name="again", home=tmp_path)
    assert run.resume() is None
    run.finish()
    assert [ln.d for ln in read_lines(run.dir) if ln.e == "resume"] == [{"step": -1}]
    monkeypatch.setenv(track.ATTEMPT_ENV, "1")
    first = track.init(name="first", home=tmp_path)
    assert first.resume() is None
    first.finish()
    assert not [ln for ln in read_lines(first.dir) if ln.e == "resume"]
