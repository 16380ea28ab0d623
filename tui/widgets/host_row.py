"""A host in the fleet: state, CPU and RAM, jobs, cost and serving, then one GpuSpark per GPU."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Static

from tui.widgets.gpu_spark import GpuSpark
from tui.widgets.units import gib, money, pct


def state_text(state: str) -> Text:
    style = "green" if state == "up" else "yellow" if state in ("reconnecting", "connecting") else "red"
    return Text("● ", style) + Text(state, style)


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

    def compose(self) -> ComposeResult:
        yield Static(id="host-line", markup=False)
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

    def paint(self) -> None:
        if not self.dirty:
            return
        self.dirty = False
        s, x = self.snapshot, self.extras
        state = state_text(self.state)
        line = Text(f"{self.host:<14}", "bold") + state + Text("\u00a0" * max(2, 16 - len(state)))
        if s:
            ram = f"{gib(s.get('ram_used'))}/{gib(s.get('ram_total'))}"
            line += Text(f" CPU {pct(s.get('cpu_pct')):>4}  RAM {ram}")
            if not s.get("gpus"):
                line += Text("  no GPUs", "dim")
        line += Text(f"  jobs {x.get('jobs', '-')}")
        line += Text(f"  {money(x['cost_h'])}/h" if x.get("cost_h") is not None else "  $-/h")
        line += Text(f"  serving {x['rps']:.0f} rps" if x.get("rps") is not None else "  serving -")
        self.query_one("#host-line", Static).update(line)
        for spark in self.sparks.values():
            spark.refresh()
