"""Regenerate screenshots/: `python -m tests.tui.make_screenshots` (needs rsvg-convert from librsvg2-bin).

A real agent in a temporary home (2 simulated GPUs) gets real runs and model versions, then a
scripted session visits every screen and saves each as SVG and PNG.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from tests.conftest import REPO, start_agent
from tests.tui.conftest import CONFIG, free_port, make_models, make_runs, until
from tui.app import MldeckApp
from tui.fleet import Fleet
from tui.screens.promote import AliasPicker, PromoteDialog
from tui.widgets.host_row import HostRow
from tui.widgets.metric_chart import MetricChart

OUT = REPO / "screenshots"
SIZE = (140, 42)


async def session(home: Path) -> list[str]:
    app = MldeckApp(lambda: Fleet({"local": None}, local_home=home))
    shots: list[str] = []
    async with app.run_test(size=SIZE) as pilot:

        async def shot(name: str, settle: float = 0.5) -> None:
            await pilot.pause(settle)
            app.save_screenshot(f"{name}.svg", str(OUT))
            shots.append(name)

        row = await until(pilot, lambda: app.screen.query(HostRow).first())
        await until(pilot, lambda: len(row.sparks) == 2)
        await shot("fleet", 3)
        await pilot.press("enter")
        await until(pilot, lambda: len(app.screen.query(MetricChart)) == 2)
        await shot("host")
        await pilot.press("escape", "2")
        await until(pilot, lambda: getattr(app.screen, "view", None) is not None and app.screen.view.num_rows)
        await pilot.press("space", "space", "space")
        await shot("runs", 1)
        await pilot.press("c")
        await until(pilot, lambda: len(app.screen.query(MetricChart)) >= 2)
        await shot("compare", 1)
        await pilot.press("2", "enter")
        await until(pilot, lambda: len(app.screen.query(MetricChart)) >= 2)
        await shot("run-detail", 1)
        await pilot.press("escape", "4")
        await shot("launch")
        await pilot.press("5")
        await until(pilot, lambda: getattr(app.screen, "versions", None))
        await shot("registry", 1)
        await pilot.press("enter", "p")
        await until(pilot, lambda: isinstance(app.screen, AliasPicker))
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, PromoteDialog))
        await shot("promote", 1.5)
        await pilot.press("escape")
        for key, name in (("6", "serving"), ("7", "drift"), ("8", "cost")):
            await pilot.press(key)
            await shot(name, 1.5)
        await pilot.press("2", "question_mark")
        await shot("help")
    return shots


def main() -> None:
    if not shutil.which("rsvg-convert"):
        raise SystemExit("rsvg-convert is missing: apt-get install -y librsvg2-bin")
    OUT.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        agent = start_agent(Path(tmp) / "home", config=CONFIG.format(port=free_port()))
        try:
            make_runs(agent)
            make_models(agent, ["churn:0.91", "churn:0.95"])
            time.sleep(2)
            shots = asyncio.run(session(agent.home))
        finally:
            agent.stop()
    for name in shots:
        subprocess.run(["rsvg-convert", str(OUT / f"{name}.svg"), "-o", str(OUT / f"{name}.png")], check=True)
        print(f"screenshots/{name}.svg  screenshots/{name}.png")


if __name__ == "__main__":
    main()
