"""Slurm as the job backend (`[jobs] backend = "slurm"`), and slurm.status for Fleet.

Slurm does what it is for: queueing, GPU allocation, fair share, preemption, placement on nodes.
mldeck keeps the rest: the run's record, metrics, checkpoints and resumes, cost, sweeps. Every run
the queue holds is submitted at once; each attempt of a run is one batch job whose script
(`slurm.sh` in the run folder) exports the run's environment, runs the command (through srun and
torchrun's c10d rendezvous on the first node when it asks for several nodes), passes SIGTERM on
to it (Slurm's warning before the time limit, `mldeck runs stop`), and leaves its exit code in the
run folder. Run folders live in `[jobs] shared_dir`, which the compute nodes see at the same path,
and are linked into the agent's home, where ingest finds them.

The run follows the job: PENDING is queued with Slurm's reason, RUNNING is running on its nodes
and GPUs; at the end COMPLETED and FAILED are the exit code's, CANCELLED from outside mldeck is
stopped, PREEMPTED and NODE_FAIL are preempted and submitted again to resume from the checkpoint
(as is a job that ended on SIGTERM, 143), TIMEOUT and the others are failed with Slurm's word.
A job Slurm requeues itself keeps its id and starts again as the run's next attempt: Slurm's restart
count says so, even where the job was requeued and started again between two polls.
"""

from __future__ import annotations

import asyncio
import logging
import math
import shlex
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import msgspec

from mldeck.agent import slurmcli
from mldeck.agent.ingest import parse_run_metrics
from mldeck.agent.jobs import LOST, Job, Jobs
from mldeck.agent.service import Context, rpc
from mldeck.core import jobs as q
from mldeck.core import protocol
from mldeck.core.atomic import write_atomic
from mldeck.core.config import JobsSection
from mldeck.core.errors import Invalid, MldeckError
from mldeck.core.jobs import JobSpec, LaunchParams, QueueParams
from mldeck.core.protocol import Params
from mldeck.core.store import Store

if TYPE_CHECKING:
    from mldeck.agent.collector import Collector
    from mldeck.agent.ingest import Ingest
    from mldeck.agent.nvml import Nvml
    from mldeck.agent.simgpu import SimulatedNvml

log = logging.getLogger("mldeck.slurm")
SUBMITTED = "slurm"
"""jobs.state of a run whose current attempt Slurm holds (pending or running there)."""
RDZV_ENDPOINT = "$MLDECK_RDZV_ENDPOINT"
"""The c10d endpoint in a multi-node command: the batch script sets it to the first node."""
RDZV_PORT = 29400
TELEMETRY = "GPU telemetry comes from the agent's own host only; the agent does not reach the compute nodes"


@dataclass
class SlurmJob(Job):
    """A run's attempt that Slurm holds: its job id, and what Slurm last said of it."""

    slurm_id: int = 0
    state: str = "PENDING"
    slurm_reason: str = ""
    nodes: str = ""
    started: bool = False
    restarts: int | None = 0
    """Slurm's restart count last seen; None for a job found again at agent start, until the first poll
    re-bases it (the stored attempt already counts the restarts seen before)."""
    requeued: bool = False
    """Requeued by Slurm and not started again yet: the pending reason says so."""
    elapsed_s: float = 0.0
    cpus: int = 0
    gpus_held: int = 0
    prior_gpu_s: float = 0.0
    """GPU-seconds of the run's earlier attempts; this attempt's come from Slurm's elapsed time."""
    rebase: bool = False
    """Found again at agent start: the stored cost includes this attempt's time so far."""
    signal: int | None = None
    """A signal asked (runs stop, a grace period over), sent by the next tick through scancel."""

    @property
    def cpu_seconds(self) -> float:
        return self.cpu_base + self.elapsed_s * self.cpus


def nodes_of(spec: dict[str, Any]) -> int:
    return int((spec.get("dist") or {}).get("nnodes") or 1)


