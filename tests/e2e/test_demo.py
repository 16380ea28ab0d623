"""`mldeck demo --headless` end to end on a local agent, then the store checked through the CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec
import pytest

from tests.conftest import REPO, agent_env
from tests.e2e.story import check_story


@pytest.mark.timeout(600)
def test_demo_headless_tells_the_whole_story(tmp_path: Path) -> None:
    home = tmp_path / "demo"
    env = agent_env(home)
    env.pop("MLDECK_SIMULATE_GPUS")

    def mldeck(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "tui.cli", *args, "--home", str(home)],
                              capture_output=True, text=True, env=env, cwd=REPO, timeout=timeout)

    try:
        done = mldeck("demo", "--headless", "--json", timeout=540)
        assert done.returncode == 0, done.stderr[-3000:]
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
        mldeck("agent", "stop")
