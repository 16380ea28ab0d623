"""The training SDK: cheap per-step logging to JSON lines the agent ingests.

`run = track.init(...)`, `run.log({...}, step=)`, `run.checkpoint(state)`,
`run.resume()`, `run.log_artifact(path)`, `run.finish()`. Inside a job the agent
launched, the run folder comes from $MLDECK_RUN_DIR; otherwise a run folder is
created under $MLDECK_HOME, so a plain `python train.py` is tracked too. Nothing
here talks to DuckDB or the agent: if the agent is down the job runs on.
"""

from __future__ import annotations

import atexit
import collections
import getpass
import io
import json
import os
import shutil
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from mldeck.core.atomic import write_atomic
from mldeck.core.paths import Layout, check_name, mldeck_home, new_run_id
from mldeck.core.provenance import fingerprint, git_state
from mldeck.core.runlog import CHECKPOINT_GLOB, CHECKPOINTS, LATEST_CHECKPOINT, checkpoint_name

FLUSH_INTERVAL_S = 0.2
RUN_DIR_ENV = "MLDECK_RUN_DIR"
PREEMPTED_EXIT = 128 + signal.SIGTERM


def _as_number(obj: Any) -> float:
    if isinstance(obj, str | bytes):
        raise TypeError(f"metric values must be numbers, got {type(obj).__name__} {obj!r}")
    try:
        return float(obj)
    except (TypeError, ValueError):
        raise TypeError(f"metric values must be numbers, got {type(obj).__name__}") from None


_encoder = msgspec.json.Encoder(enc_hook=_as_number)
_encode_lines = _encoder.encode_lines


def _encode_one(item: dict[str, Any]) -> bytes:
    """One queued line, or nothing (with a warning) if a value cannot be a number."""
    try:
        return _encoder.encode(item) + b"\n"
    except TypeError as exc:
        print(f"mldeck: dropped a metrics line: {exc}", file=sys.stderr)
        return b""


