"""The Textual app: eight screens as modes, global keys, and the fleet connection it talks through."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, ClassVar

from textual.app import App
from textual.binding import Binding, BindingType
from textual.command import Hit, Hits, Provider

from mldeck.core.client import Client
from mldeck.tui.fleet import LOCAL, Fleet
from mldeck.tui.screens.base import DeckScreen, is_text_field
from mldeck.tui.screens.compare import CompareScreen
from mldeck.tui.screens.cost import CostScreen
from mldeck.tui.screens.dialogs import CommandLine, DemoLog, HelpScreen
from mldeck.tui.screens.drift import DriftScreen
from mldeck.tui.screens.fleet import FleetScreen
from mldeck.tui.screens.host import HostScreen
from mldeck.tui.screens.launch import LaunchScreen
from mldeck.tui.screens.registry import RegistryScreen
from mldeck.tui.screens.runs import RunsScreen
from mldeck.tui.screens.serving import ServingScreen

# Every screen's module (pyarrow, plotext, the job and sweep checks) is imported with the app, before the
# first frame: a key pressed later never waits for an import, so each screen opens at once.
SCREENS: dict[str, type[DeckScreen]] = {
    "fleet": FleetScreen, "runs": RunsScreen, "compare": CompareScreen, "launch": LaunchScreen,
    "registry": RegistryScreen, "serving": ServingScreen, "drift": DriftScreen, "cost": CostScreen,
}
SCREENS_BY_KEY = list(SCREENS)
SWITCH_HOLD_S = 0.05  # Textual's switch_mode draws nothing for this long (App.delay_update's default)
JUMP_WAIT_S = 0.5
Say = Callable[[str], None]
Story = Callable[[Client, Say], Awaitable[dict[str, Any]]]
COMMAND_ALIASES = {"models": "registry", "model": "registry", "hosts": "fleet", "run": "runs"}


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
        self.came_from: list[str] = []  # the screens visited before this one, for Esc
        self.jumps: list[str] = []  # screens asked for by key, the first being drawn now
        self.jump_token: object | None = None

    MODES: ClassVar[dict[str, Any]] = SCREENS

    def on_mount(self) -> None:
        self.fleet = self.make_fleet()
        self.fleet.start()
        self.prebuild()
        self.switch_mode("fleet")
        if self.story is not None:
            self.call_after_refresh(self.run_worker, self.tell_story(self.story), group="story")

    def prebuild(self) -> None:
        """Build every screen behind the Fleet before the first frame: each builds once (its widgets, its
        styles), so the key that opens it only swaps it in; a hidden screen waits (its polls pause)."""
        for mode in SCREENS_BY_KEY:
            self.switch_mode(mode)  # no frame is drawn between these calls

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
            self.push_screen(DemoLog(self.story_lines))  # the story and the reason stay on screen
            return
        self.say("the demo is done; keep exploring, q quits")

    def show(self, name: str) -> None:
        """Switch to a screen now, remembering the one shown, so Esc comes back to it."""
        if name != self.current_mode:
            seen = [m for m in self.came_from if m != self.current_mode][-7:]
            self.came_from = [*seen, self.current_mode]
            self.switch_mode(name)

    def action_jump(self, name: str) -> None:
        """A screen by its number. Keys typed faster than screens are drawn wait their turn, so each
        screen asked for is drawn, in order, and no key is lost."""
        self.jumps.append(name)
        if len(self.jumps) == 1:
            self.next_jump()

    def next_jump(self) -> None:
        """Show the first screen asked for; the next waits until it has been drawn (switch_mode holds
        frames back for SWITCH_HOLD_S), or JUMP_WAIT_S at most (a screen a dialog covers draws nothing)."""
        if not self.jumps:
            return
        self.show(self.jumps[0])
        token = self.jump_token = object()
        self.set_timer(SWITCH_HOLD_S, lambda: self.call_after_refresh(self.jumped, token))
        self.set_timer(JUMP_WAIT_S, lambda: self.jumped(token))

    def jumped(self, token: object) -> None:
        if token is self.jump_token:
            self.jump_token = None
            self.jumps.pop(0)
            self.next_jump()

    def action_help(self) -> None:
        under = self.screen if isinstance(self.screen, DeckScreen) else None
        self.push_screen(HelpScreen(under))

    def action_command(self) -> None:
        self.push_screen(CommandLine(), lambda cmd: cmd and self.run_command(cmd))

    def action_back(self) -> None:
        """Esc: out of a text field first; then back from a pushed screen, or to the screen shown before."""
        if is_text_field(self.focused):
            screen = self.screen
            if isinstance(screen, DeckScreen):
                screen.leave_field()
            else:
                screen.set_focus(None)
        elif len(self.screen_stack) > 1:
            self.pop_screen()
        elif self.came_from:
            self.switch_mode(self.came_from.pop())

    def run_command(self, command: str) -> None:
        """`:runs`, `:models`, `:host NAME`, `:q` and every screen name."""
        word, _, arg = command.lstrip(":").strip().partition(" ")
        word = COMMAND_ALIASES.get(word, word)
        if word in ("q", "quit"):
            self.exit()
        elif word == "demo":
            self.push_screen(DemoLog(self.story_lines))
        elif word == "host" and arg:
            if arg.strip() not in self.fleet.names:
                hosts = ", ".join(self.fleet.names)
                self.notify(f"no host {arg.strip()!r}; hosts: {hosts}", severity="error")
                return
            self.show("fleet")
            self.push_screen(HostScreen(arg.strip()))
        elif word in SCREENS_BY_KEY:
            self.action_jump(word)
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
    if app.story_error is None:
        return 0
    print("\n".join(["the demo's story:", *app.story_lines]), file=sys.stderr)
    return 1
