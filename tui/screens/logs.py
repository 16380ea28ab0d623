"""A run's stdout and stderr, following new output until the run is done."""

from __future__ import annotations

from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.widgets import RichLog

from mldeck.core.errors import MethodNotAvailable
from mldeck.tui.screens.base import DeckScreen

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
        self.read_at: int | None = None
        self.partial = ""  # the last line until its newline arrives

    def compose(self) -> ComposeResult:
        yield self.header()
        yield RichLog(id="log", highlight=False, markup=False, wrap=False, max_lines=20_000)
        yield self.status_line()
        yield self.footer()

    def on_mount(self) -> None:
        self.sub_title = f"{self.run_id} on {self.host}"
        self.poller = self.poll(FOLLOW_S, self.tail)

    def action_follow(self) -> None:
        self.following = not self.following
        self.query_one(RichLog).auto_scroll = self.following

    async def tail(self) -> bool:
        """Read on from where the last read ended; True once the run is done and all of it is shown."""
        log = self.query_one(RichLog)
        try:
            chunk = await self.call(self.host, "runs.logs", run_id=self.run_id, offset=self.read_at)
        except MethodNotAvailable as exc:
            self.say(f"{exc}: logs need the jobs feature")
            return True
        lines = (self.partial + (chunk.get("data") or "")).split("\n")
        self.partial = lines.pop()
        for line in lines:
            log.write(line)
        self.read_at = chunk.get("offset")
        state = "done" if chunk.get("done") else "following" if self.following else "paused"
        self.say(f"{chunk.get('status')} · {chunk.get('size', 0):,} bytes · {state}")
        if chunk.get("done"):
            if self.partial:
                log.write(self.partial)
            return True
        if self.read_at is not None and self.read_at < chunk.get("size", 0):
            self.poller.now()  # more is there already: read on at once
        return False
