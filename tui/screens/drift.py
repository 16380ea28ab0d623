"""Drift: per model, each column's test, statistic and drifted flag, from the agent's monitor."""

from __future__ import annotations

from tui.screens.panel import PanelScreen


class DriftScreen(PanelScreen):
    TITLE = "Drift"
    HELP = "Each served model's input columns against its reference: test, statistic, drifted."
    METHOD = "drift.status"
