"""What every screen shares: RPC through the app's fleet, polling, 'not available' states, help text."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, ClassVar

from textual import work
from textual.binding import Binding, BindingType
from textual.css.query import NoMatches
from textual.screen import Screen
from textual.widgets import Footer, Header, Static

from mldeck.core.errors import MethodNotAvailable, MldeckError, Unavailable

if TYPE_CHECKING:
    from mldeck.tui.app import MldeckApp

CALL_TIMEOUT_S = 15.0
RETRY_S = 2.0  # a poll whose tick failed comes back no sooner than this, so a down host is not hammered
RUNS_FIRST_PAGE = 1000  # each host's newest runs: the app prefetches them, the Runs screen shows them first


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

    def now(self) -> None:
        self._wake.set()

    async def pause(self, at_least: float = 0.0) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), max(self.seconds, at_least))
            await asyncio.sleep(self.settle_s)
        self._wake.clear()


Tick = Callable[[], Coroutine[Any, Any, bool | None] | bool | None]


class DeckScreen(Screen[None]):
    """A top-level or pushed screen with the app's header, a status line and the key footer."""

    TITLE: ClassVar[str] = ""
    HELP: ClassVar[str] = ""
    BINDINGS: ClassVar[list[BindingType]] = []

    @property
    def deck(self) -> MldeckApp:
        return self.app  # type: ignore[return-value]

    def header(self) -> Header:
        return Header(show_clock=False)

    def status_line(self) -> Static:
        return Static("", id="status", markup=False)

    def footer(self) -> Footer:
        return Footer()

    def say(self, text: str) -> None:
        """A one-line message on this screen's status line (errors, 'not available')."""
        try:
            self.query_one("#status", Static).update(text)
        except Exception:
            self.notify(text)

    async def call(self, host: str, method: str, **params: Any) -> Any:
        return await rpc(self.deck, host, method, **params)

    def poll(self, seconds: float, tick: Tick, settle_s: float = 0.0) -> Poller:
        """The one way a screen repeats work: tick now, then `seconds` after each tick ended, until it
        returns True (nothing more to follow) or the screen closes. A host's error is said on the status
        line and the next tick still comes, RETRY_S later at least. An app that is not live ticks once."""
        poller = Poller(seconds, settle_s)
        name = getattr(tick, "__name__", type(tick).__name__)
        self.run_worker(self._polling(poller, tick), name=f"poll {name}", group="poll")
        return poller

    async def _polling(self, poller: Poller, tick: Tick) -> None:
        with contextlib.suppress(NoMatches):  # the screen closed (or the app quit) meanwhile
            while True:
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
        """Every key of this screen with what it does, for `?`."""
        out = []
        for b in cls.BINDINGS:
            if isinstance(b, Binding):
                out.append((b.key_display or b.key, b.description))
            elif isinstance(b, tuple):
                out.append((b[0], b[2] if len(b) > 2 else b[1]))
        return out
