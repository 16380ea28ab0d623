"""How numbers read on screen: sizes, shares, money and ages in a few characters."""

from __future__ import annotations

import time
from typing import Any


def gib(n: float | None) -> str:
    return "-" if n is None else f"{n / 2**30:.1f}G"


def pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.0f}%"


def share(x: float | None) -> str:
    """A fraction as a percentage: 0.42 reads 42%."""
    return "-" if x is None or x != x else f"{x:.0%}"


def money(x: float | None) -> str:
    """$1,234, $12.50, <$0.01: what a person reads as a price."""
    if x is None:
        return "-"
    if x == 0:
        return "$0.00"
    if abs(x) < 0.01:
        return "<$0.01" if x > 0 else "-<$0.01"
    return f"${x:,.0f}" if abs(x) >= 1000 else f"${x:,.2f}"


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


def progress(step: int | None, total: int | None, started: float | None, running: bool,
             now: float | None = None) -> str:
    """`step 120/1,000 12% · ETA 3m05s`: how far a run is, and (while it runs) when it should end."""
    if not total or step is None:
        return "-"
    done = min(1.0, (step + 1) / total)
    text = f"step {step + 1:,}/{total:,} {done:.0%}"
    if running and started is not None and 0 < done < 1:
        text += f" · ETA {duration(((now or time.time()) - started) * (1 - done) / done)}"
    return text


def lower_is_better(metric: str) -> bool:
    """A metric whose smaller values are better, read from its name (loss, error, latency, ...)."""
    name = metric.lower()
    return any(word in name for word in LOWER_IS_BETTER)


LOWER_IS_BETTER = ("loss", "err", "latency", "mse", "mae", "rmse", "perplexity", "_ms", "cost", "drift")

__all__ = ["age", "duration", "gib", "lower_is_better", "money", "number", "pct", "progress", "share", "span"]
