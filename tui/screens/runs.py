"""Runs: every run of every host in one table; filter, sort, mark, compare, logs, stop, resume."""

from __future__ import annotations

import functools
import time
from collections import Counter
from typing import Any, ClassVar

import pyarrow as pa
import pyarrow.compute as pc
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType

from mldeck.core.errors import MethodNotAvailable, MldeckError
from mldeck.core.protocol import MAX_TABLE_PAGE as PAGE
from mldeck.core.table_filter import COMPARE
from mldeck.tui.screens.base import DeckScreen, Poller, screen_work, why
from mldeck.tui.screens.dialogs import Confirm
from mldeck.tui.units import duration, money, share
from mldeck.tui.widgets.deck_table import Col, DeckTable, TableBox

RUNS_LIMIT = 5000  # runs.list fallback, for agents without runs.table
FIRST_WINDOW = 200  # each host's first runs under the sort and filter: a few screens to scroll, at once
REFRESHED = 1000  # at most this many of a host's first runs are asked again at each poll
POLL_S = 5.0
SETTLE_S = 0.3  # after a run event (the events of one launch or sweep make one reload), or a key of a filter
FLOAT_COLUMNS = {"created_at", "started_at", "ended_at", "cost_usd", "total_steps", "last_step"}
SHOWN_METRICS = 4
MARK = " "


Asked = tuple[str | None, bool, str]
"""What the rows held were fetched for: the sort column, descending, the filter."""
EVERY_RUN: Asked = ("created", True, "")
"""What a host whose every run the screen holds is asked for (the screen sorts and filters them itself)."""


def host_query(query: str, host: str) -> str | None:
    """The filter as one host's agent reads it: None when a `host:` word rules the host out; the free words
    its name holds (all its runs match them) left out."""
    name = host.lower()
    kept = []
    for token in query.split():
        key, sep, value = token.partition(":")
        if key == "host" and sep and value:
            if value.lower() not in name:
                return None
        elif sep or COMPARE.match(token) or token.lower() not in name:
            kept.append(token)
    return " ".join(kept)


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
    """Durations up to now, and how far each run is (a share of its total steps) with its ETA."""
    end = pc.fill_null(table["ended_at"], now)
    elapsed = pc.subtract(end, table["started_at"])
    table = table.append_column("duration", elapsed)
    if "total_steps" not in table.column_names or "last_step" not in table.column_names:
        return table.append_column("progress", pa.nulls(table.num_rows, pa.float64())).append_column(
            "eta", pa.nulls(table.num_rows, pa.float64()))
    done = pc.min_element_wise(pc.divide(pc.add(table["last_step"], 1.0), table["total_steps"]), 1.0,
                              skip_nulls=False)
    running = pc.and_(pc.equal(table["status"], "running"), pc.greater(done, 0.0))
    eta = pc.if_else(running, pc.divide(pc.multiply(elapsed, pc.subtract(1.0, done)), done),
                     pa.scalar(None, pa.float64()))
    return table.append_column("progress", done).append_column("eta", eta)


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


def with_marks(table: pa.Table, marks: set[str]) -> pa.Table:
    """The runs with the ✓ column (the person's marks) in front."""
    names = table.column_names
    if MARK in names:
        return table.set_column(names.index(MARK), MARK, mark_column(table, marks))
    return table.add_column(0, MARK, mark_column(table, marks))


def status_style(status: Any) -> str:
    return {"running": "bold green", "failed": "red", "queued": "yellow", "preempted": "yellow",
            "stopped": "dim", "pruned": "dim"}.get(status, "")


def run_columns(metrics: list[str], hosts: int) -> list[Col]:
    """What the person sees: mark, name, status, metrics, progress, ETA, duration, cost, run id (host when
    several)."""
    cols = [Col(MARK, " ", priority=0, width=1), Col("name", priority=0, shrink_to=16),
            Col("status", priority=0, style=status_style),
            Col("host", priority=2 if hosts > 1 else 4), Col("experiment", priority=3, shrink_to=12)]
    cols += [Col(m, priority=4) for m in metrics]
    cols += [Col("progress", "done", priority=2, fmt=share), Col("eta", "ETA", priority=3, fmt=duration),
             Col("duration", priority=1, fmt=duration), Col("cost", priority=1, fmt=money),
             Col("run_id", "run", priority=1)]
    return cols


