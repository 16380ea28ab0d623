"""The format of a run's metrics.jsonl, shared by the SDK that writes it and the agent that reads it."""

from __future__ import annotations

from typing import Any

import msgspec


class Line(msgspec.Struct, omit_defaults=True):
    """One line: a metrics point (m at step s) or a lifecycle event (e with data d)."""

    t: float
    s: int | None = None
    m: dict[str, float | None] | None = None
    e: str | None = None
    d: dict[str, Any] | None = None
