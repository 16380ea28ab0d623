"""One GPU on one line: utilization history as a sparkline, memory as a bar, temperature, power."""

from __future__ import annotations

from collections import deque
from typing import Any

from rich.text import Text
from textual.widget import Widget

from tui.widgets.units import gib

BLOCKS = "▁▂▃▄▅▆▇█"
HISTORY = 40
BAR = 12


def level_style(pct: float) -> str:
    return "red" if pct >= 90 else "yellow" if pct >= 60 else "green"


def sparkline(values: list[float | None], width: int) -> Text:
    """Newest on the right; gaps (no reading) as a dot."""
    text = Text()
    for v in list(values)[-width:]:
        if v is None:
            text.append("·", "dim")
            continue
        v = max(0.0, min(100.0, v))
        text.append(BLOCKS[round(v / 100 * (len(BLOCKS) - 1))], level_style(v))
    return Text(" " * max(0, width - len(text))) + text


def bar(used: float | None, total: float | None, width: int = BAR) -> Text:
    if not used or not total:
        return Text("░" * width, "dim")
    share = max(0.0, min(1.0, used / total))
    full = round(share * width)
    return Text("█" * full, level_style(share * 100)) + Text("░" * (width - full), "dim")


class GpuSpark(Widget):
    """Fed one sample at a time (`push`); repaints only when told, by the batch that fed it."""

    DEFAULT_CSS = "GpuSpark { height: 1; }"

    def __init__(self, index: int, history: int = HISTORY, **kw: Any) -> None:
        super().__init__(**kw)
        self.index = index
        self.util: deque[float | None] = deque(maxlen=history)
        self.sample: dict[str, Any] = {}

    def push(self, gpu: dict[str, Any]) -> None:
        self.sample = gpu
        self.util.append(gpu.get("util_pct"))

    def render(self) -> Text:
        g = self.sample
        util = g.get("util_pct")
        line = Text(f" GPU{self.index} ", "bold")
        line += sparkline(list(self.util), self.util.maxlen or HISTORY)
        line += Text(f" {util:>3.0f}% " if util is not None else "   - ")
        line += Text("mem ") + bar(g.get("mem_used"), g.get("mem_total"))
        line += Text(f" {gib(g.get('mem_used'))}/{gib(g.get('mem_total'))}")
        temp, power = g.get("temp_c"), g.get("power_w")
        line += Text(f"  {temp:.0f}°C" if temp is not None else "  -°C")
        line += Text(f"  {power:.0f}W" if power is not None else "  -W")
        return line
