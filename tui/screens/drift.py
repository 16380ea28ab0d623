"""Drift: per served model, each column's test, statistic and verdict, drift over time, and open alerts."""

from __future__ import annotations

from typing import Any, ClassVar

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.widgets import Static

from mldeck.tui.screens.base import screen_work
from mldeck.tui.screens.explanation import ExplanationScreen
from mldeck.tui.screens.panel import PolledScreen, one, per_host
from mldeck.tui.units import age, number
from mldeck.tui.widgets.deck_table import Col, DeckTable, TableBox
from mldeck.tui.widgets.distribution_chart import DistributionChart
from mldeck.tui.widgets.metric_chart import MetricChart, Series

HISTORY = 200


def verdict(drifted: object) -> str:
    return "-" if drifted is None else "DRIFTED" if drifted else "ok"


def verdict_style(drifted: object) -> str:
    return "bold red" if drifted else "green" if drifted is not None else ""


def share(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


MODEL_COLUMNS = [Col("host", priority=3), Col("name", "model", priority=0), Col("version", priority=1),
                 Col("drifted", "verdict", priority=0, fmt=verdict, style=verdict_style),
                 Col("share_drifted", "columns drifted", priority=1, fmt=share),
                 Col("open_alerts", "open alerts", priority=1), Col("n_rows", "rows", priority=2),
                 Col("accuracy", priority=2)]
COLUMN_COLUMNS = [Col("column", priority=0, shrink_to=14), Col("role", priority=2),
                  Col("method", "test", priority=1), Col("statistic", priority=0),
                  Col("p_value", "p", priority=2), Col("threshold", priority=2),
                  Col("drifted", "verdict", priority=0, fmt=verdict, style=verdict_style),
                  Col("n_rows", "rows", priority=3)]
ALERT_COLUMNS = [Col("host", priority=3), Col("model", priority=0), Col("version", priority=2),
                 Col("kind", priority=1), Col("message", priority=0, shrink_to=30),
                 Col("ts", "raised", priority=1, fmt=age), Col("alert_id", "alert", priority=4)]


def drift_series(windows: list[dict[str, Any]], column: str | None) -> Series:
    """Per judged window: the share of drifted columns, and whether the selected column drifted (0/1)."""
    judged = [w for w in windows if w.get("n_columns")]
    if not judged:
        return {}
    t_end = judged[-1]["window_end"]
    xs = [(w["window_end"] - t_end) / 60 for w in judged]
    out = {"share of columns drifted": (xs, [w.get("share_drifted") for w in judged])}
    if column:
        out[f"{column} drifted"] = (xs, [1.0 if column in (w.get("drifted_columns") or []) else 0.0
                                         for w in judged])
    return out


class DriftScreen(PolledScreen):
    POLL_S = 5.0
    AUTO_FOCUS = "#drift-models"
    TITLE = "Drift"
    HELP = ("Each production model's latest judged window against its reference: per column the test, "
            "statistic and verdict; drift over the last windows (chart, follows the selected column); "
            "the selected column's reference and current distributions overlaid; open alerts. "
            "tab moves between models and columns; e explains the model's latest request and which features "
            "drive its predictions in the window against its reference.")
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("tab", "switch", "models/columns"),
        Binding("e", "explain", "explain (selected feature in bold)"),
        Binding("ctrl+r", "reload", "reload", show=False),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.models: list[dict[str, Any]] = []
        self.columns: list[dict[str, Any]] = []
        self.windows: list[dict[str, Any]] = []
        self.distribution_key: tuple[Any, ...] | None = None
        self.distribution_note = ""

    def compose(self) -> ComposeResult:
        yield self.header()
        with Vertical():
            with Horizontal(id="drift-top"):
                yield TableBox(DeckTable(MODEL_COLUMNS, row_key=("host", "name"), id="drift-models",
                                         empty="no production model is monitored yet"))
                yield TableBox(DeckTable(COLUMN_COLUMNS, row_key=("column",), id="drift-columns",
                                         empty="no judged window yet"))
            with Horizontal(id="drift-bottom"):
                yield MetricChart("drift over time", xlabel="minutes (0 = latest window)", ylim=(0, 1),
                                  id="drift-chart")
                with Vertical(id="drift-reference"):
                    yield Static(id="drift-statistic", classes="section")
                    yield DistributionChart(id="drift-distribution")
            yield TableBox(DeckTable(ALERT_COLUMNS, row_key=("alert_id",), id="drift-alerts",
                                     empty="no open alerts"), id="drift-alerts-box")
        yield self.status_line()
        yield self.footer()

    async def refresh_once(self) -> None:
        notes: list[str] = []
        status = await per_host(self, "drift.status", notes)
        alerts = await per_host(self, "alerts.list", notes)
        self.models = [{"host": h, **m} for h, s in status.items() for m in s.get("models") or []]
        self.query_one("#drift-models", DeckTable).records(self.models)
        open_alerts = [{"host": h, **a} for h, got in alerts.items() for a in got.get("alerts") or []]
        self.query_one("#drift-alerts", DeckTable).records(open_alerts)
        await self.show_model(notes)
        if not self.models and not notes:
            notes.append("no production model is monitored yet (promote one and serve it)")
        self.updated("  ·  ".join(notes) or f"{len(self.models)} models · {len(open_alerts)} open alerts")

    def model(self) -> dict[str, Any] | None:
        row = self.query_one("#drift-models", DeckTable).current()
        return next((m for m in self.models if row and (m["host"], m["name"]) == (row["host"], row["name"])),
                    None)

    async def show_model(self, notes: list[str]) -> None:
        m = self.model()
        if m is None:
            return
        status = await one(self, m["host"], "drift.status", notes, name=m["name"])
        history = await one(self, m["host"], "drift.history", notes, name=m["name"], limit=HISTORY)
        self.columns = (status or {}).get("rows") or []
        self.windows = (history or {}).get("windows") or []
        self.query_one("#drift-columns", DeckTable).records(self.columns)
        self.show_column()

    def column(self) -> dict[str, Any] | None:
        row = self.query_one("#drift-columns", DeckTable).current()
        return next((c for c in self.columns if row and c["column"] == row["column"]), None)

    def show_column(self) -> None:
        col = self.column()
        name = col["column"] if col else None
        self.query_one("#drift-chart", MetricChart).show(drift_series(self.windows, name))
        self.show_statistic()
        self.load_distribution()

    def show_statistic(self) -> None:
        col = self.column()
        text = Text("reference vs current\n", "bold")
        if col is None:
            text.append("select a column")
        else:
            text.append(f"{col['column']} ({col.get('role')}): {col.get('method')} = "
                        f"{number(col.get('statistic'))} (threshold {number(col.get('threshold'))}, "
                        f"p {number(col.get('p_value'))}) → ")
            bad = bool(col.get("drifted"))
            text.append("drifted" if bad else "no drift", "red" if bad else "green")
            text.append(f"\n{self.distribution_note}", "dim")
        self.query_one("#drift-statistic", Static).update(text)

    @screen_work(exclusive=True, group="drift-distribution")
    async def load_distribution(self) -> None:
        """Fetch the column's distributions once per model, column and judged window; polls reuse them."""
        m, col = self.model(), self.column()
        key = (m["host"], m["name"], m["version"], col["column"], m.get("window_end")) if m and col else None
        if key is not None and key == self.distribution_key:
            return
        chart = self.query_one("#drift-distribution", DistributionChart)
        if m is None or col is None or col.get("role") == "embedding":
            self.distribution_key = None
            self.distribution_note = "" if col is None else "an embedding is tested as a whole (its AUC)"
            chart.show(None)
            self.show_statistic()
            return
        self.distribution_note = "loading the distributions…"
        self.show_statistic()
        notes: list[str] = []
        dist = await one(self, m["host"], "drift.distribution", notes, name=m["name"], version=m["version"],
                         column=col["column"])
        if dist is None:
            self.distribution_key, self.distribution_note = None, "  ·  ".join(notes)
        else:
            self.distribution_key = key
            self.distribution_note = (f"{dist['n_current']} values in the latest window, "
                                      f"{dist['n_reference']} in the reference sample")
        chart.show(dist)
        self.show_statistic()

    @on(DeckTable.RowSelected, "#drift-models")
    @on(DeckTable.RowHighlighted, "#drift-models")
    def model_selected(self) -> None:
        self.reload_model()

    @on(DeckTable.RowHighlighted, "#drift-columns")
    def column_highlighted(self) -> None:
        self.show_column()

    @screen_work(exclusive=True, group="drift-model")
    async def reload_model(self) -> None:
        notes: list[str] = []
        await self.show_model(notes)
        if notes:
            self.say("  ·  ".join(notes))

    def action_switch(self) -> None:
        ids = ["#drift-models", "#drift-columns"]
        at = next((i for i, x in enumerate(ids) if self.query_one(x).has_focus), -1)
        self.query_one(ids[(at + 1) % len(ids)], DeckTable).focus()

    def action_explain(self) -> None:
        """The selected model's latest request and its window's drivers, the selected column in bold."""
        m = self.model()
        if m is None:
            self.say("no monitored model to explain: promote one and serve it")
            return
        col = self.column()
        feature = col["column"] if col else None
        self.app.push_screen(ExplanationScreen(m["host"], m["name"], feature, summary=True))

    def action_reload(self) -> None:
        self.reload()
