"""Cost: each host's burn rate, spend over the last day, and idle GPUs as waste."""

from __future__ import annotations

from typing import Any, ClassVar

from tui.screens.panel import PanelScreen


class CostScreen(PanelScreen):
    TITLE = "Cost"
    HELP = "Per host over the last 24 h: price, burn per hour now, runs' cost, idle GPU time as waste."
    METHOD = "cost.host"
    PARAMS: ClassVar[dict[str, Any]] = {"since_s": 86400.0}
    COLUMNS: ClassVar[list[str] | None] = [
        "host", "gpu_count", "running_jobs", "burn_per_hour", "host_per_hour", "runs", "runs_cost_usd",
        "live_cost_usd", "idle_gpu_seconds", "idle_cost_usd",
    ]
