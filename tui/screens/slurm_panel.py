"""A Slurm host's cluster under its Fleet row: partitions, nodes and the queue, as slurm.status says them.

Every value may be missing (an agent of another version, a field Slurm left empty): it reads "-". Long
lists are cut (the summary line keeps the full counts); the queue shows mldeck's own jobs first.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from textual.content import Content
from textual.widgets import Static

from mldeck.tui.units import duration

MAX_NODES = 8
MAX_JOBS = 10
CELL = 18  # the widest a free-text cell (a job's name, a reason, a node list) is drawn
GAP = "  "
Cell = tuple[str, str]
PARTITIONS = ["partition", "avail", "nodes idle/alloc/total", "GPUs free/total", "time limit"]
NODES = ["node", "state", "partitions", "CPUs alloc/total", "GPUs free/total", "reason"]
QUEUE = ["job", "mldeck run", "name", "user", "state", "reason", "elapsed", "nodes", "on"]

STATE_STYLES = {
    "idle": "$success", "mixed": "$warning", "allocated": "$accent", "completing": "$accent",
    "RUNNING": "$success", "PENDING": "$warning", "COMPLETING": "$accent",
}


def dash(value: Any) -> str:
    """A value as text; None, empty and missing read "-"."""
    return "-" if value is None or value == "" or value == [] else str(value)


def clip(text: str, width: int = CELL) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def note(value: Any, style: str, width: int = CELL) -> Cell:
    """A free-text cell: clipped, in style when it says something, dim when it is "-"."""
    return (clip(dash(value), width), style if dash(value) != "-" else "dim")


def plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def ratio(part: Any, whole: Any) -> str:
    """`free/total`; "-" when either is unknown, or the whole is none (no GPUs there)."""
    part, whole = count(part), count(whole)
    return "-" if part is None or not whole else f"{part}/{whole}"


def state_style(state: str) -> str:
    base = state.rstrip("*~#!%$@^-+").lower()
    if base.startswith(("down", "drain", "fail", "not_responding", "inval")):
        return "$error"
    return STATE_STYLES.get(state, STATE_STYLES.get(base, ""))


def partition_rows(parts: list[dict[str, Any]]) -> list[list[Cell]]:
    """Name (* marks the default), availability, nodes idle/alloc/total, GPUs free/total, time limit."""
    out = []
    for p in parts:
        name = dash(p.get("name")) + ("*" if p.get("default") else "")
        avail = dash(p.get("available"))
        nodes = "/".join(dash(count(p.get(k))) for k in ("idle", "allocated", "nodes"))
        out.append([(name, "bold"), (avail, "$success" if avail == "up" else "$error"), (nodes, ""),
                    (ratio(p.get("gpus_free"), p.get("gpus")), ""), (dash(p.get("time_limit")), "")])
    return out


def node_rows(nodes: list[dict[str, Any]]) -> list[list[Cell]]:
    """Name, state, partitions, CPUs allocated/total, GPUs free/total, and why it is down or drained."""
    out = []
    for n in nodes:
        state = dash(n.get("state"))
        partitions = ",".join(n.get("partitions") or [])
        out.append([
            (dash(n.get("name")), "bold"), (state, state_style(state)), note(partitions, ""),
            (ratio(n.get("cpus_allocated"), n.get("cpus")), ""),
            (ratio(n.get("gpus_free"), n.get("gpus")), ""), note(n.get("reason"), "$error", 30),
        ])
    return out


def elapsed(job: dict[str, Any]) -> str:
    seconds = job.get("elapsed_s")
    if not isinstance(seconds, int | float) or (not seconds and job.get("state") == "PENDING"):
        return "-"
    return duration(seconds)


def queue_order(queue: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """mldeck's runs first, then running before pending; otherwise Slurm's order."""
    return sorted(queue, key=lambda j: (j.get("run_id") is None, j.get("state") != "RUNNING"))


def queue_rows(queue: list[dict[str, Any]]) -> list[list[Cell]]:
    """Job id, the mldeck run it is (or -), name, user, state, Slurm's reason, elapsed, nodes and where."""
    out = []
    for j in queue:
        state = dash(j.get("state"))
        nodes = count(j.get("nodes"))
        out.append([
            (dash(j.get("job_id")), "bold"), note(j.get("run_id"), "$accent", 40), note(j.get("name"), ""),
            note(j.get("user"), "", 12), (state, state_style(state)), note(j.get("reason"), "$warning"),
            (elapsed(j), ""), (dash(nodes or None), ""), note(j.get("nodelist"), ""),
        ])
    return out


