"""A host in the fleet: state, CPU and RAM, jobs, cost and serving, then one GpuSpark per GPU."""

from __future__ import annotations

from typing import Any

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.content import Content
from textual.widget import Widget

from mldeck.tui.units import gib, money, pct
from mldeck.tui.widgets.gpu_spark import GpuSpark


def state_style(state: str) -> str:
    if state == "up":
        return "$success"
    return "$warning" if state in ("reconnecting", "connecting") else "$error"


class HostLine(Widget):
    """One line of facts; a fixed height, so a repaint never reflows the screen."""

    DEFAULT_CSS = "HostLine { height: 1; }"

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.content = Content("")

    def show(self, content: Content) -> None:
        if content.plain != self.content.plain or content.spans != self.content.spans:
            self.content = content
            self.refresh()

    def render(self) -> Content:
        return self.content


class HostRow(Vertical, can_focus=True):
    """Focusable; Enter on it opens the host (the Fleet screen handles the key)."""

    def __init__(self, host: str) -> None:
        super().__init__(classes="host-row")
        self.host = host
        self.state = "connecting"
        self.snapshot: dict[str, Any] = {}
        self.extras: dict[str, Any] = {}
        self.sparks: dict[int, GpuSpark] = {}
        self.dirty = True
        self.simulated = False

    def compose(self) -> ComposeResult:
        yield HostLine(id="host-line")
        yield Vertical(id="gpus")

    def feed(self, snapshot: dict[str, Any]) -> None:
        """Take a host.metrics sample; painting waits for the next batch."""
        self.snapshot = snapshot
        for gpu in snapshot.get("gpus") or []:
            spark = self.sparks.get(gpu["index"])
            if spark is None:
                spark = self.sparks[gpu["index"]] = GpuSpark(gpu["index"])
                self.query_one("#gpus").mount(spark)
            spark.push(gpu)
        self.dirty = True

    def line(self) -> Content:
        s, x = self.snapshot, self.extras
        style = state_style(self.state)
        state = f"● {self.state}"
        parts: list[str | tuple[str, str]] = [(f"{self.host:<14}", "bold"),
                                              (state.ljust(max(len(state) + 2, 16)), style)]
        if s:
            ram = f"{gib(s.get('ram_used'))}/{gib(s.get('ram_total'))}"
            parts.append(f" CPU {pct(s.get('cpu_pct')):>4}  RAM {ram}")
            if not s.get("gpus"):
                parts.append(("  no GPUs", "dim"))
            elif self.simulated:
                parts.append(("  simulated GPUs", "$warning"))
        parts.append(f"  jobs {x.get('jobs', '-')}")
        parts.append(f"  {money(x['cost_h'])}/h" if x.get("cost_h") is not None else "  $-/h")
        parts.append(f"  serving {x['rps']:.0f} rps" if x.get("rps") is not None else "  serving -")
        return Content.assemble(*parts)

    def paint(self) -> None:
        if not self.dirty:
            return
        self.dirty = False
        self.query_one(HostLine).show(self.line())
        for spark in self.sparks.values():
            spark.paint()
