"""Slurm's client commands (sbatch, squeue, scontrol, scancel, sinfo, sacct) and their output as values.

Every command runs as an argument list with a time limit. A command that is missing or does not
answer is Unavailable; one Slurm refuses (an invalid partition, too many GPUs for any node) is
Invalid with Slurm's own words. Output is read in fixed formats with a field separator no value holds.
"""

from __future__ import annotations

import asyncio
import re
import signal
from dataclasses import dataclass

import msgspec

from mldeck.core.errors import Invalid, Unavailable

TIMEOUT_S = 60.0
"""sbatch retries an unreachable controller for a while before it gives up; wait as long as that."""
SEP = "\x1f"
UNREACHABLE = ("Unable to contact slurm controller", "Socket timed out", "Zero Bytes were transmitted")

PENDING = frozenset({"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "SPECIAL_EXIT", "RESV_DEL_HOLD"})
RUNNING = frozenset({
    "RUNNING", "CONFIGURING", "SIGNALING", "STAGE_OUT", "RESIZING", "SUSPENDED", "STOPPED",
})
"""States of an attempt that has started. COMPLETING is not one: an attempt is ending there, the one
Slurm has just requeued included (its restart count is already the next one's)."""
ENDED = frozenset({
    "COMPLETED", "FAILED", "TIMEOUT", "PREEMPTED", "CANCELLED", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
    "DEADLINE", "REVOKED",
})
_GPU = re.compile(r"gpu(?::[A-Za-z_][\w.-]*)?:(\d+)")
_IDX = re.compile(r"IDX:([\d,\-]+)")
_NODE_GRES = re.compile(r"\bNodes=(\S+) CPU_IDs=\S+ Mem=\S+ GRES=(\S*)")


class SlurmRefused(Invalid):
    """Slurm refused a request, in its own words."""


class Partition(msgspec.Struct, kw_only=True):
    name: str
    default: bool
    available: str
    time_limit: str
    nodes: int
    allocated: int
    idle: int
    other: int
    gpus: int = 0
    gpus_free: int = 0


class Node(msgspec.Struct, kw_only=True):
    name: str
    partitions: list[str]
    state: str
    gpus: int
    gpus_free: int
    cpus: int
    cpus_allocated: int
    cpus_idle: int
    reason: str | None


class QueuedJob(msgspec.Struct, kw_only=True):
    """A job in squeue, anyone's; run_id is set when it is one of this agent's runs."""

    job_id: str
    partition: str
    user: str
    state: str
    elapsed_s: float
    nodes: int
    gpus_per_node: int
    nodelist: str | None
    reason: str | None
    name: str
    run_id: str | None = None


@dataclass
class JobState:
    """What squeue (or sacct, once squeue forgot the job) says of one job."""

    job_id: int
    state: str
    reason: str = ""
    nodes: str = ""
    elapsed_s: float = 0.0
    cpus: int = 0
    exit_code: int | None = None
    restarts: int | None = None
    """How many times Slurm requeued the job (squeue's RestartCnt); None where unknown (sacct)."""


def message(stderr: bytes) -> str:
    """Slurm's error lines as one line, without the `sbatch: error:` prefixes."""
    text = stderr.decode(errors="replace")
    lines = [re.sub(r"^\S+: error: ", "", line.strip()) for line in text.splitlines()]
    return "; ".join(line for line in lines if line) or "no message"


async def run(argv: list[str], timeout: float = TIMEOUT_S) -> str:
    """A Slurm command's stdout; Unavailable when it is missing or unanswered, SlurmRefused when it fails."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    except FileNotFoundError:
        raise Unavailable(f"{argv[0]} is not installed on this host; [jobs] backend = \"slurm\" needs the "
                          "Slurm client commands (run the agent on a login node)") from None
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise Unavailable(f"{argv[0]} did not answer within {timeout:.0f} s (is slurmctld up?)") from None
    if proc.returncode != 0:
        text = message(err)
        if any(u in text for u in UNREACHABLE):
            raise Unavailable(f"{argv[0]}: {text}")
        raise SlurmRefused(f"Slurm refused: {text}" if argv[0] == "sbatch" else f"{argv[0]}: {text}")
    return out.decode(errors="replace")


def rows(text: str, fields: int) -> list[list[str]]:
    """Lines of SEP-separated fields; the last field keeps any separator it holds."""
    return [line.split(SEP, fields - 1) for line in text.splitlines() if line.strip()]


def output_fields(fields: list[str]) -> str:
    """The `-O` argument of squeue and sinfo: each field followed by SEP, at its full width."""
    return ",".join(f"{f}:{SEP}" for f in fields)


# parsing -----------------------------------------------------------------------


def duration_s(text: str) -> float:
    """Slurm's `[D-]HH:MM:SS`, `MM:SS`, `D-HH[:MM]` or minutes as seconds; 0 for INVALID, N/A, UNLIMITED."""
    days, _, clock = text.strip().rpartition("-")
    parts = clock.split(":")
    valid = clock and len(parts) <= 3 and all(p.isdigit() for p in parts) and (days == "" or days.isdigit())
    if not valid:
        return 0.0
    nums = [int(p) for p in parts]
    if days:
        nums += [0] * (3 - len(nums))
    elif len(nums) == 1:
        nums = [0, nums[0], 0]
    else:
        nums = [0] * (3 - len(nums)) + nums
    hours, minutes, seconds = nums
    return float(int(days or 0) * 86400 + hours * 3600 + minutes * 60 + seconds)


def gpu_count(gres: str) -> int:
    """GPUs in a gres string (`gpu:2`, `gres:gpu:a100:2`, `gres/gpu:1`, `gpu:1(IDX:0),gpu:v100:1`)."""
    return sum(int(n) for n in _GPU.findall(gres.replace("gres/", "").replace("gres:", "")))


def indices(text: str) -> list[int]:
    """`0-1,3` as [0, 1, 3]."""
    out: list[int] = []
    for part in filter(None, text.split(",")):
        low, _, high = part.partition("-")
        out += range(int(low), int(high or low) + 1)
    return out


def hostnames(expr: str) -> list[str]:
    """A Slurm host list (`node[1-3,7],gpu-a`) as names, as `scontrol show hostnames` gives them."""
    out: list[str] = []
    for prefix, ranges, _ in re.findall(r"([^,\[]+)(?:\[([^\]]*)\])?(,|$)", expr):
        if not ranges:
            out.append(prefix)
            continue
        for part in ranges.split(","):
            low, _, high = part.partition("-")
            out += [f"{prefix}{i:0{len(low)}d}" for i in range(int(low), int(high or low) + 1)]
    return out


def allocated_gpus(detail: str) -> list[int] | list[str]:
    """The GPUs a running job holds, from `scontrol show job -d -o`: CUDA indices on its one node, or
    `node:index` on several."""
    groups = [(hostnames(nodes), indices(m.group(1)) if (m := _IDX.search(gres)) else [])
              for nodes, gres in _NODE_GRES.findall(detail)]
    names = [n for nodes, _ in groups for n in nodes]
    if len(names) == 1:
        return groups[0][1]
    return [f"{n}:{i}" for nodes, idx in groups for n in nodes for i in idx]


def field(detail: str, key: str) -> str | None:
    """One `Key=value` of `scontrol show job -o`, or None."""
    m = re.search(rf"(?:^|\s){re.escape(key)}=(\S*)", detail)
    return m.group(1) if m else None


def exit_status(text: str | None) -> int | None:
    """Slurm's `CODE:SIGNAL` as a shell would say it (128 + the signal for a killed job)."""
    if not text or ":" not in text:
        return None
    code, sig = text.split(":", 1)
    if not (code.isdigit() and sig.isdigit()):
        return None
    return 128 + int(sig) if int(sig) else int(code)


# commands ----------------------------------------------------------------------


async def sbatch(options: list[str], script: str) -> int:
    """Submit a batch script; the new job's id."""
    out = await run(["sbatch", "--parsable", *options, script])
    job_id = out.strip().split(";", 1)[0]
    if not job_id.isdigit():
        raise Unavailable(f"sbatch answered {out.strip()!r} instead of a job id")
    return int(job_id)


async def test_only(options: list[str]) -> None:
    """Whether Slurm would take a job with these options (sbatch --test-only submits nothing)."""
    await run(["sbatch", "--test-only", *options, "--wrap=true"])


async def squeue(job_ids: list[int]) -> dict[int, JobState]:
    """The state of each job the controller still holds (ended ones for MinJobAge), by job id."""
    if not job_ids:
        return {}
    fmt = output_fields(["JobID", "State", "TimeUsed", "NumCPUs", "NodeList", "Reason", "RestartCnt"])
    try:
        out = await run(["squeue", "-h", "--states=all", "-j", ",".join(map(str, job_ids)), "-O", fmt])
    except SlurmRefused as exc:  # every id unknown: squeue fails rather than print nothing
        if "Invalid job id" in str(exc):
            return {}
        raise
    states = {}
    for job_id, state, elapsed, cpus, nodelist, reason, restarts in rows(out, 7):
        if job_id.isdigit():
            count = restarts.strip(SEP + " ")
            states[int(job_id)] = JobState(int(job_id), state.split()[0], reason.strip(), nodelist.strip(),
                                           duration_s(elapsed), int(cpus) if cpus.isdigit() else 0,
                                           restarts=int(count) if count.isdigit() else None)
    return states


async def job_detail(job_id: int) -> str:
    """`scontrol show job -d -o`: one line of Key=value, with each node's GPU indices."""
    return await run(["scontrol", "show", "job", "-d", "-o", str(job_id)])


async def sacct(job_id: int) -> JobState | None:
    """The job as accounting recorded it, for one squeue no longer holds; None where accounting is off."""
    try:
        out = await run(["sacct", "-n", "-X", "-P", "-j", str(job_id), "-o",
                         "JobIDRaw,State,ExitCode,ElapsedRaw,NCPUS,NodeList"])
    except SlurmRefused:
        return None
    for line in out.splitlines():
        parts = line.split("|")
        if len(parts) == 6 and parts[0] == str(job_id):
            state, elapsed, cpus = parts[1].split()[0], parts[3], parts[4]
            return JobState(job_id, state, "", parts[5], float(elapsed) if elapsed.isdigit() else 0.0,
                            int(cpus) if cpus.isdigit() else 0, exit_status(parts[2]))
    return None


async def scancel(job_id: int, sig: int | None = None) -> None:
    """Cancel the job, or send a signal to its batch shell alone (which passes it on to the command)."""
    argv = ["scancel", str(job_id)]
    if sig is not None:
        argv[1:1] = [f"--signal={signal.Signals(sig).name.removeprefix('SIG')}", "--batch"]
    await run(argv)


async def scancel_quietly(job_id: int, sig: int | None) -> str | None:
    """scancel; Slurm's refusal (the job has just ended) as text instead of an error."""
    try:
        await scancel(job_id, sig)
    except SlurmRefused as exc:
        return str(exc)
    return None


async def partitions() -> list[Partition]:
    """sinfo's partitions: availability, time limit, and nodes allocated / idle / other / total."""
    out = await run(["sinfo", "-h", "-o", SEP.join(["%P", "%a", "%l", "%F"])])
    result = []
    for name, avail, limit, counts in rows(out, 4):
        a, i, o, t = (int(c) if c.isdigit() else 0 for c in (counts.split("/") + ["0"] * 4)[:4])
        result.append(Partition(name=name.rstrip("*"), default=name.endswith("*"), available=avail,
                                time_limit=limit, nodes=t, allocated=a, idle=i, other=o))
    return result


async def nodes() -> list[Node]:
    """sinfo's nodes: state, partitions, GPUs and free GPUs, CPUs, and why a node is down or drained.

    Nodes by name (NodeList with -N), not by NodeHost: several nodes may share one host."""
    fields = ["NodeList", "Partition", "StateLong", "Gres", "GresUsed", "CPUsState", "Reason"]
    out = await run(["sinfo", "-h", "-N", "-O", output_fields(fields)])
    by_name: dict[str, Node] = {}
    for name, part, state, gres, used, cpus, reason in rows(out, 7):
        if name in by_name:  # one line per partition the node is in
            by_name[name].partitions.append(part.rstrip("*"))
            continue
        total, busy = gpu_count(gres), gpu_count(used)
        alloc, idle, _, cpu_total = (int(c) if c.isdigit() else 0 for c in (cpus.split("/") + ["0"] * 4)[:4])
        why = reason.strip(SEP + " ")
        by_name[name] = Node(name=name, partitions=[part.rstrip("*")], state=state, gpus=total,
                             gpus_free=max(0, total - busy), cpus=cpu_total, cpus_allocated=alloc,
                             cpus_idle=idle, reason=None if why in ("", "none") else why)
    for node in by_name.values():
        node.partitions.sort()  # sinfo's line order varies between calls
    return list(by_name.values())


async def queue(limit: int) -> list[QueuedJob]:
    """squeue's pending and running jobs, everyone's, with Slurm's reason for each pending one."""
    fmt = SEP.join(["%i", "%P", "%u", "%T", "%M", "%D", "%b", "%N", "%r", "%j"])
    out = await run(["squeue", "-h", "-o", fmt])
    return [
        QueuedJob(job_id=job_id, partition=part, user=user, state=state, elapsed_s=duration_s(elapsed),
                  nodes=int(n) if n.isdigit() else 0, gpus_per_node=gpu_count(gres),
                  nodelist=nodelist or None, reason=None if reason in ("None", "") else reason, name=name)
        for job_id, part, user, state, elapsed, n, gres, nodelist, reason, name in rows(out, 10)[:limit]
    ]
