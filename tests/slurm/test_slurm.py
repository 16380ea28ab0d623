"""The Slurm backend end to end: a real agent on a real one-machine Slurm cluster (see conftest.py)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mldeck.agent.slurmcli import duration_s
from mldeck.core.client import connect_unix
from tests.agent.test_jobs import STEPPER, launch, rpc, run_json, sql, wait_status
from tests.conftest import AgentProc, start_agent, wait_for
from tests.slurm.conftest import Cluster, extra_nodes

pytestmark = pytest.mark.slow

SLEEPER = """
import os, sys, time
print("gpus", os.environ.get("CUDA_VISIBLE_DEVICES"), "attempt", os.environ.get("MLDECK_ATTEMPT"), flush=True)
time.sleep(float(os.environ.get("SLEEP_S", "1")))
print("slept", flush=True)
"""


def config(shared: Path, partition: str = "debug") -> str:
    return f"""
[agent]
collector_interval_s = 0.5
[jobs]
backend = "slurm"
poll_interval_s = 0.1
grace_s = 20
cost_update_s = 0.3
partition = "{partition}"
time = "10:00"
sbatch = ["--mem=100M"]
shared_dir = "{shared}"
"""


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("shared")


@pytest.fixture(scope="module")
def agent(cluster: Cluster, shared: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProc]:
    proc = start_agent(tmp_path_factory.mktemp("slurm-agent") / "home", config=config(shared))
    yield proc
    proc.stop()


@pytest.fixture
def scripts(tmp_path: Path) -> Path:
    (tmp_path / "sleeper.py").write_text(SLEEPER)
    (tmp_path / "stepper.py").write_text(
        STEPPER.replace("import sys, time", "import os, sys, time\nprint('gpus', os.environ.get("
                        "'CUDA_VISIBLE_DEVICES'), flush=True)").replace("time.sleep(0.05)", "time.sleep(0.1)")
    )
    return tmp_path


def slurm_id(agent: AgentProc, run_id: str) -> int:
    """The run's current Slurm job id, as the agent tags the run."""
    return int(wait_for(lambda: (run_json(agent, run_id).get("tags") or {}).get("slurm_job_id"),
                        what=f"run {run_id} to be submitted"))


def reason_has(agent: AgentProc, run_id: str, text: str) -> dict[str, Any]:
    return wait_for(lambda: text in ((r := run_json(agent, run_id)).get("status_reason") or "") and r,
                    timeout=30, interval=0.1, what=f"run {run_id}'s reason to say {text!r}")


def time_used(cluster: Cluster, job_id: int) -> tuple[str, float]:
    """squeue's state and elapsed time of a job (('', 0) once Slurm forgot it)."""
    out = cluster.run("squeue", "-h", "--states=all", "-j", str(job_id), "-o", "%T|%M", check=False).stdout
    state, _, elapsed = out.strip().partition("|")
    return state, duration_s(elapsed)


def start_again(cluster: Cluster, job_id: int) -> None:
    """A requeued job starts again in 2 s, not Slurm's 120: not within the second of the requeue, whose
    revoked credential (times in whole seconds) would make slurmd refuse it and the job end FAILED."""
    cluster.run("scontrol", "update", f"JobId={job_id}", "StartTime=now+2")


def steps_once(agent: AgentProc, run_id: str, steps: int) -> None:
    rows = sql(agent, f"select key, step, count(*) as n from metrics where run_id = '{run_id}' "
                      "group by key, step order by key, step")
    assert all(r["n"] == 1 for r in rows), "a (run, key, step) point was stored twice"
    assert [r["step"] for r in rows if r["key"] == "loss"] == list(range(steps))


