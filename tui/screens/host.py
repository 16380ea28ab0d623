"""One host: each GPU's utilization and memory over the last minutes, and the processes on it."""

from __future__ import annotations

import time
from typing import Any, ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Grid, Vertical
from textual.widgets import Static

from mldeck.core.errors import MldeckError
from mldeck.tui.screens.base import DeckScreen, screen_work, why
from mldeck.tui.units import gib
from mldeck.tui.widgets.deck_table import Col, DeckTable, TableBox
from mldeck.tui.widgets.metric_chart import MetricChart, Series

PROCESS_COLUMNS = [Col("gpu", "GPU", priority=0), Col("pid", "PID", priority=0),
                   Col("memory", priority=1, fmt=gib), Col("run_id", "run", priority=0),
                   Col("name", priority=1), Col("status", priority=1)]

WINDOWS_S = [300, 1800, 3 * 3600, 24 * 3600]


def per_gpu(history: list[dict[str, Any]], t0: float) -> dict[int, Series]:
    """system_metrics rows → per GPU: util and memory share series against minutes ago."""
    out: dict[int, Series] = {}
    for r in history:
        idx = r.get("gpu_index")
        if idx is None:
            continue
        series = out.setdefault(idx, {"util %": ([], []), "mem %": ([], [])})
        x = (r["ts"] - t0) / 60
        series["util %"][0].append(x)
        series["util %"][1].append(r.get("util_pct"))
        series["mem %"][0].append(x)
        total = r.get("mem_total") or 0
        series["mem %"][1].append(100 * (r.get("mem_used") or 0) / total if total else None)
    return out


class HostScreen(DeckScreen):
    TITLE = "Host"
    HELP = "Per-GPU history and the processes on each GPU, with the run each belongs to."
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("w", "window", "window"),
        Binding("r", "reload", "reload"),
        Binding("escape", "app.back", "back"),
    ]

    def __init__(self, host: str) -> None:
        super().__init__()
        self.host = host
        self.window = 0

    def compose(self) -> ComposeResult:
        yield self.header()
        with Vertical():
            yield Static(id="host-facts", markup=False)
            yield Grid(id="gpu-charts")
            yield TableBox(DeckTable(PROCESS_COLUMNS, id="procs", empty="no processes on this host's GPUs"),
                           id="procs-box")
        yield self.status_line()
        yield self.footer()

    def on_mount(self) -> None:
        self.sub_title = self.host
        self.load()

    def action_window(self) -> None:
        self.window = (self.window + 1) % len(WINDOWS_S)
        self.load()

    def action_reload(self) -> None:
        self.load()

    @screen_work(exclusive=True, group="host")
    async def load(self) -> None:
        window = WINDOWS_S[self.window]
        try:
            facts = await self.call(self.host, "host.info")
            metrics = await self.call(self.host, "host.metrics", window_s=window, max_points=300)
        except MldeckError as exc:
            self.say(why(exc))
            return
        running = await self.running_jobs()
        gpus = ", ".join(f"{g['index']}: {g['name']}" for g in facts.get("gpus", [])) or "no GPUs"
        self.query_one("#host-facts", Static).update(Text.assemble(
            (f"{self.host}", "bold"), f"  {facts.get('hostname')}  {facts.get('cpu_count')} CPUs  ",
            f"RAM {gib(facts.get('ram_total'))}  GPUs: {gpus}  NVML: {facts.get('nvml')}  ",
            (f"window {window // 60} min (w)", "dim"),
        ))
        grid = self.query_one("#gpu-charts", Grid)
        await grid.remove_children()
        t0 = time.time()
        charts = []
        for idx, series in sorted(per_gpu(metrics.get("history") or [], t0).items()):
            chart = MetricChart(f"GPU{idx}", xlabel="minutes ago (−)", ylim=(0, 100), classes="gpu-chart")
            charts.append((chart, series))
        await grid.mount_all([c for c, _ in charts])
        for chart, series in charts:
            chart.show(series)
        self.show_processes((metrics.get("latest") or {}).get("gpus") or [], running)

    async def running_jobs(self) -> list[dict[str, Any]]:
        """The agent's running jobs with their pids and GPUs (`jobs.queue`)."""
        try:
            queue = await self.call(self.host, "jobs.queue")
        except MldeckError as exc:
            self.say(f"processes without their runs: {why(exc)}")
            return []
        jobs = queue.get("running") or []
        return [{**j, "status": "stopping" if j.get("stopping") else "running"} for j in jobs]

    def show_processes(self, gpus: list[dict[str, Any]], running: list[dict[str, Any]]) -> None:
        """A process is its job's when the pids match, else the job's that holds its GPU (the agent gives a
        GPU to one run at a time; torchrun's workers are children of the job's pid)."""
        by_pid = {r.get("pid"): r for r in running if r.get("pid")}
        by_gpu = {i: r for r in running for i in r.get("gpus") or []}
        rows = []
        for g in gpus:
            for pid, mem in g.get("processes") or []:
                run = by_pid.get(pid) or by_gpu.get(g["index"]) or {}
                rows.append({"gpu": g["index"], "pid": pid, "memory": mem, "run_id": run.get("run_id"),
                             "name": run.get("name"), "status": run.get("status")})
        self.query_one("#procs", DeckTable).records(rows)
        self.updated(f"{len(rows)} processes on this host's GPUs")
