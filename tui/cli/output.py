"""How the CLI prints: stable JSON with --json, aligned tables for people (errors: main() in __init__)."""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from collections.abc import Callable, Sequence
from typing import Any

import msgspec

from mldeck.core.runlog import nonfinite_name
from mldeck.tui.units import number


def print_json(data: Any) -> None:
    sys.stdout.write(msgspec.json.format(msgspec.json.encode(_named(data)), indent=2).decode() + "\n")


def _named(data: Any) -> Any:
    """NaN and infinities by name, as the agent sends them: JSON has none, and msgspec would write null."""
    if data.__class__ is float:
        return data if data - data == 0.0 else nonfinite_name(data)
    if isinstance(data, dict):
        return {k: _named(v) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [_named(v) for v in data]
    return data


def show(args: argparse.Namespace, result: Any, render: Callable[[Any], object]) -> int:
    """--json prints the result as it is, for scripts; otherwise `render` prints it for people."""
    if args.json:
        print_json(result)
    else:
        render(result)
    return 0


def when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    text = [[number(v) for v in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in text)]) for i, h in enumerate(headers)]
    print("  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    for row in text:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
