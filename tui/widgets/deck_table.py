"""The one table of every screen: Arrow columns drawn a line at a time (100,000 rows cost what the
visible ones cost), `/` to filter, k9s-style sort by the column under the cursor (marked ▲/▼ in the
header), and column priorities: when the width runs out the key columns stay, the others are one
←/→ away, and the header says how many are out of sight.

A general data table renders each cell through Rich (about half a millisecond a cell: a third of a
second for one screen of runs); this one turns the visible rows straight into segments.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import pyarrow as pa
import pyarrow.compute as pc
from rich.segment import Segment
from rich.style import Style
from textual import events, on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.geometry import Size
from textual.message import Message
from textual.scroll_view import ScrollView
from textual.strip import Strip
from textual.widgets import Input

from mldeck.core.errors import Invalid
from mldeck.tui.widgets import table_query

MAX_WIDTH = 40
GAP = 2
MEASURED_ROWS = 500  # a formatted column's width comes from this many rows
LOADING = "loading…"
HINT = "+{} →"  # columns out of sight: → (or ←) brings them in
# pyarrow imports pandas (half a second, more on a busy machine) the first time it builds an array from
# Python values: here, with the app and before its first frame, not when the first key opens a table.
NO_TEXT = pa.array([], pa.string())


def number_text(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "-" if value != value else f"{value:.4g}"
    return str(value)


@dataclass(frozen=True)
class Col:
    """One shown column: the data column it shows (sorts by, filters on), its header, how it reads.

    priority 0 is a key column, always shown; higher numbers give way first when the width runs out.
    style picks a Rich style for a cell from its value (an alias in its colour, a verdict in red).
    """

    key: str
    label: str = ""
    priority: int = 1
    fmt: Callable[[Any], str] | None = None
    style: Callable[[Any], str] | None = None
    width: int | None = None
    shrink_to: int | None = None  # a long text column gives up its width down to this before others hide

    @property
    def title(self) -> str:
        return self.label or self.key.removeprefix("m:")


def records_table(rows: Sequence[dict[str, Any]], keys: Sequence[str]) -> pa.Table:
    """Records as Arrow, a column per key: numbers and yes/no stay themselves (so they sort as such), the
    rest is text."""
    cols: dict[str, Any] = {}
    for key in keys:
        values = [r.get(key) for r in rows]
        try:
            col = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            col = pa.array([None if v is None else str(v) for v in values], pa.string())
        if pa.types.is_null(col.type):
            col = col.cast(pa.string())
        elif not (table_query.is_number(col) or table_query.is_text(col) or pa.types.is_boolean(col.type)):
            col = pa.array([None if v is None else str(v) for v in values], pa.string())
        cols[key] = col
    return pa.table(cols) if cols else pa.table({})


class DeckTable(ScrollView, can_focus=True):
    """A header line and a row cursor over an Arrow table that is swapped whole (`show`)."""

    DEFAULT_CSS = """
    DeckTable { background: $surface; }
    DeckTable > .deck-table--header { background: $primary; color: $text; text-style: bold; }
    DeckTable > .deck-table--column { background: $primary-lighten-2; text-style: bold underline; }
    DeckTable > .deck-table--hint { background: $primary; color: $text-warning; }
    DeckTable > .deck-table--even { background: $surface-lighten-1; }
    DeckTable > .deck-table--cursor { background: $accent; color: $text; }
    DeckTable:blur > .deck-table--cursor { background: $accent 40%; }
    DeckTable > .deck-table--empty { color: $text-muted; }
    """
    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "deck-table--header", "deck-table--column", "deck-table--hint", "deck-table--even",
        "deck-table--cursor", "deck-table--empty",
    }
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("down", "cursor_down", "down", show=False),
        Binding("up", "cursor_up", "up", show=False),
        Binding("left", "column(-1)", "column left", show=False),
        Binding("right", "column(1)", "column right", show=False),
        Binding("pagedown", "page_down", "page down", show=False),
        Binding("pageup", "page_up", "page up", show=False),
        Binding("home", "first", "first", show=False),
        Binding("end", "last", "last", show=False),
        Binding("enter", "select", "open", show=False),
        Binding("slash", "filter", "filter", key_display="/"),
        Binding("o", "sort", "sort by this column"),
        Binding("O", "reverse", "reverse sort", show=False),
    ]

    class RowMessage(Message):
        def __init__(self, table: DeckTable, row: int) -> None:
            super().__init__()
            self.table = table
            self.row = row

        @property
        def control(self) -> DeckTable:
            return self.table

    class RowSelected(RowMessage):
        """Enter (or a click on the cursor row) on a row."""

    class RowHighlighted(RowMessage):
        """The cursor is on another row (or the rows under it changed)."""

    class FilterAsked(Message):
        """`/`: the box around the table opens its filter field."""

    class ViewChanged(Message):
        """The rows shown changed: new data, another filter or another sort."""

        def __init__(self, table: DeckTable) -> None:
            super().__init__()
            self.table = table

        @property
        def control(self) -> DeckTable:
            return self.table

    def __init__(self, columns: Sequence[Col] = (), *, row_key: Sequence[str] = (),
                 empty: str = "nothing here", **kw: Any) -> None:
        super().__init__(**kw)
        self.columns = list(columns)
        self.row_key = list(row_key)
        self.empty = empty
        self.data = pa.table({})
        self.view = self.data
        self.waiting = True
        self.filter_text = ""
        self.sort_key: str | None = None
        self.descending = True
        self.col = 0
        self.cursor_row = 0
        self.widths: list[int] = []
        self.drawn: list[int] = []
        self.shown: list[int] = []
        self.hidden: list[str] = []

    # data --------------------------------------------------------------------

    @property
    def row_count(self) -> int:
        return self.view.num_rows

    def show(self, data: pa.Table, columns: Sequence[Col] | None = None) -> None:
        """New data (and columns): filtered and sorted as the person asked, the cursor kept on its row."""
        if columns is not None:
            keys = [c.key for c in self.columns]
            self.columns = list(columns)
            if self.columns and keys != [c.key for c in self.columns]:
                self.col = min(self.col, len(self.columns) - 1)
        self.data = data
        self.waiting = False
        self.recompute()

    def records(self, rows: Sequence[dict[str, Any]], columns: Sequence[Col] | None = None) -> None:
        """New data as records (a small table: a host's models, serving variants, alerts)."""
        cols = self.columns if columns is None else columns
        keys = list(dict.fromkeys([*(c.key for c in cols), *self.row_key, *(k for r in rows[:1] for k in r)]))
        self.show(records_table(rows, keys), columns)

    def set_query(self, query: str) -> None:
        """Filter the rows; Invalid (and nothing changes) if the query cannot apply."""
        table_query.apply(self.data, query)
        self.filter_text = query
        self.recompute()

    def sort_by(self, key: str | None, descending: bool | None = None) -> None:
        self.sort_key = key
        if descending is not None:
            self.descending = descending
        self.recompute()

    def recompute(self) -> None:
        before = self.current_key()
        try:
            view = table_query.apply(self.data, self.filter_text)
        except Invalid:
            view = self.data
        if self.sort_key in view.column_names and view.num_rows:
            order = "descending" if self.descending else "ascending"
            view = view.sort_by([(self.sort_key, order)])
        self.view = view
        self.measure()
        row = self.cursor_row
        if before is not None and self.row_key:
            row = self.find(before, row)
        self.move_cursor(min(row, max(0, view.num_rows - 1)), announce=before != self.current_key_at(row))
        self.refresh()
        self.tell(self.ViewChanged)

    def find(self, key: tuple[Any, ...], default: int) -> int:
        """The row holding key now (its place moves as rows come and go), else default."""
        if not self.view.num_rows:
            return default
        mask = None
        for name, value in zip(self.row_key, key, strict=True):
            col = self.view[name]
            same = pc.is_null(col) if value is None else pc.fill_null(pc.equal(col, value), False)
            mask = same if mask is None else pc.and_(mask, same)
        at = pc.index(mask, True).as_py()
        return default if at < 0 else int(at)

    def current_key_at(self, row: int) -> tuple[Any, ...] | None:
        if not self.row_key or not 0 <= row < self.view.num_rows:
            return None
        return tuple(self.view[k][row].as_py() for k in self.row_key)

    def current_key(self) -> tuple[Any, ...] | None:
        return self.current_key_at(self.cursor_row)

    def current(self) -> dict[str, Any] | None:
        """The row under the cursor, every column of the data."""
        if not 0 <= self.cursor_row < self.view.num_rows:
            return None
        return self.view.slice(self.cursor_row, 1).to_pylist()[0]

    def value(self, key: str, row: int) -> Any:
        """A cell of the shown rows by data column."""
        if not 0 <= row < self.view.num_rows or key not in self.view.column_names:
            return None
        return self.view[key][row].as_py()

    def rows_text(self) -> list[list[str]]:
        """Every shown row as the person reads it (every column, hidden ones too)."""
        return [self.cells(row, range(len(self.columns))) for row in range(self.view.num_rows)]

    # layout ----------------------------------------------------------------------

    def measure(self) -> None:
        widths = []
        sample = self.view.slice(0, MEASURED_ROWS)
        for c in self.columns:
            if c.width:
                widths.append(c.width)
                continue
            if c.key not in sample.column_names:
                widths.append(len(c.title) + 2)
                continue
            fmt = c.fmt or number_text
            longest = max((len(fmt(v)) for v in sample[c.key].to_pylist()), default=0)
            widths.append(min(MAX_WIDTH, max(len(c.title) + 2, longest)))
        self.widths = widths
        self.layout_columns()

    def layout_columns(self) -> None:
        """Which columns fit: all, else the key ones and the one under the cursor, then by priority."""
        width = max(1, self.scrollable_content_region.width - 1)
        n = len(self.columns)
        self.drawn = list(self.widths)
        if sum(w + GAP for w in self.drawn) > width:
            self.drawn = [min(w, c.shrink_to or w) for w, c in zip(self.widths, self.columns, strict=True)]
        need = [w + GAP for w in self.drawn]
        if sum(need) <= width or not self.size.width:
            self.shown, self.hidden = list(range(n)), []
        else:
            budget = width - len(HINT.format(99))
            order = sorted(range(n), key=lambda i: (i != self.col, self.columns[i].priority, i))
            chosen: set[int] = set()
            used = 0
            for i in order:
                if self.columns[i].priority == 0 or i == self.col or used + need[i] <= budget:
                    chosen.add(i)
                    used += need[i]
            self.shown = sorted(chosen)
            self.hidden = [self.columns[i].title for i in range(n) if i not in chosen]
        self.virtual_size = Size(width, self.view.num_rows + 1)

    def on_resize(self) -> None:
        self.measure()
        self.move_cursor(self.cursor_row, announce=False)

    # drawing -----------------------------------------------------------------

    def cells(self, row: int, which: Sequence[int]) -> list[str]:
        record = self.view.slice(row, 1).to_pylist()[0]
        out = []
        for i in which:
            c = self.columns[i]
            out.append((c.fmt or number_text)(record.get(c.key)))
        return out

    def header(self) -> Strip:
        base = self.get_component_rich_style("deck-table--header")
        under = self.get_component_rich_style("deck-table--column") if self.has_focus else base
        segments = [Segment(" ", base)]
        for i in self.shown:
            c = self.columns[i]
            mark = (" ▼" if self.descending else " ▲") if c.key == self.sort_key else ""
            label = (c.title + mark)[: self.drawn[i]]
            style = (under if i == self.col else base) + Style.from_meta({"column": i})
            segments += [Segment(label.ljust(self.drawn[i]), style), Segment(" " * GAP, base)]
        if self.hidden:
            segments.append(Segment(HINT.format(len(self.hidden)), self.get_component_rich_style(
                "deck-table--hint")))
        return Strip(segments)

    def line(self, row: int, style: Style) -> Strip:
        record = self.view.slice(row, 1).to_pylist()[0]
        segments = [Segment(" ", style)]
        for i in self.shown:
            c, width = self.columns[i], self.drawn[i]
            value = record.get(c.key)
            text = (c.fmt or number_text)(value)
            text = text if len(text) <= width else text[: width - 1] + "…"
            numeric = isinstance(value, (int, float)) and not isinstance(value, bool) and c.fmt is None
            cell_style = style
            if c.style is not None and (extra := c.style(value)):
                cell_style = style + Style.parse(extra)
            segments.append(Segment(text.rjust(width) if numeric else text.ljust(width),
                                    cell_style + Style.from_meta({"column": i})))
            segments.append(Segment(" " * GAP, style))
        return Strip(segments)

    def render_line(self, y: int) -> Strip:
        width = self.scrollable_content_region.width
        scroll_y = round(self.scroll_offset.y)
        row = scroll_y + y - 1
        if y == 0:
            return self.header().crop(0, width).extend_cell_length(width, self.get_component_rich_style(
                "deck-table--header"))
        if not self.view.num_rows:
            if y == 1:
                said = self.empty
                if self.waiting:
                    said = LOADING
                elif self.filter_text and self.data.num_rows:
                    said = f"no rows match {self.filter_text!r} (/ changes it)"
                style = self.get_component_rich_style("deck-table--empty")
                return Strip([Segment(f" {said}", style)]).extend_cell_length(width, style)
            return Strip.blank(width, self.rich_style)
        if row >= self.view.num_rows:
            return Strip.blank(width, self.rich_style)
        if row == self.cursor_row:
            style = self.get_component_rich_style("deck-table--cursor")
        elif row % 2:
            style = self.get_component_rich_style("deck-table--even")
        else:
            style = self.rich_style
        return self.line(row, style).crop(0, width).extend_cell_length(width, style)

    def on_focus(self) -> None:
        self.refresh()

    def on_blur(self) -> None:
        self.refresh()

    # keys and mouse ---------------------------------------------------------------

    def move_cursor(self, row: int, announce: bool = True) -> None:
        before = self.cursor_row
        self.cursor_row = max(0, min(row, self.view.num_rows - 1))
        shown = max(1, self.scrollable_content_region.height - 1)
        top = round(self.scroll_offset.y)
        if self.cursor_row < top:
            self.scroll_to(y=self.cursor_row, animate=False, immediate=True)
        elif self.cursor_row >= top + shown:
            self.scroll_to(y=self.cursor_row - shown + 1, animate=False, immediate=True)
        self.refresh()
        if announce or before != self.cursor_row:
            self.tell(self.RowHighlighted, self.cursor_row)

    def tell(self, kind: type[Message], *args: Any) -> None:
        """Post from the table's own queue: a message made while the filter box handles a key has the box as
        its sender, and Textual stops it at the box, short of the screen."""
        self.call_later(lambda: self.post_message(kind(self, *args)))

    def page(self) -> int:
        return max(1, self.scrollable_content_region.height - 2)

    def action_cursor_down(self) -> None:
        self.move_cursor(self.cursor_row + 1)

    def action_cursor_up(self) -> None:
        self.move_cursor(self.cursor_row - 1)

    def action_page_down(self) -> None:
        self.move_cursor(self.cursor_row + self.page())

    def action_page_up(self) -> None:
        self.move_cursor(self.cursor_row - self.page())

    def action_first(self) -> None:
        self.move_cursor(0)

    def action_last(self) -> None:
        self.move_cursor(self.view.num_rows - 1)

    def action_column(self, step: int) -> None:
        """The column cursor: the one `o` sorts by; a column out of sight comes into view."""
        if self.columns:
            self.col = (self.col + step) % len(self.columns)
            self.layout_columns()
            self.refresh()

    def action_sort(self) -> None:
        """Sort by the column under the cursor; again on the same column reverses it."""
        if not self.columns:
            return
        key = self.columns[self.col].key
        self.sort_by(key, not self.descending if key == self.sort_key else True)

    def action_reverse(self) -> None:
        self.sort_by(self.sort_key, not self.descending)

    def action_select(self) -> None:
        if self.view.num_rows:
            self.post_message(self.RowSelected(self, self.cursor_row))

    def action_filter(self) -> None:
        self.post_message(self.FilterAsked())

    def on_click(self, event: events.Click) -> None:
        if event.y == 0:
            x = event.x - 1
            for i in self.shown:
                if x < self.drawn[i] + GAP:
                    self.col = i
                    self.action_sort()
                    return
                x -= self.drawn[i] + GAP
            return
        row = round(self.scroll_offset.y) + event.y - 1
        if row == self.cursor_row:
            self.action_select()
        elif row < self.view.num_rows:
            self.move_cursor(row)


class FilterInput(Input):
    """The filter field over a table: Enter keeps the filter, Esc goes back to the table. While it is
    hidden it cannot take the focus (and so never takes the digits that jump screens)."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "leave", "back to the table", show=False)]

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.can_focus = False

    def action_leave(self) -> None:
        box = self.parent
        if isinstance(box, TableBox):
            box.close_filter()


class TableBox(Vertical):
    """A DeckTable with its `/` filter field above it (shown while it filters)."""

    DEFAULT_CSS = """
    TableBox { height: 1fr; }
    TableBox > FilterInput { display: none; height: 3; }
    TableBox > FilterInput.shown { display: block; }
    """

    class FilterFailed(Message):
        """The filter typed cannot apply; the screen says why."""

        def __init__(self, why: str) -> None:
            super().__init__()
            self.why = why

    def __init__(self, table: DeckTable, placeholder: str = "filter: text  column:value  number>0.9",
                 **kw: Any) -> None:
        super().__init__(**kw)
        self.table = table
        self.placeholder = placeholder

    def compose(self) -> ComposeResult:
        yield FilterInput(placeholder=self.placeholder)
        yield self.table

    @property
    def field(self) -> FilterInput:
        return self.query_one(FilterInput)

    @on(DeckTable.FilterAsked)
    def open_filter(self, event: DeckTable.FilterAsked) -> None:
        event.stop()
        self.field.add_class("shown")
        self.field.can_focus = True
        self.field.focus()

    def close_filter(self) -> None:
        self.field.can_focus = False
        if not self.field.value:
            self.field.remove_class("shown")
        self.table.focus()

    @on(Input.Changed)
    def filter_changed(self, event: Input.Changed) -> None:
        event.stop()
        try:
            self.table.set_query(event.value.strip())
        except Invalid as exc:
            self.post_message(self.FilterFailed(str(exc)))

    @on(Input.Submitted)
    def filter_done(self, event: Input.Submitted) -> None:
        event.stop()
        self.close_filter()
