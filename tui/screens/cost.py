"""Cost: per host, per run and per model over a chosen period; idle GPUs as waste; oversized runs."""

from __future__ import annotations

from typing import Any, ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.widgets import Static

from mldeck.tui.screens.panel import PolledScreen, one, per_host
from mldeck.tui.units import money
from mldeck.tui.widgets.deck_table import Col, DeckTable, TableBox

PERIODS = [("1 h", 3600.0), ("24 h", 86400.0), ("7 days", 7 * 86400.0), ("30 days", 30 * 86400.0)]
RUNS_LIMIT = 200
OVERSIZED = 0.5  # a run that peaked under half the GPU memory it held could have used a smaller GPU


def per_hour(x: float | None) -> str:
    return "-" if x is None else f"{money(x)}/h"


def hours(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f} h"


def gib(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f} GiB"


def pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.0f}%"


HOST_COLUMNS = [Col("host", priority=0), Col("gpu_count", "GPUs", priority=1),
                Col("running_jobs", "jobs running", priority=2),
                Col("burn_per_hour", "burning", priority=0, fmt=per_hour),
                Col("host_per_hour", "host rate", priority=3, fmt=per_hour), Col("runs", priority=2),
                Col("runs_cost_usd", "spent on runs", priority=0, fmt=money),
                Col("live_cost_usd", "running now", priority=2, fmt=money),
                Col("idle_gpu_hours", "idle GPU time", priority=1, fmt=hours),
                Col("idle_cost_usd", "idle waste", priority=0, fmt=money, style=lambda x: "red" if x else "")]
RUN_COLUMNS = [Col("host", priority=3), Col("run_id", "run", priority=2),
               Col("name", priority=0, shrink_to=14), Col("status", priority=1),
               Col("gpus", "GPUs", priority=2),
               Col("cost_usd", "cost", priority=0, fmt=money),
               Col("gpu_hours", "GPU time", priority=1, fmt=hours),
               Col("peak_gib", "peak memory", priority=2, fmt=gib),
               Col("held_gib", "held", priority=2, fmt=gib),
               Col("mem_used_pct", "memory used", priority=1, fmt=pct),
               Col("right_size", "right size", priority=0, style=lambda x: "yellow" if x else "")]
MODEL_COLUMNS = [Col("host", priority=3), Col("model", priority=0), Col("versions", priority=2),
                 Col("runs", priority=2), Col("training_usd", "training", priority=1, fmt=money),
                 Col("requests", priority=1), Col("serving_usd", "serving", priority=1, fmt=money),
                 Col("cost_usd", "total", priority=0, fmt=money)]


def run_row(host: str, r: dict[str, Any]) -> dict[str, Any]:
    frac = r.get("mem_used_frac")
    gib = 2**30
    return {
        "host": host, **{k: r.get(k) for k in ("run_id", "name", "status", "gpus", "cost_usd")},
        "gpu_hours": (r.get("gpu_seconds") or 0) / 3600,
        "peak_gib": None if r.get("peak_gpu_mem") is None else r["peak_gpu_mem"] / gib,
        "held_gib": None if r.get("held_gpu_mem") is None else r["held_gpu_mem"] / gib,
        "mem_used_pct": None if frac is None else 100 * frac,
        "right_size": "oversized" if frac is not None and frac < OVERSIZED else "",
    }


