"""A real one-machine Slurm cluster: munged, slurmctld and slurmd on this host, with two fake GPUs.

Everything the daemons write (state, spool, logs, the munge key and socket) is in a temporary folder,
and they listen on their own ports, so the cluster is the tests' alone. gres.conf points the two GPUs
at /dev/tty0 and /dev/tty1 (Slurm then sets CUDA_VISIBLE_DEVICES as on a real GPU node). Where the
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
GPUS = ("/dev/tty0", "/dev/tty1")
PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin"])
PR_SET_PDEATHSIG = 1


def unavailable(reason: str) -> NoReturn:
    if os.environ.get("CI"):
        pytest.fail(f"the Slurm tests cannot run: {reason}")
    pytest.skip(reason)



def slurm_conf(root: Path, node: str, munge_socket: Path) -> str:
    """A cluster of one node (2 CPUs, 2 GPUs) that schedules at once and forgets ended jobs after 5 s.

    Partition debug is the tests'; a job in partition high preempts its jobs (PreemptMode=CANCEL: they
    get SIGTERM, SIGKILL after KillWait, and end PREEMPTED)."""
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
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
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
PartitionName=debug Nodes={node} Default=YES MaxTime=INFINITE State=UP PriorityTier=1
PartitionName=high Nodes={node} MaxTime=INFINITE State=UP PriorityTier=2
"""


@dataclass
class Cluster:
    """The running daemons, and the Slurm commands against them (as a user outside mldeck runs them)."""

    root: Path
    conf: Path
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
        return "".join((self.root / name).read_text()[-3000:] for name in ("slurmctld.log", "slurmd.log")
                       if (self.root / name).exists())

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


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """munged, slurmctld and slurmd, started once for the session and stopped at its end; SLURM_CONF is
    exported so that the agents and CLIs the tests start use this cluster."""
    missing = [t for t in (*SBIN, *CLIENTS) if shutil.which(t, path=PATH) is None]
    if missing:
        unavailable(f"{', '.join(missing)} not installed (Debian: apt-get install slurm-wlm munge)")
    if os.geteuid() != 0:
        unavailable("slurmd must run as root to start jobs as their users")
    if not all(os.path.exists(g) for g in GPUS):
        unavailable(f"the fake GPUs {', '.join(GPUS)} are missing")
    root = tmp_path_factory.mktemp("slurm")
    for sub in ("state", "spool"):
        (root / sub).mkdir()
    key = root / "munge.key"
    key.write_bytes(secrets.token_bytes(1024))
    key.chmod(0o400)
    munge_socket = root / "munge.sock"
    conf = root / "slurm.conf"
    node = socket.gethostname().split(".")[0]
    conf.write_text(slurm_conf(root, node, munge_socket))
    (root / "gres.conf").write_text(f"NodeName={node} Name=gpu File=/dev/tty[0-1]\n")
    cluster = Cluster(root, conf)
    _start(cluster, ["munged", "--foreground", "--force", f"--socket={munge_socket}", f"--key-file={key}",
                     f"--pid-file={root}/munged.pid", f"--seed-file={root}/munged.seed",
                     f"--log-file={root}/munged.log"], "munged")
    _wait(cluster, munge_socket.exists, "munged's socket")
    _start(cluster, ["slurmctld", "-D", "-i", "-f", str(conf)], "slurmctld")
    _wait(cluster, lambda: cluster.run("scontrol", "ping", check=False).stdout.count("UP") > 0, "slurmctld")
    _start(cluster, ["slurmd", "-D", "-f", str(conf)], "slurmd")
    _wait(cluster, lambda: set(cluster.run("sinfo", "-h", "-N", "-o", "%T", check=False).stdout.split())
          == {"idle"}, "the node to be idle")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("SLURM_CONF", str(conf))
        env.setenv("PATH", PATH)
        try:
            yield cluster
        finally:
            cluster.stop()
