"""The SDK: cheap buffered logging, atomic checkpoints, resume, a plain `python train.py` tracked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import msgspec
import pytest

from mldeck.core import track
from mldeck.core.provenance import fingerprint
from mldeck.core.runlog import Line
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


def test_nan_survives_as_null(tmp_path: Path) -> None:
    run = track.init(name="nan", home=tmp_path)
    run.log({"loss": float("nan")}, step=0)
    run.finish()
    assert [ln.m for ln in read_lines(run.dir) if ln.m] == [{"loss": None}]


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
