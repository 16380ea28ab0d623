"""`mldeck demo --headless` end to end on a local agent under a CPU hog, then the store checked (the same
story over a real sshd is tests/e2e/test_demo_ssh.py: a file of its own, so that another test worker runs
it beside this one)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from tests.conftest import REPO, agent_env
from tests.e2e.story import check_story

HOGS = 6
"""Busy processes beside the demo: with the suite's own work, a load average near 8 on two cores."""


@pytest.fixture
def cpu_hog() -> Iterator[None]:
    """Processes that only burn CPU, as a loaded training box has, for as long as the test runs (at nice 5,
    so that together they weigh about two busy processes: the suite's other workers keep going)."""
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"], preexec_fn=lambda: os.nice(5))
            for _ in range(HOGS)]
    try:
        yield
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_demo_headless_tells_the_whole_story(tmp_path: Path, cpu_hog: None) -> None:
    home = tmp_path / "demo"
    env = agent_env(home)
    env.pop("MLDECK_SIMULATE_GPUS")

    def mldeck(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "mldeck.tui.cli", *args, "--home", str(home)],
                              capture_output=True, text=True, env=env, cwd=REPO, timeout=timeout)

    try:
        done = mldeck("demo", "--headless", "--json", timeout=840)
        assert done.returncode == 0, done.stderr[-3000:]
        assert os.getloadavg()[0] > HOGS / 2, "the CPU hog was not in effect"
        figures = msgspec.json.decode(done.stdout)
        assert figures["aliases"] == {"challenger": 2, "production": 2, "staging": 1}

        def cli(*args: str) -> Any:
            result = mldeck(*args, "--json")
            assert result.returncode == 0, result.stderr
            return msgspec.json.decode(result.stdout)

        check_story(cli, figures)
        status = cli("agent", "status")
        assert status["nvml"] == "simulated" and status["ingest"]["bad_lines"] == 0
    finally:
        mldeck("agent", "stop", "--with-serving")
