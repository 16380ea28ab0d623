"""A real one-machine Slurm cluster: munged, slurmctld and three slurmd on this host, with fake GPUs.

Everything the daemons write (state, spool, logs, the munge key and socket) is in a temporary folder,
and they listen on their own ports, so the cluster is the tests' alone. The node named after this
host has two GPUs, /dev/tty0 and /dev/tty1 in gres.conf (Slurm then sets CUDA_VISIBLE_DEVICES as on
a real GPU node); two more nodes of one GPU each (tty2, tty3), each its own slurmd, make partition
multi, for jobs that span nodes. Where the
daemons cannot start the tests skip with the reason, except in CI (the CI variable set), where they fail.
"""

from __future__ import annotations

import ctypes
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import pytest

from mldeck.core.ports import free_port

SBIN = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "scontrol", "scancel", "sinfo")
GPUS = ("/dev/tty0", "/dev/tty1", "/dev/tty2", "/dev/tty3")
PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin"])
PR_SET_PDEATHSIG = 1


def unavailable(reason: str) -> NoReturn:
    if os.environ.get("CI"):
        pytest.fail(f"the Slurm tests cannot run: {reason}")
    pytest.skip(reason)


def extra_nodes(node: str) -> tuple[str, str]:
    """The names of partition multi's two nodes (a host list Slurm writes as NODE-n[1-2])."""
    return f"{node}-n1", f"{node}-n2"


def slurm_conf(root: Path, node: str, munge_socket: Path) -> str:
    """A cluster that schedules at once and forgets ended jobs after 5 s: node NODE (2 CPUs, 2 GPUs) and
    two nodes of 1 CPU and 1 GPU, all on this host (each slurmd started with -N and its own port).

    Partition debug is the tests'; a job in partition high preempts its jobs (PreemptMode=CANCEL: they
    get SIGTERM, SIGKILL after KillWait, and end PREEMPTED); partition multi has the two small nodes."""
    n1, n2 = extra_nodes(node)
    return f"""\
ClusterName=mldeck-tests
SlurmctldHost={node}(127.0.0.1)
SlurmUser=root
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
AuthType=auth/munge
AuthInfo=socket={munge_socket}
CredType=cred/munge
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool/%n
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd-%n.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
GresTypes=gpu
MinJobAge=5
KillWait=20
MessageTimeout=5
ReturnToService=2
SchedulerParameters=sched_interval=1,bf_interval=1
PreemptType=preempt/partition_prio
PreemptMode=CANCEL
NodeName={node} NodeAddr=127.0.0.1 CPUs=2 RealMemory=8000 Gres=gpu:2 State=UNKNOWN
NodeName={n1} NodeHostname={node} NodeAddr=127.0.0.1 Port={free_port()} CPUs=1 RealMemory=2000 Gres=gpu:1
NodeName={n2} NodeHostname={node} NodeAddr=127.0.0.1 Port={free_port()} CPUs=1 RealMemory=2000 Gres=gpu:1
PartitionName=debug Nodes={node} Default=YES MaxTime=INFINITE State=UP PriorityTier=1
PartitionName=high Nodes={node} MaxTime=INFINITE State=UP PriorityTier=2
PartitionName=multi Nodes={n1},{n2} MaxTime=INFINITE State=UP PriorityTier=1
"""


