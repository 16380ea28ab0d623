"""Regenerate screenshots/: `python -m tests.tui.make_screenshots` (needs rsvg-convert from librsvg2-bin).

A real agent in a temporary home (2 simulated GPUs) gets real runs and model versions, then a
scripted session visits every screen and saves each as SVG and PNG.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

from mldeck.tui.app import MldeckApp
from mldeck.tui.fleet import Fleet
from mldeck.tui.screens.promote import AliasPicker, PromoteDialog
from mldeck.tui.widgets.distribution_chart import DistributionChart
from mldeck.tui.widgets.host_row import HostRow
from mldeck.tui.widgets.metric_chart import MetricChart
from tests.conftest import REPO, rpc, start_agent, wait_for
from tests.tui.conftest import CONFIG, free_port, make_models, make_runs, until

OUT = REPO / "screenshots"
SVG_PRESERVE = '<svg xml:space="preserve" '
SIZE = (140, 42)


def traffic(url: str, stop: threading.Event) -> None:
    """Requests to the served model while the session runs, so Serving shows live figures."""
    rng = np.random.default_rng(0)
    while not stop.is_set():
        rows = rng.normal(0.8, 1.0, size=(4, 8))  # the reference is N(0, 1): a visible shift
        body = json.dumps({"inputs": [{"name": "input__0", "datatype": "FP32", "shape": [4, 8],
                                       "data": rows.ravel().tolist()}]}).encode()
        req = urllib.request.Request(url + "/v2/models/churn/infer", data=body, method="POST")
        with contextlib.suppress(OSError):  # a request lost while the server swaps is fine here
            urllib.request.urlopen(req, timeout=5).read()
        time.sleep(0.02)


def serve(home: Path) -> str:
    """churn v2 to production (its gate passes), served; its URL once it answers."""
    rpc(home, "models.promote", {"name": "churn", "version": 2, "alias": "production"})
    status = wait_for(lambda: (s := rpc(home, "serving.status").get("result") or {}).get("running")
                      and "churn" in s["manifest"]["models"] and s, timeout=120, what="churn served")
    return str(status["url"])


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
        await pilot.press("enter", "down", "p")  # v1 to production: its gate fails, and says why
        await until(pilot, lambda: isinstance(app.screen, AliasPicker))
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, PromoteDialog))
        await shot("promote", 1.5)
        await pilot.press("escape")
        for key, name in (("6", "serving"), ("7", "drift"), ("8", "cost")):
            await pilot.press(key)
            if name == "drift":
                await until(pilot, lambda: app.screen.query_one(DistributionChart).dist, timeout=30)
            await shot(name, 6 if name == "serving" else 2)
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
            launched = rpc(agent.home, "runs.launch", {"script": str(REPO / "tests/tui/make_runs.py"),
                                                       "args": ["mlp-launched", "0.2"], "gpus": 1})
            wait_for(lambda: rpc(agent.home, "runs.get", {"run_id": launched["result"]["run_id"]})
                     ["result"]["status"] == "succeeded", timeout=60, what="the launched run")
            stop = threading.Event()
            threading.Thread(target=traffic, args=(serve(agent.home), stop), daemon=True).start()
            release = Path(tmp) / "release-gpus"
            for _ in range(2):  # two jobs hold the simulated GPUs, so the Fleet shows them busy
                rpc(agent.home, "runs.launch", {"script": str(REPO / "tests/tui/hold_gpu.py"), "gpus": 1,
                                                "env": {"STOP_FILE": str(release)}})
            time.sleep(15)
            try:
                shots = asyncio.run(session(agent.home))
            finally:
                stop.set()
                release.touch()
        finally:
            agent.stop()
    for name in shots:
        # rsvg draws a span's leading non-breaking spaces with no width (and stretches the rest to the
        # span's textLength): the PNG is made from plain spaces that xml:space="preserve" keeps.
        svg = (OUT / f"{name}.svg").read_text().replace("&#160;", " ").replace("<svg ", SVG_PRESERVE, 1)
        subprocess.run(["rsvg-convert", "-o", str(OUT / f"{name}.png")], input=svg.encode(), check=True)
        print(f"screenshots/{name}.svg  screenshots/{name}.png")


if __name__ == "__main__":
    main()
