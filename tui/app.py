"""The Textual app: eight screens as modes, global keys, and the fleet connection it talks through."""

from __future__ import annotations

import contextlib
import functools
import importlib
from collections.abc import Callable
from typing import Any, ClassVar

from textual.app import App
from textual.binding import Binding, BindingType
from textual.command import Hit, Hits, Provider

from tui.fleet import Fleet
from tui.screens.base import DeckScreen
from tui.screens.dialogs import CommandLine, HelpScreen

SCREENS_BY_KEY = ["fleet", "runs", "compare", "launch", "registry", "serving", "drift", "cost"]
COMMAND_ALIASES = {"models": "registry", "model": "registry", "hosts": "fleet", "run": "runs"}


def screen_for(name: str) -> DeckScreen:
    """Screens are imported when first shown, so a cold start loads only the Fleet."""
    module = importlib.import_module(f"tui.screens.{name}")
    return getattr(module, f"{name.capitalize()}Screen")()


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

    def __init__(self, make_fleet: Callable[[], Any], live: bool = True) -> None:
        """make_fleet builds the Fleet inside the app's event loop (its links need one)."""
        super().__init__()
        self.make_fleet = make_fleet
        self.fleet: Any = None
        self.live = live
        self.compare_set: list[tuple[str, str]] = []

    MODES: ClassVar[dict[str, Any]] = {name: functools.partial(screen_for, name) for name in SCREENS_BY_KEY}

    def on_mount(self) -> None:
        self.fleet = self.make_fleet()
        self.fleet.start()
        self.switch_mode("fleet")

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
        elif word == "host" and arg:
            from tui.screens.host import HostScreen

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


def run_tui() -> int:
    """`mldeck` with no arguments: this machine's agent (started if none runs) and the hosts file's."""
    MldeckApp(lambda: Fleet.from_config(start_local=True)).run()
    return 0
