"""The README cannot rot: every fenced block marked `bash runnable` is run, in order, in a fresh home.

Each section named in OWN_HOME runs in a home of its own, from the test file OWN_HOME names, so that
another test worker runs it beside the rest; every other section runs here, in order, in one home.
"""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, agent_env, end_model_server

BLOCK = re.compile(r"^```bash runnable\n(.*?)^```", re.MULTILINE | re.DOTALL)
SECTION = re.compile(r"^## (.+)\n", re.MULTILINE)
OWN_HOME = {
    "Frameworks you already train with": "test_readme_frameworks",
    "Jobs, sweeps, cost": "test_readme_sweeps",
}
"""Title beginnings of the sections run apart, and the module (tests/NAME.py) that runs each: each section
starts its own agent in its first block and stops it in its last, so it needs nothing that an earlier
section left."""

Section = tuple[str, list[str]]


def runnable_blocks() -> list[str]:
    return BLOCK.findall((REPO / "README.md").read_text())


def sections() -> list[Section]:
    """(title, runnable blocks) of each `## ` section that has any, in README order ("" before the first)."""
    parts = SECTION.split((REPO / "README.md").read_text())
    titled = [("", parts[0]), *zip(parts[1::2], parts[2::2], strict=True)]
    return [(title, BLOCK.findall(body)) for title, body in titled if BLOCK.search(body)]


def run_apart(start: str, home: Path) -> None:
    """Run the one section that begins with `start`, an OWN_HOME entry, in a home of its own."""
    assert start in OWN_HOME, f"{start!r} is not an OWN_HOME entry"
    apart = [s for s in sections() if s[0].startswith(start)]
    assert len(apart) == 1, f"{len(apart)} README sections with blocks begin with {start!r}"
    run_sections(apart, home)


def run_sections(chosen: list[Section], home: Path) -> None:
    """Run the sections' blocks in order in one fresh home, as a reader would; then end its agent."""
    env = agent_env(home)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    try:
        for title, blocks in chosen:
            for n, block in enumerate(blocks, start=1):
                done = subprocess.run(["bash", "-euo", "pipefail", "-c", block], capture_output=True,
                                      text=True, env=env, cwd=REPO, timeout=300)
                assert done.returncode == 0, (f"README block {n} of {title!r} failed:\n{block}\n"
                                              f"{done.stdout}\n{done.stderr}")
    finally:
        subprocess.run([sys.executable, "-m", "mldeck.tui.cli", "agent", "stop"], env=env, cwd=REPO,
                       capture_output=True, timeout=60)
        end_model_server(home)  # a promotion may have started one; `agent stop` leaves it


def test_the_readme_has_runnable_blocks() -> None:
    assert len(runnable_blocks()) >= 3
    found = sections()
    assert sum(len(blocks) for _, blocks in found) == len(runnable_blocks())
    for start, module in OWN_HOME.items():
        apart = [blocks for title, blocks in found if title.startswith(start)]
        assert len(apart) == 1, f"OWN_HOME names {start!r}, which begins {len(apart)} sections with blocks"
        assert "mldeck agent start" in apart[0][0] and apart[0][-1].rstrip().endswith("mldeck agent stop")
        assert start == importlib.import_module(f"tests.{module}").TITLE, f"tests/{module}.py runs another"


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_readme_blocks_run(tmp_path: Path) -> None:
    run_sections([s for s in sections() if not s[0].startswith(tuple(OWN_HOME))], tmp_path / "home")
