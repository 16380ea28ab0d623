"""The Textual app: eight screens as modes, global keys, and the fleet connection it talks through."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, ClassVar

from textual.app import App
from textual.binding import Binding, BindingType
from textual.command import Hit, Hits, Provider

from mldeck.core.client import Client
from mldeck.tui.fleet import LOCAL, Fleet
from mldeck.tui.screens.base import RUNS_FIRST_PAGE, DeckScreen
from mldeck.tui.screens.dialogs import CommandLine, DemoLog, HelpScreen

PREWARM = ["mldeck.tui.screens.runs", "mldeck.tui.screens.registry", "mldeck.tui.widgets.metric_chart"]
SCREENS_BY_KEY = ["fleet", "runs", "compare", "launch", "registry", "serving", "drift", "cost"]
Say = Callable[[str], None]
Story = Callable[[Client, Say], Awaitable[dict[str, Any]]]
COMMAND_ALIASES = {"models": "registry", "model": "registry", "hosts": "fleet", "run": "runs"}


def screen_for(name: str) -> DeckScreen:
    """Screens are imported when first shown, so a cold start loads only the Fleet."""
    module = importlib.import_module(f"mldeck.tui.screens.{name}")
    return getattr(module, f"{name.capitalize()}Screen")()


def prewarm() -> None:
    """After the first frame, a thread imports the heavy screens (pyarrow, plotext), so 2 opens at once."""

    def load() -> None:
        for name in PREWARM:
            importlib.import_module(name)

    threading.Thread(target=load, name="mldeck-prewarm", daemon=True).start()


class ScreenCommands(Provider):
    """ctrl+p: every screen and every host by name."""

    async def search(self, query: str) -> Hits:
        app: MldeckApp = self.app  # type: ignore[assignment]
        matcher = self.matcher(query)
        choices = [(f"screen: {n}", n) for n in SCREENS_BY_KEY]
        choices += [(f"host: {h}", f"host {h}") for h in app.fleet.names]
        for label, command in choices:
            score = matcher.match(label)
            if score > 0:
                yield Hit(score, matcher.highlight(label), lambda c=command: app.run_command(c))


class MldeckApp(App[None]):
    """The control center: every screen is a mode, so each keeps its own back stack."""

    TITLE = "mldeck"
    CSS_PATH = "mldeck.tcss"
    COMMANDS: ClassVar[set[type[Provider]]] = {*App.COMMANDS, ScreenCommands}
    BINDINGS: ClassVar[list[BindingType]] = [
        *(Binding(str(i + 1), f"jump('{name}')", name, show=False) for i, name in enumerate(SCREENS_BY_KEY)),
        Binding("question_mark", "help", "help"),
        Binding("colon", "command", "command", key_display=":"),
        Binding("escape", "back", "back", show=False),
        Binding("q", "quit", "quit"),
    ]

    def __init__(self, make_fleet: Callable[[], Any], live: bool = True, story: Story | None = None) -> None:
        """make_fleet builds the Fleet inside the app's event loop (its links need one)."""
        super().__init__()
        self.make_fleet = make_fleet
        self.fleet: Any = None
        self.live = live
        self.compare_set: list[tuple[str, str]] = []
        self.story = story
        self.story_lines: list[str] = []
        self.story_result: dict[str, Any] | None = None
        self.story_error: BaseException | None = None
        self.early_runs: dict[str, asyncio.Task[Any]] = {}

    MODES: ClassVar[dict[str, Any]] = {name: functools.partial(screen_for, name) for name in SCREENS_BY_KEY}

    def on_mount(self) -> None:
        self.fleet = self.make_fleet()
        self.fleet.start()
        self.switch_mode("fleet")
        self.set_timer(0.3, prewarm)
        if self.live:
            self.set_timer(0.5, self.prefetch_runs)
        if self.story is not None:
            self.call_after_refresh(self.run_worker, self.tell_story(self.story), group="story")

    def prefetch_runs(self) -> None:
        """Each host's newest runs page while the person looks at the Fleet; Runs takes it when opened."""
        for host in self.fleet.names:
            task = asyncio.get_running_loop().create_task(
                self.fleet.call(host, "runs.table", offset=0, limit=RUNS_FIRST_PAGE))
            task.add_done_callback(lambda t: t.cancelled() or t.exception())  # read, so never "unretrieved"
            self.early_runs[host] = task

    def say(self, text: str) -> None:
        """A line of the demo story: a notification, the header's subtitle, and the `:demo` log."""
        self.story_lines.append(text)
        self.sub_title = f"demo: {text.strip()}"
        self.notify(text, title="demo", timeout=6)

    async def tell_story(self, story: Story) -> None:
        """The demo runs against the local agent while every screen stays live; a failure is shown, kept."""
        try:
            client = await self.fleet.client(LOCAL)
            self.story_result = await story(client, self.say)
        except Exception as exc:  # the story is someone else's code: any failure is the demo's result
            self.story_error = exc
            self.say(f"the demo failed: {exc}")
            self.notify(str(exc), title="demo failed", severity="error", timeout=30)
            return
        self.say("the demo is done; keep exploring, q quits")

    def action_jump(self, name: str) -> None:
        self.switch_mode(name)

    def action_help(self) -> None:
        under = self.screen if isinstance(self.screen, DeckScreen) else None
        self.push_screen(HelpScreen(under))

    def action_command(self) -> None:
        self.push_screen(CommandLine(), lambda cmd: cmd and self.run_command(cmd))

    def action_back(self) -> None:
        if len(self.screen_stack) > 1:
            self.pop_screen()

    def run_command(self, command: str) -> None:
        """`:runs`, `:models`, `:host NAME`, `:q` and every screen name."""
        word, _, arg = command.lstrip(":").strip().partition(" ")
        word = COMMAND_ALIASES.get(word, word)
        if word in ("q", "quit"):
            self.exit()
        elif word == "demo":
            self.push_screen(DemoLog(self.story_lines))
        elif word == "host" and arg:
            from mldeck.tui.screens.host import HostScreen

            if arg.strip() not in self.fleet.names:
                hosts = ", ".join(self.fleet.names)
                self.notify(f"no host {arg.strip()!r}; hosts: {hosts}", severity="error")
                return
            self.switch_mode("fleet")
            self.push_screen(HostScreen(arg.strip()))
        elif word in SCREENS_BY_KEY:
            self.switch_mode(word)
        else:
            self.notify(f"unknown command :{command}; try :runs, :models, :host NAME, :q", severity="error")

    async def on_unmount(self) -> None:
        with contextlib.suppress(Exception):
            await self.fleet.close()


def run_tui(local_home: Path | None = None, story: Story | None = None) -> int:
    """`mldeck` with no arguments: this machine's agent (started if none runs) and the hosts file's.

    local_home: where the local agent lives (the demo's throwaway home); story: a coroutine that runs
    against it after the first frame, saying what it does. 1 when the story raised, else 0.
    """
    app = MldeckApp(lambda: Fleet.from_config(local_home=local_home, start_local=True), story=story)
    app.run()
    return 1 if app.story_error is not None else 0