def sbatch_resources(cfg: JobsSection, gpus: int, nodes: int) -> list[str]:
    """What a job asks of Slurm: where (partition, account, qos), for how long, its GPUs and nodes."""
    where = (("partition", cfg.partition), ("account", cfg.account), ("qos", cfg.qos), ("time", cfg.time))
    out = [f"--{key}={value}" for key, value in where if value]
    if gpus:
        out.append(f"--gres=gpu:{gpus}")
    if nodes > 1:
        out += [f"--nodes={nodes}", "--ntasks-per-node=1"]
    return [*out, *cfg.sbatch]


def sbatch_options(cfg: JobsSection, spec: dict[str, Any], run_dir: Path, signal_at: int) -> list[str]:
    """One attempt's sbatch options: its resources, where its output goes, and its warning signal."""
    return [
        f"--job-name=mldeck:{spec['name']}", f"--output={str(run_dir / 'stdout.log').replace('%', '%%')}",
        "--open-mode=append", f"--chdir={spec['cwd']}", f"--signal=B:TERM@{signal_at}", "--requeue",
        *sbatch_resources(cfg, spec["gpus_requested"], nodes_of(spec)),
    ]


def job_env(spec: dict[str, Any], run_dir: Path, home: Path) -> dict[str, str]:
    """The run's own environment, as the local runner gives it (Slurm sets CUDA_VISIBLE_DEVICES)."""
    env = {
        **q.param_env(spec.get("params") or {}), **(spec.get("env") or {}),
        "MLDECK_RUN_DIR": str(run_dir), "MLDECK_HOME": str(home), "PYTHONUNBUFFERED": "1",
    }
    if spec.get("amp"):
        env["MLDECK_AMP"] = spec["amp"]
    return env


def batch_script(spec: dict[str, Any], run_dir: Path, attempt: int, env: dict[str, str]) -> str:
    """The batch script of one attempt. Slurm signals the shell alone (--signal=B:TERM, scancel --batch);
    it passes SIGTERM on to the command, waits for it to checkpoint, and records its exit code."""
    nodes, gpus = nodes_of(spec), spec["gpus_requested"]
    command = " ".join('"$MLDECK_RDZV_ENDPOINT"' if a == RDZV_ENDPOINT else shlex.quote(a)
                       for a in spec["command"])
    if nodes > 1:
        srun = ["srun", f"--nodes={nodes}", "--ntasks-per-node=1", "--kill-on-bad-exit=1"]
        command = shlex.join([*srun, *([f"--gres=gpu:{gpus}"] if gpus else [])]) + " " + command
    exit_file = shlex.quote(str(run_dir / "exit_code"))
    tmp = shlex.quote(str(run_dir / ".exit_code")) + '."$$"'
    lines = [
        "#!/bin/bash",
        f"# mldeck run {spec['run_id']}, attempt {attempt}: written by the agent, submitted with sbatch",
        f"cd -- {shlex.quote(spec['cwd'])} || exit 1",
        *(f"export {key}={shlex.quote(value)}" for key, value in env.items()),
        f"export MLDECK_ATTEMPT=$(({attempt} + ${{SLURM_RESTART_COUNT:-0}}))",
        *([] if gpus else ["export CUDA_VISIBLE_DEVICES="]),
        *(rendezvous() if nodes > 1 else []),
        f"rm -f {exit_file}",
        'echo "[mldeck] attempt $MLDECK_ATTEMPT started $(date \'+%Y-%m-%d %H:%M:%S\'), Slurm job '
        '$SLURM_JOB_ID on $SLURM_JOB_NODELIST, gpus ${CUDA_VISIBLE_DEVICES:-none}"',
        "trap 'kill -TERM \"$child\" 2>/dev/null' TERM",
        f"{command} &",
        "child=$!",
        'wait "$child"; code=$?',
        'while kill -0 "$child" 2>/dev/null; do wait "$child"; code=$?; done',
        f'printf "%s\\n" "$code" > {tmp} && mv -f {tmp} {exit_file}',
        'exit "$code"',
    ]
    return "\n".join(lines) + "\n"


