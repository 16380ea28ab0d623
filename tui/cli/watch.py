"""`mldeck run --wait`: follow a run until it ends, showing where it is, then how it ended; and what a
command is waiting for (`saying`).

Progress goes to stderr, so stdout holds only the run id (or the --json document) for scripts. On a
terminal one line is rewritten in place at every poll; elsewhere (piped, a CI log) plain lines are
printed: when the status changes, at the first logged step, then at most every PLAIN_EVERY_S while
something moves. Colour only on a terminal, and never with NO_COLOR set (https://no-color.org).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import shutil
import sys
import time
from collections.abc import Awaitable
from typing import Any, TextIO, TypeVar

from mldeck.core.client import Client, Subscription
from mldeck.core.runlog import TERMINAL
from mldeck.tui.cli.connect import agent_client
from mldeck.tui.units import duration, number, progress

WAIT_POLL_S = 0.3
TICK_S = 0.5
PLAIN_EVERY_S = 10.0
METRICS_SHOWN = 4
LOG_TAIL_LINES = 15
LOG_TAIL_BYTES = 16 * 1024
T = TypeVar("T")
COLORS = {"succeeded": "32", "failed": "31", "stopped": "33", "pruned": "33"}


def use_color(stream: TextIO) -> bool:
    return stream.isatty() and not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"


def paint(text: str, code: str | None, stream: TextIO) -> str:
    return f"\033[{code}m{text}\033[0m" if code and use_color(stream) else text


class Progress:
    """Where one run stands, written to `stream` as one live line (a terminal) or as plain lines."""

    def __init__(self, stream: TextIO, label: str) -> None:
        self.stream = stream
        self.label = label
        self.live = stream.isatty()
        self.step: int | None = None
        self.metrics: dict[str, float] = {}
        self.shown: tuple[Any, ...] | None = None
        self.shown_at = -math.inf
        self.width = 0
        self.ended = False

    def note(self, event: dict[str, Any]) -> None:
        """A run.metrics event: the newest step and values, ahead of what runs.get has stored yet."""
        for key, step, value in zip(event["key"], event["step"], event["value"], strict=True):
            self.metrics[key] = value
            self.step = step if self.step is None else max(self.step, step)

    def line(self, run: dict[str, Any]) -> str:
        since = run.get("started_at") or run.get("created_at")
        parts = [self.label, run["status"], duration(time.time() - since) if since else ""]
        step = self.step if self.step is not None else run.get("last_step")
        if run.get("total_steps") and step is not None:
            running = run["status"] == "running"
            parts.append(progress(step, run["total_steps"], run.get("started_at"), running))
        elif step is not None:
            parts.append(f"step {step}")
        metrics = {**run.get("metrics", {}), **self.metrics}
        parts += [f"{k} {number(v)}" for k, v in sorted(metrics.items())[:METRICS_SHOWN]]
        return "  ".join(p for p in parts if p)

    def update(self, run: dict[str, Any]) -> None:
        if self.live:
            text = self.line(run)[:shutil.get_terminal_size().columns - 1]
            self.stream.write("\r" + text.ljust(self.width))
            self.stream.flush()
            self.width = len(text)
            return
        state = (run["status"], self.step, tuple(sorted(self.metrics.items())))
        if state == self.shown:
            return
        before = self.shown or (None, None)
        news = state[0] != before[0] or (state[1] is not None and before[1] is None)
        if news or time.monotonic() - self.shown_at >= PLAIN_EVERY_S:
            print(self.line(run), file=self.stream, flush=True)
            self.shown, self.shown_at = state, time.monotonic()

    def clear(self) -> None:
        if self.live and self.width:
            self.stream.write("\r" + " " * self.width + "\r")
            self.width = 0

    def end(self, run: dict[str, Any], log_tail: list[str]) -> None:
        """The final status, its reason and, for a failed run, the last lines of its log."""
        self.clear()
        self.ended = True
        status = run["status"]
        words = [self.label, paint(status, COLORS.get(status), self.stream)]
        if run.get("started_at") and run.get("ended_at"):
            words.append(f"after {duration(run['ended_at'] - run['started_at'])}")
        reason = f": {run['status_reason']}" if run.get("status_reason") else ""
        print(" ".join(words) + reason, file=self.stream)
        if log_tail:
            print(f"its log ends (`mldeck runs logs {run['run_id']}` has all of it):", file=self.stream)
            for text in log_tail:
                print(f"  {text}", file=self.stream)
        self.stream.flush()

    def close(self) -> None:
        """Leave the terminal clean if the wait stops before the run ends (Ctrl-C)."""
        if not self.ended:
            self.clear()
            print(f"stopped waiting; {self.label} goes on (`mldeck runs stop` stops it)", file=self.stream)


async def saying(what: str, work: Awaitable[T], stream: TextIO | None = None) -> T:
    """Await work while saying what it is on a terminal (stderr): a line that counts the seconds, so nothing
    sits silent, and is wiped once the work is done. Piped output stays as the command's own."""
    stream = stream or sys.stderr
    if not stream.isatty():
        return await work
    task = asyncio.ensure_future(work)
    started = time.monotonic()
    text = ""
    try:
        while not task.done():
            text = f"{what}... {duration(time.monotonic() - started)}"
            stream.write("\r" + text)
            stream.flush()
            await asyncio.wait({task}, timeout=TICK_S)
        return task.result()
    finally:
        task.cancel()
        stream.write("\r" + " " * len(text) + "\r")
        stream.flush()


def drain(sub: Subscription) -> list[Any]:
    """The events that arrived since the last poll, without waiting."""
    events = []
    while not sub.queue.empty():
        item = sub.queue.get_nowait()
        if isinstance(item, Exception):
            raise item
        events.append(item)
    return events


async def log_tail(client: Client, run_id: str) -> list[str]:
    chunk = await client.call("runs.logs", run_id=run_id, max_bytes=LOG_TAIL_BYTES)
    lines = chunk["data"].splitlines()
    if chunk["size"] > LOG_TAIL_BYTES:
        lines = lines[1:]  # the first line is cut
    return lines[-LOG_TAIL_LINES:]


async def follow(client: Client, run_id: str, progress: Progress | None) -> dict[str, Any]:
    sub = await client.subscribe("run.metrics", run_id=run_id) if progress else None
    try:
        while True:
            run = await client.call("runs.get", run_id=run_id)
            if progress and sub:
                for event in drain(sub):
                    progress.note(event)
            if run["status"] in TERMINAL:
                return run
            if progress:
                progress.update(run)
            await asyncio.sleep(WAIT_POLL_S)
    finally:
        if sub:
            await sub.close()


async def wait_for_end(args: argparse.Namespace, run_id: str, progress: Progress | None) -> dict[str, Any]:
    """Poll the run until it ends; with `progress`, show it on the way and how it ended."""
    async with agent_client(args) as client:
        try:
            run = await follow(client, run_id, progress)
            if progress:
                progress.end(run, await log_tail(client, run_id) if run["status"] == "failed" else [])
        finally:
            if progress:
                progress.close()
    return run
