"""How numbers read on screen: sizes, shares, money and ages in a few characters."""

from __future__ import annotations

import time
from typing import Any


def gib(n: float | None) -> str:
    return "-" if n is None else f"{n / 2**30:.1f}G"


def pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.0f}%"


def money(x: float | None) -> str:
    return "-" if x is None else f"${x:,.2f}"


def number(x: Any) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.4g}"
    return str(x)


def duration(seconds: float | None) -> str:
    """1h02m, 3m05s or 42s."""
    if seconds is None or seconds != seconds:
        return "-"
    h, rest = divmod(int(seconds), 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def age(ts: float | None, now: float | None = None) -> str:
    if ts is None:
        return "-"
    return duration((now or time.time()) - ts) + " ago"


def span(start: float | None, end: float | None, now: float | None = None) -> str:
    """A run's duration: up to now while it runs."""
    if start is None:
        return "-"
    return duration((end or now or time.time()) - start)


__all__ = ["age", "duration", "gib", "money", "number", "pct", "span"]