def rendezvous() -> list[str]:
    """The batch script's lines that set the c10d endpoint: the first node's address (NodeAddr, which
    Slurm itself reaches it by; its name where sinfo does not say) and a port of the job's own."""
    return [
        'MLDECK_RDZV_NODE="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"',
        'MLDECK_RDZV_ADDR="$(sinfo -h -N -n "$MLDECK_RDZV_NODE" -o %o | head -n 1)"',
        'MLDECK_RDZV_ENDPOINT="${MLDECK_RDZV_ADDR:-$MLDECK_RDZV_NODE}"'
        f'":$(({RDZV_PORT} + SLURM_JOB_ID % 1000))"',
    ]


def pending_reason(slurm_id: int, reason: str) -> str:
    return f"Slurm job {slurm_id} is pending" + (f" ({reason})" if reason and reason != "None" else "")


def requeued_reason(slurm_id: int, reason: str = "") -> str:
    """Said until the job starts again, with Slurm's pending reason: the requeue stays visible."""
    waits = f", pending ({reason})" if reason and reason != "None" else ""
    return (f"Slurm requeued job {slurm_id} (preemption or a node failure){waits}; it starts again from "
            "its checkpoint")


def running_reason(slurm_id: int, nodes: str, gpus: list[Any]) -> str:
    return f"Slurm job {slurm_id} on {nodes}" + (f", GPUs {','.join(map(str, gpus))}" if gpus else "")


# the run's record ------------------------------------------------------------


def mark_submitted(store: Store, run_id: str, slurm_id: int, attempt: int, reason: str) -> None:
    """The attempt is Slurm's now: its job id, and the run queued with Slurm's word."""
    with store.transaction() as cur:
        cur.execute(
            "UPDATE jobs SET state = ?, pid = ?, pgid = NULL, pid_create_time = NULL, gpus_assigned = '[]', "
            "attempts = ?, stop_requested = NULL, stop_reason = NULL WHERE run_id = ?",
            [SUBMITTED, slurm_id, attempt, run_id],
        )
        cur.execute(
            "UPDATE runs SET status = 'queued', status_reason = ?, ended_at = NULL, exit_code = NULL, "
            "tags = json_merge_patch(coalesce(tags, '{}'), ?) WHERE run_id = ?",
            [reason, msgspec.json.encode({"slurm_job_id": str(slurm_id)}).decode(), run_id],
        )


def mark_running(
    store: Store, run_id: str, gpus: list[Any], attempt: int, reason: str, at: float
) -> None:
    with store.transaction() as cur:
        cur.execute("UPDATE jobs SET gpus_assigned = ? WHERE run_id = ?",
                    [msgspec.json.encode(gpus).decode(), run_id])
        cur.execute(
            "UPDATE runs SET status = 'running', status_reason = ?, gpus = ?, "
            "started_at = coalesce(started_at, ?), ended_at = NULL, exit_code = NULL, resumed_count = ? "
            "WHERE run_id = ?",
            [reason, msgspec.json.encode(gpus).decode(), at, max(attempt - 1, 0), run_id],
        )


def set_reason(store: Store, run_id: str, reason: str) -> None:
    store.cur().execute("UPDATE runs SET status_reason = ? WHERE run_id = ?", [reason, run_id])


def mark_requeued(store: Store, run_id: str, attempt: int, reason: str, cost: dict[str, Any]) -> None:
    """Slurm put the running job back in its queue (same job id): the attempt ended preempted."""
    with store.transaction() as cur:
        cur.execute("UPDATE jobs SET attempts = ?, gpus_assigned = '[]' WHERE run_id = ?", [attempt, run_id])
        cur.execute("UPDATE runs SET status = 'preempted', status_reason = ? WHERE run_id = ?",
                    [reason, run_id])
        q.update_cost(store, run_id, cost)


# the backend --------------------------------------------------------------------


