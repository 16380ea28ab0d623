"""One GPU on one line: utilization history as a sparkline, memory as a bar, temperature, power."""

from __future__ import annotations

from collections import deque
from itertools import groupby
from typing import Any

from textual.content import Content
from textual.widget import Widget

from mldeck.tui.units import gib

BLOCKS = "▁▂▃▄▅▆▇█"
HISTORY = 60
BAR = 12
FIXED = 54  # the characters of a GPU's line besides its sparkline: name, %, memory bar and size, °C, W
MIN_SPARK = 10
Part = tuple[str, str]


def level_style(pct: float) -> str:
    """Theme colours, so the sparkline reads the same in every theme."""
    return "$error" if pct >= 90 else "$warning" if pct >= 60 else "$success"


def runs_of(cells: list[Part]) -> list[Part]:
    """Neighbouring cells of one style as one span: a line costs per span when it is drawn."""
    return [("".join(t for t, _ in group), style) for style, group in groupby(cells, key=lambda c: c[1])]


def sparkline(values: list[float | None], width: int) -> list[Part]:
    """Newest on the right; gaps (no reading) as a dot."""
    cells: list[Part] = [(" ", "")] * max(0, width - len(values[-width:]))
    for v in values[-width:]:
        if v is None:
            cells.append(("·", "dim"))
            continue
        v = max(0.0, min(100.0, v))
        cells.append((BLOCKS[round(v / 100 * (len(BLOCKS) - 1))], level_style(v)))
    return runs_of(cells)


def bar(used: float | None, total: float | None, width: int = BAR) -> list[Part]:
    if not used or not total:
        return [("░" * width, "dim")]
    share = max(0.0, min(1.0, used / total))
    full = round(share * width)
    return [("█" * full, level_style(share * 100)), ("░" * (width - full), "dim")]


class GpuSpark(Widget):
    """Fed one sample at a time (`push`); repaints only when told, by the batch that fed it."""

    DEFAULT_CSS = "GpuSpark { height: 1; }"

    def __init__(self, index: int, history: int = HISTORY, **kw: Any) -> None:
        super().__init__(**kw)
        self.index = index
        self.util: deque[float | None] = deque(maxlen=history)
        self.sample: dict[str, Any] = {}
        self.fresh = False

    def push(self, gpu: dict[str, Any]) -> None:
        self.sample = gpu
        self.util.append(gpu.get("util_pct"))
        self.fresh = True

    def paint(self) -> None:
        """Repaint if a sample came since the last paint."""
        if self.fresh:
            self.fresh = False
            self.refresh()

    def render(self) -> Content:
        """As much history as the width allows: every figure stays on the line at 80 columns."""
        g = self.sample
        util, temp, power = g.get("util_pct"), g.get("temp_c"), g.get("power_w")
        spark = max(MIN_SPARK, min(self.util.maxlen or HISTORY, self.size.width - FIXED))
        return Content.assemble(
            (f" GPU{self.index} ", "bold"),
            *sparkline(list(self.util), spark),
            f" {util:>3.0f}% " if util is not None else "   - ",
            "mem ", *bar(g.get("mem_used"), g.get("mem_total")),
            f" {gib(g.get('mem_used'))}/{gib(g.get('mem_total'))}",
            f"  {temp:.0f}°C" if temp is not None else "  -°C",
            f"  {power:.0f}W" if power is not None else "  -W",
        )
