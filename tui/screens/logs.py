"""A run's stdout and stderr, following new output until the run is done."""

from __future__ import annotations

import asyncio
from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.widgets import RichLog

from mldeck.core.errors import MethodNotAvailable, MldeckError
from mldeck.tui.screens.base import DeckScreen, screen_work, why

FOLLOW_S = 0.5


class LogsScreen(DeckScreen):
    TITLE = "Logs"
    HELP = "The run's output, following while it runs (f toggles following)."
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("f", "follow", "follow on/off"),
        Binding("escape", "app.back", "back"),
    ]

    def __init__(self, host: str, run_id: str) -> None:
        super().__init__()
        self.host = host
        self.run_id = run_id
        self.following = True

    def compose(self) -> ComposeResult:
        yield self.header()
        yield RichLog(id="log", highlight=False, markup=False, wrap=False, max_lines=20_000)
        yield self.status_line()
        yield self.footer()

    def on_mount(self) -> None:
        self.sub_title = f"{self.run_id} on {self.host}"
        self.tail()

    def action_follow(self) -> None:
        self.following = not self.following
        self.query_one(RichLog).auto_scroll = self.following

    @screen_work(exclusive=True, group="logs")
    async def tail(self) -> None:
        log = self.query_one(RichLog)
        offset: int | None = None
        partial = ""
        while True:
            try:
                chunk = await self.call(self.host, "runs.logs", run_id=self.run_id, offset=offset)
            except MethodNotAvailable as exc:
                self.say(f"{exc}: logs need the jobs feature")
                return
            except MldeckError as exc:
                self.say(why(exc))
                await asyncio.sleep(2)
                continue
            text = partial + (chunk.get("data") or "")
            lines = text.split("\n")
            partial = lines.pop()
            for line in lines:
                log.write(line)
            offset = chunk.get("offset")
            state = "done" if chunk.get("done") else "following" if self.following else "paused"
            self.say(f"{chunk.get('status')} · {chunk.get('size', 0):,} bytes · {state}")
            if chunk.get("done"):
                if partial:
                    log.write(partial)
                return
            if offset is not None and offset < chunk.get("size", 0):
                continue
            await asyncio.sleep(FOLLOW_S)