class SlurmJobs(Jobs):
    """The job runner on a Slurm login node: Slurm queues, places and starts each attempt; this follows it.

    What stays the local runner's: the queue of runs not yet submitted, stop/requeue/resume, how
    an attempt's end becomes the run's status, cost. What changes: _schedule submits everything,
    and a Slurm job's state, signals and cost come from Slurm's commands, not from a process here.
    """

    def __init__(
        self, ctx: Context, nvml: Nvml, simulated: SimulatedNvml | None, collector: Collector, ingest: Ingest
    ) -> None:
        super().__init__(ctx, nvml, simulated, collector, ingest)
        shared = self.cfg.shared_dir
        self.shared = Path(shared).expanduser() / "runs" if shared else ctx.layout.runs
        self.signal_at = max(60, math.ceil(self.cfg.grace_s))

    async def start(self) -> None:
        """Follow again the jobs Slurm held when the agent stopped, then run as the local runner does."""
        for row in await self.ctx.read(q.jobs_in_state, self.store, SUBMITTED):
            run = await self.ctx.read(self.store.get_run, row["run_id"]) or {}
            job = self._job(row, run, row.get("attempts") or 1, int(row["pid"]))
            job.started, job.rebase, job.restarts = run.get("status") == "running", True, None
            job.requeued = run.get("status") == "preempted"
            if job.stop:  # the grace period starts again; scancel follows if it is not enough
                job.deadline = time.monotonic() + self.cfg.grace_s
            self.active[job.run_id] = job
            log.info("following Slurm job %d (run %s) again", job.slurm_id, job.run_id)
        await super().start()

    def _job(self, row: dict[str, Any], run: dict[str, Any], attempt: int, slurm_id: int) -> SlurmJob:
        spec = row["spec"]
        return SlurmJob(
            run_id=row["run_id"], spec=spec, gpus=list(row.get("gpus_assigned") or []), pid=0,
            create_time=0.0, attempt=attempt, gpu_seconds=run.get("gpu_seconds") or 0.0,
            cpu_base=run.get("cpu_seconds") or 0.0, stop=row.get("stop_requested"),
            reason=row.get("stop_reason"), slurm_id=slurm_id, prior_gpu_s=run.get("gpu_seconds") or 0.0,
            gpus_held=spec["gpus_requested"] * nodes_of(spec),
        )

    # launch -----------------------------------------------------------------------

    def validate(self, p: JobSpec) -> tuple[list[str], Path, Path]:
        """As on any host, except that Slurm, not this host's GPU count, decides what fits."""
        return super().validate(msgspec.structs.replace(p, gpus=0))

    def _dist(self, p: LaunchParams) -> q.Distributed | None:
        """Several nodes are Slurm's to place; the batch script points the rendezvous at the first."""
        if p.dist is None:
            return None
        if p.dist.node_rank != 0 or p.dist.endpoint is not None:
            raise Invalid("on a Slurm host ask for nodes with dist.nnodes alone: Slurm places them, and "
                          "the first one hosts the rendezvous")
        return q.Distributed(nnodes=p.dist.nnodes, node_rank=0, endpoint=RDZV_ENDPOINT)

    async def check(self, p: JobSpec) -> None:
        """The local checks, then whether Slurm takes such a job (sbatch --test-only submits nothing)."""
        self.validate(p)
        nodes = p.dist.nnodes if isinstance(p, LaunchParams) and p.dist else 1
        await slurmcli.test_only(sbatch_resources(self.cfg, p.gpus, nodes))

    async def launch(self, p: LaunchParams) -> str:
        """Slurm refuses (an invalid partition, more GPUs than a node has) before anything is written."""
        await self.check(p)
        return await super().launch(p)

    def _new_run_dir(self, run_id: str) -> Path:
        """The folder on the shared file system, linked into the home (where ingest and logs look)."""
        link = self.ctx.layout.run_dir(run_id)
        real = self.shared / link.name
        real.mkdir(parents=True)
        if real != link:
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(real, target_is_directory=True)
        return real

    # submitting and following ------------------------------------------------------

    async def _schedule(self) -> None:
        """Every queued run goes to Slurm at once: Slurm queues, places and starts it."""
        for row in list(self.queue):
            await self._start(row, [])

    async def _start(self, row: dict[str, Any], gpus: list[int]) -> None:
        """Submit the run's next attempt; a refusal ends the run failed, in Slurm's words."""
        self.queue.remove(row)
        spec, run_id = row["spec"], row["run_id"]
        run_dir = self.shared / run_id
        attempt = (row.get("attempts") or 0) + 1
        run = await self.ctx.read(self.store.get_run, run_id) or {}
        job = self._job(row, run, attempt, 0)
        script = run_dir / "slurm.sh"
        spec.pop("gpus", None)  # Slurm's to say once the job runs: the SDK must not record it as none
        try:
            (run_dir / "exit_code").unlink(missing_ok=True)
            write_atomic(run_dir / "run.json", protocol.encode(spec))
            env = job_env(spec, run_dir, self.ctx.layout.home)
            write_atomic(script, batch_script(spec, run_dir, attempt, env).encode())
            job.slurm_id = await slurmcli.sbatch(sbatch_options(self.cfg, spec, run_dir, self.signal_at),
                                                 str(script))
        except (OSError, MldeckError) as exc:
            job.reason = f"could not submit to Slurm: {exc}"
            await self._finish(job, 1)
            return
        self.active[run_id] = job
        spec["tags"] = {**(spec.get("tags") or {}), "slurm_job_id": str(job.slurm_id)}
        try:
            write_atomic(run_dir / "run.json", protocol.encode(spec))  # the SDK keeps the tag too
        except OSError as exc:
            log.warning("run %s: could not add the Slurm job id to run.json: %s", run_id, exc)
        reason = pending_reason(job.slurm_id, "")
        await self.ctx.db(mark_submitted, self.store, run_id, job.slurm_id, attempt, reason)
        self._publish(run_id, "queued", reason=reason, slurm_job_id=job.slurm_id, attempt=attempt)

    async def _check_active(self) -> None:
        """Send the signals asked, follow each Slurm job's state, then the runner's own checks (a grace
        period over, cost written)."""
        jobs = [j for j in self.active.values() if isinstance(j, SlurmJob)]
        for job in jobs:
            if job.signal is not None:
                await self._send(job)
        states = await slurmcli.squeue([j.slurm_id for j in jobs])
        for job in jobs:
            if job.started:  # other nodes' writes reach no watcher: ingest looks at the file every second
                self.ingest.follow(self.ctx.layout.run_dir(job.run_id) / "metrics.jsonl", parse_run_metrics)
            await self._follow(job, states.get(job.slurm_id))
        await super()._check_active()

    async def _send(self, job: SlurmJob) -> None:
        """SIGTERM to a running job's batch shell (it passes it on); anything else cancels the job."""
        sig, job.signal = job.signal, None
        term = sig == signal.SIGTERM and job.started
        refused = await slurmcli.scancel_quietly(job.slurm_id, sig if term else None)
        if refused:
            log.warning("run %s: %s", job.run_id, refused)

    def _signal(self, job: Job, sig: int) -> None:
        if not isinstance(job, SlurmJob):
            super()._signal(job, sig)
            return
        job.signal = sig  # scancel is a process: the next tick runs it
        self._wake.set()

    def _exit_code(self, job: Job) -> int | None:
        """A Slurm job's end is found by _follow, from Slurm's state."""
        return None if isinstance(job, SlurmJob) else super()._exit_code(job)

    def _account(self, job: Job, now: float, gpu_procs: dict[int, int]) -> None:
        """A Slurm job's time is Slurm's (_follow); its processes are not on this host."""
        if not isinstance(job, SlurmJob):
            super()._account(job, now, gpu_procs)

    async def _follow(self, job: SlurmJob, st: slurmcli.JobState | None) -> None:
        """Bring the run up to the job's state: pending reason, running, requeued by Slurm, ended."""
        if st is None:  # gone from the controller (ended more than MinJobAge ago): ask accounting
            st = await slurmcli.sacct(job.slurm_id) or slurmcli.JobState(job.slurm_id, "UNKNOWN")
        if st.restarts is not None:  # before the accounting below: an ended attempt costs what was seen
            if job.restarts is not None and st.restarts > job.restarts:
                await self._requeued(job, st.restarts - job.restarts)
            job.restarts = st.restarts
        if st.state != "UNKNOWN":
            self._account_slurm(job, st)
        if st.state in slurmcli.RUNNING and not job.started:
            await self._running(job, st)
        elif st.state in slurmcli.PENDING and job.started:  # found again at agent start, requeued since
            await self._requeued(job, 1)
        elif st.state in slurmcli.PENDING and st.reason != job.slurm_reason:
            job.slurm_reason = st.reason
            why = requeued_reason if job.requeued else pending_reason
            reason = why(job.slurm_id, st.reason)
            await self.ctx.db(set_reason, self.store, job.run_id, reason)
            self._publish(job.run_id, "queued", reason=reason, slurm_job_id=job.slurm_id)
        elif st.state in slurmcli.ENDED or st.state == "UNKNOWN":
            await self._ended(job, st)
        job.state = st.state

    def _account_slurm(self, job: SlurmJob, st: slurmcli.JobState) -> None:
        """Cost from Slurm's own accounting: elapsed time times the GPUs (or CPUs) it allocated."""
        if job.rebase:
            job.prior_gpu_s = max(0.0, job.gpu_seconds - st.elapsed_s * job.gpus_held)
            job.cpu_base = max(0.0, job.cpu_base - st.elapsed_s * st.cpus)
            job.rebase = False
        job.elapsed_s, job.cpus = st.elapsed_s, st.cpus or job.cpus
        job.gpu_seconds = job.prior_gpu_s + st.elapsed_s * job.gpus_held

    async def _running(self, job: SlurmJob, st: slurmcli.JobState) -> None:
        try:
            detail = await slurmcli.job_detail(job.slurm_id)
        except slurmcli.SlurmRefused as exc:  # gone already: it ran, on nodes we know
            log.info("run %s: no GPU indices for Slurm job %d: %s", job.run_id, job.slurm_id, exc)
            detail = ""
        job.started, job.requeued, job.nodes = True, False, st.nodes
        job.gpus = list(slurmcli.allocated_gpus(detail))
        reason = running_reason(job.slurm_id, st.nodes, job.gpus)
        await self.ctx.db(mark_running, self.store, job.run_id, job.gpus, job.attempt, reason, time.time())
        self._publish(job.run_id, "running", gpus=job.gpus, nodes=st.nodes, slurm_job_id=job.slurm_id,
                      attempt=job.attempt)

    async def _requeued(self, job: SlurmJob, times: int) -> None:
        """Slurm requeued the job itself (preemption, a node failure) this many times: same id, and the
        attempt after those, with the cost so far the ended attempts'."""
        reason = requeued_reason(job.slurm_id)
        cost = self.cost_of(job)
        job.started, job.requeued, job.gpus, job.attempt = False, True, [], job.attempt + times
        job.prior_gpu_s, job.cpu_base, job.elapsed_s = job.gpu_seconds, job.cpu_seconds, 0.0
        await self.ctx.db(mark_requeued, self.store, job.run_id, job.attempt, reason, cost)
        self._publish(job.run_id, "preempted", reason=reason, requeued=True, slurm_job_id=job.slurm_id,
                      sweep_id=job.spec.get("sweep_id"))

    async def _ended(self, job: SlurmJob, st: slurmcli.JobState) -> None:
        """The attempt's outcome: the exit code the batch script left, else Slurm's, read with its state."""
        if not job.started and st.elapsed_s > 0:
            await self._running(job, st)
        code = self._exit_file(job)
        if code == LOST and st.state != "UNKNOWN":
            code = st.exit_code if st.exit_code is not None else await self._slurm_exit(job)
        word = f"Slurm job {job.slurm_id}"
        if st.state == "COMPLETED" and code == LOST:
            code = 0
        elif st.state == "CANCELLED":
            if job.stop is None:
                job.stop, job.reason = "stop", f"cancelled in Slurm ({word} was cancelled outside mldeck)"
            code = q.PREEMPTED_EXIT if code == LOST else code
        elif st.state in ("PREEMPTED", "NODE_FAIL"):
            what = "preempted by Slurm" if st.state == "PREEMPTED" else f"node failure on {job.nodes}"
            job.reason = job.reason or f"{what} ({st.state}, {word})"
            code = q.PREEMPTED_EXIT
        elif st.state == "TIMEOUT":
            job.reason = job.reason or f"reached its Slurm time limit (TIMEOUT, {word})"
        elif st.state == "UNKNOWN" and code == LOST:
            job.reason = job.reason or (f"{word} is gone from Slurm (ended more than MinJobAge ago, and no "
                                        "accounting) and left no exit code")
        elif st.state not in ("COMPLETED", "FAILED", "UNKNOWN"):
            job.reason = job.reason or f"{st.state} in Slurm ({word})"
        await self._finish(job, 1 if code == LOST else code)

    async def _slurm_exit(self, job: SlurmJob) -> int:
        """The exit status scontrol shows (within MinJobAge), or LOST."""
        try:
            status = slurmcli.exit_status(slurmcli.field(await slurmcli.job_detail(job.slurm_id), "ExitCode"))
        except slurmcli.SlurmRefused:
            return LOST
        return LOST if status is None else status

    # views ---------------------------------------------------------------------------

    def busy_gpus(self) -> list[int]:
        """This host's GPUs held by jobs: none of Slurm's, which run on the compute nodes."""
        return sorted(i for job in self.active.values() if not isinstance(job, SlurmJob) for i in job.gpus)

    def _entry(self, job: SlurmJob) -> dict[str, Any]:
        return {
            "run_id": job.run_id, "name": job.spec.get("name"), "slurm_job_id": job.slurm_id,
            "slurm_state": job.state, "reason": job.slurm_reason or None, "nodes": job.nodes or None,
            "gpus": [], "node_gpus": job.gpus, "gpus_requested": job.spec.get("gpus_requested"),
            "attempt": job.attempt, "stopping": job.stop is not None, **self.cost_of(job),
        }

    @rpc("jobs.queue")
    async def queue_view(self, p: QueueParams) -> dict[str, Any]:
        """Runs Slurm holds (running, or pending with Slurm's reason), then those not yet submitted."""
        view = await super().queue_view(p)
        mine = [j for j in self.active.values() if isinstance(j, SlurmJob)]
        running = [r for r in view["running"] if not isinstance(self.active.get(r["run_id"]), SlurmJob)]
        return {
            **view, "backend": "slurm",
            "running": running + [self._entry(j) for j in mine if j.started],
            "queued": [self._entry(j) for j in mine if not j.started] + view["queued"],
        }


