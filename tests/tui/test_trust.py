"""Issue 17, a control center you can trust at a glance: live numbers, a keyboard that never gets stuck,
tables that filter and sort, promotions that say why, and every key column at 80×24. Pilot against a real
agent (the model server answering real HTTP for the serving rate)."""

from __future__ import annotations

import asyncio
import re
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from textual.widgets import Input

from mldeck.tui.app import MldeckApp
from mldeck.tui.screens.dialogs import HelpScreen, ReasonConfirm
from mldeck.tui.screens.fleet import FleetScreen
from mldeck.tui.screens.launch import LaunchScreen
from mldeck.tui.screens.promote import AliasPicker, PromoteDialog, deltas
from mldeck.tui.screens.registry import RegistryScreen
from mldeck.tui.screens.run_detail import RunDetailScreen
from mldeck.tui.screens.runs import RunsScreen
from mldeck.tui.screens.serving import WINDOW_S, ServingScreen
from mldeck.tui.units import money
from mldeck.tui.widgets.deck_table import DeckTable
from mldeck.tui.widgets.gpu_spark import GpuSpark
from mldeck.tui.widgets.host_row import HostLine, HostNotes, HostRow
from tests.conftest import REPO, wait_for
from tests.tui.conftest import Deck, promo_from_scratch, text_of, until
from tests.tui.test_app import SIZE, app_for, run
from tests.tui.test_screens_live import answers, infer

pytestmark = pytest.mark.timeout(240)
SMALL = (80, 24)


def hold(deck: Deck, tmp: Path, name: str, total_steps: int | None = None) -> tuple[str, Path]:
    """A launched run that logs until its stop file appears: (run id, stop file)."""
    stop = tmp / f"stop-{name}"
    env = {"STOP_FILE": str(stop)} | ({"TOTAL_STEPS": str(total_steps)} if total_steps else {})
    run_id = deck.rpc("runs.launch", script=str(REPO / "tests/tui/hold_gpu.py"), gpus=0, name=name,
                      env=env)["run_id"]
    wait_for(lambda: deck.rpc("runs.get", run_id=run_id)["status"] == "running", timeout=60,
             what=f"{name} running")
    return run_id, stop


def facts(detail: RunDetailScreen) -> str:
    return text_of(detail.query_one("#run-facts"))


def fact(detail: RunDetailScreen, key: str) -> str:
    line = next(line for line in facts(detail).splitlines() if line.strip().startswith(key + " "))
    return line.split(key, 1)[1].strip()


async def open_detail(app: MldeckApp, pilot: Any, run_id: str) -> RunDetailScreen:
    app.push_screen(RunDetailScreen("local", run_id))
    return await until(pilot, lambda: isinstance(app.screen, RunDetailScreen) and app.screen.run is not None
                       and "status " in facts(app.screen) and app.screen, what="the run's detail")


def test_run_detail_header_follows_the_run_to_its_end(deck: Deck, tmp_path: Path) -> None:
    done_id, done_stop = hold(deck, tmp_path, "follow-me")
    stopped_id, stopped_stop = hold(deck, tmp_path, "stop-me")

    async def go() -> None:
        app = app_for(deck)
        async with app.run_test(size=SIZE) as pilot:
            detail = await open_detail(app, pilot, done_id)
            assert fact(detail, "status") == "running"
            await until(pilot, lambda: detail.charts and not detail.query("#no-metrics"), what="a live chart")
            first = fact(detail, "duration")
            await until(pilot, lambda: fact(detail, "duration") != first, what="the duration ticking")
            done_stop.touch()
            await until(pilot, lambda: fact(detail, "status") == "succeeded", timeout=60,
                        what="the header saying the run succeeded")
            assert "run finished: succeeded" in text_of(detail.query_one("#status"))
            assert fact(detail, "cost").startswith(("$", "<$"))
            ended = fact(detail, "duration")
            await pilot.pause(2.2)
            assert fact(detail, "duration") == ended  # a finished run's duration stands still

            await pilot.press("escape")
            detail = await open_detail(app, pilot, stopped_id)
            stop = await asyncio.to_thread(deck.agent.cli, "runs", "stop", stopped_id)
            assert stop.code == 0, stop.err
            await until(pilot, lambda: fact(detail, "status") == "stopped", timeout=60,
                        what="the header saying stopped, as the CLI did")
            await pilot.press("escape", "2")
            runs: RunsScreen = app.screen  # type: ignore[assignment]
            status = lambda: next((r["status"] for r in runs.view.to_pylist() if r["run_id"] == stopped_id),  # noqa: E731
                                  None)
            await until(pilot, lambda: status() == "stopped", what="the table saying stopped too")

    try:
        run(go())
    finally:  # a failure must not leave the jobs holding the deck's job slots
        done_stop.touch()
        stopped_stop.touch()


