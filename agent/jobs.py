"""The job runner: a persistent queue, GPU assignment, process groups, stop/requeue/resume, live cost.

Each job runs as `python -m mldeck.agent.jobwrap RUN_DIR -- ARGV` in its own session (process
group = the wrapper's pid), stdout and stderr appended to runs/<id>/stdout.log. The wrapper
writes the job's exit code to runs/<id>/exit_code, so a job that outlives an agent restart
is re-adopted by pid and create time, polled with psutil, and its outcome still known.

Other services use `launch(LaunchParams) -> run_id`, `wait(run_id) -> run row`,
`stop_run(run_id, ...)` and `resume(run_id)`; the runs.* methods are in agent/runs.py,
the cost.* methods in agent/cost.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.machinery
import importlib.util
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

from mldeck.agent.ingest import Ingest, parse_run_metrics
from mldeck.agent.runs import no_run
from mldeck.agent.service import Context, rpc
from mldeck.core import cost as costs
from mldeck.core import jobs as q
from mldeck.core import protocol
from mldeck.core.atomic import write_atomic
from mldeck.core.errors import Conflict, Invalid
from mldeck.core.jobs import JobSpec, LaunchParams, QueueParams, StopHow
from mldeck.core.paths import check_name, new_run_id
from mldeck.core.ports import free_port
from mldeck.core.provenance import git_state
from mldeck.core.runlog import TERMINAL, finish_line

if TYPE_CHECKING:
    from mldeck.agent.collector import Collector
    from mldeck.agent.nvml import Nvml
    from mldeck.agent.simgpu import SimulatedNvml

log = logging.getLogger("mldeck.jobs")
LOST = -1
SPAWNED = "spawned.json"
"""In the run folder: the process of the attempt the agent just started, written before anything else is."""
LIVENESS_S = 5.0
"""How often the runs started outside the agent (a plain `python train.py`) are checked for their process."""
CLOCK_SLACK_S = 2.0
"""How far a process's start time, as the kernel reports it, may lie after the run it began was created."""


@dataclass
class Job:
    """A job with a live process: what it holds and what it has cost so far."""

    run_id: str
    spec: dict[str, Any]
    gpus: list[int]
    pid: int
    create_time: float
    attempt: int
    proc: subprocess.Popen[bytes] | None = None
    last_tick: float = field(default_factory=time.time)
    gpu_seconds: float = 0.0
    cpu_base: float = 0.0
    cpu_by_pid: dict[int, float] = field(default_factory=dict)
    peak_gpu_mem: int = 0
    held_gpu_mem: int = 0
    stop: StopHow | None = None
    reason: str | None = None
    deadline: float | None = None
    unwatched: bool = False
    """It ended while no agent watched it (found ended at start)."""

    @property
    def cpu_seconds(self) -> float:
        return self.cpu_base + sum(self.cpu_by_pid.values())


def _same_process(pid: int, create_time: float | None) -> bool:
    """True if pid is still the process we started (not a reused pid, not a zombie)."""
    try:
        proc = psutil.Process(pid)
        if create_time is not None and abs(proc.create_time() - create_time) > 0.05:
            return False
        return proc.status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def lost_reason(pid: int, unwatched: bool) -> str:
    """Why a run ended as failed when its process is gone and nothing recorded how it ended."""
    when = " while the agent was down" if unwatched else ""
    return (f"its process (pid {pid}) disappeared{when} without an exit code: killed by a signal "
            "(kill -9), the OOM killer, or a reboot")


def sdk_process_gone(run_dir: Path) -> int | None:
    """The pid in a run's run.json (the SDK's, for a run started outside the agent) once that process is
    gone; None while it runs, or when the files cannot tell (no pid, another host's run, or a finish line
    the ingest has yet to read).

    The pid is the run's process only if that process started before the run was created: a pid used
    again since (after a crash, or a reboot) names a younger process."""
    try:
        spec = json.loads((run_dir / "run.json").read_text())
    except (OSError, ValueError):
        return None
    pid, created = spec.get("pid"), spec.get("created_at")
    if (not isinstance(pid, int) or not isinstance(created, int | float)
            or spec.get("host") != socket.gethostname() or finish_line(run_dir) is not None):
        return None
    try:
        proc = psutil.Process(pid)
        if proc.create_time() <= created + CLOCK_SLACK_S and proc.status() != psutil.STATUS_ZOMBIE:
            return None
    except psutil.NoSuchProcess:
        pass
    except psutil.AccessDenied:
        return None
    return pid


