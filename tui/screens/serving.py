"""Serving: per model and variant, request rate, latency percentiles, errors, batch size, traffic split."""

from __future__ import annotations

from typing import Any, ClassVar

from textual import work
from textual.binding import Binding, BindingType

from core.protocol import RpcError
from tui.screens.base import why
from tui.screens.dialogs import Prompt
from tui.screens.panel import PanelScreen


class ServingScreen(PanelScreen):
    TITLE = "Serving"
    HELP = "Live serving stats per model and variant; t toggles shadow, C sets the canary share."
    METHOD = "serving.stats"
    PARAMS: ClassVar[dict[str, Any]] = {"window_s": 60.0}
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("t", "shadow", "toggle shadow"),
        Binding("C", "canary", "canary share"),
    ]

    def action_shadow(self) -> None:
        row = self.current()
        if row:
            self.traffic(row["host"], str(row.get("name")), shadow=not bool(row.get("shadow")))

    def action_canary(self) -> None:
        row = self.current()
        if not row:
            return

        def share(text: str | None) -> None:
            if text:
                try:
                    value = float(text)
                except ValueError:
                    self.say(f"{text!r} is not a number between 0 and 1")
                    return
                self.traffic(row["host"], str(row.get("name")), canary=value)

        self.app.push_screen(Prompt(f"Canary share for {row.get('name')} (0-1)", placeholder="0.1"), share)

    @work(group="traffic")
    async def traffic(self, host: str, name: str, **change: Any) -> None:
        try:
            await self.call(host, "serving.traffic", name=name, **change)
        except RpcError as exc:
            self.say(why(exc))
            return
        await self.refresh_once()
