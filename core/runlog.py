"""The format of a run's metrics.jsonl, shared by the SDK that writes it and the agent that reads it."""

from __future__ import annotations

from typing import Any

import msgspec

TERMINAL = frozenset({"succeeded", "failed", "stopped"})
"""Run statuses after which nothing more happens to a run (queued, running and preempted move on)."""


class Line(msgspec.Struct, omit_defaults=True):
    """One line: a metrics point (m at step s) or a lifecycle event (e with data d)."""

    t: float
    s: int | None = None
    m: dict[str, float | None] | None = None
    e: str | None = None
    d: dict[str, Any] | None = None
