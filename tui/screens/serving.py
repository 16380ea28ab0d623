"""Serving: per model and variant, request rate, latency percentiles, errors, batch sizes, traffic split."""

from __future__ import annotations

import time
from collections import deque
from typing import Any, ClassVar

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Grid, Vertical
from textual.widgets import DataTable

from mldeck.core.errors import MldeckError
from mldeck.tui.screens.base import screen_work, why
from mldeck.tui.screens.dialogs import Prompt
from mldeck.tui.screens.panel import PolledScreen, fill, per_host
from mldeck.tui.widgets.metric_chart import MetricChart

WINDOW_S = 10.0
KEEP = 150  # points per series: five minutes at one poll every two seconds
COLUMNS = ["host", "model", "variant", "versions", "rps", "p50_ms", "p95_ms", "p99_ms", "error_pct",
           "batches", "shadow", "canary_pct", "aliases"]
CHARTS = {"rps": "requests/s", "p95_ms": "p95 latency (ms)", "p99_ms": "p99 latency (ms)",
          "error_pct": "errors (%)"}


def batch_text(sizes: dict[str, dict[str, int]]) -> str:
    """Batch-size histogram per version as `v2: ≤1×40 ≤8×12`."""
    return "  ".join(f"v{v}: " + " ".join(f"≤{b}×{n}" for b, n in hist.items()) for v, hist in sizes.items())


def serving_rows(host: str, stats: dict[str, Any]) -> list[dict[str, Any]]:
    """serving.stats → a row per model and variant (a served model without traffic gets one row)."""
    rows = []
    for name, info in (stats.get("models") or {}).items():
        common = {"host": host, "model": name, "shadow": info.get("shadow"), "canary_pct": info.get("canary"),
                  "aliases": " ".join(f"{a}=v{v}" for a, v in (info.get("aliases") or {}).items()),
                  "batches": batch_text(info.get("batch_sizes") or {})}
        variants = info.get("variants") or {}
        for variant, v in variants.items():
            rows.append({**common, "variant": variant, "versions": ",".join(map(str, v.get("versions", []))),
                         "rps": v.get("rps"), "p50_ms": v.get("p50_ms"), "p95_ms": v.get("p95_ms"),
                         "p99_ms": v.get("p99_ms"),
                         "error_pct": None if v.get("error_rate") is None else 100 * v["error_rate"]})
        if not variants:
            rows.append({**common, "variant": "-", "rps": 0.0})
    return rows


class ServingScreen(PolledScreen):
    POLL_S = 2.0
    FOCUS = "#serving"
    TITLE = "Serving"
    HELP = ("Live serving per model and variant (production, challenger shadow or canary): requests/s, "
            "p50/p95/p99 latency, error rate, batch sizes, traffic split; charts follow the selected model.")
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("t", "shadow", "toggle shadow"),
        Binding("C", "canary", "canary %"),
        Binding("ctrl+r", "reload", "reload", show=False),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[dict[str, Any]] = []
        self.history: dict[tuple[str, str, str], deque[tuple[float, dict[str, Any]]]] = {}
        self.t0 = time.time()
        self.shown: tuple[str, str] | None = None

    def compose(self) -> ComposeResult:
        yield self.header()
        with Vertical():
            yield DataTable(id="serving", cursor_type="row", zebra_stripes=True)
            with Grid(id="serving-charts"):
                for key, title in CHARTS.items():
                    yield MetricChart(title, xlabel="seconds", id=f"chart-{key.replace('_', '-')}",
                                      classes="serving-chart")
        yield self.status_line()
        yield self.footer()

    async def refresh_once(self) -> None:
        notes: list[str] = []
        stats = await per_host(self, "serving.stats", notes, window_s=WINDOW_S)
        now = time.time() - self.t0
        rows = []
        for host, s in stats.items():
            if not s.get("running"):
                notes.append(f"{host}: the model server is not running (`mldeck serve start --host {host}`)")
            rows += serving_rows(host, s)
        for r in rows:
            key = (r["host"], r["model"], r["variant"])
            self.history.setdefault(key, deque(maxlen=KEEP)).append((now, r))
        self.rows = rows
        fill(self.query_one("#serving", DataTable), COLUMNS, rows)
        self.draw()
        self.say("  ·  ".join(notes) or f"{len(rows)} model variants, last {WINDOW_S:.0f}s")

    def current(self) -> dict[str, Any] | None:
        row = self.query_one("#serving", DataTable).cursor_row
        return self.rows[row] if 0 <= row < len(self.rows) else None

    @on(DataTable.RowHighlighted, "#serving")
    def highlighted(self) -> None:
        self.draw()

    def draw(self) -> None:
        """The selected model's variants over time, one chart per figure."""
        cur = self.current()
        if cur is None:
            return
        self.shown = (cur["host"], cur["model"])
        series = {k: v for k, v in self.history.items() if k[:2] == self.shown}
        for key in CHARTS:
            chart = self.query_one(f"#chart-{key.replace('_', '-')}", MetricChart)
            chart.show({variant: ([t for t, _ in points], [p.get(key) for _, p in points])
                        for (_, _, variant), points in series.items()})

    def action_reload(self) -> None:
        self.reload()

    def action_shadow(self) -> None:
        row = self.current()
        if row:
            self.traffic(row["host"], row["model"], shadow=not bool(row.get("shadow")))

    def action_canary(self) -> None:
        row = self.current()
        if not row:
            return

        def share(text: str | None) -> None:
            if not text:
                return
            try:
                value = float(text.rstrip("%"))
            except ValueError:
                self.say(f"{text!r} is not a percentage between 0 and 100")
                return
            self.traffic(row["host"], row["model"], canary=value)

        self.app.push_screen(Prompt(f"Share of {row['model']}'s requests for the challenger (canary), in %",
                                    value=str(row.get("canary_pct") or ""), placeholder="10"), share)

    @screen_work(group="traffic")
    async def traffic(self, host: str, name: str, **change: Any) -> None:
        try:
            split = await self.call(host, "serving.traffic", name=name, **change)
        except MldeckError as exc:
            self.say(why(exc))
            return
        warning = split.get("warning")
        self.notify(warning or f"{name}: shadow {'on' if split.get('shadow') else 'off'}, "
                    f"canary {split.get('canary') or 0:g}%", severity="warning" if warning else "information")
        self.reload()
