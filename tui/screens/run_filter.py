"""The runs filter language: free text, `status:running`, `host:gpu-2`, `exp:x`, `val_acc>0.9`."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

FIELDS = {"status": "status", "host": "host", "exp": "experiment", "experiment": "experiment",
          "name": "name", "sweep": "sweep_id"}
COMPARE = re.compile(r"^([A-Za-z0-9_.\-/]+)(>=|<=|!=|>|<|=)(-?[0-9.eE+\-]+)$")
OPS = {">": pc.greater, "<": pc.less, ">=": pc.greater_equal, "<=": pc.less_equal,
       "=": pc.equal, "!=": pc.not_equal}
TEXT_COLUMNS = ("host", "experiment", "name", "status", "run_id")


class FilterError(ValueError):
    """A filter a person typed that cannot be applied; the message says which part."""


@dataclass
class RunFilter:
    text: list[str] = field(default_factory=list)
    fields: list[tuple[str, str]] = field(default_factory=list)
    compares: list[tuple[str, str, float]] = field(default_factory=list)


def parse(query: str) -> RunFilter:
    f = RunFilter()
    for token in query.split():
        if m := COMPARE.match(token):
            f.compares.append((m[1], m[2], float(m[3])))
        elif ":" in token and token.split(":", 1)[0] in FIELDS:
            key, value = token.split(":", 1)
            f.fields.append((FIELDS[key], value))
        else:
            f.text.append(token.lower())
    return f


def apply(table: pa.Table, query: str) -> pa.Table:
    """The rows of table that match every part of the query."""
    f = parse(query)
    if not (f.text or f.fields or f.compares) or table.num_rows == 0:
        return table
    mask = pa.array([True] * table.num_rows)
    for column, value in f.fields:
        if column not in table.column_names:
            raise FilterError(f"no column {column!r} to filter on")
        mask = pc.and_(mask, pc.equal(pc.fill_null(table[column], ""), value))
    for key, op, value in f.compares:
        column = f"m:{key}" if f"m:{key}" in table.column_names else key
        if column not in table.column_names:
            raise FilterError(f"no metric {key!r} in these runs")
        mask = pc.and_kleene(mask, pc.fill_null(OPS[op](table[column], value), False))
    if f.text:
        hay = pc.utf8_lower(pc.binary_join_element_wise(
            *(pc.fill_null(pc.cast(table[c], pa.string()), "") for c in TEXT_COLUMNS), " "))
        for word in f.text:
            mask = pc.and_(mask, pc.match_substring(hay, word))
    return table.filter(mask)
