"""Jobs: the params of runs.launch/stop/resume/logs and jobs.queue, the command a job runs, and the
queue's queries. The agent's runner (agent/jobs.py) is the only caller of the writes."""

from __future__ import annotations

import json
import re
import sys
import time
from typing import Annotated, Any, Literal, get_args

import msgspec

from mldeck.core.errors import Invalid
from mldeck.core.protocol import MAX_OFFSET, Params
from mldeck.core.store import Store, rows_as_dicts

PREEMPTED_EXIT = 143  # 128 + SIGTERM, as the SDK exits when preempted (core/track.py)
Amp = Literal["bf16", "fp16"]
StopHow = Literal["stop", "requeue", "prune"]
"""What a stop asks: end the run (stopped), end this attempt and queue it again (requeue, the run
resumes), or end a sweep trial that early stopping judged clearly worse (pruned)."""
AMP: tuple[str, ...] = get_args(Amp)
MAX_PRIORITY = 1000
MAX_LOG_BYTES = 1024 * 1024
_PARAM = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")
_ENV = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class Distributed(Params, kw_only=True):
    """One node's part in a multi-host torchrun rendezvous (c10d)."""

    nnodes: Annotated[int, msgspec.Meta(ge=2)]
    node_rank: Annotated[int, msgspec.Meta(ge=0)]
    endpoint: str | None = None
    rdzv_host: str | None = None


class JobSpec(Params, kw_only=True):
    """What to run and how: shared by a single launch and every trial of a sweep."""

    script: str | None = None
    module: str | None = None
    args: list[str] = msgspec.field(default_factory=list)
    name: str | None = None
    experiment: str | None = None
    params: dict[str, Any] = msgspec.field(default_factory=dict)
    gpus: Annotated[int, msgspec.Meta(ge=0)] = 0
    amp: Amp | None = None
    cwd: str | None = None
    env: dict[str, str] = msgspec.field(default_factory=dict)


class LaunchParams(JobSpec, kw_only=True):
    priority: Annotated[int, msgspec.Meta(ge=-MAX_PRIORITY, le=MAX_PRIORITY)] = 0
    sweep_id: str | None = None
    run_id: str | None = None
    dist: Distributed | None = None


class StopParams(Params, kw_only=True):
    run_id: str
    requeue: bool = False
    grace_s: Annotated[float, msgspec.Meta(ge=0)] | None = None


class LogsParams(Params, kw_only=True):
    """A slice of a run's stdout.log: from `offset`, or the tail when it is left out."""

    run_id: str
    offset: Annotated[int, msgspec.Meta(ge=0, le=MAX_OFFSET)] | None = None
    max_bytes: Annotated[int, msgspec.Meta(ge=1, le=MAX_LOG_BYTES)] = 64 * 1024


class QueueParams(Params, kw_only=True):
    pass


def check_param_names(params: dict[str, Any]) -> None:
    for key in params:
        if not _PARAM.match(key):
            raise Invalid(f"param name {key!r} must start with a letter and hold letters, digits, _ . -")


def check_env(env: dict[str, str]) -> None:
    for key in env:
        if not _ENV.match(key):
            raise Invalid(f"environment variable name {key!r} is not valid")


def param_args(params: dict[str, Any]) -> list[str]:
    """Params as `--name value` flags (underscores as dashes, as argparse spells options)."""
    out: list[str] = []
    for key, value in params.items():
        text = json.dumps(value) if isinstance(value, dict | list) else str(value)
        out += [f"--{key.replace('_', '-')}", text]
    return out


def param_env(params: dict[str, Any]) -> dict[str, str]:
    """Params as MLDECK_PARAM_<NAME>, for scripts that read the environment instead of flags."""
    return {
        "MLDECK_PARAM_" + re.sub(r"[^A-Za-z0-9]", "_", k).upper(): str(v) for k, v in params.items()
    }


def job_argv(
    target: list[str],
    user_args: list[str],
    params: dict[str, Any],
    gpus: int,
    run_id: str,
    dist: Distributed | None = None,
    python: str = sys.executable,
) -> list[str]:
    """The argument list a job runs: python, or torchrun with one process per GPU (per node).

    target is ["script.py"] or ["-m", "module"].
    """
    tail = [*target, *user_args, *param_args(params)]
    if dist is None and gpus <= 1:
        return [python, *tail]
    launcher = [python, "-m", "torch.distributed.run", "--nproc-per-node", str(max(gpus, 1))]
    if dist is None:
        launcher.append("--standalone")
    else:
        launcher += [
            "--nnodes", str(dist.nnodes), "--node-rank", str(dist.node_rank),
            "--rdzv-backend", "c10d", "--rdzv-endpoint", str(dist.endpoint), "--rdzv-id", run_id,
        ]
    if target[0] == "-m":
        return [*launcher, "-m", *tail[1:]]
    return [*launcher, *tail]


