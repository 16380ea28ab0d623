"""Regenerate screenshots/: `python -m tests.tui.make_screenshots` (needs rsvg-convert and Debian's sshd).

The demo's story, as a newcomer sees it, on a fleet of three agents: this machine's (the whole demo:
sweep, registry, serving, drift, retraining, shadow, promotion) and two GPU boxes behind a real sshd on
loopback, each training demo models on its two simulated GPUs. Traffic keeps flowing to the served
model while a scripted session visits every screen and saves each as SVG and PNG.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mldeck.core.client import connect_unix
from mldeck.core.paths import Layout
from mldeck.core.ports import free_port
from mldeck.tui import demo
from mldeck.tui.app import MldeckApp
from mldeck.tui.cli.demo_cmd import RETRAIN_PIPELINE
from mldeck.tui.fleet import LOCAL, Fleet
from mldeck.tui.hosts import Host
from mldeck.tui.screens.promote import AliasPicker, PromoteDialog
from mldeck.tui.widgets.distribution_chart import DistributionChart
from mldeck.tui.widgets.host_row import HostRow
from mldeck.tui.widgets.metric_chart import MetricChart
from tests.conftest import REPO, AgentProc, rpc, start_agent, wait_for
from tests.ssh.conftest import make_client_home, pin, start_sshd
from tests.tui.conftest import until

OUT = REPO / "screenshots"
SVG_PRESERVE = '<svg xml:space="preserve" '
SIZE = (140, 42)
BOXES = ("gpu-a", "gpu-b")
BOX_CONFIG = """
[agent]
collector_interval_s = 0.5

[cost]
gpu_price_per_hour = 2.10
"""
BOX_JOBS = [  # (name, hyperparameters, epochs, ms per epoch): two finish, two keep both GPUs busy
    ("mlp-wide", {"hidden": 128, "lr": 0.003}, 30, 0),
    ("mlp-narrow", {"hidden": 16, "lr": 0.01}, 30, 0),
    ("mlp-long", {"hidden": 64, "lr": 0.001}, 400, 1500),
    ("mlp-deep", {"hidden": 256, "lr": 0.0005}, 400, 2500),
]


def box_jobs(agent: AgentProc, box: str) -> list[str]:
    """The box's training jobs, each on one GPU: a queue that drains into both."""
    ids = []
    for name, params, epochs, slow_ms in BOX_JOBS:
        args = ["--epochs", str(epochs), "--slow-ms", str(slow_ms),
                *[a for k, v in params.items() for a in (f"--{k}", str(v))]]
        got = rpc(agent.home, "runs.launch", {"module": "mldeck.agent.demo.train", "name": f"{name}-{box}",
                                             "experiment": "sizing", "args": args, "gpus": 1})
        ids.append(got["result"]["run_id"])
    return ids


async def tell(home: Path) -> dict[str, Any]:
    """The whole demo story on the local agent, as `mldeck demo --headless` tells it."""
    client = await connect_unix(Layout(home).socket)
    try:
        return await demo.run_story(client, lambda line: print(line, flush=True), gpus=2, auto=True)
    finally:
        await client.close()


def keep_traffic(home: Path) -> str:
    """Shifted traffic to the production model for as long as the screens are visited."""
    url = rpc(home, "serving.status")["result"]["url"]
    return str(rpc(home, "runs.launch", {
        "module": "mldeck.agent.demo.traffic", "name": "traffic", "experiment": "demo-traffic",
        "args": ["--url", url, "--model", demo.MODEL, "--rps", "60", "--duration", "900", "--shift-at", "0",
                 "--shift-columns", ",".join(demo.SHIFTED), "--shift-std", "1.5", "--feedback-share", "0.5",
                 "--home", str(home)]})["result"]["run_id"])


