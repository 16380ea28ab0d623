"""The training SDK: cheap per-step logging to JSON lines the agent ingests.

`run = track.init(...)`, `run.log({...}, step=)`, `run.checkpoint(state)`,
`run.resume()`, `run.should_stop`, `run.log_artifact(path)`, `run.log_model(model, sample=...)`,
`run.finish()`. Inside a job the agent launched, the run folder comes from $MLDECK_RUN_DIR;
otherwise a run folder is created under $MLDECK_HOME, so a plain `python train.py` is tracked too.
Nothing here talks to DuckDB or the agent: if the agent is down the job runs on, and if the disk
refuses writes (full) it runs on too: lines wait in a bounded buffer, later points are
dropped and counted, and the count is written to the run's file once the disk takes lines again.
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
from mldeck.core.errors import Invalid
from mldeck.core.paths import Layout, check_name, mldeck_home, new_run_id
from mldeck.core.provenance import fingerprint, git_state
from mldeck.core.runlog import (
    CHECKPOINT_GLOB,
    CHECKPOINTS,
    DROPPED,
    LATEST_CHECKPOINT,
    TOTAL_STEPS,
    checkpoint_name,
    nonfinite_name,
)

FLUSH_INTERVAL_S = 0.2
MAX_PENDING_LINES = 100_000
"""While the disk refuses writes, at most this many lines wait in memory; later points are dropped."""
FINISH_RETRY_S = 5.0
"""How long finish() keeps retrying writes the disk refuses before it gives up on them."""
RUN_DIR_ENV = "MLDECK_RUN_DIR"
ATTEMPT_ENV = "MLDECK_ATTEMPT"
"""Set by the agent's job runner: 1 for a job's first start, 2 after its first requeue, and so on."""
PREEMPTED_EXIT = 128 + signal.SIGTERM


def _as_number(obj: Any) -> float | str:
    """A metric value as JSON can hold it: a float, or the name of a NaN or an infinity."""
    if isinstance(obj, str | bytes):
        raise TypeError(f"metric values must be numbers, got {type(obj).__name__} {obj!r}")
    try:
        value = float(obj)
    except (TypeError, ValueError):
        raise TypeError(f"metric values must be numbers, got {type(obj).__name__}") from None
    return value if value - value == 0.0 else nonfinite_name(value)


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
        self._fd = os.open(run_dir / metrics_file, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        self._unwritten = b"\n" if _ends_mid_line(self._fd) else b""  # a killed writer's torn line ends here
        self._write_error: OSError | None = None
        self.dropped = 0
        """Points log() dropped because the disk refused writes and the buffer was full."""
        self._reported_dropped = 0
        self._lock = threading.Lock()
        self.preempted = False
        self.stop_seen = False
        """SIGTERM arrived: the finish line says so, and the agent gives a stop it asked for its outcome."""
        self._handles_stop = False
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
        values = dict(metrics)
        for key, value in values.items():
            if value.__class__ is float:
                if value - value != 0.0:  # NaN or an infinity, which JSON cannot hold as a number
                    values[key] = nonfinite_name(value)
            elif value.__class__ is str:
                _as_number(value)
        if self._write_error is not None and len(self._pending) >= MAX_PENDING_LINES:
            self.dropped += len(values)
        else:
            self._pending.append({"t": time.time(), "s": step, "m": values})
        if self.preempted and not self._handles_stop:
            self._preempt()

    def event(self, kind: str, **data: Any) -> None:
        self._pending.append({"t": time.time(), "e": kind, "d": data})

    def set_total_steps(self, total: int) -> None:
        """How many steps the run takes, once it is known: Runs and the run detail show progress and ETA."""
        if isinstance(total, bool) or not isinstance(total, int) or total <= 0:
            raise Invalid(f"total_steps must be a positive whole number, not {total!r}")
        self.spec["total_steps"] = total
        self.event(TOTAL_STEPS, total_steps=total)

    def flush(self) -> None:
        """Encode and write what is queued; safe from any thread.

        A write the disk refuses is kept and retried by the next flush, never raised: training goes on.
        """
        with self._lock:
            if self._closed or not self._write():
                return
            if self._pending or self.dropped > self._reported_dropped:
                self._unwritten = self._encode()
                self._write()

    def _encode(self) -> bytes:
        """Every queued line, after a line that reports the points dropped since the last report."""
        pending = self._pending
        items = [pending.popleft() for _ in range(len(pending))]
        dropped = self.dropped - self._reported_dropped
        if dropped:
            items.insert(0, {"t": time.time(), "e": DROPPED, "d": {"points": dropped}})
            self._reported_dropped += dropped
        try:
            return _encode_lines(items)
        except TypeError:
            return b"".join(_encode_one(item) for item in items)

    def _write(self) -> bool:
        """Append the bytes the disk has not taken yet; False while it refuses them (they are kept)."""
        data = self._unwritten
        try:
            while data:
                data = data[os.write(self._fd, data) :]
        except OSError as exc:
            self._unwritten = data
            if self._write_error is None:
                print(f"mldeck: cannot write {self.dir.name}'s metrics ({exc}); retrying, with at most "
                      f"{MAX_PENDING_LINES:,} lines kept in memory and later points dropped and counted",
                      file=sys.stderr)
            self._write_error = exc
            return False
        self._unwritten = b""
        if self._write_error is not None:
            self._write_error = None
            print(f"mldeck: {self.dir.name}'s metrics are written again ({self.dropped:,} points dropped)",
                  file=sys.stderr)
        return True

    def _flush_loop(self) -> None:
        while not self._closed:
            self._wake.wait(FLUSH_INTERVAL_S)
            self._wake.clear()
            self.flush()

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

    def log_model(
        self,
        model: Any,
        sample: Any,
        *,
        input_names: list[str] | None = None,
        output_names: list[str] | None = None,
        reference: Any = None,
        features: list[str] | dict[str, list[str]] | None = None,
        artifact: str = "model",
        allow_nan: bool = False,
    ) -> Path:
        """Export the model into artifacts/ (checked against its live outputs) to register later:
        `mldeck models register RUN --name NAME`, or `mldeck sweep register SWEEP --name NAME` for a
        sweep's best trial. sample and reference (the drift reference's training rows) each take a
        numpy array, a torch tensor, a pandas or polars DataFrame, a pyarrow Table, or a dict of them
        (one per input); reference may also be a Parquet file's path. features names a table input's
        columns (a DataFrame's column names do by default) for drift reports and `mldeck predict`."""
        from mldeck.core import modelfile

        folder = self.dir / "artifacts" / check_name(artifact, "artifact name")
        if folder.exists():  # an earlier attempt of this run (before a preemption) exported here
            shutil.rmtree(folder)
        modelfile.export_model(
            model, sample, folder, input_names, output_names, allow_nan=allow_nan, reference=reference,
            features=features,
        )
        self.event("log_model", artifact=str(folder.relative_to(self.dir)), bytes=_size(folder))
        return folder

    def register_model(
        self,
        model: Any,
        sample: Any,
        name: str,
        *,
        input_names: list[str] | None = None,
        output_names: list[str] | None = None,
        reference: Any = None,
        features: list[str] | dict[str, list[str]] | None = None,
        artifact: str = "model",
        allow_nan: bool = False,
    ) -> Path:
        """log_model, then ask the agent to register the export as a new version of name."""
        check_name(name, "model name")
        folder = self.log_model(model, sample, input_names=input_names, output_names=output_names,
                                reference=reference, features=features, artifact=artifact,
                                allow_nan=allow_nan)
        self.event("register_model", name=name, artifact=str(folder.relative_to(self.dir)))
        self.flush()
        return folder

    def checkpoint(self, state: Any, step: int | None = None) -> Path:
        """Save state atomically; the newest complete checkpoint is what resume() returns.

        The points logged so far are written first: a resume from this checkpoint replays only the steps
        after it, so one killed before its flush thread wrote them would otherwise lose them for good."""
        self.flush()
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
            if int(os.environ.get(ATTEMPT_ENV, "1")) > 1:  # stopped before its first checkpoint: start over
                self.event("resume", step=-1)
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
        """True once SIGTERM arrived. A script that reads it stops by itself: from then on log() no
        longer exits on SIGTERM, and finish() after the loop ends the run as the stop asked."""
        self._handles_stop = True
        return self.stop_seen

    def on_preempt(self, fn: Callable[[], Any]) -> Callable[[], Any]:
        """Call fn (e.g. one that checkpoints) on the main thread at the first log() after SIGTERM."""
        self._on_preempt.append(fn)
        return fn

    def _on_sigterm(self, signum: int, frame: object) -> None:
        self.preempted = True
        self.stop_seen = True

    def _preempt(self) -> None:
        """Run the preemption callbacks, end the run as preempted and exit 143 (128 + SIGTERM)."""
        self.preempted = False
        for fn in self._on_preempt:
            fn()
        self.finish("preempted", reason="SIGTERM")
        raise SystemExit(PREEMPTED_EXIT)

    # lifecycle --------------------------------------------------------------

    def finish(self, status: str | None = None, reason: str | None = None) -> None:
        """End the run: succeeded, or stopped once SIGTERM arrived, unless a status is given.

        The finish line records whether the stop was seen: the agent gives a job it asked to stop
        the stop's outcome (requeued, stopped, pruned) even when the script then exits 0."""
        if self.finished:
            return
        self.finished = True
        if status is None:
            status, reason = ("stopped", reason or "SIGTERM") if self.stop_seen else ("succeeded", reason)
        self.event("finish", status=status, reason=reason, stop_seen=self.stop_seen)
        self.close()

    def close(self) -> None:
        """Write what is left, retrying a refusing disk for FINISH_RETRY_S; never raises for it."""
        if self._closed:
            return
        deadline = time.monotonic() + FINISH_RETRY_S
        self.flush()
        while self._write_error is not None and time.monotonic() < deadline:
            time.sleep(FLUSH_INTERVAL_S)
            self.flush()
        with self._lock:
            if self._write_error is not None:
                lost = len(self._pending) + self._unwritten.count(b"\n")
                print(f"mldeck: gave up writing {lost:,} lines of {self.dir.name}'s metrics: "
                      f"{self._write_error}", file=sys.stderr)
            self._closed = True
            os.close(self._fd)
        self._wake.set()

    def _at_exit(self) -> None:
        if not self._closed:
            failed = getattr(sys, "last_value", None) is not None
            self.finish("failed" if failed else None)

    def __enter__(self) -> Run:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        self.finish("failed" if exc_type else None)


def _ends_mid_line(fd: int) -> bool:
    """Whether the file's last line lacks its newline (its writer was killed mid-line)."""
    size = os.fstat(fd).st_size
    return size > 0 and os.pread(fd, 1, size - 1) != b"\n"


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
    total_steps: int | None = None,
) -> Run:
    """Start (or, inside an agent job, join) a run and return it.

    On SIGTERM (unless the script installed its own handler) `should_stop` turns true. A script
    that reads it stops by itself; in one that does not, the next `log()` calls `on_preempt`,
    finishes the run as preempted and exits 143.
    Under torchrun only rank 0 writes metrics.jsonl; other ranks write metrics-rank<N>.jsonl.
    With total_steps (or `run.set_total_steps(n)` later) Runs shows progress and an ETA.
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
    if total_steps is not None:
        run.set_total_steps(total_steps)
    return run
