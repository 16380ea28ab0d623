"""The versions being served, and the hot swap that changes them without failing a request.

The manifest names, per model, which version each alias serves. A version new
to the server is loaded and warmed on a loader thread while the old one keeps
answering; then the model's routing entry is replaced in one assignment on the
event loop. Requests already queued finish on the version they were routed to,
whose batcher is closed only after it drained. A load that fails leaves the old
version serving and writes an alert line.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import time
import uuid
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import watchfiles

from mldeck.agent.serving.batcher import Batcher, Timing
from mldeck.agent.serving.metrics import Metrics
from mldeck.agent.serving.predlog import PredictionLog
from mldeck.core.modelfile import LoadedModel, load_model
from mldeck.core.serving import CHALLENGER, MANIFEST_FILE, PRODUCTION, AlertLine, Manifest, read_manifest
from mldeck.core.signature import SAMPLE_FILE, Signature, numpy_dtype

log = logging.getLogger("mldeck.serving.pool")

POLL_MS = 2000


@dataclass
class Settings:
    """How the server batches and where models run; from the agent's [serving] config."""

    max_batch_size: int = 64
    max_queue_delay_ms: float = 1.0
    device: str = "cpu"


class Version:
    """One loaded model version and its batcher."""

    def __init__(self, name: str, version: int, artifact: str, model: LoadedModel, batcher: Batcher) -> None:
        self.name = name
        self.version = version
        self.artifact = artifact
        self.model = model
        self.signature: Signature = model.signature
        self.batcher = batcher
        self.loaded_at = time.time()


@dataclass
class Served:
    """A model as requests see it: alias → version, and its traffic split. Replaced whole on a swap."""

    name: str
    aliases: dict[str, Version] = field(default_factory=dict)
    shadow: bool = False
    canary: float = 0.0

    def versions(self) -> list[int]:
        """Every version that can be asked for by number: the ones loaded, under any alias."""
        return sorted({v.version for v in self.aliases.values()})

    def by_version(self, version: int) -> Version | None:
        return next((v for v in self.aliases.values() if v.version == version), None)

    def route(self, request_id: str) -> tuple[Version | None, str]:
        """The default route: production, or the challenger for the canary share (stable per id)."""
        challenger = self.aliases.get(CHALLENGER)
        if self.canary > 0 and challenger is not None and canary_bucket(request_id) < self.canary:
            return challenger, "canary"
        return self.aliases.get(PRODUCTION), PRODUCTION


def canary_bucket(request_id: str) -> float:
    """A request id's place in [0, 100): the same id always lands on the same side of the split."""
    return (zlib.crc32(request_id.encode()) % 10_000) / 100.0


def _warm_inputs(model: LoadedModel, rows: int) -> dict[str, np.ndarray]:
    sample = model.folder / SAMPLE_FILE
    if sample.is_file():
        with np.load(sample, allow_pickle=False) as stored:
            inputs = {k.removeprefix("inputs/"): stored[k] for k in stored if k.startswith("inputs/")}
        if inputs and all(len(a) for a in inputs.values()):
            return {k: np.resize(a, (rows, *a.shape[1:])) for k, a in inputs.items()}
    return {
        s.name: np.zeros([rows, *(max(d, 1) for d in s.shape[1:])], dtype=numpy_dtype(s.datatype))
        for s in model.signature.inputs
    }


def load_and_warm(artifact: str, device: str, max_batch_size: int) -> LoadedModel:
    """Load a model folder and run it at batch sizes 1 and full, so its first request is not slow."""
    model = load_model(Path(artifact), device=device)
    for rows in sorted({1, max(1, max_batch_size)}):
        model.predict(_warm_inputs(model, rows))
    return model


