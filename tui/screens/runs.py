"""Runs: every run of every host in one table; filter, sort, mark, compare, logs, stop, resume."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections import Counter
from typing import Any, ClassVar

import pyarrow as pa
import pyarrow.compute as pc
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.widgets import Input

from mldeck.core.errors import MethodNotAvailable, MldeckError
from mldeck.tui.screens import run_filter
from mldeck.tui.screens.base import RUNS_FIRST_PAGE, DeckScreen, Poller, screen_work, why
from mldeck.tui.screens.dialogs import Confirm
from mldeck.tui.units import duration
from mldeck.tui.widgets.runs_table import RunsTable

RUNS_LIMIT = 5000  # runs.list fallback, for agents without runs.table
PAGE = 25_000
MAX_RUNS_PER_HOST = 500_000
POLL_S = 5.0
SETTLE_S = 0.3  # after a run event: the events of one launch or sweep make one reload
FULL_RELOAD_S = 60.0
FLOAT_COLUMNS = {"created_at", "started_at", "ended_at", "cost_usd"}
SHOWN_METRICS = 4
SORTABLE = ["created", "host", "experiment", "name", "status", "duration", "cost"]


def run_cost(run: dict[str, Any]) -> float | None:
    for key in ("cost", "cost_usd"):
        if isinstance(run.get(key), (int, float)):
            return float(run[key])
    return None


def runs_table(by_host: dict[str, list[dict[str, Any]]]) -> pa.Table:
    """Every host's runs as one Arrow table: fixed columns, then one `m:<key>` column per metric."""
    rows = [(host, r) for host, runs in by_host.items() for r in runs]
    keys = sorted({k for _, r in rows for k in (r.get("metrics") or {})})
    cols: dict[str, Any] = {
        "host": pa.array([h for h, _ in rows], pa.string()),
        "created": pa.array([r.get("created_at") for _, r in rows], pa.float64()),
        **{c: pa.array([r.get(c) for _, r in rows], pa.string())
           for c in ("run_id", "experiment", "name", "status", "sweep_id")},
        "started_at": pa.array([r.get("started_at") for _, r in rows], pa.float64()),
        "ended_at": pa.array([r.get("ended_at") for _, r in rows], pa.float64()),
        "cost": pa.array([run_cost(r) for _, r in rows], pa.float64()),
    }
    for k in keys:
        cols[f"m:{k}"] = pa.array([(r.get("metrics") or {}).get(k) for _, r in rows], pa.float64())
    return pa.table(cols)


def chosen_metrics(table: pa.Table, n: int = SHOWN_METRICS) -> list[str]:
    """The metrics most runs have: what the table shows as columns."""
    metric_cols = [c for c in table.column_names if c.startswith("m:")]
    counts = Counter({c: table.num_rows - table[c].null_count for c in metric_cols})
    return [c for c, _ in counts.most_common(n)]


def with_duration(table: pa.Table, now: float) -> pa.Table:
    end = pc.fill_null(table["ended_at"], now)
    return table.append_column("duration", pc.subtract(end, table["started_at"]))


def columns_table(host: str, result: dict[str, Any]) -> pa.Table:
    """A runs.table page as Arrow, straight from its columns (no per-row Python)."""
    cols = result["columns"]
    n = len(cols.get("run_id", []))
    out: dict[str, Any] = {"host": pa.array([host] * n, pa.string()) if n else pa.array([], pa.string())}
    renames = {"created_at": "created", "cost_usd": "cost"}
    for name, values in cols.items():
        typ = pa.float64() if name in FLOAT_COLUMNS or name.startswith("m:") else pa.string()
        out[renames.get(name, name)] = pa.array(values, typ)
    for name in ("experiment", "name", "status", "sweep_id"):
        out.setdefault(name, pa.nulls(n, pa.string()))
    for name in ("created", "started_at", "ended_at", "cost"):
        out.setdefault(name, pa.nulls(n, pa.float64()))
    return pa.table(out)


