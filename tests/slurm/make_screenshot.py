"""Regenerate screenshots/fleet-slurm.svg and .png: `python -m tests.slurm.make_screenshot` (as root, with
slurm-wlm, munge and rsvg-convert installed).

The tests' one-machine cluster (conftest.py) and a real agent on it: two mldeck runs (one running, one
pending for the GPUs) among other users' jobs, on the Fleet screen at 120 columns.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from pathlib import Path

from mldeck.tui.screens.slurm_panel import SlurmPanel
from mldeck.tui.widgets.host_row import HostRow
from tests.conftest import AgentProc, start_agent, wait_for
from tests.slurm.conftest import PATH, Cluster, start_cluster
from tests.slurm.test_fleet import fleet_app, shown
from tests.slurm.test_slurm import SLEEPER, config, reason_has, slurm_id
from tests.tui.conftest import until
from tests.tui.make_screenshots import OUT, to_png

NAME = "fleet-slurm"
SIZE = (120, 40)


def others(cluster: Cluster) -> list[int]:
    """Jobs of another user, as a shared cluster has them: one on the GPU node, one across both small nodes,
    one that waits for them."""
    common = ("--uid=nobody", "--chdir=/tmp", "--output=/dev/null", "--mem=100M", "--gres=gpu:1",
              "--wrap=sleep 600")
    return [
        cluster.sbatch(*common, "--partition=debug", "--job-name=preprocess"),
        cluster.sbatch(*common, "--partition=multi", "--nodes=2", "--job-name=eval-7b"),
        cluster.sbatch(*common, "--partition=multi", "--nodes=2", "--job-name=eval-13b"),
    ]


def scene(cluster: Cluster, agent: AgentProc, scripts: Path) -> list[str]:
    jobs = others(cluster)
    wait_for(lambda: cluster.state(jobs[0])[0] == "RUNNING", what="preprocess to run")
    run = ("run", str(scripts / "sleeper.py"), "--gpus", "1", "--env", "SLEEP_S=600", "--name")
    runs = [agent.cli(*run, name, check=True).out.strip() for name in ("resnet50", "vit-b16")]
    wait_for(lambda: cluster.state(slurm_id(agent, runs[0]))[0] == "RUNNING", what="resnet50 to run")
    reason_has(agent, runs[1], "pending (Resources)")
    return runs


async def session(agent: AgentProc, runs: list[str]) -> None:
    app = fleet_app(agent)
    async with app.run_test(size=SIZE) as pilot:
        row = await until(pilot, lambda: shown(app, HostRow))
        await until(pilot, lambda: len(row.sparks) == 2)
        panel = await until(pilot, lambda: shown(app, SlurmPanel), timeout=30)
        await until(pilot, lambda: all(r in panel.render().plain for r in runs), timeout=30)
        await pilot.pause(3)
        app.save_screenshot(f"{NAME}.svg", str(OUT))


def main() -> None:
    if not shutil.which("rsvg-convert"):
        raise SystemExit("rsvg-convert is missing: apt-get install -y librsvg2-bin")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        root.chmod(0o755)  # the other user's batch scripts are in the spool below
        (root / "slurm").mkdir()
        cluster = start_cluster(root / "slurm")
        os.environ.update(SLURM_CONF=str(cluster.conf), PATH=PATH)
        try:
            (root / "sleeper.py").write_text(SLEEPER)
            agent = start_agent(root / "home", config=config(root / "shared"))
            try:
                asyncio.run(session(agent, scene(cluster, agent, root)))
            finally:
                agent.stop()
        finally:
            cluster.stop()
    to_png(NAME)


if __name__ == "__main__":
    main()