class Pool:
    """The served models; `apply` moves them to a manifest, `watch` follows the manifest file."""

    def __init__(
        self,
        serving_dir: Path,
        settings: Settings,
        metrics: Metrics,
        predlog: PredictionLog,
        executor: concurrent.futures.Executor,
    ) -> None:
        self.dir = serving_dir
        self.settings = settings
        self.metrics = metrics
        self.predlog = predlog
        self.executor = executor
        self.loader = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="model-loader")
        self.models: dict[str, Served] = {}
        self.failed: dict[tuple[str, int, str], str] = {}
        self.ready = False
        self.swaps = 0
        self.manifest_at = 0.0
        self._stamp: tuple[int, int, int] | None = None
        self._lock = asyncio.Lock()

    def _versions(self) -> dict[tuple[str, int, str], Version]:
        return {
            (v.name, v.version, v.artifact): v for s in self.models.values() for v in s.aliases.values()
        }

    async def _load(self, name: str, version: int, artifact: str) -> Version | None:
        key = (name, version, artifact)
        if key in self.failed:
            return None
        loop = asyncio.get_running_loop()
        try:
            model = await loop.run_in_executor(
                self.loader, load_and_warm, artifact, self.settings.device, self.settings.max_batch_size
            )
        except Exception as exc:
            message = f"{name} version {version} failed to load from {artifact}: {type(exc).__name__}: {exc}"
            log.error("%s; the previous version keeps serving", message)
            self.failed[key] = message
            self.metrics.count("mldeck_model_loads", model=name, result="failed")
            self.predlog.alert(AlertLine(
                alert_id=uuid.uuid4().hex, ts=time.time(), model=name, version=version,
                kind="serving.load_failed", message=message, details={"artifact": artifact},
            ))
            return None
        self.metrics.count("mldeck_model_loads", model=name, result="ok")

        def on_batch(rows: int, timing: Timing) -> None:
            self.metrics.batch(name, version, rows, timing)

        batcher = Batcher(
            model.predict, self.executor, self.settings.max_batch_size,
            self.settings.max_queue_delay_ms, on_batch,
        )
        log.info("loaded %s version %d from %s", name, version, artifact)
        return Version(name, version, artifact, model, batcher)

    async def apply(self, manifest: Manifest) -> None:
        """Load what is new, swap each model's routing at once, then retire what is no longer used."""
        async with self._lock:
            have = self._versions()
            for name, wanted in manifest.models.items():
                aliases: dict[str, Version] = {}
                old = self.models.get(name)
                for alias, served in wanted.aliases.items():
                    key = (name, served.version, served.artifact)
                    version = have.get(key) or await self._load(*key)
                    if version is not None:
                        have[key] = version
                    elif old is not None and alias in old.aliases:
                        version = old.aliases[alias]  # a failed load keeps the old version
                    if version is not None:
                        aliases[alias] = version
                swapped = Served(name, aliases, wanted.shadow, wanted.canary)
                if old is None or _routing(old) != _routing(swapped):
                    self.swaps += old is not None
                    log.info("%s now serves %s", name, _routing(swapped))
                self.models[name] = swapped
            for name in [n for n in self.models if n not in manifest.models]:
                del self.models[name]
            in_use = {id(v) for v in self._versions().values()}
            retired = [v for v in have.values() if id(v) not in in_use]
            self.manifest_at = manifest.written_at
            self.ready = True
        for version in retired:
            await version.batcher.close()
            log.info("retired %s version %d", version.name, version.version)

    def _file_stamp(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.dir / MANIFEST_FILE)
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    async def check(self) -> None:
        """Apply the manifest if the file changed since the last look."""
        stamp = self._file_stamp()
        if stamp == self._stamp and self.ready:
            return
        self._stamp = stamp
        try:
            manifest = read_manifest(self.dir / MANIFEST_FILE)
        except (OSError, msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.error("ignoring an unreadable %s: %s", MANIFEST_FILE, exc)
            self.ready = True
            return
        await self.apply(manifest)

    async def watch(self, stop: asyncio.Event) -> None:
        """Follow the manifest with watchfiles, with a slow poll behind it in case an event is missed."""
        await self.check()
        async for _ in watchfiles.awatch(
            self.dir, watch_filter=lambda _c, p: Path(p).name == MANIFEST_FILE, recursive=False,
            debounce=20, step=10, stop_event=stop, rust_timeout=POLL_MS, yield_on_timeout=True,
        ):
            await self.check()

    async def close(self) -> None:
        for version in self._versions().values():
            await version.batcher.close()
        self.loader.shutdown(wait=False)

    def describe(self) -> dict[str, Any]:
        """What is served, for the stats endpoint and `mldeck serve status`."""
        return {
            name: {
                "aliases": {a: v.version for a, v in served.aliases.items()},
                "shadow": served.shadow,
                "canary": served.canary,
                "queue_depth": {str(v.version): v.batcher.depth for v in served.aliases.values()},
            }
            for name, served in self.models.items()
        }


def _routing(served: Served) -> dict[str, Any]:
    return {
        "aliases": {a: v.version for a, v in served.aliases.items()},
        "shadow": served.shadow,
        "canary": served.canary,
    }
