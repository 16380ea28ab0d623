"""`e` on the Serving and Drift screens against a real agent: the selected model's latest logged request
explained in a modal (top features, values, reference percentiles), the Drift screen's with which features
drive the window's predictions; a served model with no logged request says so; Esc closes; `?` lists it."""

from __future__ import annotations

import pytest

from mldeck.tui.screens.dialogs import HelpScreen
from mldeck.tui.screens.drift import DriftScreen
from mldeck.tui.screens.explanation import ExplanationScreen
from mldeck.tui.screens.serving import ServingScreen
from mldeck.tui.widgets.deck_table import DeckTable
from tests.conftest import wait_for
from tests.tui.conftest import Deck, text_of, until
from tests.tui.test_app import SIZE, app_for, run
from tests.tui.test_screens_live import answers, infer

pytestmark = pytest.mark.timeout(240)


def served(deck: Deck, *names: str) -> str:
    status = wait_for(lambda: (s := deck.rpc("serving.status"))["running"]
                      and all(n in s["manifest"]["models"] for n in names) and s, timeout=90,
                      what=f"{', '.join(names)} served")
    return status["url"]


def test_e_explains_the_selected_models_latest_request(deck: Deck) -> None:
    deck.rpc("models.promote", name="promo", version=2, alias="production", reason="no traffic, no log")
    deck.rpc("models.promote", name="tiny", version=2, alias="production", reason="explain it in the TUI")
    url = served(deck, "promo", "tiny")
    wait_for(lambda: answers(url), timeout=60, what="tiny answering")
    infer(url, 30)
    wait_for(lambda: deck.rpc("drift.status", name="tiny").get("rows"), timeout=90,
             what="a judged window of tiny (30 rows)")

    async def body(pilot: object, modal: ExplanationScreen) -> str:
        await until(pilot, lambda: "explaining" not in text_of(modal.query_one("#explanation-body")),
                    timeout=120, what="the explanation")
        return text_of(modal.query_one("#explanation-body"))

    async def go() -> None:
        app = app_for(deck)
        async with app.run_test(size=SIZE) as pilot:
            await pilot.press("6")
            serving: ServingScreen = app.screen  # type: ignore[assignment]
            table = serving.query_one("#serving", DeckTable)
            cases = [("promo", "promo has no logged request yet"), ("tiny", "reference percentile")]
            for name, said in cases:
                row = await until(pilot, lambda n=name: next((r for r in serving.rows if r["model"] == n),
                                                             None), what=f"{name}'s row")
                table.move_cursor(serving.rows.index(row))
                await pilot.press("e")
                modal = await until(pilot, lambda: isinstance(app.screen, ExplanationScreen) and app.screen,
                                    what="the explanation modal")
                text = await body(pilot, modal)
                assert said in text, text
                if name == "tiny":
                    assert modal.result is not None and modal.result["name"] == "tiny"
                    top = modal.result["features"][0]
                    assert top["feature"] in text and f"request {modal.result['request_id']}" in text
                await pilot.press("escape")
                await until(pilot, lambda: app.screen is serving, what="the modal closed")

            await pilot.press("7")
            drift: DriftScreen = app.screen  # type: ignore[assignment]
            tiny = await until(pilot, lambda: next((m for m in drift.models if m["name"] == "tiny"), None),
                               what="tiny monitored")
            drift.query_one("#drift-models", DeckTable).move_cursor(drift.models.index(tiny))
            col = await until(pilot, drift.column, timeout=60, what="tiny's columns")
            await pilot.press("e")
            modal = await until(pilot, lambda: isinstance(app.screen, ExplanationScreen) and app.screen,
                                what="the explanation modal")
            assert modal.feature == col["column"]
            text = await body(pilot, modal)
            assert "reference percentile" in text and "what drives v2's predictions" in text, text
            assert "explain_sample is 0" in text and col["column"] in text, text
            await pilot.press("escape")
            await until(pilot, lambda: app.screen is drift, what="the modal closed")
            await pilot.press("question_mark")
            help_screen = await until(pilot, lambda: isinstance(app.screen, HelpScreen) and app.screen,
                                      what="help")
            assert "explain" in " ".join(text_of(s) for s in help_screen.query("Static"))

    run(go())