@pytest.mark.timeout(120)
def test_run_is_pending_then_running_then_succeeded(
    cluster: Cluster, agent: AgentProc, scripts: Path, shared: Path
) -> None:
    blocker = cluster.sbatch("--partition=debug", "--gres=gpu:2", "--output=/dev/null", "--wrap=sleep 60")
    wait_for(lambda: cluster.state(blocker)[0] == "RUNNING", what="the blocker to hold both GPUs")
    run_id = agent.cli("run", str(scripts / "stepper.py"), "--param", "steps=30", "--gpus", "1",
                       "--name", "on-slurm", check=True).out.strip()
    job_id = slurm_id(agent, run_id)
    pending = reason_has(agent, run_id, f"Slurm job {job_id} is pending (Resources)")
    assert pending["status"] == "queued" and cluster.state(job_id) == ("PENDING", "Resources")
    (entry,) = rpc(agent, "jobs.queue")["queued"]
    assert (entry["slurm_job_id"], entry["slurm_state"], entry["reason"]) == (job_id, "PENDING", "Resources")

    cluster.run("scancel", str(blocker))
    running = wait_status(agent, run_id, "running", timeout=30)
    assert running["gpus"] in ([0], [1]), running
    assert running["status_reason"].startswith(f"Slurm job {job_id} on ")
    run = wait_status(agent, run_id, "succeeded", timeout=60)
    assert run["exit_code"] == 0 and run["metrics"]["loss"] == pytest.approx(1 / 30)
    assert run["tags"]["slurm_job_id"] == str(job_id) and run["resumed_count"] == 0
    logs = agent.cli("runs", "logs", run_id, check=True).out
    assert f"gpus {run['gpus'][0]}" in logs, logs  # CUDA_VISIBLE_DEVICES, as Slurm set it
    assert "attempt 1 started" in logs and f"Slurm job {job_id}" in logs
    # cost: Slurm's elapsed time times the one GPU it allocated
    assert 1.0 < run["gpu_seconds"] < 60 and run["cost_usd"] > 0
    # the folder is on the shared file system, linked into the home
    assert agent.layout.run_dir(run_id).resolve() == (shared / "runs" / run_id).resolve()
    assert (shared / "runs" / run_id / "exit_code").read_text().strip() == "0"


@pytest.mark.timeout(120)
def test_two_runs_of_two_gpus_are_serialized_by_slurm(
    cluster: Cluster, agent: AgentProc, scripts: Path
) -> None:
    ids = [launch(agent, scripts / "sleeper.py", gpus=2, sleep=6) for _ in range(2)]
    jobs = [slurm_id(agent, i) for i in ids]
    # both are Slurm's at once; Slurm, not mldeck, holds the second back

    def one_waits() -> tuple[int, int] | None:
        states = {j: cluster.state(j) for j in jobs}
        running = [j for j in jobs if states[j][0] == "RUNNING"]
        waiting = [j for j in jobs if states[j] in (("PENDING", "Resources"), ("PENDING", "Priority"))]
        return (running[0], waiting[0]) if running and waiting else None

    first, second = wait_for(one_waits, what="one job running, the other pending for the GPUs")
    queue = rpc(agent, "jobs.queue")
    assert {e["slurm_job_id"] for e in queue["running"] + queue["queued"]} == set(jobs)
    assert queue["backend"] == "slurm" and queue["gpus_busy"] == []

    status = rpc(agent, "slurm.status")
    (debug,) = [p for p in status["partitions"] if p["name"] == "debug"]
    assert debug["default"] and debug["gpus"] == 2 and debug["gpus_free"] == 0
    (node,) = [n for n in status["nodes"] if n["name"] == cluster.node]
    assert node["gpus"] == 2 and node["gpus_free"] == 0 and set(node["partitions"]) == {"debug", "high"}
    by_id = {int(j["job_id"]): j for j in status["queue"]}
    assert by_id[second]["state"] == "PENDING" and by_id[second]["reason"] in ("Resources", "Priority")
    assert by_id[first]["state"] == "RUNNING" and by_id[first]["gpus_per_node"] == 2
    assert {by_id[j]["run_id"] for j in jobs} == set(ids) and status["pending"] == 1
    assert "compute nodes" in status["telemetry"]

    runs = {j: wait_status(agent, ids[jobs.index(j)], "succeeded", timeout=60) for j in jobs}
    assert runs[second]["started_at"] >= runs[first]["ended_at"] - 1.0
    assert all(r["gpus"] == [0, 1] for r in runs.values())


