"""The TUI against a host over a real sshd: its fleet row, its runs and a run's detail, keys only."""

from __future__ import annotations

import asyncio
import sys

import pytest

from mldeck.tui.app import MldeckApp
from mldeck.tui.fleet import Fleet
from mldeck.tui.hosts import Host
from mldeck.tui.screens.run_detail import RunDetailScreen
from mldeck.tui.screens.runs import RunsScreen
from mldeck.tui.widgets.host_row import HostRow
from tests.conftest import AgentProc
from tests.ssh.conftest import ClientHome, Sshd
from tests.tui.conftest import text_of, until

pytestmark = pytest.mark.timeout(180)


def test_fleet_runs_and_detail_of_a_host_over_ssh(
    ssh_world: tuple[ClientHome, Sshd, Sshd], remote_agent: AgentProc
) -> None:
    client, sshd, _ = ssh_world
    host = Host(target=f"ssh://root@127.0.0.1:{sshd.port}", home=str(remote_agent.home),
                python=sys.executable)

    async def go() -> None:
        app = MldeckApp(lambda: Fleet({"gpu1": host}, ssh_options=client.ssh_options()))
        async with app.run_test(size=(140, 42)) as pilot:
            row = await until(pilot, lambda: app.screen.query(HostRow).first(), what="host row")
            await until(pilot, lambda: row.state == "up" and len(row.sparks) == 2, timeout=60,
                        what="gpu1 up over SSH with its 2 GPUs")
            assert app.fleet.status("gpu1").mode == "streamlocal"
            await pilot.press("2")
            runs: RunsScreen = app.screen  # type: ignore[assignment]
            await until(pilot, lambda: "over-ssh" in runs.view["name"].to_pylist(), timeout=30,
                        what="the remote run listed")
            assert set(runs.view["host"].to_pylist()) == {"gpu1"}
            await pilot.press("slash", *"over-ssh", "enter", "enter")
            detail = await until(pilot, lambda: isinstance(app.screen, RunDetailScreen) and app.screen,
                                 what="run detail")
            await until(pilot, lambda: "lr" in text_of(detail.query_one("#run-params")), timeout=30,
                        what="the run's params over SSH")

    asyncio.run(go())
