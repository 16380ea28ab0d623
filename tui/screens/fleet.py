"""Fleet (home): a row per host with live GPUs, host load, jobs, cost per hour and serving rate, its
running jobs with their progress and its open alerts; under a Slurm host's row, its partitions, nodes and
queue."""

from __future__ import annotations

import functools
from typing import Any, ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll

from mldeck.core.errors import MethodNotAvailable, MldeckError
from mldeck.tui.fleet import HostDown
from mldeck.tui.screens.base import DeckScreen, screen_work, why
from mldeck.tui.screens.serving import WINDOW_S, serving_rows
from mldeck.tui.screens.slurm_panel import SlurmPanel
from mldeck.tui.widgets.host_row import HostRow

PAINT_S = 1.0  # the collector samples at 1 Hz: one batched repaint per sample
EXTRAS_S = 5.0
SLURM_S = 5.0  # slurm.status runs sinfo and squeue against the cluster's controller: not at every paint
HISTORY_S = 60
SHOWN_JOBS = 4
SHOWN_ALERTS = 2
JOB_COLUMNS = ("run_id", "name", "started_at", "gpus", "total_steps")


async def host_extras(screen: DeckScreen, host: str, missing: set[str]) -> dict[str, Any]:
    """Running jobs (the first few with their progress), cost per hour, serving rps, open alerts and the
    agent's own problems (ingest, failing background tasks), each from its own method if the agent has it.

    The rate is the Serving screen's (serving.stats over the same window), summed over models and variants.
    """
    running = await screen.call(host, "runs.table", status="running", limit=SHOWN_JOBS, metrics=[],
                                columns=list(JOB_COLUMNS))
    cols = running["columns"]
    jobs = [dict(zip(cols, row, strict=True)) for row in zip(*cols.values(), strict=True)]
    out: dict[str, Any] = {"jobs": running["total"], "running": jobs}
    asks = (("cost.host", {"since_s": 3600}, _cost_per_hour),
            ("serving.stats", {"window_s": WINDOW_S}, lambda stats: _serving_rps(host, stats)),
            ("alerts.list", {"limit": SHOWN_ALERTS}, lambda got: {"alerts": got["alerts"]}),
            ("agent.status", {}, lambda got: {"problems": got.get("problems") or []}))
    for method, params, pick in asks:
        if method in missing:
            continue
        try:
            out.update(pick(await screen.call(host, method, **params)))
        except MethodNotAvailable:
            missing.add(method)
    return out


def simulated(fleet: Any, host: str) -> bool:
    """Whether the host's GPUs are the agent's simulation (the demo on a machine without GPUs)."""
    status = getattr(fleet, "status", None)
    hello = status(host).hello if status else None
    return bool(((hello or {}).get("host") or {}).get("gpu_simulated"))


def _cost_per_hour(result: Any) -> dict[str, Any]:
    if isinstance(result, dict):
        for key in ("burn_per_hour", "cost_per_hour"):
            if key in result:
                return {"cost_h": result[key]}
    return {}


def _serving_rps(host: str, stats: dict[str, Any]) -> dict[str, Any]:
    """Requests per second over every served model (None when the model server is not running)."""
    if not stats.get("running"):
        return {"rps": None}
    return {"rps": sum(float(r.get("rps") or 0) for r in serving_rows(host, stats))}


