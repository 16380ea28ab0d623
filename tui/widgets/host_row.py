"""A host in the fleet: state, CPU and RAM, jobs, cost and serving, one GpuSpark per GPU, then its running
jobs and open alerts."""

from __future__ import annotations

import json
import time
from typing import Any

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.content import Content
from textual.widget import Widget

from mldeck.tui.units import age, gib, money, pct, progress, span
from mldeck.tui.widgets.gpu_spark import GpuSpark


def state_style(state: str) -> str:
    if state == "up":
        return "$success"
    return "$warning" if state in ("reconnecting", "connecting") else "$error"


class HostLine(Widget):
    """One line of facts; a fixed height, so a repaint never reflows the screen. The short form is drawn
    when the long one does not fit (80 columns): every fact stays, in fewer characters."""

    DEFAULT_CSS = "HostLine { height: 1; }"

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.long = Content("")
        self.short = Content("")

    def show(self, long: Content, short: Content) -> None:
        if long.plain != self.long.plain or long.spans != self.long.spans or short.plain != self.short.plain:
            self.long, self.short = long, short
            self.refresh()

    def render(self) -> Content:
        return self.long if len(self.long.plain) <= self.size.width else self.short


def job_line(job: dict[str, Any], now: float) -> Content:
    """`▸ mlp-long  GPU 0  step 12/400 3% · ETA 25m  running 5m02s`: a running job at a glance."""
    gpus = json.loads(job["gpus"]) if isinstance(job.get("gpus"), str) else job.get("gpus")
    where = f"GPU {','.join(map(str, gpus))}" if gpus else "CPU"
    done = progress(job.get("last_step"), job.get("total_steps"), job.get("started_at"), True, now)
    name = str(job.get("name") or job.get("run_id"))[:28]
    return Content.assemble(("  ▸ ", "$accent"), (f"{name:<28}", "bold"), f"  {where:<9}  ",
                            f"{done if done != '-' else '':<34}",
                            (f"  running {span(job.get('started_at'), None, now)}", "dim"))


def alert_line(alert: dict[str, Any], now: float) -> Content:
    return Content.assemble(("  ⚠ ", "$error"), (str(alert.get("message") or alert.get("kind")), "$error"),
                            (f"  {age(alert.get('ts'), now)}", "dim"))


class HostNotes(Widget):
    """Under a host's GPUs: the agent's problems, its running jobs (the first few, then how many more) and
    its open alerts."""

    DEFAULT_CSS = "HostNotes { height: auto; }"

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.lines: list[Content] = []

    def show(self, lines: list[Content]) -> None:
        if [line.plain for line in lines] != [line.plain for line in self.lines]:
            self.lines = lines
            self.styles.height = len(lines)
            self.refresh(layout=True)

    def render(self) -> Content:
        return Content("\n").join(self.lines)


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
        yield HostNotes()

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

    def line(self, short: bool = False) -> Content:
        """The host's facts; short: the same facts in fewer characters."""
        s, x = self.snapshot, self.extras
        style = state_style(self.state)
        state = f"● {self.state}"
        gap = " " if short else "  "
        name = f"{self.host} " if short else f"{self.host:<14}"
        parts: list[str | tuple[str, str]] = [(name, "bold"),
                                              (state + " " if short else state.ljust(max(len(state) + 2, 16)),
                                               style)]
        if s:
            ram = f"{gib(s.get('ram_used'))}/{gib(s.get('ram_total'))}"
            parts.append(f"CPU {pct(s.get('cpu_pct'))}{gap}RAM {ram}" if short
                         else f" CPU {pct(s.get('cpu_pct')):>4}  RAM {ram}")
            if not s.get("gpus"):
                parts.append((f"{gap}no GPUs", "dim"))
            elif self.simulated:
                parts.append((f"{gap}{'sim' if short else 'simulated GPUs'}", "$warning"))
        parts.append(f"{gap}jobs {x.get('jobs', '-')}")
        parts.append(f"{gap}{money(x.get('cost_h'))}/h")
        rps = x.get("rps")
        rate = "-" if rps is None else f"{rps:.1f}" if rps < 100 else f"{rps:,.0f}"
        parts.append(f"{gap}{'' if short else 'serving '}{rate} rps")
        return Content.assemble(*parts)

    def notes(self) -> list[Content]:
        now = time.time()
        jobs = self.extras.get("running") or []
        lines = [job_line(job, now) for job in jobs]
        if (more := (self.extras.get("jobs") or 0) - len(jobs)) > 0:
            lines.append(Content.styled(f"    … and {more} more running (2 lists every run)", "dim"))
        problems = [Content.assemble(("  ! ", "$warning"), (str(text), "$warning"))
                    for text in self.extras.get("problems") or []]
        return problems + lines + [alert_line(a, now) for a in self.extras.get("alerts") or []]

    def paint(self) -> None:
        if not self.dirty:
            return
        self.dirty = False
        self.query_one(HostLine).show(self.line(), self.line(short=True))
        self.query_one(HostNotes).show(self.notes())
        for spark in self.sparks.values():
            spark.paint()
