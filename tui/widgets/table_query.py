"""The filter every table takes after `/`: free text, `column:value`, `metric>0.9` (several are ANDed).

Free text matches any text column; `status:running`, `host:gpu-2`, `exp:x` pick a column by name (or a
short alias); a comparison works on any numeric column, a run's metric by its bare name (`val_acc`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

ALIASES = {"exp": "experiment", "sweep": "sweep_id", "run": "run_id", "alias": "aliases"}
COMPARE = re.compile(r"^([A-Za-z0-9_.\-/]+)(>=|<=|!=|>|<|=)(-?[0-9.eE+\-]+)$")
OPS = {">": pc.greater, "<": pc.less, ">=": pc.greater_equal, "<=": pc.less_equal,
       "=": pc.equal, "!=": pc.not_equal}


class FilterError(ValueError):
    """A filter a person typed that cannot be applied; the message says which part."""


@dataclass
class Query:
    text: list[str] = field(default_factory=list)
    fields: list[tuple[str, str]] = field(default_factory=list)
    compares: list[tuple[str, str, float]] = field(default_factory=list)


def column_for(table: pa.Table, name: str) -> str | None:
    """The column a person means by a name: itself, its alias, or a metric's `m:` column."""
    name = ALIASES.get(name, name)
    for candidate in (name, f"m:{name}"):
        if candidate in table.column_names:
            return candidate
    return None


def parse(query: str, table: pa.Table) -> Query:
    q = Query()
    for token in query.split():
        key, sep, value = token.partition(":")
        if m := COMPARE.match(token):
            q.compares.append((m[1], m[2], float(m[3])))
        elif sep and value and column_for(table, key):
            q.fields.append((key, value))
        else:
            q.text.append(token.lower())
    return q


def is_text(col: pa.ChunkedArray | pa.Array) -> bool:
    return pa.types.is_string(col.type) or pa.types.is_large_string(col.type)


def is_number(col: pa.ChunkedArray | pa.Array) -> bool:
    return pa.types.is_integer(col.type) or pa.types.is_floating(col.type)


def apply(table: pa.Table, query: str) -> pa.Table:
    """The rows of table that match every part of the query."""
    q = parse(query, table)
    if not (q.text or q.fields or q.compares) or table.num_rows == 0:
        return table
    mask = pa.array([True] * table.num_rows)
    for key, value in q.fields:
        col = table[column_for(table, key)]
        words = pc.utf8_lower(pc.fill_null(pc.cast(col, pa.string()), ""))
        mask = pc.and_(mask, pc.match_substring(words, value.lower()))
    for key, op, value in q.compares:
        name = column_for(table, key)
        if name is None:
            raise FilterError(f"no column or metric {key!r} here")
        if not is_number(table[name]):
            raise FilterError(f"{key} is not a number: compare it with {key}:TEXT")
        mask = pc.and_kleene(mask, pc.fill_null(OPS[op](table[name], value), False))
    texts = [pc.fill_null(table[c], "") for c in table.column_names if is_text(table[c])]
    if q.text and texts:
        hay = pc.utf8_lower(pc.binary_join_element_wise(*texts, " ")) if len(texts) > 1 else \
            pc.utf8_lower(texts[0])
        for word in q.text:
            mask = pc.and_(mask, pc.match_substring(hay, word))
    elif q.text:
        mask = pa.array([False] * table.num_rows)
    return table.filter(mask)