# the cluster, for Fleet ---------------------------------------------------------------


class SlurmStatusParams(Params, kw_only=True):
    limit: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 500


class Slurm:
    """slurm.status: the cluster as Fleet shows it (partitions, nodes, everyone's queue with reasons)."""

    def __init__(self, ctx: Context, jobs: SlurmJobs) -> None:
        self.ctx = ctx
        self.jobs = jobs

    @rpc("slurm.status")
    async def status(self, p: SlurmStatusParams) -> dict[str, Any]:
        partitions, nodes, queue = await asyncio.gather(
            slurmcli.partitions(), slurmcli.nodes(), slurmcli.queue(p.limit)
        )
        for part in partitions:
            members = [n for n in nodes if part.name in n.partitions]
            part.gpus = sum(n.gpus for n in members)
            part.gpus_free = sum(n.gpus_free for n in members)
        ours = {str(j.slurm_id): j.run_id for j in self.jobs.active.values() if isinstance(j, SlurmJob)}
        for job in queue:
            job.run_id = ours.get(job.job_id)
        return {
            "partitions": partitions, "nodes": nodes, "queue": queue,
            "running": sum(1 for j in queue if j.state == "RUNNING"),
            "pending": sum(1 for j in queue if j.state == "PENDING"),
            "telemetry": TELEMETRY,
        }