def test_a_run_that_said_its_total_shows_progress_and_eta(deck: Deck, tmp_path: Path) -> None:
    run_id, stop = hold(deck, tmp_path, "progress", total_steps=1000)
    try:
        async def go() -> None:
            app = app_for(deck)
            async with app.run_test(size=SIZE) as pilot:
                detail = await open_detail(app, pilot, run_id)
                await until(pilot, lambda: "ETA" in fact(detail, "progress"), timeout=30,
                            what="the run's progress and ETA in its header")
                assert re.fullmatch(r"step \d+/1,000 \d+% · ETA \S+", fact(detail, "progress"))
                await pilot.press("escape", "2")
                runs: RunsScreen = app.screen  # type: ignore[assignment]
                row = lambda: next((r for r in runs.view.to_pylist() if r["run_id"] == run_id), {})  # noqa: E731
                await until(pilot, lambda: (row().get("progress") or 0) > 0 and row().get("eta") is not None,
                            what="the run's share done and ETA in Runs")
                assert 0 < row()["progress"] < 1
                shown = runs.table.header().text
                assert "done" in shown and "ETA" in shown

        run(go())
    finally:
        stop.touch()


def test_fleet_lists_each_hosts_running_jobs_with_their_progress(deck: Deck, tmp_path: Path) -> None:
    _, stop = hold(deck, tmp_path, "fleet-job", total_steps=500)
    try:
        async def go() -> None:
            app = app_for(deck)
            async with app.run_test(size=SIZE) as pilot:
                row = await until(pilot, lambda: app.screen.query(HostRow).first(), what="the host row")
                notes = lambda: "\n".join(line.plain for line in row.query_one(HostNotes).lines)  # noqa: E731
                await until(pilot, lambda: "/500 " in notes(), timeout=30,
                            what="the running job under its host, with its progress")
                line = next(line for line in notes().splitlines() if "/500 " in line)
                shape = r"▸ gpu-holder\s+CPU\s+step \d+/500 \d+% · ETA \S+\s+running \d+"
                assert re.search(shape, line), line

        run(go())
    finally:
        stop.touch()


def test_esc_leaves_a_field_then_the_screen_and_digits_jump_again(deck: Deck) -> None:
    async def go() -> None:
        app = app_for(deck)
        async with app.run_test(size=SIZE) as pilot:
            await pilot.press("4")
            launch: LaunchScreen = app.screen  # type: ignore[assignment]
            assert isinstance(launch, LaunchScreen) and not isinstance(app.focused, Input)
            metric = launch.query_one("#metric", Input)
            metric.focus()
            await pilot.press("2", "7")
            assert metric.value == "27" and app.current_mode == "launch"  # a text field takes the digits
            assert "esc leaves the field" in text_of(launch.query_one("#status"))
            await pilot.press("escape")
            assert app.current_mode == "launch" and not isinstance(app.focused, Input)
            await pilot.press("escape")
            assert app.current_mode == "fleet"  # the second Esc leaves the screen: back where we came from
            await pilot.press("4")
            assert not isinstance(app.focused, Input)
            await pilot.press("2", "7", "7")
            assert app.current_mode == "drift" and metric.value == "27"

    run(go())


def test_fleet_serving_rate_is_the_serving_screens_under_traffic(deck: Deck) -> None:
    deck.rpc("models.promote", name="tiny", version=2, alias="production", reason="serve it in the TUI test")
    status = wait_for(lambda: (s := deck.rpc("serving.status"))["running"]
                      and "tiny" in s["manifest"]["models"] and s, timeout=90, what="tiny served")
    wait_for(lambda: answers(status["url"]), timeout=60, what="tiny answering")
    stop = threading.Event()

    def traffic() -> None:
        while not stop.is_set():
            infer(status["url"], 1)
            time.sleep(0.05)

    sender = threading.Thread(target=traffic, daemon=True)
    sender.start()
    time.sleep(WINDOW_S + 1)  # a whole rate window of steady traffic, so both screens read the same rate

    async def go() -> None:
        app = app_for(deck)
        async with app.run_test(size=SIZE) as pilot:
            fleet: FleetScreen = app.screen  # type: ignore[assignment]
            row = await until(pilot, lambda: fleet.query(HostRow).first(), what="the host row")
            await until(pilot, lambda: (row.extras.get("rps") or 0) > 1, timeout=30,
                        what="the Fleet's serving rate above 1 rps")
            fleet_rps = row.extras["rps"]
            await until(pilot, lambda: f"serving {row.extras['rps']:.1f} rps" in text_of_line(row),
                        what="the rate on the host's line")
            await pilot.press("6")
            serving: ServingScreen = app.screen  # type: ignore[assignment]
            await until(pilot, lambda: sum(r.get("rps") or 0 for r in serving.rows) > 1, timeout=30,
                        what="the Serving screen's rate")
            serving_rps = sum(r.get("rps") or 0 for r in serving.rows)
            assert serving_rps == pytest.approx(fleet_rps, rel=0.5)

    try:
        run(go())
    finally:
        stop.set()
        sender.join(10)


