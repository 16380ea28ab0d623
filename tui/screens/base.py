"""What every screen shares: RPC through the app's fleet, polling while shown, the status line with the age
of what it says, leaving a text field with Esc, help text."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, ClassVar

from textual import work
from textual.binding import Binding, BindingType
from textual.css.query import NoMatches
from textual.screen import Screen
from textual.widgets import Input, Static

from mldeck.core.errors import MethodNotAvailable, MldeckError, Unavailable
from mldeck.tui.units import duration
from mldeck.tui.widgets.bars import KeyBar, TitleBar

if TYPE_CHECKING:
    from mldeck.tui.app import MldeckApp

CALL_TIMEOUT_S = 15.0
RETRY_S = 2.0  # a poll whose tick failed comes back no sooner than this, so a down host is not hammered
AGE_S = 1.0  # the status line's "updated 4s ago" ticks this often while the screen is shown
LOADING = "loading…"


def screen_work(**options: Any) -> Callable[[Callable[..., Coroutine[Any, Any, Any]]], Any]:
    """textual's @work for a screen's workers, which update widgets after awaiting a host: if the screen
    closed (or the app quit) meanwhile, its widgets are gone, and the worker ends quietly."""

    def wrap(fn: Callable[..., Coroutine[Any, Any, Any]]) -> Any:
        @functools.wraps(fn)
        async def quiet(*args: Any, **kwargs: Any) -> Any:
            with contextlib.suppress(NoMatches):
                return await fn(*args, **kwargs)

        return work(**options)(quiet)

    return wrap


async def rpc(app: MldeckApp, host: str, method: str, timeout: float = CALL_TIMEOUT_S, **params: Any) -> Any:
    """One call with a deadline, so a hanging host only stalls the worker that asked it."""
    try:
        return await asyncio.wait_for(app.fleet.call(host, method, **params), timeout)
    except MethodNotAvailable:
        raise MethodNotAvailable(f"{method} is not available on {host}'s agent (an older mldeck?)") from None
    except TimeoutError:
        raise Unavailable(f"{host} did not answer {method} within {timeout:.0f}s") from None


def why(exc: BaseException) -> str:
    """One line for the status bar."""
    if isinstance(exc, MldeckError):
        return exc.message
    return str(exc) or type(exc).__name__


class Poller:
    """One periodic call of a screen: the next starts `seconds` after the last one ended, so a slow host
    never piles calls up; now() brings it forward (after settle_s, so a burst of events makes one call)."""

    def __init__(self, seconds: float, settle_s: float) -> None:
        self.seconds = seconds
        self.settle_s = settle_s
        self._wake = asyncio.Event()
        self._settle = True

    def now(self, settle: bool = True) -> None:
        """The next call after settle_s, or at once for one deliberate act (a sort, a scroll)."""
        self._settle = settle
        self._wake.set()

    async def pause(self, at_least: float = 0.0) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), max(self.seconds, at_least))
            if self._settle:
                await asyncio.sleep(self.settle_s)
        self._wake.clear()
        self._settle = True


Tick = Callable[[], Coroutine[Any, Any, bool | None] | bool | None]


class DeckScreen(Screen[None]):
    """A top-level or pushed screen with the app's header, a status line and the key footer.

    Its polls tick only while it is shown (a hidden screen costs nothing; coming back asks at once), and
    the status line says how old the figures are: "updated 3s ago", ticking.
    """

    TITLE: ClassVar[str] = ""
    HELP: ClassVar[str] = ""
    BINDINGS: ClassVar[list[BindingType]] = []
    AUTO_FOCUS: ClassVar[str | None] = "DeckTable"  # what takes the keys when it opens (never a text field)

    def __init__(self) -> None:
        super().__init__()
        self.in_view = asyncio.Event()
        self.pollers: list[Poller] = []
        self.said = LOADING
        self.updated_at: float | None = None
        # Textual refreshes the whole app's CSS for a screen it has never drawn (twice per new mode, each a
        # full reparse: 50-150 ms on a busy two-core machine). Every rule is loaded before the first frame
        # (one stylesheet, mldeck.tcss) and a new screen's widgets get their styles as they mount.
        self._css_update_count = self.app._css_update_count

    @property
    def deck(self) -> MldeckApp:
        return self.app  # type: ignore[return-value]

    def header(self) -> TitleBar:
        return TitleBar()

    def status_line(self) -> Static:
        return Static(LOADING, id="status", markup=False)

    def footer(self) -> KeyBar:
        return KeyBar()

    def on_screen_resume(self) -> None:
        if not self.is_current:  # built behind the Fleet at start: it waits until it is shown
            return
        self.in_view.set()
        for poller in self.pollers:
            poller.now()

    def on_screen_suspend(self) -> None:
        self.in_view.clear()

    def on_mount(self) -> None:
        self.set_interval(AGE_S, self.tick_age)

    def tick_age(self) -> None:
        """The "updated 3s ago" moves on while the screen is shown."""
        if self.updated_at is not None and self.in_view.is_set():
            self.show_status()

    def say(self, text: str) -> None:
        """A one-line message on this screen's status line (errors, 'not available', counts)."""
        self.said = text
        self.show_status()

    def updated(self, text: str | None = None) -> None:
        """Fresh figures arrived: the status line's age starts again (and says text, when given)."""
        self.updated_at = time.time()
        if text is not None:
            self.say(text)
        else:
            self.show_status()

    def show_status(self) -> None:
        text = self.said
        if self.updated_at is not None and self.said != LOADING:
            text += f"  ·  updated {duration(time.time() - self.updated_at)} ago"
        with contextlib.suppress(NoMatches):
            self.query_one("#status", Static).update(text)

    def leave_field(self) -> None:
        """Esc in a text field: the field lets go of the keys (digits jump screens again)."""
        self.set_focus(None)

    async def call(self, host: str, method: str, **params: Any) -> Any:
        return await rpc(self.deck, host, method, **params)

    def poll(self, seconds: float, tick: Tick, settle_s: float = 0.0, early: bool = False) -> Poller:
        """The one way a screen repeats work: tick now, then `seconds` after each tick ended, until it
        returns True (nothing more to follow) or the screen closes; while the screen is hidden it waits,
        and it ticks at once when the screen is shown again (early: the first tick does not wait, so a
        screen built behind the Fleet has its first figures when it opens). A host's error is said on the
        status line and the next tick still comes, RETRY_S later at least. An app that is not live ticks
        once."""
        poller = Poller(seconds, settle_s)
        self.pollers.append(poller)
        name = getattr(tick, "__name__", type(tick).__name__)
        self.run_worker(self._polling(poller, tick, early), name=f"poll {name}", group="poll")
        return poller

    async def _polling(self, poller: Poller, tick: Tick, early: bool) -> None:
        with contextlib.suppress(NoMatches):  # the screen closed (or the app quit) meanwhile
            while True:
                if not early:
                    await self.in_view.wait()
                early = False
                failed = False
                try:
                    done = tick()
                    if inspect.isawaitable(done):
                        done = await done
                except MldeckError as exc:
                    self.say(why(exc))
                    done, failed = False, True
                if done or not self.deck.live:
                    return
                await poller.pause(RETRY_S if failed else 0.0)

    @classmethod
    def key_help(cls) -> list[tuple[str, str]]:
        """Every key of this screen with what it does, for `?`; a key listed twice is said once."""
        out: dict[str, str] = {}
        for b in cls.BINDINGS:
            if isinstance(b, Binding):
                key, what = b.key_display or b.key, b.description
            else:
                key, what = b[0], b[2] if len(b) > 2 else b[1]
            out.setdefault(key, what)
        return list(out.items())


def is_text_field(widget: object) -> bool:
    """A widget that takes printable keys as text: digits typed there are text, not screen jumps."""
    return isinstance(widget, Input)
