"""A runs page's filter and order as SQL: the Runs screen's `/` filter and sort, run by each host's store on
all its runs, so that a fleet's screen asks every host for its first page and merges them (the first rows
of the merge are the fleet's first rows) instead of fetching every table whole."""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

from mldeck.core.errors import Invalid
from mldeck.core.table_filter import column_for, parse

TEXT_COLUMNS = ("run_id", "experiment", "name", "status", "sweep_id")
"""What free text matches: the text columns the Runs screen holds (the host's name is the TUI's)."""
RENAMED = {"created": "created_at", "cost": "cost_usd"}
"""The Runs screen's names for the store's columns."""
STEPS = "(SELECT run_id, max(last_step) AS last_step FROM metric_summary GROUP BY run_id)"
DERIVED = {
    "last_step": "_steps.last_step",
    "duration": "coalesce(ended_at, epoch(now())) - started_at",
    "progress": "least((_steps.last_step + 1) / total_steps, 1)",
}
DERIVED["eta"] = (f"CASE WHEN status = 'running' AND {DERIVED['progress']} > 0 THEN "
                  f"({DERIVED['duration']}) * (1 - {DERIVED['progress']}) / {DERIVED['progress']} END")
"""Figures the Runs screen works out per run (core of tui/screens/runs.py with_duration), here for sort and
filter."""


def quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class Known:
    """The names a filter may use: the runs' columns, the Runs screen's, and every metric the store has."""

    def __init__(self, columns: Collection[str], has_metric: Callable[[str], bool]) -> None:
        self.columns = {*columns, *RENAMED, *(DERIVED if "total_steps" in columns else ("duration",))}
        self.has_metric = has_metric

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        if name.startswith("m:"):
            return self.has_metric(name[2:])
        return name in self.columns


@dataclass
class Selection:
    """FROM … WHERE … ORDER BY … of a runs page, its arguments in order, and the metrics it names."""

    source: str
    args: list[Any] = field(default_factory=list)
    order: str = "created_at DESC NULLS LAST, run_id"
    metrics: list[str] = field(default_factory=list)


def compared(expr: str, op: str) -> str:
    """A comparison as Arrow makes it: NaN is unequal to everything and neither above nor below it."""
    nan = "true" if op == "!=" else "false"
    return f"coalesce(CASE WHEN isnan(({expr})::DOUBLE) THEN {nan} ELSE ({expr}) {op} ? END, false)"


def selection(known: Known, numeric: Collection[str], query: str | None, sort: str | None,
              descending: bool, equal: dict[str, str] | None = None) -> Selection:
    """The runs a page is cut from, filtered by query (the `/` words) and by `equal` (column: value), and
    ordered by sort (a column, a figure of DERIVED or `m:<metric>`; None: newest first), NaN after numbers
    and nulls last as in Arrow."""
    where = [f"{quoted(col)} = ?" for col in equal or {}]
    args: list[Any] = list((equal or {}).values())
    named: list[str] = []
    derived = False

    def column(name: str) -> str:
        nonlocal derived
        name = RENAMED.get(name, name)
        if name in DERIVED:
            derived = True
            return DERIVED[name]
        return quoted(name)

    def metric(key: str, cond: str, *values: Any) -> None:
        named.append(key)
        where.append(f"run_id IN (SELECT run_id FROM metric_summary WHERE key = ? AND {cond})")
        args.extend([key, *values])

    q = parse(query or "", known)
    for key, value in q.fields:
        name = column_for(key, known) or key
        cond = "contains(lower(CAST({} AS VARCHAR)), ?)"
        if name.startswith("m:"):
            metric(name[2:], cond.format("last_value"), value.lower())
        else:
            where.append(f"coalesce({cond.format(column(name))}, false)")
            args.append(value.lower())
    for key, op, number in q.compares:
        name = column_for(key, known) or f"m:{key}"  # a metric no run of this host has: none match
        if name.startswith("m:"):
            metric(name[2:], compared("last_value", op), number)
            continue
        if RENAMED.get(name, name) not in numeric and name not in DERIVED:
            raise Invalid(f"{key} is not a number: compare it with {key}:TEXT")
        where.append(compared(column(name), op))
        args.append(number)
    for word in q.text:
        where.append(f"contains(lower(concat_ws(' ', {', '.join(TEXT_COLUMNS)})), ?)")
        args.append(word)

    joins, join_args, order = "", [], Selection("").order
    if sort:
        way = "DESC" if descending else "ASC"
        if sort.startswith("m:"):
            named.append(sort[2:])
            joins = (" LEFT JOIN (SELECT run_id, last_value AS _sort FROM metric_summary WHERE key = ?) "
                     "USING (run_id)")
            join_args = [sort[2:]]
            by, number = "_sort", True
        elif sort in known:
            by, number = column(sort), RENAMED.get(sort, sort) in numeric or sort in DERIVED
        else:
            raise Invalid(f"cannot sort runs by {sort!r}: a run column or m:<metric>")
        nan = f"isnan(({by})::DOUBLE), " if number else ""
        order = f"({by}) IS NULL, {nan}({by}) {way}, {order}"
    runs = f"runs LEFT JOIN {STEPS} _steps USING (run_id)" if derived else "runs"
    source = f"FROM {runs}{joins}" + (f" WHERE {' AND '.join(where)}" if where else "")
    return Selection(source, [*join_args, *args], order, list(dict.fromkeys(named)))
