"""One run: params, live metric charts, the host's usage while it ran, checkpoints and cost.

The header is the store's word on the run: read again on every status event of the run (and every few
seconds while it runs, for its cost), its duration ticking meanwhile; it stops once the run has ended.
"""

from __future__ import annotations

import time
from typing import Any, ClassVar

from rich.table import Table
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Grid, Horizontal, VerticalScroll
from textual.widgets import Static

from mldeck.core.errors import MethodNotAvailable, MldeckError
from mldeck.core.runlog import TERMINAL
from mldeck.tui.screens.base import DeckScreen, Poller, screen_work, why
from mldeck.tui.screens.host import per_gpu
from mldeck.tui.units import age, gib, money, number, progress, span
from mldeck.tui.widgets.metric_chart import MetricChart

APPLY_S = 0.3
FACTS_S = 5.0
TICK_S = 1.0
SETTLE_S = 0.3  # a stop's events (the script's own finish line, then the agent's verdict) make one read
MAX_CHARTS = 6


def facts_table(run: dict[str, Any], cost: dict[str, Any] | None) -> Table:
    t = Table.grid(padding=(0, 2))
    t.add_column(style="bold")
    t.add_column()
    rows = [
        ("run", run.get("run_id")), ("name", run.get("name")), ("experiment", run.get("experiment")),
        ("status", run.get("status")), ("reason", run.get("status_reason")),
        ("duration", span(run.get("started_at"), run.get("ended_at"))),
        ("progress", progress(run.get("last_step"), run.get("total_steps"), run.get("started_at"),
                              run.get("status") == "running")),
        ("git", f"{(run.get('git_sha') or '-')[:10]}{' dirty' if run.get('git_dirty') else ''}"),
        ("data", run.get("data_hash") or "-"), ("gpus", run.get("gpus")), ("sweep", run.get("sweep_id")),
        ("resumed", run.get("resumed_count")),
    ]
    if cost:
        rows += [("cost", money(cost.get("cost_usd"))),
                 ("GPU hours", number((cost.get("gpu_seconds") or 0) / 3600)),
                 ("peak / held", f"{gib(cost.get('peak_gpu_mem'))} / {gib(cost.get('held_gpu_mem'))}")]
    for k, v in rows:
        t.add_row(k, number(v) if v is not None else "-")
    return t


def params_table(params: dict[str, Any], metrics: dict[str, Any]) -> Table:
    t = Table("param", "value", "metric", "last", box=None, padding=(0, 1), header_style="bold")
    p_items, m_items = sorted(params.items()), sorted(metrics.items())
    for i in range(max(len(p_items), len(m_items))):
        p = p_items[i] if i < len(p_items) else ("", "")
        m = m_items[i] if i < len(m_items) else ("", "")
        t.add_row(str(p[0]), number(p[1]), str(m[0]), number(m[1]) if m[0] else "")
    return t


def checkpoints_table(checkpoints: list[dict[str, Any]]) -> Table | str:
    """Newest first; the one a resume would load is marked."""
    if not checkpoints:
        return "no checkpoints (the SDK's run.checkpoint() writes them)"
    t = Table("checkpoint", "step", "size", "written", "", box=None, padding=(0, 1), header_style="bold")
    for c in checkpoints:
        t.add_row(c["file"], str(c["step"]), f"{c['bytes'] / 2**20:.1f} MiB", age(c["ts"]),
                  "← resume" if c["latest"] else "")
    return t


