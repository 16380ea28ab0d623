"""`mldeck demo --headless --host` over a real sshd to a local agent, then the store checked."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

import pytest

from mldeck.tui.cli.demo_cmd import RETRAIN_PIPELINE
from mldeck.tui.demo import demo_config
from tests.conftest import AgentProc, start_agent
from tests.e2e.story import check_story
from tests.ssh.conftest import free_port, ssh_world  # noqa: F401 (the sshd fixture, used by name)


@pytest.fixture
def demo_agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProc]:
    agent = start_agent(tmp_path_factory.mktemp("remote-demo") / "home",
                        config=demo_config(free_port(), RETRAIN_PIPELINE))
    yield agent
    agent.stop()


@pytest.mark.slow
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
