"""The `/` filter applied to the rows a table holds, with Arrow (the grammar: core/table_filter.py)."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from mldeck.core.errors import Invalid
from mldeck.core.table_filter import column_for, parse

OPS = {">": pc.greater, "<": pc.less, ">=": pc.greater_equal, "<=": pc.less_equal,
       "=": pc.equal, "!=": pc.not_equal}


def is_text(col: pa.ChunkedArray | pa.Array) -> bool:
    return pa.types.is_string(col.type) or pa.types.is_large_string(col.type)


def is_number(col: pa.ChunkedArray | pa.Array) -> bool:
    return pa.types.is_integer(col.type) or pa.types.is_floating(col.type)


def apply(table: pa.Table, query: str) -> pa.Table:
    """The rows of table that match every part of the query."""
    names = set(table.column_names)
    q = parse(query, names)
    if not q or table.num_rows == 0:
        return table
    mask = pa.array([True] * table.num_rows)
    for key, value in q.fields:
        col = table[column_for(key, names)]
        words = pc.utf8_lower(pc.fill_null(pc.cast(col, pa.string()), ""))
        mask = pc.and_(mask, pc.match_substring(words, value.lower()))
    for key, op, value in q.compares:
        name = column_for(key, names)
        if name is None:
            raise Invalid(f"no column or metric {key!r} here")
        if not is_number(table[name]):
            raise Invalid(f"{key} is not a number: compare it with {key}:TEXT")
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