class Run:
    """A live run: buffers lines in memory and a single thread appends them to disk."""

    def __init__(self, run_dir: Path, spec: dict[str, Any], metrics_file: str = "metrics.jsonl") -> None:
        self.dir = run_dir
        self.id: str = spec["run_id"]
        self.spec = spec
        self.params: dict[str, Any] = spec.get("params") or {}
        self._step = -1
        self._pending: collections.deque[dict[str, Any]] = collections.deque()
        self._fh = open(run_dir / metrics_file, "ab")  # noqa: SIM115 (open for the run's life)
        self.preempted = False
        self._on_preempt: list[Callable[[], Any]] = []
        self._wake = threading.Event()
        self._closed = False
        self.finished = False
        self._flusher = threading.Thread(target=self._flush_loop, name="mldeck-flush", daemon=True)
        self._flusher.start()
        atexit.register(self._at_exit)

    # logging ------------------------------------------------------------

    def log(self, metrics: dict[str, Any], step: int | None = None) -> None:
        """Record metric values at a step (the next step when none is given).

        Only a copy is queued here; encoding happens on the flush thread, keeping the call cheap.
        """
        step = self._step + 1 if step is None else step
        self._step = step
        for value in metrics.values():
            if value.__class__ is str:
                _as_number(value)
        self._pending.append({"t": time.time(), "s": step, "m": dict(metrics)})
        if self.preempted:
            self._preempt()

    def event(self, kind: str, **data: Any) -> None:
        self._pending.append({"t": time.time(), "e": kind, "d": data})

    def flush(self) -> None:
        """Encode and write what is queued; safe from any thread."""
        pending = self._pending
        n = len(pending)
        if not n:
            return
        items = [pending.popleft() for _ in range(n)]
        try:
            data = _encode_lines(items)
        except TypeError:
            data = b"".join(_encode_one(item) for item in items)
        self._fh.write(data)
        self._fh.flush()

    def _flush_loop(self) -> None:
        while not self._closed:
            self._wake.wait(FLUSH_INTERVAL_S)
            self._wake.clear()
            try:
                self.flush()
            except ValueError:
                return

    # files ----------------------------------------------------------------

    def log_artifact(self, path: str | os.PathLike[str], name: str | None = None) -> Path:
        """Copy a file or folder into the run's artifacts."""
        src = Path(path)
        dest = self.dir / "artifacts" / check_name(name or src.name, "artifact name")
        dest.parent.mkdir(exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dest, dirs_exist_ok=True)
        else:
            shutil.copy2(src, dest)
        self.event("artifact", name=dest.name, bytes=_size(dest))
        return dest

    def register_model(
        self,
        model: Any,
        sample: Any,
        name: str,
        *,
        input_names: list[str] | None = None,
        output_names: list[str] | None = None,
        reference: Any = None,
        artifact: str = "model",
        allow_nan: bool = False,
    ) -> Path:
        """Export the model into artifacts/ (checked against its live outputs) and ask the agent
        to register it as a new version of name; reference (a pyarrow Table, a mapping of
        column → array, or a Parquet path) becomes the version's drift reference."""
        from mldeck.core import modelfile

        check_name(name, "model name")
        folder = self.dir / "artifacts" / check_name(artifact, "artifact name")
        extra = {} if reference is None else {"reference.parquet": _parquet_bytes(reference)}
        if folder.exists():  # an earlier attempt of this run (before a preemption) exported here
            shutil.rmtree(folder)
        modelfile.export_model(
            model, sample, folder, input_names, output_names, allow_nan=allow_nan, extra_files=extra
        )
        self.event("register_model", name=name, artifact=str(folder.relative_to(self.dir)))
        self.flush()
        return folder

    def checkpoint(self, state: Any, step: int | None = None) -> Path:
        """Save state atomically; the newest complete checkpoint is what resume() returns."""
        step = self._step if step is None else step
        folder = self.dir / CHECKPOINTS
        folder.mkdir(exist_ok=True)
        buf = io.BytesIO()
        _save(state, buf)
        path = folder / checkpoint_name(step)
        write_atomic(path, buf.getvalue())
        write_atomic(folder / LATEST_CHECKPOINT, json.dumps({"step": step, "file": path.name}).encode())
        for old in sorted(folder.glob(CHECKPOINT_GLOB))[:-2]:
            old.unlink(missing_ok=True)
        self.event("checkpoint", step=step, file=path.name)
        return path

    def resume(self) -> tuple[Any, int] | None:
        """The last checkpoint and its step, or None on a fresh start.

        Steps logged after that checkpoint by an earlier attempt are superseded: the
        agent drops them when it reads the resume event, so replayed steps are not doubled.
        """
        latest = self.dir / CHECKPOINTS / LATEST_CHECKPOINT
        if not latest.exists():
            return None
        info = json.loads(latest.read_text())
        with open(latest.parent / info["file"], "rb") as fh:
            state = _load(fh)
        self._step = int(info["step"])
        self.event("resume", step=self._step)
        self.flush()
        return state, self._step

    # preemption ---------------------------------------------------------------

    @property
    def should_stop(self) -> bool:
        """True once SIGTERM arrived: a loop that checks it can checkpoint and return by itself."""
        return self.preempted

    def on_preempt(self, fn: Callable[[], Any]) -> Callable[[], Any]:
        """Call fn (e.g. one that checkpoints) on the main thread at the first log() after SIGTERM."""
        self._on_preempt.append(fn)
        return fn

    def _on_sigterm(self, signum: int, frame: object) -> None:
        self.preempted = True

    def _preempt(self) -> None:
        """Run the preemption callbacks, end the run as preempted and exit 143 (128 + SIGTERM)."""
        self.preempted = False
        for fn in self._on_preempt:
            fn()
        self.finish("preempted", reason="SIGTERM")
        raise SystemExit(PREEMPTED_EXIT)

    # lifecycle --------------------------------------------------------------

    def finish(self, status: str = "succeeded", reason: str | None = None) -> None:
        if self.finished:
            return
        self.finished = True
        self.event("finish", status=status, reason=reason)
        self.close()

    def close(self) -> None:
        if self._closed:
            return
        self.flush()
        self._closed = True
        self._wake.set()
        self._fh.close()

    def _at_exit(self) -> None:
        if not self._closed:
            failed = getattr(sys, "last_value", None) is not None
            self.finish("failed" if failed else "succeeded")

    def __enter__(self) -> Run:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        self.finish("failed" if exc_type else "succeeded")


