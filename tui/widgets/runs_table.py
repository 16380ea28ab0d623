"""The runs table: Arrow columns drawn a line at a time, so 100,000 runs cost what the visible ones cost.

A general data table renders each cell through Rich (about half a millisecond a cell: a third of a
second for one screen of runs); this one turns the visible rows straight into segments.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import pyarrow as pa
import pyarrow.compute as pc
from rich.segment import Segment
from rich.style import Style
from textual import events
from textual.binding import Binding, BindingType
from textual.geometry import Size
from textual.message import Message
from textual.scroll_view import ScrollView
from textual.strip import Strip

NUMBER_WIDTH = 8
MAX_WIDTH = 40
GAP = 2
Formatters = dict[str, Callable[[Any], Any]]


def content_widths(table: pa.Table) -> list[int]:
    """Each column's width from its longest text (computed columnar), never under its label's."""
    widths = []
    for name, col in zip(table.column_names, table.columns, strict=True):
        if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
            longest = pc.max(pc.utf8_length(col)).as_py() if table.num_rows else 0
        else:
            longest = NUMBER_WIDTH
        widths.append(min(MAX_WIDTH, max(len(name), longest or 0)))
    return widths


def text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


class RunsTable(ScrollView, can_focus=True):
    """A header line and a row cursor over an Arrow table that is swapped whole (`replace`)."""

    DEFAULT_CSS = """
    RunsTable { background: $surface; }
    RunsTable > .runs-table--header { background: $primary; color: $text; text-style: bold; }
    RunsTable > .runs-table--even { background: $surface-lighten-1; }
    RunsTable > .runs-table--cursor { background: $accent; color: $text; }
    RunsTable:blur > .runs-table--cursor { background: $accent 50%; }
    """
    COMPONENT_CLASSES: ClassVar[set[str]] = {"runs-table--header", "runs-table--even", "runs-table--cursor"}
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("down", "cursor_down", "down", show=False),
        Binding("up", "cursor_up", "up", show=False),
        Binding("pagedown", "page_down", "page down", show=False),
        Binding("pageup", "page_up", "page up", show=False),
        Binding("home", "first", "first", show=False),
        Binding("end", "last", "last", show=False),
        Binding("enter", "select", "open", show=False),
    ]

    class RowSelected(Message):
        """Enter (or a click on the cursor row) on a run."""

        def __init__(self, row: int) -> None:
            super().__init__()
            self.row = row

    class HeaderSelected(Message):
        """A click on a column's label: the screen sorts by it."""

        def __init__(self, label: str) -> None:
            super().__init__()
            self.label = label

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.data = pa.table({})
        self.formatters: dict[int, Callable[[Any], Any]] = {}
        self.widths: list[int] = []
        self.cursor_row = 0

    @property
    def row_count(self) -> int:
        return self.data.num_rows

    def replace(self, table: pa.Table, formatters: Formatters | None = None) -> None:
        """Show new data keeping the cursor row."""
        names = table.column_names
        self.data = table
        self.formatters = {names.index(k): f for k, f in (formatters or {}).items() if k in names}
        self.widths = content_widths(table)
        self.virtual_size = Size(sum(self.widths) + GAP * len(self.widths), table.num_rows + 1)
        self.move_cursor(row=min(self.cursor_row, max(0, table.num_rows - 1)))
        self.refresh()

    def move_cursor(self, row: int) -> None:
        self.cursor_row = max(0, min(row, self.row_count - 1))
        shown = max(1, self.scrollable_content_region.height - 1)
        top = round(self.scroll_offset.y)
        if self.cursor_row < top:
            self.scroll_to(y=self.cursor_row, animate=False, immediate=True)
        elif self.cursor_row >= top + shown:
            self.scroll_to(y=self.cursor_row - shown + 1, animate=False, immediate=True)
        self.refresh()

    def column(self, name: str, row: int) -> Any:
        """A cell of the shown data by column name."""
        if not 0 <= row < self.row_count:
            return None
        return self.data.column(name)[row].as_py()

    # drawing -----------------------------------------------------------------

    def cells(self, row: int) -> list[str]:
        values = [c[0] for c in self.data.slice(row, 1).to_pydict().values()]
        for i, f in self.formatters.items():
            values[i] = f(values[i])
        return [text(v) for v in values]

    def line(self, cells: list[str], style: Style) -> Strip:
        """A segment per cell, each tagged with its column (so an SVG screenshot places each at its x)."""
        segments = [Segment(" ", style)]
        for i, (value, width) in enumerate(zip(cells, self.widths, strict=True)):
            value = value if len(value) <= width else value[: width - 1] + "…"
            segments.append(Segment(value.ljust(width + GAP), style + Style.from_meta({"column": i})))
        return Strip(segments)

    def render_line(self, y: int) -> Strip:
        width = self.scrollable_content_region.width
        scroll_x, scroll_y = (round(v) for v in self.scroll_offset)
        row = scroll_y + y - 1
        if y == 0:
            style = self.get_component_rich_style("runs-table--header")
            cells = self.data.column_names
        elif row >= self.row_count:
            return Strip.blank(width, self.rich_style)
        else:
            if row == self.cursor_row:
                style = self.get_component_rich_style("runs-table--cursor")
            elif row % 2:
                style = self.get_component_rich_style("runs-table--even")
            else:
                style = self.rich_style
            cells = self.cells(row)
        return self.line(cells, style).crop(scroll_x, scroll_x + width).extend_cell_length(width, style)

    # keys and mouse ---------------------------------------------------------------

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
        self.move_cursor(self.row_count - 1)

    def action_select(self) -> None:
        if self.row_count:
            self.post_message(self.RowSelected(self.cursor_row))

    def on_click(self, event: events.Click) -> None:
        if event.y == 0:
            x = event.x + round(self.scroll_offset.x) - 1
            for name, width in zip(self.data.column_names, self.widths, strict=True):
                if x < width + GAP:
                    self.post_message(self.HeaderSelected(name))
                    return
                x -= width + GAP
            return
        row = round(self.scroll_offset.y) + event.y - 1
        if row == self.cursor_row:
            self.action_select()
        elif row < self.row_count:
            self.move_cursor(row)
