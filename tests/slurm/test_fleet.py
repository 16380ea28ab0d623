"""The Fleet screen of a Slurm host (a real agent on the real cluster of conftest.py): its partitions,
nodes and queue under the host's row, fed by slurm.status; a host not on Slurm shows nothing more."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TypeVar

import pytest
from textual.widget import Widget

from mldeck.tui.app import MldeckApp
from mldeck.tui.fleet import Fleet
from mldeck.tui.screens.fleet import FleetScreen
from mldeck.tui.screens.slurm_panel import SlurmPanel, render
from mldeck.tui.widgets.host_row import HostRow
from tests.conftest import AgentProc, start_agent, wait_for
from tests.slurm.conftest import Cluster
from tests.slurm.test_slurm import SLEEPER, config, reason_has, slurm_id
from tests.tui.conftest import until

pytestmark = pytest.mark.slow
SIZE = (120, 50)
W = TypeVar("W", bound=Widget)


def fleet_app(agent: AgentProc) -> MldeckApp:
    return MldeckApp(lambda: Fleet({"local": None}, local_home=agent.home))


def shown(app: MldeckApp, kind: type[W]) -> W | None:
    """The screen's first widget of a kind, once it is there."""
    found = app.screen.query(kind)
    return found.first() if found else None


@pytest.mark.timeout(120)
def test_fleet_shows_the_partitions_and_a_queued_mldeck_job(cluster: Cluster, tmp_path: Path) -> None:
    (tmp_path / "sleeper.py").write_text(SLEEPER)
    agent = start_agent(tmp_path / "home", config=config(tmp_path / "shared"))
    blocker = cluster.sbatch("--partition=debug", "--gres=gpu:2", "--job-name=blocker", "--output=/dev/null",
                             "--wrap=sleep 60")
    try:
        wait_for(lambda: cluster.state(blocker)[0] == "RUNNING", what="the blocker to hold both GPUs")
        run_id = agent.cli("run", str(tmp_path / "sleeper.py"), "--gpus", "1", "--name", "waits",
                           check=True).out.strip()
        job_id = slurm_id(agent, run_id)
        reason_has(agent, run_id, "pending (Resources)")

        async def go() -> str:
            app = fleet_app(agent)
            async with app.run_test(size=SIZE) as pilot:
                panel = await until(pilot, lambda: shown(app, SlurmPanel), timeout=30, what="the Slurm panel")
                def laid_out() -> str | None:  # its layout may come a frame after its text on a busy machine
                    text = panel.render().plain
                    return text if panel.region.height > 10 and str(job_id) in text else None

                text: str = await until(pilot, laid_out, what="the queued job in the panel, laid out")
                assert panel.parent is app.screen.query_one(HostRow)
                assert panel.region.width > 100  # drawn, under the host's row
                return text

        text = asyncio.run(go())
        lines = text.splitlines()
        debug = next(line.split() for line in lines if line.startswith("debug*"))
        assert debug == ["debug*", "up", "0/1/1", "0/2", "infinite"], text  # idle/alloc/total, GPUs free/all
        node = next(line.split() for line in lines if line.startswith(f"{cluster.node} "))
        assert node == [cluster.node, "mixed", "debug,high", "1/2", "0/2", "-"], text  # CPUs alloc/total
        multi = next(line.split() for line in lines if line.startswith("multi "))
        assert multi == ["multi", "up", "2/0/2", "2/2", "infinite"], text
        ours = next(line.split() for line in lines if line.startswith(f"{job_id} "))
        assert ours == [str(job_id), run_id, "mldeck:waits", "root", "PENDING", "Resources", "-", "1", "-"], \
            text
        theirs = next(line.split() for line in lines if line.startswith(f"{blocker} "))
        assert theirs[1:6] == ["-", "blocker", "root", "RUNNING", "-"] and theirs[-1] == cluster.node, text
        assert text.index(f"{job_id} ") < text.index(f"{blocker} "), "mldeck's jobs come first"
        assert "queue 1 running, 1 pending, 1 of them mldeck's" in lines[0], text
    finally:
        cluster.run("scancel", str(blocker))
        agent.stop()


@pytest.mark.timeout(60)
def test_a_host_not_on_slurm_shows_nothing_more(tmp_path: Path) -> None:
    """slurm.status is not there (MethodNotAvailable): its poll ends, with no panel and no error."""
    agent = start_agent(tmp_path / "home")
    try:

        async def go() -> None:
            app = fleet_app(agent)
            async with app.run_test(size=SIZE) as pilot:
                screen = await until(pilot, lambda: isinstance(app.screen, FleetScreen) and app.screen)
                row = screen.query_one(HostRow)
                await until(pilot, lambda: row.extras.get("jobs") is not None, what="the row's extras")
                polls = lambda: [w for w in app.workers if w.node is screen and w.group == "poll"  # noqa: E731
                                 and w.is_running]
                await until(pilot, lambda: len(polls()) == 2, what="the Slurm poll to end")
                assert not screen.query(SlurmPanel)
                status = screen.query_one("#status").render().plain
                assert "slurm" not in status.lower() and "not available" not in status, status

        asyncio.run(go())
    finally:
        agent.stop()


def test_missing_values_read_as_a_dash() -> None:
    """An agent of another version, or a field Slurm left empty: "-" in its place, never an exception."""
    assert "no jobs pending or running" in render({}).plain
    text = render({"partitions": [{"name": "gpu"}], "nodes": [{"name": "n1", "state": None, "gpus": "?"}],
                   "queue": [{"job_id": "9", "state": "PENDING", "elapsed_s": None, "nodes": None}],
                   "running": None}).plain
    lines = text.splitlines()
    assert next(x.split() for x in lines if x.startswith("gpu")) == ["gpu", "-", "-/-/-", "-", "-"], text
    assert next(x.split() for x in lines if x.startswith("n1")) == ["n1", "-", "-", "-", "-", "-"], text
    assert next(x.split() for x in lines if x.startswith("9 ")) == ["9", *"---", "PENDING", *"----"], text
    assert "queue - running, - pending, 0 of them mldeck's" in lines[0]