def text_of_line(row: HostRow) -> str:
    line = row.query_one(HostLine)
    return line.long.plain


def test_tables_filter_and_sort_by_the_column_under_the_cursor(deck: Deck) -> None:
    async def go() -> None:
        app = app_for(deck)
        async with app.run_test(size=SIZE) as pilot:
            await pilot.press("5")
            reg: RegistryScreen = app.screen  # type: ignore[assignment]
            models = reg.models_table
            await until(pilot, lambda: models.row_count >= 2, what="the models")
            await pilot.press("slash", *"promo")
            assert [r["name"] for r in models.view.to_pylist()] == ["promo"]
            await pilot.press("escape")
            assert models.has_focus and models.filter_text == "promo"

            await pilot.press("2")
            runs: RunsScreen = app.screen  # type: ignore[assignment]
            table = runs.table
            await until(pilot, lambda: table.row_count >= 3, what="the runs")
            at = [c.key for c in table.columns].index("m:val_acc")
            await pilot.press(*["right"] * (at - table.col), "o")
            assert table.sort_key == "m:val_acc" and table.descending
            values = [v for v in table.view["m:val_acc"].to_pylist() if v is not None]
            assert values == sorted(values, reverse=True)
            assert "val_acc ▼" in table.header().text
            await pilot.press("o")
            assert not table.descending and "val_acc ▲" in table.header().text

    run(go())


def test_promotion_and_rollback_ask_why_and_name_the_version(deck: Deck) -> None:
    promo_from_scratch(deck)

    async def go() -> None:
        app = app_for(deck)
        async with app.run_test(size=SIZE) as pilot:
            await pilot.press("5")
            reg: RegistryScreen = app.screen  # type: ignore[assignment]
            await until(pilot, lambda: reg.models_table.row_count >= 2, what="the models")
            at = [r["name"] for r in reg.models_table.view.to_pylist()].index("promo")
            reg.models_table.move_cursor(at)
            await until(pilot, lambda: reg.selected and reg.selected[1]["name"] == "promo", what="promo")
            for version in (1, 2):  # staging takes v1, then v2
                row = [r["version"] for r in reg.versions_table.view.to_pylist()].index(version)
                reg.versions_table.move_cursor(row)
                await pilot.press("p")
                await until(pilot, lambda: isinstance(app.screen, AliasPicker), what="alias picker")
                await pilot.press("down", "enter")
                dialog = await until(pilot, lambda: isinstance(app.screen, PromoteDialog) and app.screen,
                                     what="promote dialog")
                await pilot.press(*f"staging v{version}", "enter")
                await until(pilot, lambda: isinstance(app.screen, RegistryScreen), what="dialog closed")
                assert dialog.alias == "staging"
            assert deck.rpc("models.audit", name="promo")[-1]["comment"] == "staging v2"

            # production needs a reason: Enter without one does nothing
            row = [r["version"] for r in reg.versions_table.view.to_pylist()].index(2)
            reg.versions_table.move_cursor(row)
            await pilot.press("p")
            await until(pilot, lambda: isinstance(app.screen, AliasPicker), what="alias picker")
            await pilot.press("enter")
            await until(pilot, lambda: isinstance(app.screen, PromoteDialog), what="promote dialog")
            await pilot.press("enter")
            assert isinstance(app.screen, PromoteDialog)
            await pilot.press(*"beats v1", "enter")
            await until(pilot, lambda: isinstance(app.screen, RegistryScreen), what="dialog closed")
            assert deck.rpc("models.audit", name="promo")[-1]["comment"] == "beats v1"

            # rollback: production first, the confirmation names where it goes back to
            await until(pilot, lambda: reg.selected and "production" in reg.selected[1]["held"],
                        what="the new alias listed")
            await pilot.press("b")
            picker = await until(pilot, lambda: isinstance(app.screen, AliasPicker) and app.screen,
                                 what="alias picker")
            assert picker.aliases[0] == "production"
            await pilot.press("down", "enter")  # staging: v2 now, v1 before
            confirm = await until(pilot, lambda: isinstance(app.screen, ReasonConfirm) and app.screen,
                                  what="the rollback's confirmation")
            assert "v2 → v1" in confirm.question
            await pilot.press(*"v2 misbehaves", "enter")
            await until(pilot, lambda: deck.rpc("models.get", name="promo", alias="staging")["version"] == 1,
                        what="the rollback")
            entry = deck.rpc("models.audit", name="promo")[-1]
            assert entry["action"] == "rollback" and entry["comment"] == "v2 misbehaves"

    run(go())


