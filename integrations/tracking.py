"""Run bookkeeping the framework integrations share: params as one flat record, each metric once per step,
and the framework's own checkpoint files recorded as the run's checkpoints."""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mldeck.core.errors import Invalid
from mldeck.core.track import Run, init

CHECKPOINT_KEY = "framework_checkpoint"
"""The one key of the state an integration checkpoints: the framework checkpoint's path (relative to the
run folder when inside it), so a requeued job resumes from the framework's own file or folder."""


def flat_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as `outer/inner` keys (as Lightning's loggers write them); values JSON cannot hold
    as they are (enums, classes, tensors, paths) as their text."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flat_params(value, f"{name}/"))
        elif value is None or isinstance(value, bool | int | str):
            out[name] = value
        elif isinstance(value, float):
            out[name] = value if math.isfinite(value) else str(value)
        elif isinstance(value, list | tuple) and all(isinstance(v, bool | int | float | str) for v in value):
            out[name] = list(value)
        else:
            out[name] = str(value)
    return out


def add_params(run: Run, params: Mapping[str, Any]) -> None:
    """Merge params into the run's record, which the agent upserts from each init line."""
    run.params.update(params)
    run.spec["params"] = run.params
    run.event("init", **{k: v for k, v in run.spec.items() if k != "run_id"})


def numbers(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The values that are numbers (a framework's log dicts can carry text too)."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if isinstance(value, str | bytes):
            continue
        try:
            out[key] = float(value)
        except (TypeError, ValueError, RuntimeError):  # RuntimeError: a tensor of more than one value
            continue
    return out


class StepLog:
    """Logs each metric once per step: frameworks repeat some keys (the epoch) in every call at a step,
    and a (run, key, step) point stored twice would read as two measurements."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.last_step = -1
        """The highest step logged: a checkpoint taken now covers every step up to it."""
        self._step: int | None = None
        self._keys: set[str] = set()

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        if step != self._step:
            self._step = step
            self._keys = set()
        fresh = {k: v for k, v in metrics.items() if k not in self._keys}
        if fresh:
            self._keys.update(fresh)
            self.run.log(fresh, step=step)
            self.last_step = max(self.last_step, step)


def record_checkpoint(run: Run, path: str | Path, step: int) -> None:
    """Make the framework's checkpoint (a file or a folder) the run's newest, covering steps up to step."""
    path = Path(path).resolve()
    try:
        stored = str(path.relative_to(run.dir.resolve()))
    except ValueError:
        stored = str(path)
    run.checkpoint({CHECKPOINT_KEY: stored}, step=step)


def stopping_run(run: Run | None, name: str | None, experiment: str | None, params: dict[str, Any] | None,
                 tags: dict[str, str] | None) -> Run:
    """The run given, else a new one (or the job's own under `mldeck run`), with SIGTERM claimed: log()
    never exits mid-step, and the framework stops at a step's end with its own checkpoint."""
    run = run or init(name=name, experiment=experiment, params=params, tags=tags)
    _ = run.should_stop
    return run


def resume_path(run: Run) -> str | None:
    """The framework checkpoint to resume from (what `ckpt_path` / `resume_from_checkpoint` take), or None
    on a fresh start.

    It goes through `run.resume()`, so points an earlier attempt logged after that checkpoint are dropped;
    a checkpoint the framework has deleted since means starting over, said on stderr."""
    resumed = run.resume()
    if resumed is None:
        return None
    state, step = resumed
    if not isinstance(state, dict) or CHECKPOINT_KEY not in state:
        raise Invalid(
            f"run {run.id}'s newest checkpoint (step {step}) was written by run.checkpoint(), not by an "
            "mldeck integration; resume it with run.resume() in the script instead"
        )
    path = run.dir / state[CHECKPOINT_KEY]
    if not path.exists():
        print(f"mldeck: {path}, the checkpoint of step {step}, is gone; training starts over",
              file=sys.stderr)
        run.event("resume", step=-1)
        return None
    return str(path)
