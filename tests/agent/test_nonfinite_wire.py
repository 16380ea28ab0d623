"""NaN and infinite metric values cross the socket as what they are (issue 13): JSON has no NaN, so they
travel by name ("NaN", "Infinity", "-Infinity", as in metrics.jsonl), and the client reads them back as
floats; a missing value stays null."""

from __future__ import annotations

import asyncio
import math
from typing import Any

from mldeck.core.client import connect_unix
from tests.conftest import InProcessAgent, rpc, wait_for

LOSS = [1.0, math.nan, math.inf, -math.inf, 2.0]
SCRIPT = (
    "import math\nfrom mldeck.core import track\n"
    "run = track.init(name='diverging')\n"
    "for i, v in enumerate([1.0, math.nan, math.inf, -math.inf, 2.0]):\n"
    "    run.log({'loss': v, 'gn': math.nan, 'top': -math.inf} if i % 2 == 0 else {'loss': v}, step=i)\n"
    "run.finish()\n"
)


def same(got: list[Any], want: list[float]) -> bool:
    """Equal, NaN for NaN (which == never says)."""
    return len(got) == len(want) and all(isinstance(g, float) and (math.isnan(g) if math.isnan(w) else g == w)
                                         for g, w in zip(got, want, strict=True))


def test_nan_and_infinities_reach_clients_as_themselves(live_agent: InProcessAgent) -> None:
    home = live_agent.home

    async def scenario() -> tuple[dict[str, Any], ...]:
        client = await connect_unix(live_agent.layout.socket)
        try:
            sub = await client.subscribe("run.metrics")
            done = await asyncio.to_thread(live_agent.python, "-c", SCRIPT)
            assert done.returncode == 0, done.stderr
            live: dict[str, list[Any]] = {}
            async with asyncio.timeout(30):
                async for event in sub:
                    for key, value in zip(event["key"], event["value"], strict=True):
                        live.setdefault(key, []).append(value)
                    if len(live.get("loss", [])) == 5:
                        break
            run_id = event["run_id"]
            await asyncio.to_thread(wait_for, lambda: rpc(home, "runs.get", {"run_id": run_id})["result"]
                                    ["status"] == "succeeded", what="the run finished")
            series = (await client.call("runs.metrics", run_id=run_id))["series"]
            run = await client.call("runs.get", run_id=run_id)
            (listed,) = await client.call("runs.list")
            table = (await client.call("runs.table", metrics=["loss", "gn"]))["columns"]
            return live, series, run, listed, table
        finally:
            await client.close()

    live, series, run, listed, table = asyncio.run(scenario())
    assert same(live["loss"], LOSS) and same(live["gn"], [math.nan] * 3), live
    assert series["loss"]["step"] == [0, 1, 2, 3, 4] and same(series["loss"]["value"], LOSS)
    assert series["gn"]["step"] == [0, 2, 4] and same(series["gn"]["value"], [math.nan] * 3)
    for metrics in (run["metrics"], listed["metrics"]):
        assert metrics["loss"] == 2.0 and math.isnan(metrics["gn"]) and metrics["top"] == -math.inf
    assert table["m:loss"] == [2.0] and math.isnan(table["m:gn"][0])

    raw = rpc(home, "runs.metrics", {"run_id": run["run_id"]})["result"]["series"]
    assert raw["loss"]["value"] == [1.0, "NaN", "Infinity", "-Infinity", 2.0], "on the wire, by name"
    (raw_listed,) = rpc(home, "runs.list")["result"]
    assert raw_listed["metrics"] == {"loss": 2.0, "gn": "NaN", "top": "-Infinity"}

    shown = live_agent.cli("runs", "show", run["run_id"], "--json", check=True).json()
    assert shown["metrics"] == {"loss": 2.0, "gn": "NaN", "top": "-Infinity"}, "--json names them as the wire"
    text = live_agent.cli("runs", "show", run["run_id"], check=True).out
    assert "gn = nan" in text and "loss = 2" in text
    assert live_agent.cli("runs", "ls", "--json", check=True).json()[0]["metrics"]["gn"] == "NaN"


def test_a_chart_of_a_diverging_loss_draws_its_finite_points() -> None:
    """The client now hands charts NaN and infinities (null before): they are left out, not drawn."""
    from mldeck.tui.widgets.metric_chart import MetricChart

    chart = MetricChart("loss")
    chart.show({"loss": ([0, 1, 2, 3, 4], LOSS)})
    assert "loss" in chart.plt.build()