@pytest.mark.timeout(120)
def test_stop_requeue_resumes_with_every_step_once(cluster: Cluster, agent: AgentProc, scripts: Path) -> None:
    steps = 60
    run_id = launch(agent, scripts / "stepper.py", steps=steps)
    first = slurm_id(agent, run_id)
    wait_for(lambda: run_json(agent, run_id)["metrics"].get("acc", 0) > 0.1, timeout=30,
             what="some steps logged")
    stop = agent.cli("runs", "stop", run_id, "--requeue", check=True)
    assert stop.code == 0
    run = wait_status(agent, run_id, "succeeded", timeout=90)
    assert run["resumed_count"] == 1 and int(run["tags"]["slurm_job_id"]) > first
    log = agent.cli("runs", "logs", run_id, check=True).out
    starts = [int(line.split()[-1]) for line in log.splitlines() if line.startswith("starting at")]
    assert starts[0] == 0 and 0 < starts[1] < steps, log
    assert "attempt 2 started" in log
    steps_once(agent, run_id, steps)


@pytest.mark.timeout(120)
def test_slurm_requeue_resumes_without_the_user(cluster: Cluster, agent: AgentProc, scripts: Path) -> None:
    """Slurm requeues the running job itself (as preemption in REQUEUE mode does): same job id, and the
    run resumes from its checkpoint as its next attempt."""
    steps = 60
    run_id = launch(agent, scripts / "stepper.py", steps=steps)
    job_id = slurm_id(agent, run_id)
    wait_for(lambda: run_json(agent, run_id)["metrics"].get("acc", 0) > 0.1, timeout=30,
             what="some steps logged")
    cluster.run("scontrol", "requeue", str(job_id))
    # said as long as the job waits, with Slurm's reason (not for one poll only)
    waiting = f"Slurm requeued job {job_id} (preemption or a node failure), pending (BeginTime)"
    reason_has(agent, run_id, waiting)
    start_again(cluster, job_id)
    run = wait_status(agent, run_id, "succeeded", timeout=90)
    assert run["resumed_count"] == 1 and run["tags"]["slurm_job_id"] == str(job_id)
    log = agent.cli("runs", "logs", run_id, check=True).out
    assert "attempt 2 started" in log
    assert len([x for x in log.splitlines() if x.startswith("starting at")]) == 2, log
    steps_once(agent, run_id, steps)


def requeue_and_restart(cluster: Cluster, job_id: int) -> None:
    cluster.run("scontrol", "requeue", str(job_id))
    wait_for(lambda: cluster.state(job_id)[0] == "PENDING", timeout=30, what="Slurm to requeue the job")
    start_again(cluster, job_id)
    wait_for(lambda: cluster.state(job_id)[0] == "RUNNING", timeout=30, what="Slurm to start the job again")
    restarts = cluster.run("squeue", "-h", "-j", str(job_id), "-O", "RestartCnt").stdout.strip()
    assert restarts == "1", restarts


async def requeued_unseen(
    agent: AgentProc, cluster: Cluster, run_id: str, job_id: int
) -> list[dict[str, Any]]:
    """Slurm requeues the job and starts it again while the agent is stopped (SIGSTOP): no poll sees it
    pending. The Slurm backend's events of the run once the agent goes on (those with the job id, not
    the SDK's), up to its next "running" (30 s at most)."""
    client = await connect_unix(agent.layout.socket)
    events: list[dict[str, Any]] = []
    try:
        sub = await client.subscribe("runs", run_id=run_id)
        agent.proc.send_signal(signal.SIGSTOP)
        try:
            await asyncio.to_thread(requeue_and_restart, cluster, job_id)
        finally:
            agent.proc.send_signal(signal.SIGCONT)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(30):
                async for event in sub:
                    if "slurm_job_id" not in event:
                        continue
                    events.append(event)
                    if event["status"] == "running":
                        break
    finally:
        await client.close()
    return events


