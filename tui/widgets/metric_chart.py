"""A metric over steps or time as a plotext chart: one or several series overlaid, with a legend."""

from __future__ import annotations

import math
from typing import Any

from textual_plotext import PlotextPlot

Series = dict[str, tuple[list[float], list[float]]]
COLORS = ["cyan", "orange", "green", "magenta", "yellow", "red", "blue", "white"]


class MetricChart(PlotextPlot):
    """Call `show(series)` with {label: (xs, ys)}; keeps the last series so resizes redraw it."""

    def __init__(self, title: str, xlabel: str = "step", ylim: tuple[float, float] | None = None,
                 floor: float | None = None, **kw: Any):
        """ylim fixes the y axis; floor only its bottom (a rate or a share never goes below 0)."""
        super().__init__(**kw)
        self.title = title
        self.xlabel = xlabel
        self.ylim = ylim
        self.floor = floor
        self.xlim: tuple[float, float] | None = None
        self.series: Series = {}

    def show(self, series: Series, xlim: tuple[float, float] | None = None) -> None:
        """Draw {label: (xs, ys)}; a series without a single point is left out (and out of the legend)."""
        self.series, self.xlim = series, xlim
        plt = self.plt
        plt.clear_data()
        plt.clear_figure()
        plt.title(self.title)
        plt.xlabel(self.xlabel)
        drawn = {label: [(x, y) for x, y in zip(xs, ys, strict=False) if y is not None and math.isfinite(y)]
                 for label, (xs, ys) in series.items()}  # NaN and infinities cannot be drawn
        drawn = {label: points for label, points in drawn.items() if points}
        if self.ylim:
            plt.ylim(*self.ylim)
        elif self.floor is not None:
            top = max((y for points in drawn.values() for _, y in points), default=self.floor)
            plt.ylim(self.floor, top * 1.1 if top > self.floor else self.floor + 1)
        if xlim:
            plt.xlim(*xlim)
        for i, (label, points) in enumerate(drawn.items()):
            px, py = zip(*points, strict=True)
            plt.plot(list(px), list(py), label=label if len(drawn) > 1 else None,
                     color=COLORS[i % len(COLORS)], marker="hd")
        self.refresh()

    def extend(self, label: str, xs: list[float], ys: list[float], keep: int = 2000) -> None:
        """Append live points to one series and redraw (the caller batches the calls)."""
        old_x, old_y = self.series.get(label, ([], []))
        self.series[label] = ((old_x + xs)[-keep:], (old_y + ys)[-keep:])
        self.show(self.series, self.xlim)