def test_deltas_are_coloured_by_the_metrics_direction_and_money_reads_as_money() -> None:
    table = deltas({"metrics": {"train_loss": 0.312, "val_loss": 0.2, "val_acc": 0.95}},
                   {"metrics": {"train_loss": 0.3, "val_loss": 0.394, "val_acc": 0.9}})
    styles = {str(m): c.style for m, c in zip(table.columns[0].cells, table.columns[3].cells, strict=True)}
    assert styles == {"train_loss": "red", "val_acc": "green", "val_loss": "green"}
    assert [money(x) for x in (5.222e-06, 0.0001327, 0.0, 2.5, 12345.6, None)] == \
        ["<$0.01", "<$0.01", "$0.00", "$2.50", "$12,346", "-"]


def test_at_80x24_the_key_columns_stay_and_the_help_scrolls_to_its_end(deck: Deck) -> None:
    async def go() -> None:
        app = app_for(deck)
        async with app.run_test(size=SMALL) as pilot:
            row = await until(pilot, lambda: app.screen.query(HostRow).first(), what="the host row")
            line = row.query_one(HostLine)
            await until(pilot, lambda: len(row.sparks) == 2 and "CPU" in line.long.plain
                        and "jobs -" not in line.long.plain, what="GPUs, load and jobs painted")
            shown = line.render().plain
            assert len(shown) <= line.size.width
            for fact_ in ("CPU", "RAM", "jobs", "/h", "rps"):
                assert fact_ in shown, shown
            for spark in row.query(GpuSpark):
                drawn = spark.render().plain
                assert len(drawn) <= spark.size.width and "°C" in drawn and "W" in drawn and "mem" in drawn

            await pilot.press("2")
            runs: RunsScreen = app.screen  # type: ignore[assignment]
            await until(pilot, lambda: runs.table.row_count >= 3, what="the runs")
            titles = [runs.table.columns[i].title for i in runs.table.shown]
            assert {"name", "status", "duration", "cost", "run"} <= set(titles), titles
            assert runs.table.hidden and f"+{len(runs.table.hidden)}" in runs.table.header().text
            assert "more column(s)" in text_of(runs.query_one("#status"))

            await pilot.press("5")
            reg: RegistryScreen = app.screen  # type: ignore[assignment]
            await until(pilot, lambda: reg.versions_table.row_count, what="versions")
            versions = reg.versions_table
            assert {"version", "aliases"} <= {versions.columns[i].title for i in versions.shown}
            assert {"model", "aliases"} <= {reg.models_table.columns[i].title for i in reg.models_table.shown}

            await pilot.press("question_mark")
            help_: HelpScreen = app.screen  # type: ignore[assignment]
            scroll = help_.query_one("#help-text")
            text = text_of(scroll.query_one("Static"))
            for _key, what in RegistryScreen.key_help():
                assert what in text
            assert "quit" in [line for line in text.splitlines() if line.strip()][-1]
            assert scroll.max_scroll_y > 0  # more than fits at 24 rows, so it scrolls
            await pilot.press("pagedown", "pagedown", "pagedown")
            assert scroll.scroll_y == scroll.max_scroll_y

    run(go())


def test_every_table_takes_a_filter(deck: Deck) -> None:
    async def go() -> None:
        app = app_for(deck)
        async with app.run_test(size=SIZE) as pilot:
            for key in "25678":
                await pilot.press(key)
                table = await until(pilot, lambda: isinstance(app.focused, DeckTable) and app.focused,
                                    what=f"a table focused on screen {key}")
                await pilot.press("slash")
                assert isinstance(app.focused, Input), key
                await pilot.press(*"zz", "escape")
                assert app.focused is table and table.filter_text == "zz"
                await pilot.press("slash", "backspace", "backspace", "enter")
                assert table.filter_text == ""

    run(go())
