"""What the Serving, Drift and Cost screens share: filling a table from records, each host asked alone."""

from __future__ import annotations

import json
from typing import Any, ClassVar

from textual.widgets import DataTable

from mldeck.core.errors import MethodNotAvailable, MldeckError
from mldeck.tui.screens.base import DeckScreen, Poller, why
from mldeck.tui.units import number


def cell(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return json.dumps(value)[:60]
    if isinstance(value, bool):
        return "yes" if value else "no"
    return number(value)


def fill(table: DataTable, columns: list[str], rows: list[dict[str, Any]]) -> None:
    """Replace a table's rows keeping the cursor row and, when they are the same, the columns and widths."""
    keep = table.cursor_row
    same = [str(c.label) for c in table.columns.values()] == columns
    table.clear(columns=not same)
    if not same:
        table.add_columns(*columns)
    for r in rows:
        table.add_row(*(cell(r.get(c)) for c in columns))
    if rows:
        table.move_cursor(row=min(max(keep, 0), len(rows) - 1))


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
    FOCUS: ClassVar[str] = ""
    poller: Poller

    def on_mount(self) -> None:
        self.query_one(self.FOCUS, DataTable).focus()
        self.poller = self.poll(self.POLL_S, self.refresh_once)

    def reload(self) -> None:
        self.poller.now()

    async def refresh_once(self) -> None:
        raise NotImplementedError
