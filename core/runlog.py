"""A run folder's formats (metrics.jsonl, checkpoints/), shared by the SDK and the agent that reads them."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import msgspec

CHECKPOINTS = "checkpoints"  # in a run folder: ckpt-<step>.pt files and latest.json naming the newest
LATEST_CHECKPOINT = "latest.json"
CHECKPOINT_GLOB = "ckpt-*.pt"
TERMINAL = frozenset({"succeeded", "failed", "stopped", "pruned"})
"""Run statuses after which nothing more happens to a run (queued, running and preempted move on)."""
NONFINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
"""JSON has no NaN or infinities: a metric value that is one is written as its name, and read back."""
DROPPED = "dropped"
"""The event an SDK writes once the disk takes lines again: how many points it had to drop (d.points)."""
TOTAL_STEPS = "total_steps"
"""The event that says how many steps a run will take."""


class Line(msgspec.Struct, omit_defaults=True):
    """One line: a metrics point (m at step s; values are numbers or NONFINITE names) or an event e."""

    t: float
    s: int | None = None
    m: dict[str, float | str | None] | None = None
    e: str | None = None
    d: dict[str, Any] | None = None


def nonfinite_name(value: float) -> str:
    """The name a NaN or infinite metric value is written as (see NONFINITE)."""
    if math.isnan(value):
        return "NaN"
    return "Infinity" if value > 0 else "-Infinity"


def by_name(values: list[Any]) -> list[Any]:
    """Metric values as JSON can carry them (on the agent's socket too): NaN and infinities by name."""
    return [nonfinite_name(v) if v.__class__ is float and v - v != 0.0 else v for v in values]


def named(metrics: dict[str, Any]) -> dict[str, Any]:
    """Metric values for the wire, NaN and infinities by name (JSON has none; the client reads them back)."""
    return dict(zip(metrics, by_name(list(metrics.values())), strict=True))


def finish_line(run_dir: Path) -> dict[str, Any] | None:
    """The data of the SDK's finish event when it is the last line of the run's metrics.jsonl, else None.

    The job runner reads it to tell a run that ended before it saw a stop from one that stopped."""
    try:
        with open(Path(run_dir) / "metrics.jsonl", "rb") as fh:
            fh.seek(max(0, fh.seek(0, 2) - 4096))
            tail = fh.read()
    except OSError:
        return None
    try:
        line = msgspec.json.decode(tail.rstrip(b"\n").rsplit(b"\n", 1)[-1], type=Line)
    except msgspec.DecodeError:
        return None
    return (line.d or {}) if line.e == "finish" else None


def checkpoint_name(step: int) -> str:
    """Zero-padded, so the names sort by step."""
    return f"ckpt-{max(step, 0):09d}.pt"


def list_checkpoints(run_dir: Path) -> list[dict[str, Any]]:
    """A run's checkpoints on disk, newest first, marking the one resume() would load."""
    folder = Path(run_dir) / CHECKPOINTS
    try:
        latest = json.loads((folder / LATEST_CHECKPOINT).read_text()).get("file")
    except (OSError, ValueError, AttributeError):
        latest = None
    out = []
    for path in sorted(folder.glob(CHECKPOINT_GLOB), reverse=True):
        try:
            st = path.stat()
        except FileNotFoundError:  # pruned by the run meanwhile
            continue
        out.append({"file": path.name, "step": int(path.stem.split("-")[1]), "bytes": st.st_size,
                    "ts": st.st_mtime, "latest": path.name == latest})
    return out
