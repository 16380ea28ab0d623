"""The wheel adds one import name, `mldeck`, and a user's own `core`/`agent` packages still win."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO

USER_SCRIPT = """
import json, os, sys
from core import model            # the user's own package, not mldeck's
from agent import policy          # the user's own package, not mldeck's
import mldeck

run = mldeck.init(name="own-core", params={"depth": model.DEPTH})
for step in range(5):
    run.log({"loss": 1.0 / (step + 1), "reward": policy.reward(step)}, step=step)
run.finish()
print(json.dumps({"run_dir": str(run.dir), "mldeck": mldeck.__file__, "core": model.__file__,
                  "version": mldeck.__version__}))
"""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel built from a copy of the working tree (the build leaves nothing in the repository)."""
    src = tmp_path_factory.mktemp("src")
    ignore = shutil.ignore_patterns(".venv", ".git", "build", "*.egg-info", "__pycache__", "screenshots")
    shutil.copytree(REPO, src / "mldeck", ignore=ignore)
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(out), str(src / "mldeck")], check=True, capture_output=True, timeout=300)
    (found,) = out.glob("mldeck-*.whl")
    return found


def test_the_wheel_holds_one_top_level_name(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"mldeck", wheel.name.split("-py3")[0] + ".dist-info"}
    assert "mldeck/tui/mldeck.tcss" in names and "mldeck/agent/demo/retrain.toml" in names
    assert not [n for n in names if n.startswith("mldeck/tests/") or n.endswith("pyproject.toml")]


def test_a_project_with_its_own_core_and_agent_trains_through_mldeck(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    site = Path(sysconfig.get_path("purelib", vars={"base": str(venv), "platbase": str(venv)}))
    # mldeck's dependencies come from the test environment; mldeck itself only from the wheel
    deps = Path(sysconfig.get_path("purelib"))
    (site / "deps.pth").write_text(f"{deps}\n")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target",
                    str(site), str(wheel)], check=True, capture_output=True, timeout=300)
    project = tmp_path / "project"
    own = {"core": "DEPTH = 3\n", "agent": "def reward(step):\n    return float(step)\n"}
    for package, body in own.items():
        (project / package).mkdir(parents=True)
        (project / package / "__init__.py").write_text("")
        (project / package / ("model.py" if package == "core" else "policy.py")).write_text(body)
    (project / "train.py").write_text(USER_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MLDECK_RUN_DIR")}
    env["MLDECK_HOME"] = str(tmp_path / "home")
    done = subprocess.run([str(venv / "bin" / "python"), "train.py"], cwd=project, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    facts = json.loads(done.stdout.strip().splitlines()[-1])
    assert facts["mldeck"].startswith(str(site)), "mldeck came from somewhere else than the wheel"
    assert facts["core"].startswith(str(project)), "the user's own core package was shadowed"
    lines = (Path(facts["run_dir"]) / "metrics.jsonl").read_text().splitlines()
    assert sum('"loss"' in line for line in lines) == 5
