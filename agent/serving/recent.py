"""The request ids this server answered lately, so feedback can only name a request that existed.

Ids are kept as 64-bit hashes of (model, id): the newest in a set, older ones frozen into sorted
numpy chunks, the oldest chunk dropped past `capacity`, about 8 bytes an id. A restarted server
learns the ids in the newest prediction log segments again before it answers anyone.
"""

from __future__ import annotations

import logging
import re
from collections import deque
from pathlib import Path

import msgspec
import numpy as np

log = logging.getLogger("mldeck.serving.recent")

CHUNK = 65_536
SEED_BYTES = 256 * 1024 * 1024  # at most this much of the prediction logs is read at start
_SEGMENT = re.compile(r"^predictions-(\d+)\.jsonl$")


class _Id(msgspec.Struct):
    request_id: str


_decode_id = msgspec.json.Decoder(_Id).decode


class RecentIds:
    """A bounded memory of (model, request id) pairs, oldest forgotten first."""

    def __init__(self, capacity: int) -> None:
        self.capacity = max(capacity, CHUNK)
        self._new: set[int] = set()
        self._old: deque[np.ndarray] = deque()

    def add(self, model: str, request_id: str) -> None:
        self._new.add(hash((model, request_id)))
        if len(self._new) >= CHUNK:
            self._old.append(np.sort(np.fromiter(self._new, dtype=np.int64, count=len(self._new))))
            self._new = set()
            while len(self._old) * CHUNK > self.capacity:
                self._old.popleft()

    def __contains__(self, key: tuple[str, str]) -> bool:
        h = hash(key)
        if h in self._new:
            return True
        for chunk in self._old:
            i = int(np.searchsorted(chunk, h))
            if i < len(chunk) and chunk[i] == h:
                return True
        return False

    def seed(self, serving_dir: Path) -> int:
        """Learn the ids logged in each model's newest prediction segments; how many were read."""
        found = 0
        budget = SEED_BYTES
        models = sorted(p for p in serving_dir.iterdir() if p.is_dir()) if serving_dir.is_dir() else []
        for folder in models:
            numbered = ((int(m.group(1)), p) for p in folder.iterdir() if (m := _SEGMENT.match(p.name)))
            segments = sorted(numbered, reverse=True)
            ids: list[str] = []
            for _, path in segments:
                if budget <= 0 or len(ids) >= self.capacity:
                    break
                budget -= path.stat().st_size
                ids[:0] = _ids_in(path)
            for request_id in ids[-self.capacity:]:
                self.add(folder.name, request_id)
            found += len(ids)
        return found


def _ids_in(path: Path) -> list[str]:
    ids = []
    unreadable = 0
    with open(path, "rb") as fh:
        for line in fh:
            try:
                ids.append(_decode_id(line).request_id)
            except (msgspec.DecodeError, msgspec.ValidationError):
                unreadable += 1
    if unreadable:  # a line torn by a crash is expected; more is worth knowing
        log.info("%s: %d lines without a request id were skipped", path, unreadable)
    return ids
