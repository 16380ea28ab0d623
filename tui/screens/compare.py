"""Compare: marked runs side by side: params (differences highlighted), overlaid curves, final and best."""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Grid, VerticalScroll
from textual.widgets import Static

from mldeck.core.errors import MldeckError
from mldeck.tui.screens.base import DeckScreen, screen_work, why
from mldeck.tui.units import lower_is_better, number
from mldeck.tui.widgets.metric_chart import MetricChart

MAX_CHARTS = 6
POINTS = 500
"""Points per curve: min/max buckets, enough for a chart's width."""
NOTHING = "nothing to compare: in Runs (2), mark runs with space and press c"


def label(run: dict[str, Any]) -> str:
    return f"{run.get('name') or run['run_id']} ({run['run_id'][-6:]})"


def params_side_by_side(runs: list[dict[str, Any]]) -> Table:
    """One row per param; rows whose values differ between runs are highlighted."""
    t = Table("param", *(label(r) for r in runs), box=None, padding=(0, 2), header_style="bold")
    keys = sorted({k for r in runs for k in (r.get("params") or {})})
    for k in keys:
        values = [(r.get("params") or {}).get(k) for r in runs]
        differ = len({repr(v) for v in values}) > 1
        style = "bold yellow" if differ else "dim"
        t.add_row(Text(k, style), *(Text(number(v), style) for v in values))
    return t


def summary(runs: list[dict[str, Any]], series: dict[str, dict[str, Any]]) -> Table:
    """Final and best of each metric per run; the best run of each metric in green."""
    t = Table("metric", "", *(label(r) for r in runs), box=None, padding=(0, 2), header_style="bold")
    keys = sorted({k for s in series.values() for k in s})
    for k in keys:
        low = lower_is_better(k)
        finals, bests = [], []
        for r in runs:
            vals = [v for v in (series.get(r["run_id"], {}).get(k, {}).get("value") or []) if v == v]
            finals.append(vals[-1] if vals else None)
            bests.append((min(vals) if low else max(vals)) if vals else None)
        for what, row in (("final", finals), ("best", bests)):
            present = [v for v in row if v is not None]
            winner = (min(present) if low else max(present)) if present else None
            wins = [v is not None and v == winner and len(present) > 1 for v in row]
            cells = [Text(number(v), "bold green" if w else "") for v, w in zip(row, wins, strict=True)]
            t.add_row(k if what == "final" else "", what, *cells)
    return t


class CompareScreen(DeckScreen):
    TITLE = "Compare"
    HELP = "Runs marked in Runs (space, then c): params, overlaid metric curves, final and best values."
    BINDINGS: ClassVar[list[BindingType]] = [Binding("ctrl+r", "reload", "reload")]

    def __init__(self) -> None:
        super().__init__()
        self.shown: list[tuple[str, str]] = []

    def compose(self) -> ComposeResult:
        yield self.header()
        with VerticalScroll():
            yield Static(id="compare-params")
            yield Grid(id="compare-charts")
            yield Static(id="compare-summary")
        yield self.status_line()
        yield self.footer()

    def on_mount(self) -> None:
        self.say(NOTHING)

    def on_screen_resume(self) -> None:
        if self.deck.compare_set != self.shown:
            self.load()

    def action_reload(self) -> None:
        self.load()

    @screen_work(exclusive=True, group="compare")
    async def load(self) -> None:
        chosen = list(self.deck.compare_set)
        self.shown = chosen
        if len(chosen) < 2:
            self.say(NOTHING)
            return
        self.say(f"loading {len(chosen)} runs…")
        by_host: dict[str, list[str]] = {}
        for host, run_id in chosen:
            by_host.setdefault(host, []).append(run_id)
        try:
            got = await asyncio.gather(*(self.call(h, "runs.compare", run_ids=ids, max_points=POINTS)
                                         for h, ids in by_host.items()))
        except MldeckError as exc:
            self.say(why(exc))
            return
        found = {(h, r["run_id"]): r for h, g in zip(by_host, got, strict=True) for r in g["runs"]}
        runs = [found[c] for c in chosen]
        series = {run_id: curves for g in got for run_id, curves in g["series"].items()}
        self.query_one("#compare-params", Static).update(params_side_by_side(runs))
        self.query_one("#compare-summary", Static).update(summary(runs, series))
        grid = self.query_one("#compare-charts", Grid)
        await grid.remove_children()
        keys = sorted({k for s in series.values() for k in s})[:MAX_CHARTS]
        charts = [MetricChart(k, classes="compare-chart") for k in keys]
        await grid.mount_all(charts)
        for chart, key in zip(charts, keys, strict=True):
            chart.show({label(r): (series[r["run_id"]].get(key, {}).get("step", []),
                                   series[r["run_id"]].get(key, {}).get("value", [])) for r in runs})
        self.updated(f"{len(runs)} runs · {len(keys)} metrics · differing params in yellow, best values in "
                     "green · ctrl+r reads them again")
