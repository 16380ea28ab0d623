"""A screen that shows one RPC per host as a table, refreshed when the previous call is done."""

from __future__ import annotations

import asyncio
import json
from typing import Any, ClassVar

from textual import work
from textual.app import ComposeResult
from textual.widgets import DataTable

from core.protocol import RpcError
from tui.screens.base import DeckScreen, NotAvailable, why
from tui.widgets.units import number

REFRESH_S = 2.0


def rows_of(result: Any) -> list[dict[str, Any]]:
    """Lists of records stay; a dict of records becomes rows keyed by name; a flat dict is one row."""
    if isinstance(result, list):
        return [r if isinstance(r, dict) else {"value": r} for r in result]
    if isinstance(result, dict):
        for key in ("rows", "items", "models", "runs", "columns", "alerts"):
            if isinstance(result.get(key), list):
                return rows_of(result[key])
            if isinstance(result.get(key), dict) and all(isinstance(v, dict) for v in result[key].values()):
                return [{"name": k, **v} for k, v in result[key].items()]
        return [result]
    return [{"value": result}]


def cell(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return json.dumps(value)[:60]
    return number(value)


class PanelScreen(DeckScreen):
    """Subclasses name METHOD and PARAMS; a host without the method says so in its own rows."""

    METHOD: ClassVar[str] = ""
    PARAMS: ClassVar[dict[str, Any]] = {}
    COLUMNS: ClassVar[list[str] | None] = None

    def compose(self) -> ComposeResult:
        yield self.header()
        yield DataTable(id="panel", cursor_type="row", zebra_stripes=True)
        yield self.status_line()
        yield self.footer()

    def on_mount(self) -> None:
        self.query_one("#panel", DataTable).focus()
        self.poll()

    @work(exclusive=True, group="panel")
    async def poll(self) -> None:
        while True:
            await self.refresh_once()
            if not self.deck.live:
                return
            await asyncio.sleep(REFRESH_S)

    async def refresh_once(self) -> None:
        rows: list[dict[str, Any]] = []
        notes = []
        for host in self.deck.fleet.names:
            try:
                result = await self.call(host, self.METHOD, **self.PARAMS)
            except NotAvailable:
                notes.append(f"{host}: {self.METHOD} is not available on this agent")
                continue
            except RpcError as exc:
                notes.append(f"{host}: {why(exc)}")
                continue
            rows += [{"host": host, **r} for r in rows_of(result)]
        self.rows = rows
        table = self.query_one("#panel", DataTable)
        columns = self.COLUMNS or list(dict.fromkeys(k for r in rows for k in r))
        keep = table.cursor_row
        table.clear(columns=True)
        table.add_columns(*columns)
        for r in rows:
            table.add_row(*(cell(r.get(c)) for c in columns))
        if rows:
            table.move_cursor(row=min(keep, len(rows) - 1))
        self.say("  ·  ".join(notes) or (f"{len(rows)} rows from {self.METHOD}" if rows
                                         else f"{self.METHOD}: nothing to show yet on any host"))

    def current(self) -> dict[str, Any] | None:
        row = self.query_one("#panel", DataTable).cursor_row
        rows = getattr(self, "rows", [])
        return rows[row] if 0 <= row < len(rows) else None
