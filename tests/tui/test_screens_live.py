"""Host processes, Serving, Drift and Cost against a real agent: a job holding a GPU, a served model
answering real HTTP requests, its drift status and the cost of what ran."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from mldeck.tui.screens.cost import CostScreen
from mldeck.tui.screens.dialogs import Prompt
from mldeck.tui.screens.drift import DriftScreen
from mldeck.tui.screens.host import HostScreen
from mldeck.tui.screens.serving import ServingScreen
from mldeck.tui.widgets.deck_table import DeckTable
from mldeck.tui.widgets.distribution_chart import DistributionChart
from mldeck.tui.widgets.metric_chart import MetricChart
from tests.conftest import REPO, wait_for
from tests.tui.conftest import Deck, text_of, until
from tests.tui.test_app import SIZE, app_for, run

pytestmark = pytest.mark.timeout(180)


def cells(table: DeckTable) -> list[list[str]]:
    return table.rows_text()


def infer(url: str, n: int) -> None:
    body = {"inputs": [{"name": "input__0", "datatype": "FP32", "shape": [1, 8], "data": [0.1] * 8}]}
    for _ in range(n):
        req = urllib.request.Request(url + "/v2/models/tiny/infer", data=json.dumps(body).encode(),
                                     method="POST")
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert resp.status == 200


def answers(url: str) -> bool:
    try:
        infer(url, 1)
    except OSError:  # the server is still loading
        return False
    return True


@pytest.fixture(scope="module")
def holder(deck: Deck, tmp_path_factory: pytest.TempPathFactory) -> Any:
    stop = tmp_path_factory.mktemp("hold") / "stop"
    run_id = deck.rpc("runs.launch", script=str(REPO / "tests/tui/hold_gpu.py"), gpus=1, name="gpu-holder",
                      env={"STOP_FILE": str(stop)})["run_id"]
    wait_for(lambda: deck.rpc("jobs.queue")["running"], what="the job to hold its GPU")
    yield run_id
    Path(stop).touch()
    wait_for(lambda: deck.rpc("runs.get", run_id=run_id)["status"] == "succeeded", timeout=60,
             what="the holder to finish")


def test_host_maps_gpu_processes_to_their_run(deck: Deck, holder: str) -> None:
    async def go() -> None:
        app = app_for(deck)
        async with app.run_test(size=SIZE) as pilot:
            await pilot.press("colon", *"host local", "enter")
            host = await until(pilot, lambda: isinstance(app.screen, HostScreen) and app.screen, what="host")
            procs = host.query_one("#procs", DeckTable)

            async def mapped() -> bool:
                if not any(holder in row for row in cells(procs)):
                    await pilot.press("r")
                    await pilot.pause(0.5)
                return any(holder in row and "gpu-holder" in row for row in cells(procs))

            deadline = time.monotonic() + 20
            while not await mapped():
                assert time.monotonic() < deadline, cells(procs)

    run(go())


def test_serving_drift_and_cost_screens(deck: Deck, holder: str) -> None:
    deck.rpc("models.promote", name="tiny", version=2, alias="production", reason="serve it in the TUI test")
    status = wait_for(lambda: (s := deck.rpc("serving.status"))["running"]
                      and "tiny" in s["manifest"]["models"] and s, timeout=90, what="tiny served")
    wait_for(lambda: answers(status["url"]), timeout=60, what="tiny answering")
    infer(status["url"], 30)

    wait_for(lambda: any(w["version"] == 2 and w.get("n_columns")
                         for w in deck.rpc("drift.history", name="tiny")["windows"]),
             timeout=90, what="a judged window of tiny v2 (30 rows)")

    async def go() -> None:
        app = app_for(deck)
        async with app.run_test(size=SIZE) as pilot:
            await pilot.press("6")
            serving: ServingScreen = app.screen  # type: ignore[assignment]
            table = serving.query_one("#serving", DeckTable)
            row = await until(pilot, lambda: next((r for r in serving.rows if r["model"] == "tiny"
                                                   and (r.get("rps") or 0) > 0), None), what="tiny's traffic")
            assert row["variant"] == "production" and row["p95_ms"] is not None and row["error_pct"] == 0
            assert "production=v2" in row["aliases"]
            table.move_cursor(serving.rows.index(row))
            await until(pilot, lambda: len(serving.query_one("#chart-rps", MetricChart).series.get(
                "production", ([], []))[0]) >= 2, what="the rps chart with two polls")
            charts = [serving.query_one(f"#chart-{k}", MetricChart) for k in ("rps", "p95-ms", "p99-ms",
                                                                              "error-pct")]
            assert len({c.xlim for c in charts}) == 1 and charts[0].xlim[1] == 0  # one span, 0 = now
            assert all("-" not in c.series and c.floor == 0 for c in charts)  # no stale series, none below 0
            await pilot.press("t")
            await until(pilot, lambda: deck.rpc("serving.status")["manifest"]["models"]["tiny"]["shadow"],
                        what="shadow on")
            await pilot.press("C")
            await until(pilot, lambda: isinstance(app.screen, Prompt), what="canary prompt")
            await pilot.press(*"25", "enter")
            served = lambda: deck.rpc("serving.status")["manifest"]["models"]["tiny"]  # noqa: E731
            await until(pilot, lambda: served()["canary"] == 25, what="canary 25%")

            await pilot.press("7")
            drift: DriftScreen = app.screen  # type: ignore[assignment]
            await until(pilot, lambda: any(m["name"] == "tiny" for m in drift.models), what="tiny monitored")
            tiny = next(m for m in drift.models if m["name"] == "tiny")
            assert tiny["version"] == 2 and tiny["host"] == "local"
            assert "tiny" in " ".join(" ".join(r) for r in cells(drift.query_one("#drift-models", DeckTable)))
            # other tests on this agent may have promoted models too (promo sorts first): select tiny
            drift.query_one("#drift-models", DeckTable).move_cursor(drift.models.index(tiny))
            # the first 30 requests are one judged window (30rows): the selected column's distributions
            chart = drift.query_one("#drift-distribution", DistributionChart)
            deadline = time.monotonic() + 60  # the window is judged (checked above); the screen must show it
            while not drift.column():
                said = text_of(drift.query_one("#status"))
                assert time.monotonic() < deadline, f"no judged window's columns on screen; status: {said}"
                await pilot.pause(0.2)
            col = drift.column()
            shown = lambda: chart.dist if chart.dist and chart.dist["column"] == col["column"] else None  # noqa: E731
            dist = await until(pilot, shown, what="the selected column's distributions")
            assert dist["name"] == "tiny" and dist["version"] == 2 and dist["n_current"] >= 30
            assert sum(dist["reference"]) == pytest.approx(1) and sum(dist["current"]) == pytest.approx(1)
            assert dist["kind"] == "numeric" and max(dist["current"]) == 1.0  # every request sent 0.1
            assert "values in the latest window" in text_of(drift.query_one("#drift-statistic"))
            await pilot.press("tab", "down")
            other = drift.column()
            assert other is not None and other["column"] != col["column"]
            await until(pilot, lambda: chart.dist and chart.dist["column"] == other["column"],
                        what="the next column's distributions")

            await pilot.press("8")
            cost: CostScreen = app.screen  # type: ignore[assignment]
            runs = cost.query_one("#cost-runs", DeckTable)
            await until(pilot, lambda: any(holder in r for r in cells(runs)), what="the holder's cost")
            hosts = cells(cost.query_one("#cost-hosts", DeckTable))
            assert hosts[0][0] == "local" and hosts[0][1] == "2"
            assert "last 24 h" in text_of(cost.query_one("#cost-summary"))
            models = cost.query_one("#cost-models", DeckTable)
            tiny = await until(pilot, lambda: next((r for r in cells(models) if r[1] == "tiny"), None),
                               what="tiny's cost row")
            assert int(tiny[5]) >= 30  # requests it was sent: its share of the model server's cost
            await pilot.press("p")
            await until(pilot, lambda: "last 7 days" in text_of(cost.query_one("#cost-summary")),
                        what="the period changed")

    try:
        run(go())
    finally:
        deck.rpc("serving.traffic", name="tiny", shadow=False, canary=0)