def merge(old: pa.Table | None, fresh: pa.Table) -> pa.Table:
    """The newest page replaces those runs in what was loaded before (their status or metrics moved)."""
    if old is None or not old.num_rows:
        return fresh
    kept = old.filter(pc.invert(pc.is_in(old["run_id"], fresh["run_id"])))
    return pa.concat_tables([fresh, kept], promote_options="default")


def mark_column(table: pa.Table, marks: set[str]) -> pa.Array:
    if not marks:
        return pa.repeat(pa.scalar("", pa.string()), table.num_rows)
    keys = pc.binary_join_element_wise(table["host"], table["run_id"], "/")
    return pc.if_else(pc.is_in(keys, pa.array(sorted(marks), pa.string())), "✓", "")


def display(table: pa.Table, metrics: list[str], marks: set[str]) -> pa.Table:
    """What the person sees: a mark, the words, rounded metrics, duration (worded when drawn), cost."""
    cols = {
        " ": mark_column(table, marks), "host": table["host"], "experiment": table["experiment"],
        "name": table["name"], "status": table["status"],
    }
    for m in metrics:
        cols[m[2:]] = pc.round(table[m], 4)
    cols["duration"] = table["duration"]
    cols["cost"] = pc.round(table["cost"], 2)
    cols["run"] = table["run_id"]
    return pa.table(cols)


FORMATTERS = {"duration": duration}


