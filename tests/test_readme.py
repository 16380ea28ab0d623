"""The README cannot rot: every fenced block marked `bash runnable` is run, in order, in a fresh home."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, agent_env, end_model_server

BLOCK = re.compile(r"^```bash runnable\n(.*?)^```", re.MULTILINE | re.DOTALL)


def runnable_blocks() -> list[str]:
    return BLOCK.findall((REPO / "README.md").read_text())


def test_the_readme_has_runnable_blocks() -> None:
    assert len(runnable_blocks()) >= 3


@pytest.mark.timeout(600)
def test_readme_blocks_run(tmp_path: Path) -> None:
    env = agent_env(tmp_path / "home")
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    try:
        for n, block in enumerate(runnable_blocks(), start=1):
            done = subprocess.run(["bash", "-euo", "pipefail", "-c", block], capture_output=True,
                                  text=True, env=env, cwd=REPO, timeout=300)
            assert done.returncode == 0, f"README block {n} failed:\n{block}\n{done.stdout}\n{done.stderr}"
    finally:
        subprocess.run([sys.executable, "-m", "mldeck.tui.cli", "agent", "stop"], env=env, cwd=REPO,
                       capture_output=True, timeout=60)
        end_model_server(tmp_path / "home")  # the walk's promotion started one; `agent stop` leaves it
