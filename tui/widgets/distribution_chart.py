"""Reference and current distributions overlaid: step lines over shared bins, or bars per category."""

from __future__ import annotations

from typing import Any

from textual_plotext import PlotextPlot

from mldeck.tui.units import number
from mldeck.tui.widgets.metric_chart import COLORS

SIDES = ("reference", "current")
LABEL_CHARS = 10


def steps(edges: list[float], shares: list[float]) -> tuple[list[float], list[float]]:
    """A histogram as a line: each bin's share held flat from its left edge to its right one."""
    xs: list[float] = []
    ys: list[float] = []
    for i, share in enumerate(shares):
        xs += [edges[i], edges[i + 1]]
        ys += [share, share]
    return xs, ys


class DistributionChart(PlotextPlot):
    """Call `show(dist)` with a drift.distribution result, or None to clear; `dist` keeps what is drawn."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.dist: dict[str, Any] | None = None

    def show(self, dist: dict[str, Any] | None) -> None:
        self.dist = dist
        plt = self.plt
        plt.clear_data()
        plt.clear_figure()
        if dist:
            per = "bin" if dist["kind"] == "numeric" else "category"
            plt.xlabel(f"{dist.get('column', 'value')}: share of rows per {per}")
        if dist and dist["kind"] == "numeric":
            for i, side in enumerate(SIDES):
                plt.plot(*steps(dist["edges"], dist[side]), label=side, color=COLORS[i], marker="hd")
        elif dist and dist["categories"]:
            labels = [number(c)[:LABEL_CHARS] for c in dist["categories"]]
            plt.multiple_bar(labels, [dist[s] for s in SIDES], labels=list(SIDES), color=COLORS[:2])
        self.refresh()