def _parquet_bytes(reference: Any) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if isinstance(reference, str | os.PathLike):
        return Path(reference).read_bytes()
    table = reference if isinstance(reference, pa.Table) else pa.table(dict(reference))
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return path.stat().st_size


def _save(state: Any, fh: io.BytesIO) -> None:
    try:
        import torch
    except ImportError:
        import pickle

        pickle.dump(state, fh)
    else:
        torch.save(state, fh)


def _load(fh: Any) -> Any:
    try:
        import torch
    except ImportError:
        import pickle

        return pickle.load(fh)
    return torch.load(fh, weights_only=False)


def init(
    name: str | None = None,
    experiment: str | None = None,
    params: dict[str, Any] | None = None,
    tags: dict[str, str] | None = None,
    data_files: list[str | os.PathLike[str]] | None = None,
    home: str | os.PathLike[str] | None = None,
    on_preempt: Callable[[], Any] | None = None,
) -> Run:
    """Start (or, inside an agent job, join) a run and return it.

    On SIGTERM (unless the script installed its own handler) the run's `preempted` flag is
    set; the next `log()` calls `on_preempt`, finishes the run as preempted and exits 143.
    Under torchrun only rank 0 writes metrics.jsonl; other ranks write metrics-rank<N>.jsonl.
    """
    env_dir = os.environ.get(RUN_DIR_ENV)
    script = Path(sys.argv[0]).resolve() if sys.argv and sys.argv[0] else Path.cwd()
    if env_dir:
        run_dir = Path(env_dir)
        spec_path = run_dir / "run.json"
        spec = json.loads(spec_path.read_text()) if spec_path.exists() else {}
        spec.setdefault("run_id", run_dir.name)
    else:
        run_id = new_run_id()
        run_dir = Layout(mldeck_home(home)).run_dir(run_id)
        spec = {"run_id": run_id}
    run_dir.mkdir(parents=True, exist_ok=True)
    sha, dirty = git_state(script)
    merged_params = {**(spec.get("params") or {}), **(params or {})}
    spec.update(
        name=name or spec.get("name") or script.stem,
        experiment=experiment or spec.get("experiment") or "default",
        params=merged_params,
        tags={**(spec.get("tags") or {}), **(tags or {})},
        git_sha=spec.get("git_sha") or sha,
        git_dirty=spec.get("git_dirty") if spec.get("git_sha") else dirty,
        data_hash=fingerprint(data_files or []) or spec.get("data_hash"),
        host=spec.get("host") or socket.gethostname(),
        user=spec.get("user") or getpass.getuser(),
        created_at=spec.get("created_at") or time.time(),
        command=spec.get("command") or [sys.executable, *sys.argv],
        pid=os.getpid(),
    )
    if not env_dir:
        write_atomic(run_dir / "run.json", json.dumps(spec, indent=2).encode())
    rank = os.environ.get("RANK", "0")
    run = Run(run_dir, spec, "metrics.jsonl" if rank == "0" else f"metrics-rank{int(rank)}.jsonl")
    if on_preempt is not None:
        run.on_preempt(on_preempt)
    if (
        threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    ):
        signal.signal(signal.SIGTERM, run._on_sigterm)
    run.event("init", **{k: v for k, v in spec.items() if k != "run_id"})
    return run