def _tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []



class Jobs:
    """The queue and the running jobs of one agent, and the jobs.queue method that shows them."""

    def __init__(
        self, ctx: Context, nvml: Nvml, simulated: SimulatedNvml | None, collector: Collector, ingest: Ingest
    ) -> None:
        self.ctx = ctx
        self.ingest = ingest
        self.store = ctx.store
        self.cfg = ctx.config.jobs
        self.simulated = simulated
        self.collector = collector
        self.active: dict[str, Job] = {}
        self.queue: list[dict[str, Any]] = []
        self._waiters: dict[str, list[asyncio.Future[dict[str, Any]]]] = {}
        self._wake = asyncio.Event()
        self.gpu_count = nvml.count
        samples = nvml.sample() if self.gpu_count else []
        self.gpu_mem = [s.mem_total or 0 for s in samples]
        self.prices = costs.host_prices(samples[0].name if samples else None, ctx.config.cost)
        self.max_cpu_jobs = self.cfg.max_cpu_jobs or (os.cpu_count() or 1)
        self._last_cost_write = 0.0

    # lifecycle ----------------------------------------------------------------

    async def start(self) -> None:
        """Re-adopt jobs that outlived the last agent, finish those that died, reload the queue, run."""
        await self.adopt_spawned()
        for row in await self.ctx.read(q.jobs_in_state, self.store, "running"):
            job = await self._job_from_row(row)
            alive = _same_process(job.pid, row.get("pid_create_time"))
            end = time.time() if alive else self._exit_time(job)
            # the time held while no agent watched counts too (exact for a run's first attempt)
            job.gpu_seconds = max(job.gpu_seconds, len(job.gpus) * max(0.0, end - job.create_time))
            job.last_tick = end
            if alive:
                log.info("re-adopted job %s (pid %d)%s", job.run_id, job.pid,
                         f", stopping ({job.stop} asked before the restart)" if job.stop else "")
                if job.stop:  # the grace period starts again; SIGKILL follows if it is not enough
                    job.deadline = time.monotonic() + self.cfg.grace_s
                self._hold(job)
            else:
                job.unwatched = True
                await self._finish(job, self._exit_file(job))
        self.queue = await self.ctx.read(q.jobs_in_state, self.store, "queued")
        self._wake.set()
        self.ctx.tasks.every(0, self._tick, "jobs")
        self.ctx.tasks.every(LIVENESS_S, self._end_lost_sdk_runs, "lost-runs", first=0)

    async def adopt_spawned(self) -> None:
        """Queued jobs whose next attempt was started just before the last agent died (its spawn file
        written, `mark_started` not yet): recorded as running, so they are adopted (or finished), not
        started a second time beside themselves."""
        for row in await self.ctx.read(q.jobs_in_state, self.store, "queued"):
            try:
                spawned = json.loads((self.ctx.layout.run_dir(row["run_id"]) / SPAWNED).read_bytes())
            except (OSError, ValueError):
                continue
            if spawned.get("attempt") != (row.get("attempts") or 0) + 1:
                continue  # an earlier attempt's, already recorded
            log.warning("run %s: attempt %d started just before the agent stopped; taking it back",
                        row["run_id"], spawned["attempt"])
            await self.ctx.db(q.mark_started, self.store, row["run_id"], spawned["gpus"], spawned["pid"],
                              spawned["create_time"], spawned["attempt"], spawned["at"])

    async def _end_lost_sdk_runs(self) -> None:
        """End as failed the runs started outside the agent whose process is gone (see sdk_process_gone)."""
        for run in await self.ctx.read(self.store.list_runs, "running"):
            run_dir = self.ctx.layout.run_dir(run["run_id"])
            pid = None if run.get("managed") else await asyncio.to_thread(sdk_process_gone, run_dir)
            if pid is None:
                continue
            reason = lost_reason(pid, unwatched=False)
            ended = time.time()
            with contextlib.suppress(OSError):  # its last sign of life
                ended = (run_dir / "metrics.jsonl").stat().st_mtime
            await self.ctx.db(self.store.finish_unmanaged_run, run["run_id"], "failed", ended, reason)
            log.warning("run %s: %s", run["run_id"], reason)
            self.ctx.hub.publish("runs", {"run_id": run["run_id"], "status": "failed", "managed": False,
                                          "reason": reason})

    async def _job_from_row(self, row: dict[str, Any]) -> Job:
        run = await self.ctx.read(self.store.get_run, row["run_id"]) or {}
        gpus = list(row.get("gpus_assigned") or [])
        return Job(
            run_id=row["run_id"], spec=row["spec"], gpus=gpus, pid=row["pid"] or 0,
            create_time=row.get("pid_create_time") or 0.0, attempt=row.get("attempts") or 1,
            gpu_seconds=run.get("gpu_seconds") or 0.0, cpu_base=run.get("cpu_seconds") or 0.0,
            peak_gpu_mem=run.get("peak_gpu_mem") or 0, held_gpu_mem=self._held_mem(gpus),
            stop=row.get("stop_requested"), reason=row.get("stop_reason"),
        )

    def _held_mem(self, gpus: list[int]) -> int:
        return sum(self.gpu_mem[i] for i in gpus if i < len(self.gpu_mem))

    def _hold(self, job: Job) -> None:
        self.active[job.run_id] = job
        if self.simulated:
            for i in job.gpus:
                self.simulated.place(i, job.pid)

    async def _tick(self) -> None:
        """One pass of the runner once something changed (a launch, an end) or poll_interval_s passed.

        Run by `tasks.every(0, ...)`: the wait is here, so that a launch starts its job at once.
        """
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), self.cfg.poll_interval_s)
        self._wake.clear()
        await self._check_active()
        await self._schedule()

    def pending(self, run_id: str) -> bool:
        """Whether the run is running or queued here (so it has not ended for good)."""
        return run_id in self.active or any(r["run_id"] == run_id for r in self.queue)

    # launch -------------------------------------------------------------------

    async def check(self, p: JobSpec) -> None:
        """Whether the job can run here, before anything is written (the Slurm backend asks Slurm too)."""
        self.validate(p)

    def validate(self, p: JobSpec) -> tuple[list[str], Path, Path]:
        """Check a job against this host before anything is written; return the target, cwd and code path."""
        if (p.script is None) == (p.module is None):
            raise Invalid("give exactly one of script (a path) or module (python -m NAME)")
        if p.gpus > self.gpu_count:
            have = f"has {self.gpu_count} GPU" + ("" if self.gpu_count == 1 else "s")
            raise Invalid(f"asked for {p.gpus} GPUs but this host {have}")
        q.check_param_names(p.params)
        q.check_env(p.env)
        cwd = Path(p.cwd).expanduser() if p.cwd else None
        if cwd is not None and not cwd.is_dir():
            raise Invalid(f"working directory {p.cwd} does not exist on this host")
        if p.script is not None:
            script = Path(p.script).expanduser()
            if not script.is_absolute():
                script = (cwd or self.ctx.layout.home) / script
            if not script.is_file():
                raise Invalid(f"script {p.script} not found on this host (looked at {script})")
            script = script.resolve()
            return [str(script)], cwd or script.parent, script
        module = str(p.module)
        top = module.split(".")[0]
        if not top.isidentifier() or (
            importlib.machinery.PathFinder.find_spec(top, [str(cwd or Path.cwd())]) is None
            and importlib.util.find_spec(top) is None  # also asks installed finders (an editable mldeck)
        ):
            raise Invalid(f"module {module!r} cannot be found on this host's Python path")
        return ["-m", module], cwd or self.ctx.layout.home, cwd or Path.cwd()

    def _dist(self, p: LaunchParams) -> q.Distributed | None:
        d = p.dist
        if d is None:
            return None
        if d.node_rank >= d.nnodes:
            raise Invalid(f"dist node_rank {d.node_rank} must be below nnodes {d.nnodes}")
        if d.endpoint is None:
            if d.node_rank != 0:
                raise Invalid("only node_rank 0 may pick the rendezvous endpoint; pass endpoint")
            host = d.rdzv_host or self.cfg.rdzv_host or socket.gethostname()
            try:
                port = free_port(host)
            except OSError as exc:
                raise Invalid(f"cannot open a rendezvous port on {host}: {exc}") from None
            d = q.Distributed(nnodes=d.nnodes, node_rank=0, endpoint=f"{host}:{port}")
        return d

    async def launch(self, p: LaunchParams) -> str:
        """Validate, write the spec and queue the run; Invalid or Conflict says what is wrong."""
        target, cwd, code_path = self.validate(p)
        run_id = check_name(p.run_id or new_run_id(), "run id")
        if await self.ctx.read(self.store.get_run, run_id) is not None:
            raise Conflict(f"run {run_id} already exists on this host")
        dist = self._dist(p)
        params = dict(p.params)
        if p.amp:
            params["amp"] = p.amp
        sha, dirty = await asyncio.to_thread(git_state, code_path)
        name = p.name or (Path(target[0]).stem if p.script else target[1].rsplit(".", 1)[-1])
        now = time.time()
        spec = {
            "run_id": run_id, "name": name, "experiment": p.experiment or "default",
            "params": params, "args": list(p.args), "script": target[0] if p.script else None,
            "module": p.module, "cwd": str(cwd), "env": dict(p.env), "gpus_requested": p.gpus, "gpus": [],
            "amp": p.amp,
            "command": q.job_argv(target, list(p.args), params, p.gpus, run_id, dist),
            "git_sha": sha, "git_dirty": dirty, "host": socket.gethostname(), "created_at": now,
            "sweep_id": p.sweep_id, "dist": dist and {"nnodes": dist.nnodes, "node_rank": dist.node_rank,
                                                      "endpoint": dist.endpoint},
            "managed": True,
        }
        run_dir = self._new_run_dir(run_id)
        try:
            write_atomic(run_dir / "run.json", protocol.encode(spec))
            run = {k: spec[k] for k in ("run_id", "name", "experiment", "params", "command", "git_sha",
                                        "git_dirty", "host", "sweep_id", "created_at")}
            run.update(status="queued", managed=True, gpus=[], resumed_count=0)
            await self.ctx.db(q.insert_job, self.store, run, spec, p.priority)
        except BaseException:
            shutil.rmtree(run_dir, ignore_errors=True)
            raise
        self.queue.append(await self.ctx.read(q.get_job, self.store, run_id))
        self._sort_queue()
        self._publish(run_id, "queued", sweep_id=p.sweep_id, name=name)
        self._wake.set()
        return run_id

    def _new_run_dir(self, run_id: str) -> Path:
        """Create the run's folder (the Slurm backend puts it where the compute nodes see it)."""
        run_dir = self.ctx.layout.run_dir(run_id)
        run_dir.mkdir(parents=True)
        return run_dir

    def _sort_queue(self) -> None:
        self.queue.sort(key=lambda r: (-(r.get("priority") or 0), r.get("enqueued_at") or 0))

    # scheduling ---------------------------------------------------------------

    async def _schedule(self) -> None:
        """FIFO by priority; a GPU job that does not fit blocks later GPU jobs (no starvation),
        CPU jobs run beside them up to max_cpu_jobs."""
        used = set(self.busy_gpus())
        free = [i for i in range(self.gpu_count) if i not in used]
        cpu_running = sum(1 for job in self.active.values() if not job.gpus)
        gpu_blocked = False
        for row in list(self.queue):
            need = row.get("gpus_requested") or 0
            if need == 0:
                if cpu_running >= self.max_cpu_jobs:
                    continue
                cpu_running += 1
                await self._start(row, [])
            elif gpu_blocked or len(free) < need:
                gpu_blocked = True
            else:
                take, free = free[:need], free[need:]
                await self._start(row, take)

    async def _start(self, row: dict[str, Any], gpus: list[int]) -> None:
        self.queue.remove(row)
        spec, run_id = row["spec"], row["run_id"]
        run_dir = self.ctx.layout.run_dir(run_id)
        attempt = (row.get("attempts") or 0) + 1
        env = {
            **os.environ, **q.param_env(spec.get("params") or {}), **(spec.get("env") or {}),
            "MLDECK_RUN_DIR": str(run_dir), "MLDECK_HOME": str(self.ctx.layout.home),
            "CUDA_VISIBLE_DEVICES": ",".join(str(i) for i in gpus), "PYTHONUNBUFFERED": "1",
            "MLDECK_ATTEMPT": str(attempt),
        }
        if spec.get("amp"):
            env["MLDECK_AMP"] = spec["amp"]
        argv = [sys.executable, "-m", "mldeck.agent.jobwrap", str(run_dir), "--", *spec["command"]]
        spec["gpus"] = gpus
        try:
            write_atomic(run_dir / "run.json", protocol.encode(spec))
            with open(run_dir / "stdout.log", "ab") as out:
                stamp = time.strftime("%Y-%m-%d %H:%M:%S")
                out.write(f"[mldeck] attempt {attempt} started {stamp}, gpus {gpus or 'none'}\n".encode())
                out.flush()
                proc = subprocess.Popen(
                    argv, cwd=spec["cwd"], env=env, stdin=subprocess.DEVNULL, stdout=out,
                    stderr=subprocess.STDOUT, start_new_session=True,
                )
        except OSError as exc:
            job = Job(run_id, spec, [], 0, 0.0, attempt)
            job.reason = f"could not start: {exc}"
            await self._finish(job, 127)
            return
        try:
            create_time = psutil.Process(proc.pid).create_time()
        except psutil.Error:
            create_time = 0.0
        spawned = {"pid": proc.pid, "create_time": create_time, "attempt": attempt, "gpus": gpus,
                   "at": time.time()}
        write_atomic(run_dir / SPAWNED, json.dumps(spawned).encode())  # before any await: see adopt_spawned
        run = await self.ctx.read(self.store.get_run, run_id) or {}
        job = Job(
            run_id, spec, gpus, proc.pid, create_time, attempt, proc=proc,
            gpu_seconds=run.get("gpu_seconds") or 0.0, cpu_base=run.get("cpu_seconds") or 0.0,
            peak_gpu_mem=run.get("peak_gpu_mem") or 0, held_gpu_mem=self._held_mem(gpus),
            stop=row.get("stop_requested"), reason=row.get("stop_reason"),
        )
        self._hold(job)
        await self.ctx.db(q.mark_started, self.store, run_id, gpus, proc.pid, create_time, attempt,
                            time.time())
        self._publish(run_id, "running", gpus=gpus, pid=proc.pid, attempt=attempt)

    # watching -----------------------------------------------------------------

    def _exit_file(self, job: Job) -> int:
        try:
            return int((self.ctx.layout.run_dir(job.run_id) / "exit_code").read_text().strip())
        except (OSError, ValueError):
            return LOST

    def _exit_time(self, job: Job) -> float:
        """When a job that ended unwatched ended: its exit file's time, else its start."""
        try:
            return (self.ctx.layout.run_dir(job.run_id) / "exit_code").stat().st_mtime
        except OSError:
            return job.create_time

    def _exit_code(self, job: Job) -> int | None:
        """None while the job runs; its exit code (or LOST) once it has ended."""
        if job.proc is not None:
            rc = job.proc.poll()
            if rc is None:
                return None
            code = self._exit_file(job)
            return code if code != LOST else (128 - rc if rc < 0 else rc)
        if _same_process(job.pid, job.create_time):
            return None
        return self._exit_file(job)

    def _account(self, job: Job, now: float, gpu_procs: dict[int, int]) -> None:
        """Add the time since the last tick; sample CPU time and GPU memory of the job's processes."""
        job.gpu_seconds += len(job.gpus) * max(0.0, now - job.last_tick)
        job.last_tick = now
        mem = 0
        for proc in _tree(job.pid):
            with contextlib.suppress(psutil.Error):
                t = proc.cpu_times()
                job.cpu_by_pid[proc.pid] = max(job.cpu_by_pid.get(proc.pid, 0.0), t.user + t.system)
            mem += gpu_procs.get(proc.pid, 0)
        job.peak_gpu_mem = max(job.peak_gpu_mem, mem)

    def cost_of(self, job: Job) -> dict[str, Any]:
        """What a running job has cost so far, and what it costs per hour while it runs."""
        return {
            "cost_usd": costs.run_cost(job.gpu_seconds, job.cpu_seconds, self.prices),
            "gpu_seconds": job.gpu_seconds, "cpu_seconds": job.cpu_seconds,
            "peak_gpu_mem": job.peak_gpu_mem, "held_gpu_mem": job.held_gpu_mem,
            "price_per_hour": self.prices.gpu_per_hour * len(job.gpus) if job.gpus
            else self.prices.cpu_core_per_hour,
        }

    def live_costs(self) -> dict[str, dict[str, Any]]:
        """Each running job's cost so far by run id: fresher than the store's, written every cost_update_s."""
        return {job.run_id: self.cost_of(job) for job in self.active.values()}

    def busy_gpus(self) -> list[int]:
        return sorted(i for job in self.active.values() for i in job.gpus)

    def _gpu_processes(self) -> dict[int, int]:
        out: dict[int, int] = {}
        for gpu in (self.collector.latest or {}).get("gpus") or []:
            for pid, mem in gpu.get("processes") or []:
                out[pid] = out.get(pid, 0) + (mem or 0)
        return out

    async def _check_active(self) -> None:
        now = time.time()
        gpu_procs = self._gpu_processes()
        for job in list(self.active.values()):
            code = self._exit_code(job)
            self._account(job, now, gpu_procs)
            if code is not None:
                await self._finish(job, code)
            elif job.deadline is not None and time.monotonic() > job.deadline:
                log.warning("job %s ignored SIGTERM for its grace period; killing it", job.run_id)
                job.deadline = None
                self._signal(job, signal.SIGKILL)
        if self.active and now - self._last_cost_write >= self.cfg.cost_update_s:
            self._last_cost_write = now
            await self.ctx.db(q.update_costs, self.store, self.live_costs())

    async def _stopped(self, job: Job, code: int) -> bool:
        """Whether the job ended because of the stop asked: whatever its exit code, unless the SDK's
        finish line says the run had ended before it saw the stop (a script that exits 0 after
        `if run.should_stop: break` stopped; one that finished its work first succeeded)."""
        if job.stop is None:
            return False
        if code != 0:
            return True
        finish = await asyncio.to_thread(finish_line, self.ctx.layout.run_dir(job.run_id))
        return finish is None or bool(finish.get("stop_seen"))

    async def _finish(self, job: Job, code: int) -> None:
        # the run's last lines are in the store before its end is: a finished run shows its final metrics
        # (and a run on another node, whose writes no watcher sees, is read once more here)
        metrics = self.ctx.layout.run_dir(job.run_id) / "metrics.jsonl"
        await self.ingest.ingest_file(metrics, parse_run_metrics)
        requeue = False
        stopped = await self._stopped(job, code)
        if stopped and job.stop == "prune":
            status, reason = "pruned", job.reason or "stopped early"
        elif stopped and job.stop == "stop":
            status, reason = "stopped", job.reason or "stopped on request"
        elif code == 0 and not stopped:
            status, reason = "succeeded", None
        elif stopped or (code == q.PREEMPTED_EXIT and self.cfg.requeue_preempted):
            status, requeue = "preempted", True
            reason = (job.reason or "preempted (SIGTERM)") + "; requeued to resume from its checkpoint"
        elif code == LOST:
            status, reason = "failed", lost_reason(job.pid, job.unwatched)
        else:
            status, reason = "failed", job.reason or f"exit code {code}"
        exit_code = None if code == LOST else code
        self.active.pop(job.run_id, None)
        if self.simulated and job.pid:
            self.simulated.remove(job.pid)
        await self.ctx.db(
            q.mark_ended, self.store, job.run_id, status, exit_code, reason, requeue, time.time(),
            self.cost_of(job),
        )
        self._publish(job.run_id, status, exit_code=exit_code, reason=reason, requeued=requeue,
                      sweep_id=job.spec.get("sweep_id"))
        if requeue:
            self.queue.append(await self.ctx.read(q.get_job, self.store, job.run_id))
            self._sort_queue()
        else:
            await self._resolve(job.run_id)
        self._wake.set()

    async def _resolve(self, run_id: str) -> None:
        waiters = self._waiters.pop(run_id, [])
        if not waiters:
            return
        run = await self.ctx.read(self.store.get_run, run_id)
        for fut in waiters:
            if not fut.done():
                fut.set_result(run or {})

    def _publish(self, run_id: str, status: str, **data: Any) -> None:
        self.ctx.hub.publish("runs", {"run_id": run_id, "status": status, "managed": True, **data})

    def _signal(self, job: Job, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(job.pid, sig)

    # control ------------------------------------------------------------------

    async def stop_run(
        self, run_id: str, how: StopHow = "stop", grace_s: float | None = None, reason: str | None = None
    ) -> dict[str, Any]:
        """SIGTERM to the job's group (SIGKILL after the grace period), or drop it from the queue.

        The run ends as the stop asks (see StopHow) once the job has ended, whatever its exit code."""
        requeue = how == "requeue"
        job = self.active.get(run_id)
        if job is not None:
            job.stop = how
            job.reason = reason
            job.deadline = time.monotonic() + (self.cfg.grace_s if grace_s is None else grace_s)
            await self.ctx.db(q.mark_stop_requested, self.store, run_id, job.stop, reason)
            self._signal(job, signal.SIGTERM)
            return {"run_id": run_id, "status": "stopping", "requeue": requeue}
        row = next((r for r in self.queue if r["run_id"] == run_id), None)
        if row is not None:
            self.queue.remove(row)
            gone = Job(run_id, row["spec"], [], 0, 0.0, row.get("attempts") or 0,
                       stop="prune" if how == "prune" else "stop")
            gone.reason = reason or "stopped while queued"
            await self._finish(gone, LOST)
            return {"run_id": run_id, "status": "stopped", "requeue": False}
        run = await self.ctx.read(self.store.get_run, run_id)
        if run is None:
            raise no_run(run_id)
        raise Conflict(f"run {run_id} is not running or queued (it is {run['status']})")

    async def resume(self, run_id: str) -> dict[str, Any]:
        """Queue a stopped, failed or preempted run again in its own folder, from its last checkpoint."""
        row = await self.ctx.read(q.get_job, self.store, run_id)
        run = await self.ctx.read(self.store.get_run, run_id)
        if run is None:
            raise no_run(run_id)
        if row is None:
            raise Conflict(f"run {run_id} was not launched by the agent, so it cannot "
                           "be resumed here; launch it with `mldeck run`")
        if row["state"] != "done" or run_id in self.active:
            raise Conflict(f"run {run_id} is already {run['status']}")
        if run["status"] == "succeeded":
            raise Conflict(f"run {run_id} succeeded; there is nothing to resume")
        await self.ctx.db(q.requeue_job, self.store, run_id, "resume requested", time.time())
        self.queue.append(await self.ctx.read(q.get_job, self.store, run_id))
        self._sort_queue()
        self._publish(run_id, "queued", reason="resume requested")
        self._wake.set()
        return {"run_id": run_id, "status": "queued"}

    async def wait(self, run_id: str) -> dict[str, Any]:
        """The run's row once it has ended for good (succeeded, failed or stopped)."""
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(run_id, []).append(fut)
        run = await self.ctx.read(self.store.get_run, run_id)
        if run is None:
            self._waiters[run_id].remove(fut)
            raise no_run(run_id)
        if not self.pending(run_id) and run["status"] in TERMINAL:
            self._waiters[run_id].remove(fut)
            return run
        return await fut

    @rpc("jobs.queue")
    async def queue_view(self, p: QueueParams) -> dict[str, Any]:
        running = [
            {"run_id": j.run_id, "name": j.spec.get("name"), "gpus": j.gpus, "pid": j.pid,
             "attempt": j.attempt, "stopping": j.stop is not None, **self.cost_of(j)}
            for j in self.active.values()
        ]
        queued = [
            {"run_id": r["run_id"], "name": r["spec"].get("name"), "position": i + 1,
             "gpus_requested": r.get("gpus_requested"), "priority": r.get("priority"),
             "enqueued_at": r.get("enqueued_at"), "attempts": r.get("attempts")}
            for i, r in enumerate(self.queue)
        ]
        return {"running": running, "queued": queued, "gpu_count": self.gpu_count,
                "gpus_busy": self.busy_gpus()}
