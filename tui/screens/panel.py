"""What the Serving, Drift and Cost screens share: a poll that asks every host, each host asked alone."""

from __future__ import annotations

from typing import Any, ClassVar

from mldeck.core.errors import MethodNotAvailable, MldeckError
from mldeck.tui.screens.base import DeckScreen, Poller, why


async def per_host(screen: DeckScreen, method: str, notes: list[str], **params: Any) -> dict[str, Any]:
    """The same call on every host; a host without the method, or failing, becomes a note, not an error."""
    out: dict[str, Any] = {}
    outcomes = await screen.deck.fleet.gather(method, **params)
    for host, got in outcomes.items():
        if got.ok:
            out[host] = got.value
        elif isinstance(got.error, MethodNotAvailable):
            notes.append(f"{host}: {method} is not available on this agent")
        else:
            notes.append(f"{host}: {got.why}")
    return out


async def one(screen: DeckScreen, host: str, method: str, notes: list[str], **params: Any) -> Any:
    try:
        return await screen.call(host, method, **params)
    except MethodNotAvailable as exc:
        notes.append(str(exc))
    except MldeckError as exc:
        notes.append(f"{host}: {why(exc)}")
    return None


class PolledScreen(DeckScreen):
    """A screen that asks its hosts every POLL_S (DeckScreen.poll); reload() asks again now."""

    POLL_S: ClassVar[float] = 5.0
    poller: Poller

    def on_mount(self) -> None:
        self.poller = self.poll(self.POLL_S, self.refresh_once)

    def reload(self) -> None:
        self.poller.now()

    async def refresh_once(self) -> None:
        raise NotImplementedError