@pytest.mark.timeout(120)
def test_a_requeue_between_two_polls_is_the_next_attempt(
    cluster: Cluster, agent: AgentProc, scripts: Path
) -> None:
    """Slurm requeues the job and starts it again between two of the agent's polls (a busy machine, a
    fast scheduler): Slurm's restart count tells the agent, which counts the attempt and keeps the
    first attempt's cost."""
    steps = 60
    run_id = launch(agent, scripts / "stepper.py", gpus=1, steps=steps)
    job_id = slurm_id(agent, run_id)

    def seen_gpu_s() -> float:
        mine = [e for e in rpc(agent, "jobs.queue")["running"] if e["run_id"] == run_id]
        return mine[0]["gpu_seconds"] if mine else 0.0

    wait_for(lambda: run_json(agent, run_id)["metrics"].get("acc", 0) > 0.1 and seen_gpu_s() >= 2,
             timeout=30, what="some steps logged, and 2 GPU-seconds seen")
    events = asyncio.run(requeued_unseen(agent, cluster, run_id, job_id))
    statuses = [e["status"] for e in events]
    assert "preempted" in statuses and statuses[-1] == "running", events
    preempted = events[statuses.index("preempted")]
    assert preempted["reason"].startswith(f"Slurm requeued job {job_id} ") and preempted["requeued"], events
    assert events[-1]["attempt"] == 2 and events[-1]["slurm_job_id"] == job_id, events
    (entry,) = [e for e in rpc(agent, "jobs.queue")["running"] if e["run_id"] == run_id]
    assert entry["attempt"] == 2 and entry["slurm_state"] == "RUNNING"

    last = wait_for(lambda: (t := time_used(cluster, job_id))[0] == "COMPLETED" and t, timeout=60,
                    interval=0.2, what="the second attempt to complete")
    run = wait_status(agent, run_id, "succeeded", timeout=30)
    assert run["resumed_count"] == 1 and run["tags"]["slurm_job_id"] == str(job_id)
    assert run["gpu_seconds"] >= 2 + last[1], (run["gpu_seconds"], last)  # the first attempt's time kept
    log = agent.cli("runs", "logs", run_id, check=True).out
    assert "attempt 2 started" in log
    assert len([x for x in log.splitlines() if x.startswith("starting at")]) == 2, log
    steps_once(agent, run_id, steps)


@pytest.mark.timeout(120)
def test_preempted_by_slurm_resumes_from_its_checkpoint(
    cluster: Cluster, agent: AgentProc, scripts: Path
) -> None:
    """A job of a higher-priority partition preempts the run's job (it ends PREEMPTED after SIGTERM and
    the grace time); the agent submits the run again and it resumes once the GPUs are free."""
    steps = 60
    run_id = launch(agent, scripts / "stepper.py", gpus=1, steps=steps)
    first = slurm_id(agent, run_id)
    wait_for(lambda: run_json(agent, run_id)["metrics"].get("acc", 0) > 0.1, timeout=30,
             what="some steps logged")
    urgent = cluster.sbatch("--partition=high", "--gres=gpu:2", "--output=/dev/null", "--wrap=sleep 3")
    wait_for(lambda: cluster.state(first)[0] == "PREEMPTED", timeout=30, what="Slurm to preempt the job")
    run = wait_status(agent, run_id, "succeeded", timeout=90)
    assert run["resumed_count"] == 1 and int(run["tags"]["slurm_job_id"]) > first
    assert cluster.state(urgent)[0] in ("COMPLETED", "")
    assert '"preempted"' in (agent.layout.run_dir(run_id) / "metrics.jsonl").read_text()
    log = agent.cli("runs", "logs", run_id, check=True).out
    starts = [int(line.split()[-1]) for line in log.splitlines() if line.startswith("starting at")]
    assert "attempt 2 started" in log and starts[0] == 0 and 0 < starts[1] < steps, log
    steps_once(agent, run_id, steps)


