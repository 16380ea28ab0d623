"""A metric over steps or time as a plotext chart: one or several series overlaid, with a legend."""

from __future__ import annotations

from typing import Any

from textual_plotext import PlotextPlot

Series = dict[str, tuple[list[float], list[float]]]
COLORS = ["cyan", "orange", "green", "magenta", "yellow", "red", "blue", "white"]


class MetricChart(PlotextPlot):
    """Call `show(series)` with {label: (xs, ys)}; keeps the last series so resizes redraw it."""

    def __init__(self, title: str, xlabel: str = "step", ylim: tuple[float, float] | None = None, **kw: Any):
        super().__init__(**kw)
        self.title = title
        self.xlabel = xlabel
        self.ylim = ylim
        self.series: Series = {}

    def show(self, series: Series) -> None:
        self.series = series
        plt = self.plt
        plt.clear_data()
        plt.clear_figure()
        plt.title(self.title)
        plt.xlabel(self.xlabel)
        if self.ylim:
            plt.ylim(*self.ylim)
        for i, (label, (xs, ys)) in enumerate(series.items()):
            points = [(x, y) for x, y in zip(xs, ys, strict=False) if y is not None and y == y]
            if points:
                px, py = zip(*points, strict=True)
                plt.plot(list(px), list(py), label=label if len(series) > 1 else None,
                         color=COLORS[i % len(COLORS)], marker="hd")
        self.refresh()

    def extend(self, label: str, xs: list[float], ys: list[float], keep: int = 2000) -> None:
        """Append live points to one series and redraw (the caller batches the calls)."""
        old_x, old_y = self.series.get(label, ([], []))
        self.series[label] = ((old_x + xs)[-keep:], (old_y + ys)[-keep:])
        self.show(self.series)