class RunDetailScreen(DeckScreen):
    TITLE = "Run"
    HELP = "Params and last metrics, live charts per metric, GPU usage while it ran, checkpoints, cost."
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("l", "logs", "logs"),
        Binding("escape", "app.back", "back"),
    ]

    def __init__(self, host: str, run_id: str) -> None:
        super().__init__()
        self.host = host
        self.run_id = run_id
        self.charts: dict[str, MetricChart] = {}
        self.pending: dict[str, tuple[list[float], list[float]]] = {}
        self.run: dict[str, Any] | None = None
        self.cost: dict[str, Any] | None = None
        self.facts: Poller | None = None

    def compose(self) -> ComposeResult:
        yield self.header()
        with VerticalScroll():
            with Horizontal(id="run-top"):
                yield Static(id="run-facts")
                yield Static(id="run-params")
            yield Grid(id="run-charts")
            yield Static("[b]GPU usage while it ran[/b]", classes="section")
            yield Grid(id="run-usage")
            yield Static(id="run-checkpoints")
        yield self.status_line()
        yield self.footer()

    def on_mount(self) -> None:
        self.sub_title = f"{self.run_id} on {self.host}"
        self.load()
        self.poll(APPLY_S, self.apply_pending)
        self.set_interval(TICK_S, self.show_facts)

    def action_logs(self) -> None:
        from mldeck.tui.screens.logs import LogsScreen

        self.app.push_screen(LogsScreen(self.host, self.run_id))

    @screen_work(exclusive=True, group="run")
    async def load(self) -> None:
        try:
            run = await self.call(self.host, "runs.get", run_id=self.run_id)
            got = await self.call(self.host, "runs.metrics", run_id=self.run_id, max_points=500)
            series = got["series"]
        except MldeckError as exc:
            self.say(why(exc))
            return
        self.run = run
        await self.read_cost()
        self.show_facts()
        grid = self.query_one("#run-charts", Grid)
        for key in list(series)[:MAX_CHARTS]:
            chart = self.charts[key] = MetricChart(key, classes="run-chart")
            await grid.mount(chart)
            chart.show({key: (series[key]["step"], series[key]["value"])})
        if not series:
            await grid.mount(Static("no metrics logged yet", id="no-metrics", classes="unavailable"))
        await self.show_usage(run)
        await self.show_checkpoints()
        if run.get("status") not in TERMINAL:
            self.follow_metrics()
            self.follow_events()
            self.follow_checkpoints()
            self.facts = self.poll(FACTS_S, self.refresh_facts, SETTLE_S)
        else:
            self.updated(f"run {run.get('status')}")

    async def read_cost(self) -> None:
        try:
            self.cost = await self.call(self.host, "cost.run", run_id=self.run_id)
        except MethodNotAvailable:
            pass
        except MldeckError as exc:
            self.say(why(exc))

    def show_facts(self) -> None:
        """The header and params from what was read last; a running run's duration counts up to now."""
        if self.run is None:
            return
        self.query_one("#run-facts", Static).update(facts_table(self.run, self.cost))
        params = params_table(self.run.get("params") or {}, self.run.get("metrics") or {})
        self.query_one("#run-params", Static).update(params)

    async def refresh_facts(self) -> bool:
        """Read the run again (status, end, last metrics) and its cost; True once it has ended."""
        was = (self.run or {}).get("status")
        self.run = await self.call(self.host, "runs.get", run_id=self.run_id)
        await self.read_cost()
        self.show_facts()
        status = self.run.get("status")
        if status not in TERMINAL:
            self.updated(f"run {status}")
            return False
        reason = f" ({self.run['status_reason']})" if self.run.get("status_reason") else ""
        self.updated(f"run finished: {status}{reason}" if was not in TERMINAL else f"run {status}")
        return True

    async def show_checkpoints(self) -> None:
        try:
            got = await self.call(self.host, "runs.checkpoints", run_id=self.run_id)
        except MethodNotAvailable:
            return
        except MldeckError as exc:
            self.say(why(exc))
            return
        self.query_one("#run-checkpoints", Static).update(checkpoints_table(got["checkpoints"]))

    async def show_usage(self, run: dict[str, Any]) -> None:
        start = run.get("started_at")
        if start is None:
            return
        end = run.get("ended_at") or time.time()
        try:
            hist = await self.call(self.host, "host.metrics", window_s=max(1.0, time.time() - start),
                                   max_points=300)
        except MldeckError as exc:
            self.say(why(exc))
            return
        rows = [r for r in hist.get("history") or [] if start <= r["ts"] <= end + 1]
        grid = self.query_one("#run-usage", Grid)
        for idx, s in sorted(per_gpu(rows, end).items()):
            chart = MetricChart(f"GPU{idx}", xlabel="minutes before the end", ylim=(0, 100),
                                classes="run-chart")
            await grid.mount(chart)
            chart.show(s)

    @screen_work(group="run-live")
    async def follow_metrics(self) -> None:
        async for batch in self.deck.fleet.subscribe(self.host, "run.metrics", run_id=self.run_id):
            for key, step, value in zip(batch["key"], batch["step"], batch["value"], strict=False):
                xs, ys = self.pending.setdefault(key, ([], []))
                xs.append(step)
                ys.append(value)

    @screen_work(group="run-events")
    async def follow_events(self) -> None:
        """The run's status changes (topic `runs`): the header reads the run again at once."""
        try:
            async for ev in self.deck.fleet.subscribe(self.host, "runs", run_id=self.run_id):
                if ev.get("run_id") == self.run_id and self.facts is not None:
                    self.facts.now()
        except MldeckError as exc:
            self.say(why(exc))

    @screen_work(group="run-checkpoints")
    async def follow_checkpoints(self) -> None:
        """A checkpoint event (topic `run.event`) brings the list up to date."""
        try:
            async for ev in self.deck.fleet.subscribe(self.host, "run.event", run_id=self.run_id):
                if ev.get("event") == "checkpoint":
                    await self.show_checkpoints()
        except MldeckError as exc:
            self.say(why(exc))

    async def apply_pending(self) -> None:
        """Live points arrive in bursts; charts redraw a few times a second at most."""
        pending, self.pending = self.pending, {}
        grid = self.query_one("#run-charts", Grid)
        for key, (xs, ys) in pending.items():
            chart = self.charts.get(key)
            if chart is None and len(self.charts) < MAX_CHARTS:
                chart = self.charts[key] = MetricChart(key, classes="run-chart")
                await grid.query("#no-metrics").remove()
                await grid.mount(chart)
            if chart is not None:
                chart.extend(key, xs, ys)
