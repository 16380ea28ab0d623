"""SVG snapshots of the main screens (pytest-textual-snapshot); live values are fixed so they never drift.

Update after an intended change: `pytest tests/tui/test_snapshots.py --snapshot-update`.
"""

from __future__ import annotations

from typing import Any

import pytest

from mldeck.tui.app import MldeckApp
from mldeck.tui.fleet import Fleet
from mldeck.tui.screens.runs import runs_table
from mldeck.tui.widgets.host_row import HostRow
from tests.tui.conftest import Deck, until

SIZE = (120, 34)
pytestmark = pytest.mark.timeout(120)
GIB = 2**30


def frozen(deck: Deck) -> MldeckApp:
    """The app on the real agent, with its live feeds off: what a snapshot shows is fixed data."""
    return MldeckApp(lambda: Fleet({"local": None}, local_home=deck.home), live=False)


def canned_sample(t: int) -> dict[str, Any]:
    gpus = [
        {"index": i, "util_pct": (t * 7 + i * 40) % 100, "mem_used": (6 + 10 * i) * GIB,
         "mem_total": 40 * GIB, "temp_c": 50 + i * 9, "power_w": 180 + 60 * i, "processes": []}
        for i in range(2)
    ]
    return {"ts": 1000.0 + t, "cpu_pct": 37.0, "ram_used": 12 * GIB, "ram_total": 64 * GIB, "gpus": gpus}


def test_fleet_snapshot(deck: Deck, snap_compare: Any) -> None:
    async def feed(pilot: Any) -> None:
        row = await until(pilot, lambda: pilot.app.screen.query(HostRow).first(), what="host row")
        for t in range(40):
            row.feed(canned_sample(t))
        row.state, row.extras = "up", {"jobs": 1, "cost_h": 2.4, "rps": 120.0}
        row.paint()
        await pilot.pause()

    assert snap_compare(frozen(deck), terminal_size=SIZE, run_before=feed)


def test_runs_snapshot(deck: Deck, snap_compare: Any) -> None:
    async def load(pilot: Any) -> None:
        await pilot.press("2")
        runs = pilot.app.screen
        fixed = [r for r in deck.rpc("runs.list") if r["run_id"].startswith("run-")]
        for r in fixed:
            r["ended_at"] = r["started_at"] + 42.0
        runs.load(runs_table({"local": fixed}))
        await pilot.press("space")
        await pilot.pause()

    assert snap_compare(frozen(deck), terminal_size=SIZE, run_before=load)


def test_help_snapshot(deck: Deck, snap_compare: Any) -> None:
    assert snap_compare(frozen(deck), terminal_size=SIZE, press=["2", "question_mark"])


def test_launch_snapshot(deck: Deck, snap_compare: Any) -> None:
    assert snap_compare(frozen(deck), terminal_size=SIZE, press=["4"])
