"""The TUI driven by Pilot against a real agent: navigate, filter, mark, compare, promote, roll back."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from mldeck.tui.app import MldeckApp
from mldeck.tui.fleet import Fleet
from mldeck.tui.screens.compare import CompareScreen
from mldeck.tui.screens.dialogs import DemoLog, HelpScreen, ReasonConfirm
from mldeck.tui.screens.host import HostScreen
from mldeck.tui.screens.logs import LogsScreen
from mldeck.tui.screens.promote import AliasPicker, PromoteDialog
from mldeck.tui.screens.registry import AuditScreen, RegistryScreen
from mldeck.tui.screens.run_detail import RunDetailScreen
from mldeck.tui.screens.runs import RunsScreen
from mldeck.tui.widgets.deck_table import DeckTable
from mldeck.tui.widgets.host_row import HostLine, HostRow
from mldeck.tui.widgets.metric_chart import MetricChart
from tests.conftest import REPO
from tests.tui.conftest import Deck, promo_from_scratch, text_of, until

SIZE = (140, 42)
pytestmark = pytest.mark.timeout(120)


def app_for(deck: Deck) -> MldeckApp:
    return MldeckApp(lambda: Fleet({"local": None}, local_home=deck.home))


def run(coro: Any) -> None:
    asyncio.run(coro)


def test_fleet_live_host_detail_help_and_commands(deck: Deck) -> None:
    async def go() -> None:
        app = app_for(deck)
        async with app.run_test(size=SIZE) as pilot:
            row = await until(pilot, lambda: app.screen.query(HostRow).first(), what="host row")
            await until(pilot, lambda: len(row.sparks) == 2 and row.state == "up", what="2 live GPUs")
            first = row.snapshot["ts"]
            await until(pilot, lambda: row.snapshot["ts"] > first, what="a live update")
            line = lambda: app.screen.query_one(HostLine).long.plain  # noqa: E731
            await until(pilot, lambda: "simulated GPUs" in line(), what="the simulated GPUs labelled")
            assert "CPU" in line()
            await pilot.press("question_mark")
            assert isinstance(app.screen, HelpScreen)
            await pilot.press("escape", "enter")
            host = await until(pilot, lambda: isinstance(app.screen, HostScreen) and app.screen, what="host")
            await until(pilot, lambda: len(host.query(MetricChart)) == 2, what="a chart per GPU")
            await pilot.press("escape")
            await pilot.press("colon", *"runs", "enter")
            assert app.current_mode == "runs"
            await pilot.press("colon", *"host nowhere", "enter")
            assert app.current_mode == "runs" and not isinstance(app.screen, HostScreen)
            await pilot.press("colon", *"host local", "enter")
            assert isinstance(app.screen, HostScreen)
            await pilot.press("5")
            await until(pilot, lambda: isinstance(app.screen, RegistryScreen), what="Registry")

    run(go())


def test_runs_filter_sort_mark_compare_detail_logs(deck: Deck) -> None:
    expected_high = {r["run_id"] for r in deck.rpc("runs.list") if (r["metrics"].get("val_acc") or 0) > 0.9}

    async def go() -> None:
        app = app_for(deck)
        async with app.run_test(size=SIZE) as pilot:
            await pilot.press("2")
            runs: RunsScreen = app.screen  # type: ignore[assignment]
            await until(pilot, lambda: runs.view.num_rows >= 7, what="all runs")
            await pilot.press("slash", *"status:succeeded mlp-")
            assert set(runs.view["run_id"].to_pylist()) == {"run-a", "run-b", "run-c"}
            await pilot.press(*("backspace" for _ in "status:succeeded mlp-"), *"val_acc>0.9")
            assert set(runs.view["run_id"].to_pylist()) == expected_high
            await pilot.press(*("backspace" for _ in "val_acc>0.9"), *"mlp-", "enter")
            runs.table.sort_by("name", False)
            assert runs.view["name"].to_pylist() == ["mlp-deep", "mlp-small", "mlp-wide"]
            await pilot.press("s")
            assert "only queued or running" in text_of(runs.query_one("#status"))
            await pilot.press("space", "space")
            assert runs.marks == {"local/run-c", "local/run-a"}
            assert runs.view[" "].to_pylist()[:2] == ["✓", "✓"]
            await pilot.press("c")
            cmp = await until(pilot, lambda: isinstance(app.screen, CompareScreen) and app.screen,
                              what="compare")
            await until(pilot, lambda: len(cmp.query(MetricChart)) == 2, what="loss and val_acc charts")
            params = text_of(cmp.query_one("#compare-params"))
            assert "lr" in params and "batch" in params
            assert "final" in text_of(cmp.query_one("#compare-summary"))
            await pilot.press("2", "up", "enter")
            detail = await until(pilot, lambda: isinstance(app.screen, RunDetailScreen) and app.screen,
                                 what="run detail")
            await until(pilot, lambda: {c.title for c in detail.query(MetricChart)} >= {"loss", "val_acc"},
                        what="metric charts")
            await pilot.press("l")
            logs = await until(pilot, lambda: isinstance(app.screen, LogsScreen) and app.screen, what="logs")
            await until(pilot, lambda: "bytes" in text_of(logs.query_one("#status")), what="log state")
            assert "no checkpoints" in text_of(detail.query_one("#run-checkpoints"))  # run-a has none
            await pilot.press("escape", "escape", "up", "enter")  # run-c, which checkpoints every 10 steps
            deep = await until(pilot, lambda: isinstance(app.screen, RunDetailScreen) and app.screen.run_id
                               == "run-c" and app.screen, what="run-c's detail")
            await until(pilot, lambda: "ckpt-000000029.pt" in text_of(deep.query_one("#run-checkpoints")),
                        what="run-c's checkpoints")
            listed = text_of(deep.query_one("#run-checkpoints"))
            assert "ckpt-000000019.pt" in listed and listed.count("← resume") == 1

    run(go())


def test_promote_in_few_keys_gates_fail_and_rollback(deck: Deck) -> None:
    promo_from_scratch(deck)

    async def go() -> None:
        app = app_for(deck)
        async with app.run_test(size=SIZE) as pilot:
            keys = ["5", "enter", "p", "enter", *"gate passed", "enter"]
            await pilot.press(keys[0])
            reg: RegistryScreen = app.screen  # type: ignore[assignment]
            await until(pilot, lambda: reg.selected and reg.selected[1]["name"] == "promo" and reg.versions,
                        what="promo's versions")
            await pilot.press(*keys[1:3])
            await until(pilot, lambda: isinstance(app.screen, AliasPicker), what="alias picker")
            await pilot.press(keys[3])
            dialog = await until(pilot, lambda: isinstance(app.screen, PromoteDialog) and app.screen,
                                 what="promote dialog")
            assert "val_acc" in text_of(dialog.query_one("#deltas"))
            await until(pilot, lambda: "all passed" in text_of(dialog.query_one("#gates")),
                        what="gates passed before enter")
            await pilot.press(*keys[4:])
            await until(pilot, lambda: isinstance(app.screen, RegistryScreen), what="dialog closed")
            assert deck.rpc("models.audit", name="promo")[-1]["comment"] == "gate passed"
            assert deck.rpc("models.get", name="promo", alias="production")["version"] == 2
            await until(pilot, lambda: "production → v2" in text_of(reg.query_one("#status")),
                        what="promotion reported")

            # v1 (val_acc 0.90) fails the production gate: the dialog says why before Enter (a dry run),
            # Enter then refuses, and nothing moves
            audited = len(deck.rpc("models.audit", name="promo"))
            await pilot.press("down", "p")
            await until(pilot, lambda: isinstance(app.screen, AliasPicker), what="alias picker")
            await pilot.press("enter")
            dialog = await until(pilot, lambda: isinstance(app.screen, PromoteDialog) and app.screen,
                                 what="promote dialog")
            await until(pilot, lambda: dialog.failed, what="failed gates shown before enter")
            assert "val_acc" in text_of(dialog.query_one("#gates"))
            assert "force" in text_of(dialog.query_one("#promote-keys"))
            await pilot.press("enter")
            assert len(deck.rpc("models.audit", name="promo")) == audited
            await pilot.press("escape")
            assert deck.rpc("models.get", name="promo", alias="production")["version"] == 2

            # staging: v1 then v2, then roll back to v1 (with confirmation)
            for down in (["down"], ["up"]):
                await pilot.press(*down, "p")
                await until(pilot, lambda: isinstance(app.screen, AliasPicker), what="alias picker")
                await pilot.press("down", "enter")
                await until(pilot, lambda: isinstance(app.screen, PromoteDialog), what="dialog")
                await pilot.press("enter")
                await until(pilot, lambda: isinstance(app.screen, RegistryScreen), what="dialog closed")
            assert deck.rpc("models.get", name="promo", alias="staging")["version"] == 2
            await pilot.press("b")
            await until(pilot, lambda: isinstance(app.screen, AliasPicker), what="alias picker")
            await pilot.press("down", "enter")
            await until(pilot, lambda: isinstance(app.screen, ReasonConfirm), what="confirmation")
            await pilot.press("enter")
            await until(pilot, lambda: deck.rpc("models.get", name="promo", alias="staging")["version"] == 1,
                        what="rollback")
            await pilot.press("A")
            audit = await until(pilot, lambda: isinstance(app.screen, AuditScreen) and app.screen,
                                what="audit")
            await until(pilot, lambda: audit.query_one(DeckTable).row_count >= 4, what="audit rows")

    run(go())


def test_launch_validates_then_opens_the_new_run(deck: Deck) -> None:
    async def go() -> None:
        app = app_for(deck)
        async with app.run_test(size=SIZE) as pilot:
            await pilot.press("4")
            launch = app.screen
            await pilot.press("ctrl+s")
            await until(pilot, lambda: "not sent: script" in text_of(launch.query_one("#status")),
                        what="the missing script refused")
            launch.query_one("#script").value = str(REPO / "tests/tui/make_runs.py")
            launch.query_one("#params").value = "lr=0.3 =oops"
            await pilot.press("ctrl+s")
            await until(pilot, lambda: "must look like name=value" in text_of(launch.query_one("#status")),
                        what="the bad param refused")
            launch.query_one("#params").value = "lr=0.3"
            await pilot.press("ctrl+s")
            detail = await until(pilot, lambda: isinstance(app.screen, RunDetailScreen) and app.screen,
                                 timeout=90, what="the launched run")
            await until(pilot, lambda: deck.rpc("runs.get", run_id=detail.run_id)["status"] == "succeeded",
                        timeout=120, what="the launched run to finish")

    run(go())


def test_demo_story_runs_after_the_first_frame_and_says_each_step(deck: Deck) -> None:
    async def story(client: Any, say: Any) -> dict[str, Any]:
        hello = await client.call("hello")
        say(f"step 1: the agent speaks protocol {hello['protocol']}")
        runs = await client.call("runs.list")
        say(f"step 2: {len(runs)} runs")
        return {"runs": len(runs)}

    async def broken(client: Any, say: Any) -> dict[str, Any]:
        say("step 1")
        raise RuntimeError("step 2 went wrong")

    async def go() -> None:
        app = MldeckApp(lambda: Fleet({"local": None}, local_home=deck.home), story=story)
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: app.story_result, what="the story's result")
            assert app.story_result == {"runs": len(deck.rpc("runs.list"))}
            assert app.story_lines[0].startswith("step 1: the agent speaks protocol")
            assert app.story_lines[1] == f"step 2: {app.story_result['runs']} runs"
            assert app.story_error is None and "keep exploring" in app.sub_title
            await pilot.press("colon", *"demo", "enter")
            assert "step 2" in text_of(app.screen.query("Static")[1])
        app = MldeckApp(lambda: Fleet({"local": None}, local_home=deck.home), story=broken)
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: app.story_error, what="the story's failure")
            assert "step 2 went wrong" in app.sub_title and app.story_lines[0] == "step 1"
            log = await until(pilot, lambda: isinstance(app.screen, DemoLog) and app.screen,
                              what="the story left on screen")
            shown = text_of(log.query("Static")[1])
            assert "step 1" in shown and "the demo failed: step 2 went wrong" in shown

    run(go())
