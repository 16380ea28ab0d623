"""The runs table: an Arrow-backed fastdatatable whose data is swapped whole, never row by row."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from textual_fastdatatable import ArrowBackend, DataTable

NUMBER_WIDTH = 8
Formatters = dict[str, Callable[[Any], Any]]


def content_widths(table: pa.Table) -> list[int]:
    """Column widths computed columnar (the library measures cell by cell: seconds at 100k rows)."""
    widths = []
    for col in table.columns:
        if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
            widths.append(pc.max(pc.utf8_length(col)).as_py() or 0)
        else:
            widths.append(NUMBER_WIDTH)
    return widths


class FormattedBackend(ArrowBackend):
    """Formats some columns only for the rows drawn, so 100,000 durations cost nothing until seen."""

    def __init__(self, data: pa.Table, formatters: Formatters) -> None:
        super().__init__(data)
        names = data.column_names
        self.formatters = {names.index(k): f for k, f in formatters.items() if k in names}
        self.render_markup = False
        self._column_content_widths = content_widths(data)

    def get_row_at(self, index: int) -> Sequence[Any]:
        row = list(super().get_row_at(index))
        for i, f in self.formatters.items():
            row[i] = f(row[i])
        return row

    def get_cell_at(self, row_index: int, column_index: int) -> Any:
        value = super().get_cell_at(row_index, column_index)
        f = self.formatters.get(column_index)
        return f(value) if f else value


class RunsTable(DataTable):
    """Only the visible rows are rendered, so 100,000 runs paint as fast as 100."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(backend=ArrowBackend(pa.table({"": pa.array([], pa.string())})),
                         cursor_type="row", zebra_stripes=True, show_row_labels=False,
                         max_column_content_width=40, **kw)

    def replace(self, table: pa.Table, formatters: Formatters | None = None) -> None:
        """Show new data keeping the cursor row (the library has no public way to swap data)."""
        row = self.cursor_row
        self.backend = FormattedBackend(table, formatters or {})
        self._column_labels = None
        self._ordered_columns = None
        self._clear_caches()
        self._update_count += 1
        self._require_update_dimensions = True
        self._update_dimensions([])
        self.refresh()
        if table.num_rows:
            self.move_cursor(row=min(row, table.num_rows - 1))

    def column(self, name: str, row: int) -> Any:
        """A cell of the shown data by column name."""
        if self.backend is None or not 0 <= row < self.backend.row_count:
            return None
        return self.backend.data.column(name)[row].as_py()