def table(title: str, header: list[str], rows: list[list[Cell]], more: int) -> list[Cell]:
    """The title, the header and the rows in aligned columns, and how many were left out."""
    widths = [max([len(h), *(len(r[i][0]) for r in rows)]) for i, h in enumerate(header)]
    out: list[Cell] = [(f"\n\n{title}", "bold"), ("\n", "")]
    out.append((GAP.join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip(), "dim"))
    for row in rows:
        out.append(("\n", ""))
        for i, ((text, style), width) in enumerate(zip(row, widths, strict=True)):
            out.append((text.ljust(width) if i < len(row) - 1 else text, style))
            if i < len(row) - 1:
                out.append((GAP, ""))
    if more:
        out.append((f"\n… and {more} more", "dim"))
    return out


def summary(status: dict[str, Any]) -> list[Cell]:
    """One line: the cluster at a glance, with the full counts (the lists below may be cut)."""
    nodes = status.get("nodes") or []
    states = Counter(dash(n.get("state")) for n in nodes)
    by_state = ", ".join(f"{k} {v}" for k, v in states.most_common())
    gpus = sum(count(n.get("gpus")) or 0 for n in nodes)
    free = sum(count(n.get("gpus_free")) or 0 for n in nodes)
    queue = status.get("queue") or []
    ours = sum(1 for j in queue if j.get("run_id"))
    return [
        ("Slurm", "bold $accent"),
        (f"  {plural(len(status.get('partitions') or []), 'partition')}  ·  {plural(len(nodes), 'node')}"
         + (f" ({by_state})" if by_state else "") + (f"  ·  GPUs {free}/{gpus} free" if gpus else ""), ""),
        (f"  ·  queue {dash(count(status.get('running')))} running, {dash(count(status.get('pending')))} "
         f"pending, {ours} of them mldeck's", ""),
    ]


def render(status: dict[str, Any]) -> Content:
    """The whole panel: summary, partitions, nodes, queue, and where GPU telemetry comes from."""
    parts, nodes = status.get("partitions") or [], status.get("nodes") or []
    queue = queue_order(status.get("queue") or [])
    cells = summary(status)
    cells += table("partitions", PARTITIONS, partition_rows(parts), 0)
    cells += table("nodes", NODES, node_rows(nodes[:MAX_NODES]), max(0, len(nodes) - MAX_NODES))
    if queue:
        cells += table("queue", QUEUE, queue_rows(queue[:MAX_JOBS]), max(0, len(queue) - MAX_JOBS))
    else:
        cells += [("\n\nqueue", "bold"), ("\nno jobs pending or running", "dim")]
    if status.get("telemetry"):
        cells.append((f"\n\n{status['telemetry']}", "dim"))
    return Content.assemble(*cells)


class SlurmPanel(Static):
    """Mounted under a host's row the first time its agent answers slurm.status; never on other hosts."""

    DEFAULT_CSS = "SlurmPanel { height: auto; padding: 1 0 1 2; }"

    def show(self, status: dict[str, Any]) -> None:
        self.update(render(status))

    def fail(self, why: str) -> None:
        """Slurm did not answer (slurmctld down, a command missing): the panel says so, the row stays."""
        self.update(Content.assemble(("Slurm", "bold $accent"), ("  " + why, "$error")))
