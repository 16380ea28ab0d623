"""The words every table's `/` filter takes: free text, `column:value`, `metric>0.9` (several are ANDed).

One grammar for both ends: the TUI applies it to the rows it holds (tui/widgets/table_query.py) and the
agent to every run of its store (core/runs_sql.py), so a filter over 100,000 runs ships only what matches.
Free text matches any text column; `status:running`, `exp:x` pick a column by name (or a short alias); a
comparison works on any numeric column, a run's metric by its bare name (`val_acc`).
"""

from __future__ import annotations

import re
from collections.abc import Container
from dataclasses import dataclass, field

ALIASES = {"exp": "experiment", "sweep": "sweep_id", "run": "run_id", "alias": "aliases"}
COMPARE = re.compile(r"^([A-Za-z0-9_.\-/]+)(>=|<=|!=|>|<|=)(-?[0-9.eE+\-]+)$")


@dataclass
class Query:
    text: list[str] = field(default_factory=list)
    fields: list[tuple[str, str]] = field(default_factory=list)
    compares: list[tuple[str, str, float]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.text or self.fields or self.compares)


def column_for(name: str, columns: Container[str]) -> str | None:
    """The column a person means by a name: itself, its alias, or a metric's `m:` column."""
    name = ALIASES.get(name, name)
    for candidate in (name, f"m:{name}"):
        if candidate in columns:
            return candidate
    return None


def parse(query: str, columns: Container[str]) -> Query:
    """The query's parts; `word:value` is a column match only where the word names a column."""
    q = Query()
    for token in query.split():
        key, sep, value = token.partition(":")
        if m := COMPARE.match(token):
            q.compares.append((m[1], m[2], float(m[3])))
        elif sep and value and column_for(key, columns):
            q.fields.append((key, value))
        else:
            q.text.append(token.lower())
    return q
