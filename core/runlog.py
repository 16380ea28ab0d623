"""A run folder's formats (metrics.jsonl, checkpoints/), shared by the SDK and the agent that reads them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec

CHECKPOINTS = "checkpoints"  # in a run folder: ckpt-<step>.pt files and latest.json naming the newest
LATEST_CHECKPOINT = "latest.json"
CHECKPOINT_GLOB = "ckpt-*.pt"
TERMINAL = frozenset({"succeeded", "failed", "stopped"})
"""Run statuses after which nothing more happens to a run (queued, running and preempted move on)."""


class Line(msgspec.Struct, omit_defaults=True):
    """One line: a metrics point (m at step s) or a lifecycle event (e with data d)."""

    t: float
    s: int | None = None
    m: dict[str, float | None] | None = None
    e: str | None = None
    d: dict[str, Any] | None = None


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