class RunsScreen(DeckScreen):
    TITLE = "Runs"
    HELP = ("Every run of every host. / filters: text, status:running, host:NAME, exp:NAME, val_acc>0.9 "
            "(several at once are ANDed). ←/→ pick a column, o sorts by it (again: reverse).")
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "open", "open run", show=False),
        Binding("slash", "filter", "filter", key_display="/"),
        Binding("o", "sort", "sort by column"),
        Binding("space", "mark", "mark"),
        Binding("c", "compare", "compare marked"),
        Binding("l", "logs", "logs"),
        Binding("s", "stop", "stop"),
        Binding("r", "resume", "resume"),
        Binding("ctrl+r", "reload", "reload", show=False),
    ]
    AUTO_FOCUS = "#runs"

    def __init__(self) -> None:
        super().__init__()
        self.data = runs_table({})
        self.tables: dict[str, pa.Table] = {}
        self.totals: dict[str, int] = {}
        self.metric_keys: dict[str, list[str]] = {}
        self.errors: dict[str, str] = {}
        self.marks: set[str] = set()
        self.metrics: list[str] = []
        self.pollers_by_host: dict[str, Poller] = {}
        self.window = FIRST_WINDOW
        self.asked: Asked = EVERY_RUN
        self.asked_of: dict[str, Asked] = {}
        self.whole: set[str] = set()
        """Hosts of at most FIRST_WINDOW runs, all held: a sort or filter shows their runs exactly at once."""

    def compose(self) -> ComposeResult:
        yield self.header()
        table = DeckTable(run_columns([], 1), row_key=("host", "run_id"), id="runs",
                          empty="no runs yet: `mldeck run train.py` or Launch (4) starts one")
        table.sort_key = "created"
        yield TableBox(table, placeholder="filter: text  status:running  host:NAME  val_acc>0.9")
        yield self.status_line()
        yield self.footer()

    @property
    def table(self) -> DeckTable:
        return self.query_one("#runs", DeckTable)

    @property
    def view(self) -> pa.Table:
        """The runs shown, filtered and sorted as the person asked."""
        return self.table.view

    def on_mount(self) -> None:
        if self.deck.live:
            self.say(f"loading runs from {len(self.deck.fleet.names)} host(s)…")
            for host in self.deck.fleet.names:
                poller = self.poll(POLL_S, functools.partial(self.refresh_host, host), SETTLE_S, early=True)
                self.pollers_by_host[host] = poller
                self.follow(host)

    async def refresh_host(self, host: str) -> None:
        """Each host on its own: its first rows under the screen's sort and filter (again from the top when
        they change), the next page when the person scrolled on, else its newest page (sooner on a run
        event) merged into what it sent before. A whole host is asked for every run, whatever is shown."""
        asked = EVERY_RUN if host in self.whole else self.asked
        try:
            rows = self.tables.get(host)
            if rows is None or self.asked_of.get(host) != asked:
                self.metric_keys.pop(host, None)
                rows = await self.fetch_page(host, 0, min(self.window, PAGE), asked)
            elif rows.num_rows < min(self.window, self.totals[host]):
                wanted = min(self.window - rows.num_rows, PAGE)
                more = await self.fetch_page(host, rows.num_rows, wanted, asked)
                rows = pa.concat_tables([rows, more], promote_options="default")
            else:
                newest = min(max(rows.num_rows, FIRST_WINDOW), REFRESHED)
                fresh = await self.fetch_page(host, 0, newest, asked)
                if fresh.equals(rows.slice(0, fresh.num_rows)):
                    if pc.any(pc.equal(self.data["status"], "running")).as_py():
                        self.load(self.data)  # running runs' durations move on
                    rows = None
                else:
                    rows = fresh if fresh.num_rows >= self.totals[host] else merge(rows, fresh)
            if rows is not None and asked in (self.asked, EVERY_RUN):  # else the sort or filter changed
                self.tables[host] = rows
                self.asked_of[host] = asked
                self.note_whole(host)
                self.combine()
            held = self.tables.get(host)
            if host not in self.whole and (self.asked_of.get(host) != self.asked or held is None
                                           or held.num_rows < min(self.window, self.totals[host])):
                self.pollers_by_host[host].now(settle=False)
            self.errors.pop(host, None)
        except MethodNotAvailable:
            await self.fetch_list(host)
        except MldeckError as exc:
            self.errors[host] = why(exc)
        self.updated()
        self.describe()

    def note_whole(self, host: str) -> None:
        """Whether the screen now holds every run of the host; one that outgrew FIRST_WINDOW is asked for
        pages under the screen's sort and filter again."""
        rows, total = self.tables[host], self.totals[host]
        if self.asked_of[host] == EVERY_RUN and rows.num_rows >= total and total <= FIRST_WINDOW:
            self.whole.add(host)
        elif host in self.whole:
            self.whole.discard(host)
            self.asked_of.pop(host)

    def reload(self, host: str | None = None, paged_only: bool = False, settle: bool = True) -> None:
        """Ask one host (or every host, or every host not whole) again now instead of at its next poll."""
        for name, poller in self.pollers_by_host.items():
            if host in (None, name) and not (paged_only and name in self.whole):
                poller.now(settle)

    async def fetch_page(self, host: str, offset: int, limit: int, asked: Asked) -> pa.Table:
        """Rows [offset, offset + limit) of a host's runs under a sort and filter, in its agent's order."""
        sort, descending, text = asked
        query = host_query(text, host)
        if query is None:  # `host:` rules this host out
            self.totals[host] = 0
            return runs_table({})
        args: dict[str, Any] = {"query": query} if query else {}
        if sort not in (None, "host", MARK):
            args |= {"sort": sort, "descending": descending}
        if keys := self.metric_keys.get(host):  # after the first page, the same metrics: the columns line up
            args["metrics"] = keys
        page = await self.call(host, "runs.table", offset=offset, limit=limit, **args)
        self.totals[host] = page["total"]
        self.metric_keys[host] = page["metrics"]
        return columns_table(host, page)

    async def fetch_list(self, host: str) -> None:
        """An older agent without runs.table: its newest runs through runs.list."""
        try:
            runs = await self.call(host, "runs.list", limit=RUNS_LIMIT)
        except MldeckError as exc:
            self.errors[host] = why(exc)
            return
        self.tables[host] = runs_table({host: runs})
        self.totals[host] = len(runs)
        self.asked_of[host] = EVERY_RUN
        self.whole.add(host)
        self.combine()

    def combine(self) -> None:
        """Every run of the whole hosts, and the first `window` runs of the others under the sort: each of
        those sent at least its own first `window`, so the merge's first `window` are the fleet's."""
        def joined(tables: list[pa.Table]) -> pa.Table:
            tables = [t for t in tables if t.num_rows]
            return pa.concat_tables(tables, promote_options="default") if tables else runs_table({})

        paged = joined([t for h, t in self.tables.items() if h not in self.whole])
        sort, descending, _ = self.asked
        if sort in paged.column_names and paged.num_rows:
            paged = paged.sort_by([(sort, "descending" if descending else "ascending")])
        self.load(joined([paged.slice(0, self.window), *(self.tables[h] for h in self.whole)]))

    @screen_work(group="runs-follow")
    async def follow(self, host: str) -> None:
        async for _ in self.deck.fleet.subscribe(host, "runs"):
            self.reload(host)

    def load(self, table: pa.Table) -> None:
        """New data (from the agents, or a benchmark): durations up to now, the metrics most runs have."""
        self.data = table
        self.metrics = chosen_metrics(table)
        hosts = len(set(table["host"].to_pylist())) if table.num_rows else 1
        shown = with_marks(with_duration(table, time.time()), self.marks)
        self.table.show(shown, run_columns(self.metrics, hosts))
        self.describe()

    def describe(self) -> None:
        t = self.table
        asked = self.deck.fleet.names if self.deck.live else []
        waiting = [h for h in asked if h not in self.tables and h not in self.errors]
        parts = [f"loading runs from {', '.join(waiting)}…"] if waiting else []
        if self.tables or not waiting:
            total = max(self.total(), t.data.num_rows)
            more = "  (↓ for more)" if t.data.num_rows < total else ""
            parts.append(f"{t.view.num_rows:,} of {total:,} runs{more}")
        if t.sort_key:
            parts.append(f"sorted by {t.sort_key.removeprefix('m:')} {'▼' if t.descending else '▲'}")
        if t.filter_text:
            parts.append(f"filter: {t.filter_text}")
        if self.marks:
            parts.append(f"{len(self.marks)} marked")
        if t.hidden:
            parts.append(f"{len(t.hidden)} more column(s): ←/→")
        parts += [f"{h}: {e}" for h, e in self.errors.items()]
        self.say("  ·  ".join(parts))

    # the row under the cursor -------------------------------------------------

    def current(self) -> tuple[str, str] | None:
        run = self.table.current()
        return (run["host"], run["run_id"]) if run else None

    def current_run(self) -> dict[str, Any] | None:
        return self.table.current()

    # actions ------------------------------------------------------------------

    def action_filter(self) -> None:
        self.table.action_filter()

    def action_sort(self) -> None:
        self.table.action_sort()

    @on(TableBox.FilterFailed)
    def filter_failed(self, event: TableBox.FilterFailed) -> None:
        self.say(event.why)

    @on(DeckTable.ViewChanged, "#runs")
    def view_changed(self) -> None:
        """Another sort or filter: shown at once on the rows held, and every host asked for its first rows
        under it."""
        t = self.table
        asked = (t.sort_key, t.descending, t.filter_text)
        if asked != self.asked and self.deck.live:
            typed = asked[:2] == self.asked[:2]  # a key of the filter: the next ones may follow at once
            self.asked, self.window = asked, FIRST_WINDOW
            self.reload(paged_only=True, settle=typed)
        self.describe()

    @on(DeckTable.RowHighlighted, "#runs")
    def scrolled(self) -> None:
        """Near the end of the runs held, with more on the hosts: the next ones come."""
        t = self.table
        if (t.cursor_row >= t.view.num_rows - 2 * t.page() and t.data.num_rows >= self.window
                and self.total() > self.window):
            self.window *= 2
            self.reload(paged_only=True, settle=False)

    def total(self) -> int:
        """The runs that match on every host, as the hosts counted them (the screen counts a whole host's)."""
        whole = pc.sum(pc.is_in(self.view["host"], pa.array(sorted(self.whole), pa.string()))).as_py() or 0
        return whole + sum(n for h, n in self.totals.items()
                           if h not in self.whole and self.asked_of.get(h) == self.asked)

    def answered(self) -> bool:
        """Every host's runs held answer the screen's sort and filter."""
        return len(self.asked_of) == len(self.deck.fleet.names) and all(
            h in self.whole or a == self.asked for h, a in self.asked_of.items())

    def action_mark(self) -> None:
        cur = self.current()
        if cur is None:
            return
        self.marks.symmetric_difference_update({"/".join(cur)})
        table = self.table
        table.show(with_marks(table.data, self.marks))
        table.action_cursor_down()
        self.describe()

    def action_compare(self) -> None:
        chosen = [tuple(k.split("/", 1)) for k in sorted(self.marks)]
        if len(chosen) < 2:
            self.say("mark two or more runs with space, then press c")
            return
        self.deck.compare_set = chosen  # type: ignore[assignment]
        self.deck.action_jump("compare")

    def action_open(self) -> None:
        from mldeck.tui.screens.run_detail import RunDetailScreen

        cur = self.current()
        if cur:
            self.app.push_screen(RunDetailScreen(*cur))

    @on(DeckTable.RowSelected, "#runs")
    def row_selected(self) -> None:
        self.action_open()

    def action_reload(self) -> None:
        """Every host's rows again from the top (those past its newest page are otherwise kept as sent)."""
        self.asked_of.clear()
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