@pytest.mark.timeout(120)
def test_scancel_from_outside_is_reported_as_cancelled(
    cluster: Cluster, agent: AgentProc, scripts: Path
) -> None:
    run_id = launch(agent, scripts / "sleeper.py", sleep=60)
    job_id = slurm_id(agent, run_id)
    wait_status(agent, run_id, "running", timeout=30)
    cluster.run("scancel", str(job_id))
    run = wait_status(agent, run_id, "stopped", "failed", timeout=30)
    assert run["status"] == "stopped", run
    assert run["status_reason"] == f"cancelled in Slurm (Slurm job {job_id} was cancelled outside mldeck)"
    assert not rpc(agent, "jobs.queue")["queued"]


RANKS = """
import os
e = os.environ
print("rank", e["RANK"], "of", e["WORLD_SIZE"], "on", e["SLURMD_NODENAME"], "gpus", e["CUDA_VISIBLE_DEVICES"],
      flush=True)
"""


@pytest.mark.timeout(120)
def test_nodes_count_is_one_run_that_slurm_places_on_two_nodes(
    cluster: Cluster, scripts: Path, tmp_path: Path
) -> None:
    """`mldeck run --nodes 2`: one sbatch --nodes=2 job, srun starts torchrun on both nodes, and their
    c10d rendezvous on the first makes one world of two ranks."""
    (scripts / "ranks.py").write_text(RANKS)
    agent = start_agent(tmp_path / "home", config=config(tmp_path / "shared", partition="multi"))
    try:
        run_id = agent.cli("run", str(scripts / "ranks.py"), "--nodes", "2", "--gpus", "1",
                           check=True).out.strip()
        job_id = slurm_id(agent, run_id)
        run = wait_status(agent, run_id, "succeeded", "failed", timeout=90)
        logs = agent.cli("runs", "logs", run_id, check=True).out
        assert run["status"] == "succeeded", logs
        ranks = sorted(line.split() for line in logs.splitlines() if line.startswith("rank "))
        nodes = sorted(extra_nodes(cluster.node))
        assert [r[1] for r in ranks] == ["0", "1"] and {(r[3], r[7]) for r in ranks} == {("2", "0")}, logs
        assert sorted(r[5] for r in ranks) == nodes, logs  # one rank on each node, each with its GPU
        assert f"Slurm job {job_id} on {cluster.node}-n[1-2]" in logs
        assert run["gpus"] == [f"{n}:0" for n in nodes] and run["tags"]["slurm_job_id"] == str(job_id)
        script = (agent.layout.run_dir(run_id) / "slurm.sh").read_text()
        assert "srun --nodes=2 --ntasks-per-node=1 --kill-on-bad-exit=1 --gres=gpu:1" in script
    finally:
        agent.stop()


def test_nodes_count_on_an_agent_without_slurm_says_so(scripts: Path, tmp_path: Path) -> None:
    agent = start_agent(tmp_path / "home")
    try:
        result = agent.cli("run", str(scripts / "sleeper.py"), "--nodes", "2")
        assert result.code == 2 and "does not run its jobs on Slurm" in result.err, result.err
        assert agent.cli("runs", "ls", "--json", check=True).json() == []
    finally:
        agent.stop()


@pytest.mark.timeout(120)
def test_invalid_partition_is_slurms_error_and_leaves_no_run(
    cluster: Cluster, scripts: Path, tmp_path: Path
) -> None:
    shared = tmp_path / "shared"
    agent = start_agent(tmp_path / "home", config=config(shared, partition="nope"))
    try:
        result = agent.cli("run", str(scripts / "sleeper.py"), "--gpus", "1")
        assert result.code != 0 and "Traceback" not in result.err
        assert len(result.err.strip().splitlines()) == 1, result.err
        assert "Slurm refused" in result.err and "Invalid partition name specified" in result.err, result.err
        sweep = agent.cli("sweep", str(scripts / "sleeper.py"), "--grid", "x=1,2", "--metric", "m")
        assert sweep.code != 0 and "Invalid partition name specified" in sweep.err
        assert agent.cli("runs", "ls", "--json", check=True).json() == []
        assert rpc(agent, "sweeps.list") == []
        assert not list(shared.glob("runs/*")) and not list(agent.layout.runs.glob("*"))
    finally:
        agent.stop()