async def session(fleet: Callable[[], Fleet]) -> list[str]:
    app = MldeckApp(fleet)
    shots: list[str] = []
    async with app.run_test(size=SIZE) as pilot:

        async def shot(name: str, settle: float = 0.5) -> None:
            await pilot.pause(settle)
            app.save_screenshot(f"{name}.svg", str(OUT))
            shots.append(name)

        rows = await until(pilot, lambda: len(app.screen.query(HostRow)) == 3 and app.screen.query(HostRow),
                           timeout=60, what="three hosts")
        await until(pilot, lambda: all(len(r.sparks) == 2 for r in rows), timeout=60, what="every GPU")
        await shot("fleet", 6)
        await pilot.press("down", "enter")
        await until(pilot, lambda: len(app.screen.query(MetricChart)) == 2, timeout=30)
        await shot("host", 2)
        await pilot.press("escape", "2")
        await until(pilot, lambda: getattr(app.screen, "view", None) is not None
                    and app.screen.view.num_rows >= 12, timeout=60, what="the fleet's runs")
        await pilot.press("slash", *"demo-sweep", "escape", "home", "space", "down", "space", "down", "space")
        await shot("runs", 1)
        await pilot.press("c")
        await until(pilot, lambda: len(app.screen.query(MetricChart)) >= 2, timeout=30)
        await shot("compare", 2)
        await pilot.press("2", "slash", "ctrl+u", *"status:running host:gpu-a", "escape", "home",
                          "enter")
        await until(pilot, lambda: len(app.screen.query(MetricChart)) >= 2, timeout=30)
        await shot("run-detail", 3)
        await pilot.press("escape", "4")
        await shot("launch")
        await pilot.press("5")
        await until(pilot, lambda: getattr(app.screen, "versions", None), timeout=30)
        await shot("registry", 1)
        await pilot.press("enter", "down", "p")  # the staging version to production: deltas, gates
        await until(pilot, lambda: isinstance(app.screen, AliasPicker))
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, PromoteDialog))
        await shot("promote", 2)
        await pilot.press("escape")
        for key, name in (("6", "serving"), ("7", "drift"), ("8", "cost")):
            await pilot.press(key)
            if name == "drift":
                await until(pilot, lambda: app.screen.query_one(DistributionChart).dist, timeout=60)
            await shot(name, 8 if name == "serving" else 3)
        await pilot.press("2", "question_mark")
        await shot("help")
    return shots


def to_png(name: str) -> None:
    # rsvg draws a span's leading non-breaking spaces with no width (and stretches the rest to the
    # span's textLength): the PNG is made from plain spaces that xml:space="preserve" keeps.
    svg = (OUT / f"{name}.svg").read_text().replace("&#160;", " ").replace("<svg ", SVG_PRESERVE, 1)
    subprocess.run(["rsvg-convert", "-o", str(OUT / f"{name}.png")], input=svg.encode(), check=True)
    print(f"screenshots/{name}.svg  screenshots/{name}.png")


def main() -> None:
    if not shutil.which("rsvg-convert"):
        raise SystemExit("rsvg-convert is missing: apt-get install -y librsvg2-bin")
    OUT.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        laptop, key = make_client_home(root / "laptop")
        sshd = start_sshd(root / "sshd", key)
        pin(laptop, sshd)
        local = start_agent(root / "local", config=demo.demo_config(free_port(), RETRAIN_PIPELINE))
        boxes = {name: start_agent(root / name, config=BOX_CONFIG) for name in BOXES}
        try:
            for name, agent in boxes.items():
                box_jobs(agent, name)
            started = time.monotonic()
            figures = asyncio.run(tell(local.home))
            print(f"the story took {time.monotonic() - started:.0f}s: aliases {figures['aliases']}")
            traffic = keep_traffic(local.home)
            wait_for(lambda: rpc(local.home, "drift.status", {"name": demo.MODEL}).get("result", {})
                     .get("drifted_columns"), timeout=180, interval=1, what="drift on the served model")
            hosts: dict[str, Host | None] = {LOCAL: None}
            hosts |= {name: Host(target=f"ssh://root@127.0.0.1:{sshd.port}", home=str(agent.home),
                                 python=sys.executable) for name, agent in boxes.items()}
            try:
                shots = asyncio.run(session(
                    lambda: Fleet(hosts, local_home=local.home, ssh_options=laptop.ssh_options())))
            finally:
                rpc(local.home, "runs.stop", {"run_id": traffic})
        finally:
            for agent in (local, *boxes.values()):
                agent.stop()
            sshd.stop()
    for name in shots:
        to_png(name)


if __name__ == "__main__":
    main()
