"""What is wrong with an agent, in the words `agent status`, `hosts status` and the Fleet row share."""

from __future__ import annotations

import datetime as dt
from typing import Any

REFUSED = {
    "full": "refused {n} clients: too many connections",
    "too_large": "refused {n} messages larger than it takes",
    "bad_request": "refused {n} lines that are no request",
    "idle": "closed {n} clients that sent no whole request",
    "dropped": "dropped {n} events to clients that did not read them",
    "accept": "could not accept clients ({n} tries)",
}
"""What the control socket refused, by the kinds agent/rpc.py Refusals counts."""


def _at(ts: float | None) -> str:
    return dt.datetime.fromtimestamp(ts).strftime("%H:%M:%S") if ts else "?"


def problems(ingest: dict[str, Any], failures: dict[str, dict[str, Any]],
             refused: dict[str, dict[str, Any]] | None = None) -> list[str]:
    """One line per thing a person should look at; empty when the agent is healthy."""
    out = []
    if ingest.get("paused"):
        out.append(f"ingest paused: {ingest['paused']}")
    bad = ingest.get("last_bad_line")
    if ingest.get("bad_lines") and bad:
        out.append(f"ingest: {ingest['bad_lines']} bad lines skipped, last {bad['file']}:{bad['line']} "
                   f"at {_at(bad.get('at'))} ({bad['error']})")
    errors = ingest.get("errors") or {}
    if errors.get("count"):
        last = _at(errors.get("last_at"))
        out.append(f"ingest: {errors['count']} errors, last at {last}: {errors['last']}")
    for name, failure in sorted(failures.items()):
        out.append(f"{name}: failed {failure['count']}×, last at {_at(failure.get('last_at'))}: "
                   f"{failure['last']}")
    for kind, seen in sorted((refused or {}).items()):
        what = REFUSED[kind].format(n=seen["count"])
        out.append(f"control socket: {what}, last at {_at(seen.get('last_at'))}: {seen['last']}")
    return out