@pytest.mark.timeout(120)
def test_a_restarted_agent_follows_its_slurm_jobs_again(
    cluster: Cluster, scripts: Path, tmp_path: Path
) -> None:
    """The jobs outlive the agent (Slurm holds them); a new agent finds them by their job ids, and a
    stop of one still pending in Slurm cancels it there. A restart Slurm made (and the first agent
    counted) is not counted again."""
    home, shared = tmp_path / "home", tmp_path / "shared"
    first = start_agent(home, config=config(shared))
    try:
        running = launch(first, scripts / "sleeper.py", gpus=1, sleep=8)
        job_id = slurm_id(first, running)
        wait_status(first, running, "running", timeout=30)
        cluster.run("scontrol", "requeue", str(job_id))
        reason_has(first, running, f"Slurm requeued job {job_id}")
        start_again(cluster, job_id)
        wait_for(lambda: run_json(first, running)["resumed_count"] == 1, timeout=30, interval=0.1,
                 what="the second attempt to run")
        waiting = launch(first, scripts / "sleeper.py", gpus=2, sleep=1)
        jobs = {running: job_id, waiting: slurm_id(first, waiting)}
        first.kill()
    finally:
        first.stop()
    second = start_agent(home, config=config(shared))
    try:
        log = (home / "agent.log").read_text()
        assert f"following Slurm job {jobs[running]} (run {running}) again" in log
        reason_has(second, waiting, f"Slurm job {jobs[waiting]} is pending")
        assert rpc(second, "runs.stop", run_id=waiting)["status"] == "stopping"
        stopped = wait_status(second, waiting, "stopped", timeout=30)
        assert stopped["status_reason"] == "stopped on request" and stopped["started_at"] is None
        assert cluster.state(jobs[waiting])[0] in ("CANCELLED", "")
        done = wait_status(second, running, "succeeded", timeout=60)
        assert done["tags"]["slurm_job_id"] == str(jobs[running]) and done["resumed_count"] == 1
        assert done["gpu_seconds"] > 5  # Slurm's elapsed time, the minutes without an agent included
    finally:
        second.stop()


@pytest.mark.timeout(180)
def test_sweep_trials_are_slurm_jobs_and_early_stopping_cancels(
    cluster: Cluster, agent: AgentProc, scripts: Path
) -> None:
    (scripts / "trial.py").write_text(
        "import sys, time\nfrom mldeck.core import track\n"
        "x = float(sys.argv[sys.argv.index('--x') + 1])\nrun = track.init()\n"
        "for step in range(40):\n    time.sleep(0.1)\n"
        "    run.log({'val_loss': x + 1.0 / (step + 1)}, step=step)\n"
    )
    created = agent.cli(
        "sweep", str(scripts / "trial.py"), "--grid", "x=0,0.1,5,6", "--metric", "val_loss",
        "--mode", "min", "--early-stop", "median", "--name", "slurm-sweep", "--json", check=True,
    ).json()
    sweep_id = created["sweep_id"]
    jobs = [slurm_id(agent, r) for r in created["run_ids"]]
    assert len(set(jobs)) == 4
    wait_for(lambda: rpc(agent, "sweeps.show", sweep_id=sweep_id)["status"] == "done",
             timeout=150, interval=0.3, what="sweep to finish")
    trials = agent.cli("sweep", "show", sweep_id, "--json", check=True).json()["trials"]
    by_x = {t["params"]["x"]: t for t in trials}
    assert by_x[0]["status"] == "succeeded" and by_x[0.1]["status"] == "succeeded", trials
    pruned = [t for t in trials if t["status"] == "pruned"]
    assert pruned and all(t["params"]["x"] >= 5 for t in pruned), trials
    assert all(t["status_reason"].startswith("median rule: best ") for t in pruned)
    # the pruned trials' Slurm jobs ended on the SIGTERM sent through scancel
    for t in pruned:
        log = agent.cli("runs", "logs", t["run_id"], check=True).out
        assert "Slurm job" in log