def model_rows(host: str, versions: dict[str, list[dict[str, Any]]], runs: list[dict[str, Any]],
               serving: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each model's cost in the period: the runs its versions came from, and its share of the server."""
    cost = {r["run_id"]: r.get("cost_usd") or 0.0 for r in runs}
    served = {s["model"]: s for s in serving}
    out = []
    for name, vs in versions.items():
        ids = {v.get("run_id") for v in vs if v.get("run_id") in cost}
        training = sum(cost[i] for i in ids)
        share = served.get(name) or {}
        out.append({"host": host, "model": name, "versions": len(vs), "runs": len(ids),
                    "training_usd": training, "requests": share.get("requests", 0),
                    "serving_usd": share.get("serving_usd", 0.0),
                    "cost_usd": training + share.get("serving_usd", 0.0)})
    return out


class CostScreen(PolledScreen):
    POLL_S = 10.0
    AUTO_FOCUS = "#cost-runs"
    TITLE = "Cost"
    HELP = ("Spend per host, per run and per model (its runs, and its share of the model server by requests) "
            "over a period (p changes it); idle GPU time as waste; "
            "runs whose peak GPU memory was far below what they held (right-sizing).")
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("p", "period", "period"),
        Binding("tab", "switch", "next table"),
        Binding("ctrl+r", "reload", "reload", show=False),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.period = 1

    def compose(self) -> ComposeResult:
        yield self.header()
        with Vertical():
            yield Static(id="cost-summary", classes="section")
            yield TableBox(DeckTable(HOST_COLUMNS, row_key=("host",), id="cost-hosts"), id="cost-hosts-box")
            yield TableBox(DeckTable(RUN_COLUMNS, row_key=("host", "run_id"), id="cost-runs",
                                     empty="no run in this period"), id="cost-runs-box")
            yield TableBox(DeckTable(MODEL_COLUMNS, row_key=("host", "model"), id="cost-models",
                                     empty="no model yet"), id="cost-models-box")
        yield self.status_line()
        yield self.footer()

    async def refresh_once(self) -> None:
        label, since = PERIODS[self.period]
        notes: list[str] = []
        hosts = await per_host(self, "cost.host", notes, since_s=since)
        runs = await per_host(self, "cost.runs", notes, since_s=since, limit=RUNS_LIMIT)
        serving = await per_host(self, "cost.models", notes, since_s=since)
        host_rows = [{"host": h, **c, "idle_gpu_hours": (c.get("idle_gpu_seconds") or 0) / 3600}
                     for h, c in hosts.items()]
        run_rows = [run_row(h, r) for h, rs in runs.items() for r in rs]
        models: list[dict[str, Any]] = []
        for host, rs in runs.items():
            listed = await one(self, host, "models.list", notes) or []
            versions = {}
            for m in listed:
                versions[m["name"]] = await one(self, host, "models.versions", notes, name=m["name"]) or []
            models += model_rows(host, versions, rs, serving.get(host) or [])
        self.query_one("#cost-hosts", DeckTable).records(host_rows)
        self.query_one("#cost-runs", DeckTable).records(run_rows)
        self.query_one("#cost-models", DeckTable).records(models)
        spent = sum(r.get("runs_cost_usd") or 0 for r in host_rows)
        waste = sum(r.get("idle_cost_usd") or 0 for r in host_rows)
        burn = sum(r.get("burn_per_hour") or 0 for r in host_rows)
        oversized = sum(1 for r in run_rows if r["right_size"])
        summary = Text.assemble(
            (f"last {label}", "bold"), f"  spent {money(spent)} on runs  ·  burning {money(burn)}/h now  ·  ",
            (f"idle GPUs wasted {money(waste)}", "red" if waste else ""), "  ·  ",
            (f"{oversized} run(s) held far more GPU memory than they used", "yellow" if oversized else ""),
            ("   (p: period)", "dim"),
        )
        self.query_one("#cost-summary", Static).update(summary)
        self.updated("  ·  ".join(notes) or f"{len(run_rows)} runs over {len(host_rows)} hosts")

    def action_period(self) -> None:
        self.period = (self.period + 1) % len(PERIODS)
        self.reload()

    def action_switch(self) -> None:
        ids = ["#cost-hosts", "#cost-runs", "#cost-models"]
        at = next((i for i, x in enumerate(ids) if self.query_one(x).has_focus), -1)
        self.query_one(ids[(at + 1) % len(ids)], DeckTable).focus()

    def action_reload(self) -> None:
        self.reload()