class FleetScreen(DeckScreen):
    TITLE = "Fleet"
    HELP = ("Every host: GPUs live (utilization sparkline, memory bar, temperature, power), CPU and RAM, "
            "running jobs, cost per hour and the requests per second it serves; under it, its running jobs "
            "(GPUs, progress, ETA), open alerts and the agent's own problems. A host whose agent runs its "
            "jobs on Slurm also shows the cluster: partitions, nodes and the queue (everyone's jobs, "
            "mldeck's first, with Slurm's reasons). enter opens a host.")
    AUTO_FOCUS = "HostRow"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "open", "open host"),
        Binding("down,j", "move(1)", "next host", show=False),
        Binding("up,k", "move(-1)", "previous host", show=False),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.missing: dict[str, set[str]] = {}  # per host: the methods its agent does not have

    def compose(self) -> ComposeResult:
        yield self.header()
        with VerticalScroll(id="fleet"):
            for host in self.deck.fleet.names:
                yield HostRow(host)
        yield self.status_line()
        yield self.footer()

    def rows(self) -> list[HostRow]:
        if not getattr(self, "_rows", None):
            self._rows = list(self.query(HostRow))
        return self._rows

    def on_mount(self) -> None:
        self.say(f"{len(self.deck.fleet.names)} host(s)  ·  enter opens one")
        rows = self.rows()
        if rows:
            rows[0].focus()
        if self.deck.live:
            for row in rows:
                self.watch_host(row)
                self.poll(EXTRAS_S, functools.partial(self.refresh_extras, row))
                self.poll(SLURM_S, functools.partial(self.refresh_slurm, row))
            self.poll(PAINT_S, self.paint)

    def paint(self) -> None:
        for row in self.rows():
            state = self.deck.fleet.state(row.host)
            if state != row.state:
                row.state, row.dirty = state, True
                row.simulated = simulated(self.deck.fleet, row.host)
            row.paint()

    @screen_work(group="metrics")
    async def watch_host(self, row: HostRow) -> None:
        """Prefill a minute of history, then follow host.metrics; the paint poll draws each batch."""
        try:
            first = await self.call(row.host, "host.metrics", window_s=HISTORY_S, max_points=HISTORY_S)
            for snap in _snapshots(first.get("history") or []):
                row.feed(snap)
            if first.get("latest"):
                row.feed(first["latest"])
        except HostDown:
            pass  # the row shows the host's state and why
        except MldeckError as exc:
            self.say(why(exc))
        async for snap in self.deck.fleet.subscribe(row.host, "host.metrics"):
            row.feed(snap)

    async def refresh_extras(self, row: HostRow) -> None:
        """Jobs, cost and serving rate of one host; a host that is down says so in its own row."""
        try:
            row.extras.update(await host_extras(self, row.host, self.missing.setdefault(row.host, set())))
        except HostDown:
            return
        row.dirty = True
        self.updated(f"{len(self.rows())} host(s)  ·  GPUs live, the rest every {EXTRAS_S:.0f}s")

    async def refresh_slurm(self, row: HostRow) -> bool:
        """The cluster under a Slurm host's row; an agent without slurm.status is not on Slurm, and its
        row stays as it is (True: this poll ends)."""
        try:
            status = await self.call(row.host, "slurm.status")
        except MethodNotAvailable:
            return True
        except HostDown:
            return False  # the row shows the host's state and why
        except MldeckError as exc:
            (await self.slurm_panel(row)).fail(why(exc))
            return False
        (await self.slurm_panel(row)).show(status)
        return False

    async def slurm_panel(self, row: HostRow) -> SlurmPanel:
        found = row.query(SlurmPanel)
        if found:
            return found.first()
        panel = SlurmPanel()
        await row.mount(panel)
        return panel

    def action_move(self, step: int) -> None:
        rows = self.rows()
        if not rows:
            return
        current = rows.index(self.focused) if self.focused in rows else 0
        rows[(current + step) % len(rows)].focus()

    def action_open(self) -> None:
        from mldeck.tui.screens.host import HostScreen

        focused = self.focused if isinstance(self.focused, HostRow) else None
        if focused is not None:
            self.app.push_screen(HostScreen(focused.host))


def _snapshots(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """system_metrics rows (host row + one per GPU, same ts) back into collector snapshots."""
    by_ts: dict[float, dict[str, Any]] = {}
    for r in history:
        snap = by_ts.setdefault(r["ts"], {"ts": r["ts"], "gpus": []})
        if r.get("gpu_index") is None:
            snap.update(cpu_pct=r.get("cpu_pct"), ram_used=r.get("ram_used"), ram_total=r.get("ram_total"))
        else:
            snap["gpus"].append({**r, "index": r["gpu_index"]})
    return [by_ts[t] for t in sorted(by_ts)]
