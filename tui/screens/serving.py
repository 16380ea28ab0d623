"""Serving: placeholder while it is built."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.widgets import Static

from tui.screens.base import DeckScreen


class ServingScreen(DeckScreen):
    TITLE = "Serving"

    def compose(self) -> ComposeResult:
        yield self.header()
        yield Static("coming soon", classes="unavailable")
        yield self.footer()
