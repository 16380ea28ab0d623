"""The prediction log: JSON lines appended off the event loop, sampled rather than slowed.

Responses only put a record on a bounded queue; a writer thread encodes and
appends to `serving/<model>/predictions-<n>.jsonl` (a new segment past
`segment_bytes`). Past half full, one record in SAMPLE_EVERY is kept; when full,
records are dropped; both are counted. Feedback and alerts are never dropped.
"""

from __future__ import annotations

import logging
import queue
import re
import threading
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from mldeck.core.serving import ALERTS_FILE, AlertLine, FeedbackLine, PredictionLine

log = logging.getLogger("mldeck.serving.log")

SAMPLE_EVERY = 10
FLUSH_S = 0.2


def _plain(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"cannot log {type(obj).__name__}")


_encode = msgspec.json.Encoder(enc_hook=_plain).encode


class _Segments:
    """One model's numbered files of one kind; appends to the newest until it is full."""

    def __init__(self, folder: Path, kind: str, segment_bytes: int) -> None:
        self.folder = folder
        self.kind = kind
        self.segment_bytes = segment_bytes
        folder.mkdir(parents=True, exist_ok=True)
        pattern = re.compile(rf"^{kind}-(\d+)\.jsonl$")
        numbers = [int(m.group(1)) for p in folder.iterdir() if (m := pattern.match(p.name))]
        self.n = max(numbers, default=1)
        self.fh = open(self._path(), "ab")  # noqa: SIM115 (kept open across writes)

    def _path(self) -> Path:
        return self.folder / f"{self.kind}-{self.n}.jsonl"

    def write(self, data: bytes) -> None:
        if self.fh.tell() >= self.segment_bytes:
            self.fh.close()
            self.n += 1
            self.fh = open(self._path(), "ab")  # noqa: SIM115
        self.fh.write(data)

    def flush(self) -> None:
        self.fh.flush()

    def close(self) -> None:
        self.fh.close()


class PredictionLog:
    """Bounded, non-blocking logging of predictions; feedback and alerts through the same writer."""

    def __init__(self, serving_dir: Path, max_queue: int, segment_bytes: int) -> None:
        self.dir = serving_dir
        self.max_queue = max(2, max_queue)
        self.segment_bytes = segment_bytes
        self.queue: queue.SimpleQueue[tuple[str, str, Any] | None] = queue.SimpleQueue()
        self.pending = 0
        self.written = 0
        self.dropped = 0
        self.sampled_out = 0
        self._tick = 0
        self._lock = threading.Lock()
        self._files: dict[tuple[str, str], _Segments] = {}
        self._alerts = open(serving_dir / ALERTS_FILE, "ab")  # noqa: SIM115
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._thread.start()

    def prediction(self, line: PredictionLine) -> bool:
        """Queue one prediction unless the writer is behind; False when it was not kept."""
        pending = self.pending
        if pending >= self.max_queue:
            self.dropped += 1
            return False
        if pending >= self.max_queue // 2:
            self._tick += 1
            if self._tick % SAMPLE_EVERY:
                self.sampled_out += 1
                return False
        with self._lock:
            self.pending += 1
        self.queue.put(("predictions", line.model, line))
        return True

    def feedback(self, line: FeedbackLine) -> None:
        self.queue.put(("feedback", line.model, line))

    def alert(self, line: AlertLine) -> None:
        self.queue.put(("alert", "", line))

    def close(self) -> None:
        """Write out everything queued, then stop the writer."""
        self.queue.put(None)
        self._thread.join(10)

    def _run(self) -> None:
        while True:
            item = self.queue.get()
            items = [item]
            while item is not None and len(items) < 4096:
                try:
                    item = self.queue.get_nowait()
                except queue.Empty:
                    break
                items.append(item)
            try:
                self._write([i for i in items if i is not None])
            except Exception:
                log.exception("the prediction log could not write %d lines", len(items))
            if items[-1] is None:
                break
        for seg in self._files.values():
            seg.close()
        self._alerts.close()

    def _write(self, items: list[tuple[str, str, Any]]) -> None:
        touched = set()
        predictions = 0
        for kind, model, line in items:
            data = _encode(line) + b"\n"
            if kind == "alert":
                self._alerts.write(data)
                self._alerts.flush()
                continue
            seg = self._files.get((model, kind))
            if seg is None:
                seg = self._files[(model, kind)] = _Segments(self.dir / model, kind, self.segment_bytes)
            seg.write(data)
            touched.add(seg)
            predictions += kind == "predictions"
        for seg in touched:
            seg.flush()
        with self._lock:
            self.pending -= predictions
        self.written += predictions
