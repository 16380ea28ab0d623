"""Serving: per model and variant, request rate, latency percentiles, errors, batch sizes, traffic split."""

from __future__ import annotations

import time
from collections import deque
from typing import Any, ClassVar

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Grid, Vertical

from mldeck.core.errors import MldeckError
from mldeck.tui.screens.base import screen_work, why
from mldeck.tui.screens.dialogs import Prompt
from mldeck.tui.screens.explanation import ExplanationScreen
from mldeck.tui.screens.panel import PolledScreen, per_host
from mldeck.tui.widgets.deck_table import Col, DeckTable, TableBox
from mldeck.tui.widgets.metric_chart import MetricChart

WINDOW_S = 10.0
KEEP = 150  # points per series: five minutes at one poll every two seconds
NO_TRAFFIC = "-"  # the variant of a served model that had no request in the window


def on_off(value: object) -> str:
    return "on" if value else "off"


def pct(value: object) -> str:
    return "-" if value is None else f"{value:.3g}%"


COLUMNS = [Col("host", priority=2), Col("model", priority=0, shrink_to=12), Col("variant", priority=0),
           Col("versions", priority=3), Col("rps", "req/s", priority=0), Col("p50_ms", "p50 ms", priority=2),
           Col("p95_ms", "p95 ms", priority=0), Col("p99_ms", "p99 ms", priority=2),
           Col("error_pct", "errors", priority=0, fmt=pct), Col("batches", "batch sizes", priority=4),
           Col("shadow", priority=3, fmt=on_off), Col("canary_pct", "canary", priority=3, fmt=pct),
           Col("aliases", priority=4)]
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
            rows.append({**common, "variant": NO_TRAFFIC, "rps": 0.0})
    return rows


class ServingScreen(PolledScreen):
    POLL_S = 2.0
    AUTO_FOCUS = "#serving"
    TITLE = "Serving"
    HELP = ("Live serving per model and variant (production, challenger shadow or canary): requests/s, "
            "p50/p95/p99 latency, error rate, batch sizes, traffic split; charts follow the selected model, "
            "all four over the same last minutes (0 = now).")
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("t", "shadow", "toggle shadow"),
        Binding("C", "canary", "canary %"),
        Binding("e", "explain", "explain the latest request"),
        Binding("ctrl+r", "reload", "reload", show=False),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[dict[str, Any]] = []
        self.history: dict[tuple[str, str, str], deque[tuple[float, dict[str, Any]]]] = {}
        self.t0 = time.time()
        self.now = 0.0
        self.shown: tuple[str, str] | None = None

    def compose(self) -> ComposeResult:
        yield self.header()
        with Vertical():
            yield TableBox(DeckTable(COLUMNS, row_key=("host", "model", "variant"), id="serving",
                                     empty="nothing served yet: promote a version to production"),
                           id="serving-box")
            with Grid(id="serving-charts"):
                for key, title in CHARTS.items():
                    yield MetricChart(title, xlabel="seconds (0 = now)", floor=0.0,
                                      id=f"chart-{key.replace('_', '-')}", classes="serving-chart")
        yield self.status_line()
        yield self.footer()

    async def refresh_once(self) -> None:
        notes: list[str] = []
        stats = await per_host(self, "serving.stats", notes, window_s=WINDOW_S)
        now = time.time() - self.t0
        rows = []
        idle = [host for host, s in stats.items() if not s.get("running")]
        if idle:
            notes.append(f"not serving: {', '.join(idle)} (`mldeck serve start --host NAME`)")
        for host, s in stats.items():
            rows += serving_rows(host, s)
        for r in rows:
            if r["variant"] != NO_TRAFFIC:
                key = (r["host"], r["model"], r["variant"])
                self.history.setdefault(key, deque(maxlen=KEEP)).append((now, r))
        self.now = now
        self.rows = rows
        self.query_one("#serving", DeckTable).records(rows)
        self.draw()
        said = f"{len(rows)} model variants, rates over the last {WINDOW_S:.0f}s"
        self.updated("  ·  ".join(notes) or said)

    def current(self) -> dict[str, Any] | None:
        return self.query_one("#serving", DeckTable).current()

    @on(DeckTable.RowHighlighted, "#serving")
    def highlighted(self) -> None:
        self.draw()

    def draw(self) -> None:
        """The selected model's variants over the same span, one chart per figure, 0 = the last poll."""
        cur = self.current()
        if cur is None:
            return
        self.shown = (cur["host"], cur["model"])
        series = {k: v for k, v in self.history.items() if k[:2] == self.shown}
        start = min((points[0][0] for points in series.values()), default=self.now)
        xlim = (start - self.now, 0.0) if start < self.now else None
        for key in CHARTS:
            chart = self.query_one(f"#chart-{key.replace('_', '-')}", MetricChart)
            chart.show({variant: ([t - self.now for t, _ in points], [p.get(key) for _, p in points])
                        for (_, _, variant), points in series.items()}, xlim)

    def action_reload(self) -> None:
        self.reload()

    def action_explain(self) -> None:
        """The selected model's latest logged request: its top features, values and reference percentiles."""
        row = self.current()
        if row is None:
            self.say("nothing served to explain: promote a version to production")
            return
        self.app.push_screen(ExplanationScreen(row["host"], row["model"]))

    def action_shadow(self) -> None:
        row = self.current()
        if row:
            self.traffic(row["host"], row["model"], shadow=not bool(row.get("shadow")))

    def action_canary(self) -> None:
        row = self.current()
        if not row:
            return

        now = f"{row.get('canary_pct') or 0:g}"

        def share(text: str | None) -> None:
            if text is None:
                return
            if not text.strip():
                self.say(f"canary unchanged at {now}%: type a share from 0 to 100")
                return
            try:
                value = float(text.strip().rstrip("%"))
            except ValueError:
                self.say(f"{text!r} is not a percentage between 0 and 100")
                return
            self.traffic(row["host"], row["model"], canary=value)

        self.app.push_screen(Prompt(f"Share of {row['model']}'s requests for the challenger (canary), in % "
                                    f"(now {now}%; 0 turns it off)", value=now,
                                    placeholder="a share from 0 to 100"), share)

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