# queue queries ---------------------------------------------------------------


def _decode_job(row: dict[str, Any]) -> dict[str, Any]:
    for key in ("spec", "gpus_assigned"):
        if isinstance(row.get(key), str):
            row[key] = json.loads(row[key])
    return row


def insert_job(store: Store, run: dict[str, Any], spec: dict[str, Any], priority: int) -> None:
    """The run row (queued) and its queue entry, together or not at all."""
    with store.transaction():
        store.upsert_run(run)
        store.cur().execute(
            "INSERT INTO jobs (run_id, state, spec, gpus_requested, priority, enqueued_at, attempts) "
            "VALUES (?, 'queued', ?, ?, ?, ?, 0)",
            [run["run_id"], json.dumps(spec), spec["gpus_requested"], priority, time.time()],
        )


def jobs_in_state(store: Store, *states: str) -> list[dict[str, Any]]:
    cur = store.cur().execute(
        "SELECT * FROM jobs WHERE state IN (SELECT unnest(?)) ORDER BY priority DESC, enqueued_at",
        [list(states)],
    )
    return [_decode_job(r) for r in rows_as_dicts(cur)]


def get_job(store: Store, run_id: str) -> dict[str, Any] | None:
    rows = rows_as_dicts(store.cur().execute("SELECT * FROM jobs WHERE run_id = ?", [run_id]))
    return _decode_job(rows[0]) if rows else None


def mark_started(
    store: Store, run_id: str, gpus: list[int], pid: int, create_time: float, attempt: int, at: float
) -> None:
    with store.transaction() as cur:
        cur.execute(
            "UPDATE jobs SET state = 'running', gpus_assigned = ?, pid = ?, pgid = ?, "
            "pid_create_time = ?, attempts = ?, stop_requested = NULL, stop_reason = NULL WHERE run_id = ?",
            [json.dumps(gpus), pid, pid, create_time, attempt, run_id],
        )
        cur.execute(
            "UPDATE runs SET status = 'running', status_reason = NULL, gpus = ?, "
            "started_at = coalesce(started_at, ?), ended_at = NULL, exit_code = NULL, "
            "resumed_count = ? WHERE run_id = ?",
            [json.dumps(gpus), at, max(attempt - 1, 0), run_id],
        )


def mark_ended(
    store: Store, run_id: str, status: str, exit_code: int | None, reason: str | None,
    requeue: bool, at: float, cost: dict[str, Any],
) -> None:
    """Close an attempt: the run's status and cost, and the queue entry done or queued again."""
    with store.transaction() as cur:
        cur.execute(
            "UPDATE runs SET status = ?, exit_code = ?, status_reason = ?, ended_at = ? WHERE run_id = ?",
            [status, exit_code, reason, None if requeue else at, run_id],
        )
        update_cost(store, run_id, cost)
        if requeue:
            cur.execute(
                "UPDATE jobs SET state = 'queued', pid = NULL, pgid = NULL, gpus_assigned = NULL, "
                "enqueued_at = ? WHERE run_id = ?",
                [at, run_id],
            )
        else:
            cur.execute("UPDATE jobs SET state = 'done', pid = NULL, pgid = NULL WHERE run_id = ?", [run_id])


def mark_stop_requested(store: Store, run_id: str, how: str, reason: str | None) -> None:
    """Remember a stop sent to a running job, so an agent restarted meanwhile still knows it was asked."""
    with store.transaction() as cur:
        cur.execute("UPDATE jobs SET stop_requested = ?, stop_reason = ? WHERE run_id = ?",
                    [how, reason, run_id])


def requeue_job(store: Store, run_id: str, reason: str, at: float) -> None:
    """Put a finished managed run back in the queue (resume): same folder, same run id."""
    with store.transaction() as cur:
        cur.execute(
            "UPDATE jobs SET state = 'queued', enqueued_at = ? WHERE run_id = ?", [at, run_id]
        )
        cur.execute(
            "UPDATE runs SET status = 'queued', status_reason = ?, ended_at = NULL WHERE run_id = ?",
            [reason, run_id],
        )


def update_cost(store: Store, run_id: str, cost: dict[str, Any]) -> None:
    store.cur().execute(
        "UPDATE runs SET cost_usd = ?, gpu_seconds = ?, cpu_seconds = ?, peak_gpu_mem = ?, "
        "held_gpu_mem = ?, price_per_hour = ? WHERE run_id = ?",
        [cost["cost_usd"], cost["gpu_seconds"], cost["cpu_seconds"], cost["peak_gpu_mem"],
         cost["held_gpu_mem"], cost["price_per_hour"], run_id],
    )


def update_costs(store: Store, costs: dict[str, dict[str, Any]]) -> None:
    with store.transaction():
        for run_id, cost in costs.items():
            update_cost(store, run_id, cost)
