"""The Slurm backend's parts that need no cluster: its batch script run by bash, its sbatch options,
the readings of Slurm's output, and the config's checks."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from mldeck.agent import slurmcli
from mldeck.agent.slurm import RDZV_ENDPOINT, batch_script, job_env, sbatch_options
from mldeck.core import jobs as q
from mldeck.core.config import ConfigError, JobsSection, load_config
from tests.conftest import wait_for


def spec(tmp_path: Path, command: list[str], gpus: int = 0, nnodes: int = 1, **extra: Any) -> dict[str, Any]:
    return {"run_id": "r1", "name": "train", "cwd": str(tmp_path), "command": command, "gpus_requested": gpus,
            "params": {"lr": 0.1}, "env": {"WANDB_MODE": "off it's"}, "amp": None,
            "dist": {"nnodes": nnodes, "node_rank": 0, "endpoint": RDZV_ENDPOINT} if nnodes > 1 else None,
            **extra}


def write_script(tmp_path: Path, s: dict[str, Any], attempt: int = 1) -> Path:
    run_dir = tmp_path / "run dir"
    run_dir.mkdir(exist_ok=True)
    script = run_dir / "slurm.sh"
    script.write_text(batch_script(s, run_dir, attempt, job_env(s, run_dir, tmp_path / "home")))
    return script


def slurm_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """What slurmd gives a batch script, with fake srun, scontrol and sinfo first on PATH (sinfo says
    node07's NodeAddr unless SINFO_SAYS_NOTHING is set)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "srun").write_text('#!/bin/sh\necho "srun $*"\nwhile [ "${1#--}" != "$1" ]; do shift; done\n'
                                  'exec "$@"\n')
    (bin_dir / "scontrol").write_text('#!/bin/sh\nprintf "node07\\nnode08\\n"\n')
    (bin_dir / "sinfo").write_text('#!/bin/sh\n[ -n "$SINFO_SAYS_NOTHING" ] || '
                                   '[ "$*" != "-h -N -n node07 -o %o" ] || printf "10.1.0.7\\n10.1.0.7\\n"\n')
    for tool in ("srun", "scontrol", "sinfo"):
        (bin_dir / tool).chmod(0o755)
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_ID": "1234",
            "SLURM_JOB_NODELIST": "node[07-08]", "CUDA_VISIBLE_DEVICES": "0,1", **extra}


def test_batch_script_exports_the_run_and_records_the_exit_code(tmp_path: Path) -> None:
    command = ["python3", "-c", "import os, sys; e = os.environ; print('env', e['MLDECK_PARAM_LR'], "
               "e['WANDB_MODE'], e['MLDECK_ATTEMPT'], repr(e['CUDA_VISIBLE_DEVICES']), os.getcwd()); "
               "sys.exit(3)"]
    script = write_script(tmp_path, spec(tmp_path, command), attempt=2)
    done = subprocess.run(["bash", str(script)], capture_output=True, text=True,
                          env=slurm_env(tmp_path, SLURM_RESTART_COUNT="1"), timeout=30)
    assert done.returncode == 3, done.stderr
    assert "attempt 3 started" in done.stdout and "Slurm job 1234 on node[07-08], gpus none" in done.stdout
    assert f"env 0.1 off it's 3 '' {tmp_path}" in done.stdout  # a CPU job sees no GPU
    assert (script.parent / "exit_code").read_text().strip() == "3"


def test_batch_script_passes_sigterm_on_and_waits_for_the_checkpoint(tmp_path: Path) -> None:
    """Slurm signals the batch shell alone (--signal=B:TERM, scancel --batch): the command gets SIGTERM,
    may take its time to save, and its own exit code (143) is what the run folder and Slurm see."""
    command = ["python3", "-c", "import signal, sys, time\n"
               "def term(*a):\n    print('saving', flush=True)\n    time.sleep(1)\n    sys.exit(143)\n"
               "signal.signal(signal.SIGTERM, term)\nprint('up', flush=True)\ntime.sleep(60)\n"]
    script = write_script(tmp_path, spec(tmp_path, command, gpus=1))
    out = tmp_path / "out.log"
    with open(out, "w") as fh:
        proc = subprocess.Popen(["bash", str(script)], stdout=fh, stderr=subprocess.STDOUT,
                                env=slurm_env(tmp_path))
    wait_for(lambda: "up" in out.read_text(), what="the command to start")
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 143
    assert time.monotonic() - started >= 0.9, "the shell did not wait for the command to save"
    assert "saving" in out.read_text() and "gpus 0,1" in out.read_text()
    assert (script.parent / "exit_code").read_text().strip() == "143"