class RunsScreen(DeckScreen):
    TITLE = "Runs"
    HELP = ("Every run of every host. Filter with text, status:running, host:NAME, exp:NAME, "
            "metric>0.9 (several at once are ANDed).")
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "open", "open run", show=False),
        Binding("slash", "filter", "filter", key_display="/"),
        Binding("space", "mark", "mark"),
        Binding("c", "compare", "compare marked"),
        Binding("l", "logs", "logs"),
        Binding("s", "stop", "stop"),
        Binding("r", "resume", "resume"),
        Binding("o", "sort", "sort by next column"),
        Binding("O", "reverse", "reverse sort"),
        Binding("ctrl+r", "reload", "reload", show=False),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.data = runs_table({})
        self.view = self.data
        self.shown = self.data
        self.tables: dict[str, pa.Table] = {}
        self.totals: dict[str, int] = {}
        self.metric_keys: dict[str, list[str]] = {}
        self.errors: dict[str, str] = {}
        self.query_text = ""
        self.sort_key = "created"
        self.descending = True
        self.marks: set[str] = set()
        self.metrics: list[str] = []
        self.pollers: dict[str, Poller] = {}
        self.full_at: dict[str, float] = {}

    def compose(self) -> ComposeResult:
        yield self.header()
        yield Input(placeholder="filter: text  status:running  host:NAME  val_acc>0.9", id="filter")
        yield RunsTable(id="runs")
        yield self.status_line()
        yield self.footer()

    @property
    def table(self) -> RunsTable:
        return self.query_one(RunsTable)

    def on_mount(self) -> None:
        self.table.focus()
        if self.deck.live:
            for host in self.deck.fleet.names:
                self.pollers[host] = self.poll(POLL_S, functools.partial(self.refresh_host, host), SETTLE_S)
                self.follow(host)

    async def refresh_host(self, host: str) -> None:
        """Each host on its own: a full load now and then, else its newest page (sooner on a run event)."""
        try:
            if time.monotonic() - self.full_at.get(host, -FULL_RELOAD_S) >= FULL_RELOAD_S:
                await self.fetch_all(host)
                self.full_at[host] = time.monotonic()
            else:
                fresh = await self.fetch_page(host, 0, RUNS_FIRST_PAGE)
                old = self.tables.get(host)
                if old is None or not fresh.equals(old.slice(0, fresh.num_rows)):
                    self.tables[host] = merge(old, fresh)
                    self.combine()  # refilters every run: only when the newest ones changed
            self.errors.pop(host, None)
        except MethodNotAvailable:
            await self.fetch_list(host)
        except MldeckError as exc:
            self.errors[host] = why(exc)
            self.describe()

    def reload(self, host: str | None = None) -> None:
        """Ask one host (or every host) again now instead of at its next poll."""
        for name, poller in self.pollers.items():
            if host in (None, name):
                poller.now()

    async def fetch_page(self, host: str, offset: int, limit: int) -> pa.Table:
        early = self.deck.early_runs.pop(host, None)
        page = None
        if early is not None and (offset, limit) == (0, RUNS_FIRST_PAGE) and not self.page_args(host):
            with contextlib.suppress(Exception):  # a failed prefetch is simply asked again
                page = await early
        if page is None:
            page = await self.call(host, "runs.table", offset=offset, limit=limit, **self.page_args(host))
        self.totals[host] = page["total"]
        self.metric_keys[host] = page["metrics"]
        return columns_table(host, page)

    def page_args(self, host: str) -> dict[str, Any]:
        """After the first page, every page asks for the same metrics so the columns line up."""
        keys = self.metric_keys.get(host)
        return {"metrics": keys} if keys else {}

    async def fetch_all(self, host: str) -> None:
        """The newest page paints at once; the rest follows page by page, shown when all is there."""
        self.metric_keys.pop(host, None)
        first = await self.fetch_page(host, 0, RUNS_FIRST_PAGE)
        if host not in self.tables:
            self.tables[host] = first
            self.combine()
            painted = asyncio.Event()
            self.call_after_refresh(painted.set)
            await painted.wait()  # the newest runs on screen before the rest's decoding competes with it
        pages = [first]
        offset = first.num_rows
        while offset < min(self.totals[host], MAX_RUNS_PER_HOST):
            self.say(f"{host}: loading runs {offset:,} of {self.totals[host]:,}…")
            pages.append(await self.fetch_page(host, offset, PAGE))
            offset += pages[-1].num_rows
            if not pages[-1].num_rows:
                break
        self.tables[host] = pa.concat_tables(pages, promote_options="default")
        self.combine()

    async def fetch_list(self, host: str) -> None:
        """An older agent without runs.table: its newest runs through runs.list."""
        try:
            runs = await self.call(host, "runs.list", limit=RUNS_LIMIT)
        except MldeckError as exc:
            self.errors[host] = why(exc)
            return
        self.tables[host] = runs_table({host: runs})
        self.combine()

    def combine(self) -> None:
        tables = [t for t in self.tables.values() if t.num_rows]
        self.load(pa.concat_tables(tables, promote_options="default") if tables else runs_table({}))

    @screen_work(group="runs-follow")
    async def follow(self, host: str) -> None:
        async for _ in self.deck.fleet.subscribe(host, "runs"):
            self.reload(host)

    def load(self, table: pa.Table) -> None:
        """New data (from the agents, or a benchmark): recompute the view and swap it in."""
        self.data = table
        self.metrics = chosen_metrics(table)
        self.refilter()

    def refilter(self) -> None:
        try:
            view = run_filter.apply(with_duration(self.data, time.time()), self.query_text)
        except run_filter.FilterError as exc:
            self.say(str(exc))
            return
        if view.num_rows:
            view = view.sort_by([(self.sort_key, "descending" if self.descending else "ascending")])
        self.view = view
        self.shown = display(view, self.metrics, self.marks)
        self.table.replace(self.shown, FORMATTERS)
        self.describe()

    def describe(self) -> None:
        parts = [f"{self.view.num_rows:,} of {self.data.num_rows:,} runs",
                 f"sort {self.sort_key} {'↓' if self.descending else '↑'}"]
        if self.query_text:
            parts.append(f"filter: {self.query_text}")
        if self.marks:
            parts.append(f"{len(self.marks)} marked")
        parts += [f"{h}: {e}" for h, e in self.errors.items()]
        self.say("  ·  ".join(parts))

    # the row under the cursor -------------------------------------------------

    def current(self) -> tuple[str, str] | None:
        row = self.table.cursor_row
        if not 0 <= row < self.view.num_rows:
            return None
        return self.view["host"][row].as_py(), self.view["run_id"][row].as_py()

    def current_run(self) -> dict[str, Any] | None:
        row = self.table.cursor_row
        if not 0 <= row < self.view.num_rows:
            return None
        return {k: self.view[k][row].as_py() for k in ("host", "run_id", "name", "status")}

    # actions ------------------------------------------------------------------

    def action_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.add_class("shown")
        box.focus()

    @on(Input.Changed, "#filter")
    def filter_changed(self, event: Input.Changed) -> None:
        self.query_text = event.value.strip()
        self.refilter()

    @on(Input.Submitted, "#filter")
    def filter_done(self) -> None:
        self.table.focus()

    def key_escape(self) -> bool | None:
        box = self.query_one("#filter", Input)
        if box.has_focus:
            if not box.value:
                box.remove_class("shown")
            self.table.focus()
            return True
        return None

    def action_mark(self) -> None:
        cur = self.current()
        if cur is None:
            return
        key = "/".join(cur)
        self.marks.symmetric_difference_update({key})
        self.shown = self.shown.set_column(0, " ", mark_column(self.view, self.marks))
        self.table.replace(self.shown, FORMATTERS)
        self.table.action_cursor_down()
        self.describe()

    def action_compare(self) -> None:
        chosen = [tuple(k.split("/", 1)) for k in sorted(self.marks)]
        if len(chosen) < 2:
            self.say("mark two or more runs with space, then press c")
            return
        self.deck.compare_set = chosen  # type: ignore[assignment]
        self.deck.switch_mode("compare")

    def action_open(self) -> None:
        from mldeck.tui.screens.run_detail import RunDetailScreen

        cur = self.current()
        if cur:
            self.app.push_screen(RunDetailScreen(*cur))

    @on(RunsTable.RowSelected)
    def row_selected(self) -> None:
        self.action_open()

    @on(RunsTable.HeaderSelected)
    def header_selected(self, event: RunsTable.HeaderSelected) -> None:
        label = str(event.label)
        key = f"m:{label}" if f"m:{label}" in self.data.column_names else label
        if key == "run":
            key = "run_id"
        if key in self.view.column_names:
            self.descending = not self.descending if key == self.sort_key else True
            self.sort_key = key
            self.refilter()

    def action_sort(self) -> None:
        keys = SORTABLE + self.metrics
        at = keys.index(self.sort_key) + 1 if self.sort_key in keys else 0
        self.sort_key = keys[at % len(keys)]
        self.descending = True
        self.refilter()

    def action_reverse(self) -> None:
        self.descending = not self.descending
        self.refilter()

    def action_reload(self) -> None:
        self.reload()

    def action_logs(self) -> None:
        from mldeck.tui.screens.logs import LogsScreen

        cur = self.current()
        if cur:
            self.app.push_screen(LogsScreen(*cur))

    def action_stop(self) -> None:
        run = self.current_run()
        cur = self.current()
        if not run or not cur:
            return
        if run.get("status") not in ("running", "queued", "pending"):
            self.say(f"run {cur[1]} is {run.get('status')}; only queued or running runs can be stopped")
            return

        def done(yes: bool | None) -> None:
            if yes:
                self.run_action(cur[0], "runs.stop", cur[1], "stopping")

        self.app.push_screen(Confirm(f"Stop run {run.get('name') or cur[1]} on {cur[0]}?",
                                     f"run {cur[1]}, {run.get('status')}; it checkpoints if it can"), done)

    def action_resume(self) -> None:
        cur = self.current()
        if cur:
            self.run_action(cur[0], "runs.resume", cur[1], "resuming")

    @screen_work(group="runs-action")
    async def run_action(self, host: str, method: str, run_id: str, doing: str) -> None:
        self.say(f"{doing} {run_id} on {host}…")
        try:
            await self.call(host, method, run_id=run_id)
        except MethodNotAvailable as exc:
            self.say(f"{exc} (this agent cannot run jobs yet)")
            return
        except MldeckError as exc:
            self.say(why(exc))
            return
        self.say(f"{method} {run_id}: done")
        self.reload(host)