@dataclass
class Cluster:
    """The running daemons, and the Slurm commands against them (as a user outside mldeck runs them)."""

    root: Path
    conf: Path
    node: str
    """The node named after this host (partition debug's)."""
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "SLURM_CONF": str(self.conf), "PATH": PATH}

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(list(argv), capture_output=True, text=True, env=self.env, timeout=60)
        if check and done.returncode != 0:
            raise AssertionError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr}")
        return done

    def sbatch(self, *options: str) -> int:
        return int(self.run("sbatch", "--parsable", *options).stdout.strip().split(";")[0])

    def state(self, job_id: int) -> tuple[str, str]:
        """squeue's state and reason of a job ('' once Slurm forgot it)."""
        out = self.run("squeue", "-h", "--states=all", "-j", str(job_id), "-o", "%T|%r", check=False).stdout
        state, _, reason = out.strip().partition("|")
        return state, reason

    def log(self) -> str:
        logs = [self.root / "slurmctld.log", *sorted(self.root.glob("slurmd-*.log"))]
        return "".join(log.read_text()[-3000:] for log in logs if log.exists())

    def stop(self) -> None:
        self.run("scancel", "--user", os.environ.get("USER", "root"), check=False)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and self.run("squeue", "-h", check=False).stdout.strip():
            time.sleep(0.2)
        for proc in reversed(self.procs.values()):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def _die_with_parent() -> None:
    """In the daemon before exec: it ends with the test process, even one killed before its teardown."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _start(cluster: Cluster, argv: list[str], name: str) -> None:
    log = open(cluster.root / f"{name}.out", "ab")  # noqa: SIM115 (the daemon keeps it)
    cluster.procs[name] = subprocess.Popen(argv, stdout=log, stderr=log, env=cluster.env,
                                           preexec_fn=_die_with_parent)


def _wait(cluster: Cluster, ready: Callable[[], object], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        for name, proc in cluster.procs.items():
            if proc.poll() is not None:
                out = (cluster.root / f"{name}.out").read_text()[-1500:]
                cluster.stop()
                unavailable(f"{name} exited ({proc.returncode}) before {what}: {out} {cluster.log()[-1500:]}")
        time.sleep(0.2)
    cluster.stop()
    unavailable(f"timed out waiting for {what}: {cluster.log()[-1500:]}")


def start_cluster(root: Path) -> Cluster:
    """munged, slurmctld and the three slurmd, their files in root, up and with every node idle; where
    they cannot start, the test skips (fails in CI) with the reason."""
    missing = [t for t in (*SBIN, *CLIENTS) if shutil.which(t, path=PATH) is None]
    if missing:
        unavailable(f"{', '.join(missing)} not installed (Debian: apt-get install slurm-wlm munge)")
    if os.geteuid() != 0:
        unavailable("slurmd must run as root to start jobs as their users")
    if not all(os.path.exists(g) for g in GPUS):
        unavailable(f"the fake GPUs {', '.join(GPUS)} are missing")
    for sub in ("state", "spool"):
        (root / sub).mkdir()
    key = root / "munge.key"
    key.write_bytes(secrets.token_bytes(1024))
    key.chmod(0o400)
    munge_socket = root / "munge.sock"
    conf = root / "slurm.conf"
    node = socket.gethostname().split(".")[0]
    conf.write_text(slurm_conf(root, node, munge_socket))
    n1, n2 = extra_nodes(node)
    (root / "gres.conf").write_text(f"NodeName={node} Name=gpu File=/dev/tty[0-1]\n"
                                    f"NodeName={n1} Name=gpu File=/dev/tty2\n"
                                    f"NodeName={n2} Name=gpu File=/dev/tty3\n")
    cluster = Cluster(root, conf, node)
    _start(cluster, ["munged", "--foreground", "--force", f"--socket={munge_socket}", f"--key-file={key}",
                     f"--pid-file={root}/munged.pid", f"--seed-file={root}/munged.seed",
                     f"--log-file={root}/munged.log"], "munged")
    _wait(cluster, munge_socket.exists, "munged's socket")
    _start(cluster, ["slurmctld", "-D", "-i", "-f", str(conf)], "slurmctld")
    _wait(cluster, lambda: cluster.run("scontrol", "ping", check=False).stdout.count("UP") > 0, "slurmctld")
    for name in (node, n1, n2):
        (root / "spool" / name).mkdir()
        _start(cluster, ["slurmd", "-D", "-N", name, "-f", str(conf)], f"slurmd-{name}")
    idle = {f"{name} idle" for name in (node, n1, n2)}
    states = ("sinfo", "-h", "-N", "-o", "%N %T")  # a node in two partitions is listed twice
    _wait(cluster, lambda: set(cluster.run(*states, check=False).stdout.splitlines()) == idle,
          "the three nodes to be idle")
    return cluster


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """The cluster, started once for the session and stopped at its end; SLURM_CONF is exported so that
    the agents and CLIs the tests start use it."""
    cluster = start_cluster(tmp_path_factory.mktemp("slurm"))
    with pytest.MonkeyPatch.context() as env:
        env.setenv("SLURM_CONF", str(cluster.conf))
        env.setenv("PATH", PATH)
        try:
            yield cluster
        finally:
            cluster.stop()