@pytest.mark.parametrize(("sinfo_says", "host"), [(True, "10.1.0.7"), (False, "node07")])
def test_multi_node_runs_torchrun_on_every_node_with_the_rendezvous_on_the_first(
    tmp_path: Path, sinfo_says: bool, host: str
) -> None:
    """The endpoint is the first node's NodeAddr (its name where sinfo does not say one)."""
    dist = q.Distributed(nnodes=2, node_rank=0, endpoint=RDZV_ENDPOINT)
    command = q.job_argv(["echo", "train.py"], [], {}, 4, "r1", dist, python="python3")
    command = [c if c != "python3" else "echo" for c in command]  # print torchrun's arguments
    script = write_script(tmp_path, spec(tmp_path, command, gpus=4, nnodes=2))
    env = slurm_env(tmp_path, **({} if sinfo_says else {"SINFO_SAYS_NOTHING": "1"}))
    done = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env, timeout=30)
    assert done.returncode == 0, done.stderr
    srun, torchrun = done.stdout.splitlines()[1:3]
    assert srun.startswith("srun --nodes=2 --ntasks-per-node=1 --kill-on-bad-exit=1 --gres=gpu:4 echo")
    assert f"--rdzv-backend c10d --rdzv-endpoint {host}:29634 --rdzv-id r1 echo train.py" in torchrun
    assert "--nproc-per-node 4 --nnodes 2" in torchrun


def test_sbatch_options_say_where_the_output_and_signal_go(tmp_path: Path) -> None:
    cfg = JobsSection(backend="slurm", partition="gpu", account="lab", qos="normal", time="1:00:00",
                      sbatch=["--mem=16G", "--constraint=a100"], grace_s=90)
    s = spec(tmp_path, ["python", "t.py"], gpus=2, nnodes=2)
    opts = sbatch_options(cfg, s, tmp_path / "100%", 90)
    assert opts == [
        "--job-name=mldeck:train", f"--output={tmp_path}/100%%/stdout.log", "--open-mode=append",
        f"--chdir={tmp_path}", "--signal=B:TERM@90", "--requeue", "--partition=gpu", "--account=lab",
        "--qos=normal", "--time=1:00:00", "--gres=gpu:2", "--nodes=2", "--ntasks-per-node=1", "--mem=16G",
        "--constraint=a100",
    ]


@pytest.mark.parametrize(("text", "seconds"), [
    ("0:03", 3), ("12:03", 723), ("1:02:03", 3723), ("2-01:02:03", 2 * 86400 + 3723),
    ("2-01", 2 * 86400 + 3600), ("2-01:02", 2 * 86400 + 3720), ("5", 300), ("INVALID", 0), ("UNLIMITED", 0),
    ("N/A", 0),
])
def test_durations(text: str, seconds: int) -> None:
    assert slurmcli.duration_s(text) == seconds


def test_readings_of_slurm_output() -> None:
    assert [slurmcli.gpu_count(g) for g in ("gres:gpu:1", "gres/gpu:a100:2", "gpu:2(S:0-1)", "N/A",
                                            "gpu:1(IDX:0),gpu:v100:3(IDX:1-3)")] == [1, 2, 2, 0, 4]
    assert slurmcli.hostnames("gpu[1-2,07-08],login") == ["gpu1", "gpu2", "gpu07", "gpu08", "login"]
    one = ("JobId=7 JobState=RUNNING ExitCode=0:15 JOB_GRES=gpu:2 Nodes=vm CPU_IDs=0 Mem=0 "
           "GRES=gpu:2(IDX:0-1) MinCPUsNode=1")
    assert slurmcli.allocated_gpus(one) == [0, 1]
    assert slurmcli.field(one, "JobState") == "RUNNING" and slurmcli.field(one, "Nope") is None
    assert slurmcli.exit_status(slurmcli.field(one, "ExitCode")) == 143
    assert slurmcli.exit_status("3:0") == 3 and slurmcli.exit_status("N/A") is None
    two = "Nodes=n[1-2] CPU_IDs=0-3 Mem=0 GRES=gpu:a100:1(IDX:2) Nodes=n9 CPU_IDs=0 Mem=0 GRES=gpu:1(IDX:0)"
    assert slurmcli.allocated_gpus(two) == ["n1:2", "n2:2", "n9:0"]
    assert slurmcli.message(b"sbatch: error: invalid partition specified: x\nsbatch: error: Batch job "
                            b"submission failed: Invalid partition name specified\n") == (
        "invalid partition specified: x; Batch job submission failed: Invalid partition name specified")


@pytest.mark.parametrize(("toml", "message"), [
    ('partition = "gpu"', 'partition applies only with backend = "slurm"'),
    ('qos = "x"\nsbatch = ["--mem=1G"]', 'qos, sbatch apply only with backend = "slurm"'),
    ('backend = "slurm"\nsbatch = ["--output=x.log"]', "sbatch option '--output=x.log' is set by mldeck"),
    ('backend = "slurm"\nshared_dir = "shared"', "shared_dir must be an absolute path"),
    ('backend = "pbs"', "Invalid enum value 'pbs' - at `$.jobs.backend`"),
])
def test_config_says_what_is_wrong(tmp_path: Path, toml: str, message: str) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(f"[jobs]\n{toml}\n")
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(path)


def test_config_takes_a_slurm_section(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text('[jobs]\nbackend = "slurm"\npartition = "gpu"\ntime = "4:00:00"\nsbatch = ["--mem=8G"]\n'
                    'shared_dir = "/shared/mldeck"\n')
    jobs = load_config(path).jobs
    assert (jobs.backend, jobs.partition, jobs.time, jobs.sbatch, jobs.shared_dir) == (
        "slurm", "gpu", "4:00:00", ["--mem=8G"], "/shared/mldeck")
