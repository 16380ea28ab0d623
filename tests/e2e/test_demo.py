"""`mldeck demo --headless` end to end, on a local agent under a CPU hog and over a real sshd, then the
store checked.

Both stories live in one file so that they run one after the other on one test worker.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from mldeck.tui.cli.demo_cmd import RETRAIN_PIPELINE
from mldeck.tui.demo import demo_config
from tests.conftest import REPO, AgentProc, agent_env, start_agent
from tests.e2e.story import check_story
from tests.ssh.conftest import free_port, ssh_world  # noqa: F401 (the sshd fixture, used by name)

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


@pytest.fixture
def demo_agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProc]:
    agent = start_agent(tmp_path_factory.mktemp("remote-demo") / "home",
                        config=demo_config(free_port(), RETRAIN_PIPELINE))
    yield agent
    agent.stop()


@pytest.mark.timeout(600)
def test_demo_over_ssh(ssh_world: Any, demo_agent: AgentProc) -> None:  # noqa: F811 (the imported fixture)
    client, sshd, _ = ssh_world
    added = client.cli("hosts", "add", "demo-host", f"ssh://root@127.0.0.1:{sshd.port}",
                       "--home", str(demo_agent.home), "--python", sys.executable)
    assert added.code == 0, added.err
    try:
        done = client.cli("demo", "--headless", "--json", "--host", "demo-host", timeout=540)
        assert done.code == 0, done.err[-3000:]
        figures = done.json()

        def cli(*args: str) -> Any:
            result = client.cli(*args, "--json", "--host", "demo-host", timeout=120)
            assert result.code == 0, result.err
            return result.json()

        check_story(cli, figures)
    finally:
        client.cli("hosts", "rm", "demo-host")
