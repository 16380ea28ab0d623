"""The job runner end to end: real agents in temporary homes (2 simulated GPUs), real jobs on CPU."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import psutil
import pytest

from mldeck.core.client import connect_unix
from mldeck.core.errors import Conflict, Invalid, MldeckError, NotFound
from tests.conftest import AgentProc, start_agent, wait_for

CONFIG = """
[agent]
collector_interval_s = 0.2
[jobs]
poll_interval_s = 0.1
grace_s = 5
cost_update_s = 0.3
"""

SLEEPER = """
import os, sys, time
print("gpus", os.environ.get("CUDA_VISIBLE_DEVICES"), "argv", sys.argv[1:], flush=True)
time.sleep(float(os.environ.get("SLEEP_S", "1")))
print("slept", flush=True)
"""

# Logs one step at a time; on SIGTERM the SDK calls on_preempt (checkpoint) at the next log() and
# exits 143; a restart resumes after the checkpoint's step.
STEPPER = """
import sys, time
from mldeck.core import track
steps = int(sys.argv[sys.argv.index("--steps") + 1])
state = {"step": -1}
run = track.init(on_preempt=lambda: run.checkpoint({"step": state["step"]}, step=state["step"]))
resumed = run.resume()
start = resumed[1] + 1 if resumed else 0
print("starting at", start, flush=True)
for step in range(start, steps):
    time.sleep(0.05)
    state["step"] = step
    run.log({"loss": 1.0 / (step + 1), "acc": step / steps}, step=step)
run.finish()
"""


def rpc(agent: AgentProc, method: str, **params: Any) -> Any:
    """One call on the agent's socket: much cheaper than a CLI process when polling."""

    async def call() -> Any:
        client = await connect_unix(agent.layout.socket)
        try:
            return await client.call(method, **params)
        finally:
            await client.close()

    return asyncio.run(call())


def run_json(agent: AgentProc, run_id: str) -> dict[str, Any]:
    return rpc(agent, "runs.get", run_id=run_id)


def sql(agent: AgentProc, query: str) -> list[dict[str, Any]]:
    result = rpc(agent, "query", sql=query)
    return [dict(zip(result["columns"], row, strict=True)) for row in result["rows"]]


def wait_status(agent: AgentProc, run_id: str, *statuses: str, timeout: float = 30) -> dict[str, Any]:
    return wait_for(
        lambda: (r := run_json(agent, run_id))["status"] in statuses and r,
        timeout=timeout, interval=0.15, what=f"run {run_id} to be {'/'.join(statuses)}",
    )


def launch(agent: AgentProc, script: Path, gpus: int = 0, **params: Any) -> str:
    """runs.launch over the socket (the CLI path has its own test)."""
    env = {"SLEEP_S": str(params.pop("sleep"))} if "sleep" in params else {}
    return rpc(agent, "runs.launch", script=str(script), gpus=gpus, params=params, env=env)["run_id"]


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProc]:
    proc = start_agent(tmp_path_factory.mktemp("jobs") / "home", config=CONFIG)
    yield proc
    proc.stop()


@pytest.fixture
def scripts(tmp_path: Path) -> Path:
    (tmp_path / "sleeper.py").write_text(SLEEPER)
    (tmp_path / "stepper.py").write_text(STEPPER)
    (tmp_path / "waiter.py").write_text(
        "import pathlib, sys, time\nflag = pathlib.Path(sys.argv[sys.argv.index('--release') + 1])\n"
        "print('waiting', flush=True)\nwhile not flag.exists():\n    time.sleep(0.05)\nprint('released')\n"
    )
    (tmp_path / "fails.py").write_text("import sys\nprint('about to fail')\nsys.exit(3)\n")
    return tmp_path


@pytest.mark.timeout(60)
def test_launch_logs_succeeded_and_cost(agent: AgentProc, scripts: Path) -> None:
    run_id = agent.cli(
        "run", str(scripts / "stepper.py"), "--param", "steps=10", "--gpus", "1", "--name", "step",
        "--experiment", "jobs-test", "--amp", "bf16", check=True,
    ).out.strip()
    run = wait_status(agent, run_id, "succeeded")
    assert run["exit_code"] == 0 and run["managed"] and run["name"] == "step"
    assert run["experiment"] == "jobs-test" and run["params"] == {"steps": 10, "amp": "bf16"}
    assert run["command"][1:] == [str(scripts / "stepper.py"), "--steps", "10", "--amp", "bf16"]
    assert run["gpus"] in ([0], [1])
    assert run["metrics"]["loss"] == pytest.approx(0.1)
    logs = agent.cli("runs", "logs", run_id, check=True).out
    assert "starting at 0" in logs and "attempt 1 started" in logs
    # cost: a GPU job pays GPU-seconds at the simulated A100 40GB's default price
    assert run["gpu_seconds"] > 0.3
    assert run["cost_usd"] == pytest.approx(run["gpu_seconds"] / 3600 * 3.20, rel=1e-6)
    assert run["held_gpu_mem"] == 40 * 1024**3 and run["peak_gpu_mem"] == 6 * 1024**3
    cost = agent.cli("cost", "--json", check=True).json()
    assert cost["host"]["gpu_price_per_hour"] == 3.20 and cost["host"]["gpu_count"] == 2
    assert any(r["run_id"] == run_id and r["cost_usd"] > 0 for r in cost["runs"])
    assert cost["host"]["idle_gpu_seconds"] > 0


@pytest.mark.timeout(60)
def test_failed_job_and_follow(agent: AgentProc, scripts: Path) -> None:
    run_id = launch(agent, scripts / "fails.py")
    follow = agent.cli("runs", "logs", run_id, "-f", check=True)
    assert "about to fail" in follow.out
    run = wait_status(agent, run_id, "failed")
    assert run["exit_code"] == 3 and "exit code 3" in run["status_reason"]


@pytest.mark.timeout(60)
def test_stop_sends_sigterm_then_kill(agent: AgentProc, scripts: Path) -> None:
    (scripts / "stubborn.py").write_text(
        "import signal, time\nsignal.signal(signal.SIGTERM, lambda *a: print('ignoring TERM', flush=True))\n"
        "print('up', flush=True)\ntime.sleep(60)\n"
    )
    run_id = launch(agent, scripts / "stubborn.py")
    wait_for(lambda: "up" in rpc(agent, "runs.logs", run_id=run_id)["data"], what="job up")
    stop = agent.cli("runs", "stop", run_id, "--grace", "0.5", check=True)
    assert "SIGTERM sent" in stop.out
    run = wait_status(agent, run_id, "stopped", timeout=4)
    assert "ignoring TERM" in agent.cli("runs", "logs", run_id).out
    assert run["status_reason"] == "stopped on request" and run["ended_at"]
    again = agent.cli("runs", "stop", run_id)
    assert again.code == 1 and "not running or queued" in again.err


@pytest.mark.timeout(60)
def test_queue_order_on_two_gpus(agent: AgentProc, scripts: Path) -> None:
    ids = [launch(agent, scripts / "sleeper.py", gpus=1, sleep=2) for _ in range(3)]
    first = [wait_status(agent, i, "running") for i in ids[:2]]
    assert sorted(g for r in first for g in r["gpus"]) == [0, 1]
    queue = rpc(agent, "jobs.queue")
    assert [r["run_id"] for r in queue["queued"]] == [ids[2]] and queue["gpus_busy"] == [0, 1]
    assert run_json(agent, ids[2])["status"] == "queued"
    third = wait_status(agent, ids[2], "running")
    done = [wait_status(agent, i, "succeeded") for i in ids[:2]]
    assert third["started_at"] >= min(r["ended_at"] for r in done) - 0.5
    assert wait_status(agent, ids[2], "succeeded")["exit_code"] == 0
    log = agent.cli("runs", "logs", ids[2], check=True).out
    assert "gpus 0" in log or "gpus 1" in log


@pytest.mark.timeout(90)
def test_requeue_resumes_with_continuous_steps(agent: AgentProc, scripts: Path) -> None:
    steps = 40
    run_id = launch(agent, scripts / "stepper.py", steps=steps)
    wait_for(lambda: run_json(agent, run_id)["metrics"].get("acc", 0) > 0.2, what="some steps logged")
    assert rpc(agent, "runs.stop", run_id=run_id, requeue=True, grace_s=30)["status"] == "stopping"
    run = wait_status(agent, run_id, "succeeded", timeout=45)
    assert run["resumed_count"] == 1
    log = agent.cli("runs", "logs", run_id, check=True).out
    starts = [int(line.split()[-1]) for line in log.splitlines() if line.startswith("starting at")]
    assert starts[0] == 0 and 0 < starts[1] < steps, log
    rows = sql(
        agent, f"select key, step, count(*) as n from metrics where run_id = '{run_id}' "
        "group by key, step order by key, step",
    )
    assert all(r["n"] == 1 for r in rows), "a (run, key, step) point was stored twice"
    assert [r["step"] for r in rows if r["key"] == "loss"] == list(range(steps))
    events = (agent.layout.run_dir(run_id) / "metrics.jsonl").read_text()
    assert '"preempted"' in events and '"checkpoint"' in events
    (ckpt,) = rpc(agent, "runs.checkpoints", run_id=run_id)["checkpoints"]
    assert ckpt["latest"] and ckpt["step"] == starts[1] - 1 and ckpt["bytes"] > 0
    assert ckpt["file"] == f"ckpt-{ckpt['step']:09d}.pt"
    with pytest.raises(MldeckError, match="no run 'nope'"):
        rpc(agent, "runs.checkpoints", run_id="nope")


@pytest.mark.timeout(60)
def test_stop_queued_and_resume(agent: AgentProc, scripts: Path) -> None:
    blockers = [launch(agent, scripts / "sleeper.py", gpus=1, sleep=5) for _ in range(2)]
    waiting = launch(agent, scripts / "sleeper.py", gpus=1, sleep=0.1)
    assert rpc(agent, "runs.stop", run_id=waiting)["status"] == "stopped"
    assert run_json(agent, waiting)["status"] == "stopped"
    assert agent.cli("runs", "resume", waiting, check=True).code == 0
    assert run_json(agent, waiting)["status"] in ("queued", "running")
    for b in blockers:
        with contextlib.suppress(MldeckError):
            rpc(agent, "runs.stop", run_id=b)
    assert wait_status(agent, waiting, "succeeded")["exit_code"] == 0
    done = agent.cli("runs", "resume", waiting)
    assert done.code == 1 and "nothing to resume" in done.err


@pytest.mark.timeout(90)
def test_sweep_early_stopping(agent: AgentProc, scripts: Path) -> None:
    (scripts / "trial.py").write_text(
        "import sys, time\nfrom core import track\n"
        "x = float(sys.argv[sys.argv.index('--x') + 1])\nrun = track.init()\n"
        "for step in range(25):\n    time.sleep(0.04)\n"
        "    run.log({'val_loss': x + 1.0 / (step + 1)}, step=step)\n"
    )
    created = agent.cli(
        "sweep", str(scripts / "trial.py"), "--grid", "x=0,0.1,5,6", "--metric", "val_loss",
        "--mode", "min", "--early-stop", "median", "--name", "sw", "--json", check=True,
    ).json()
    sweep_id = created["sweep_id"]
    assert len(created["run_ids"]) == 4
    wait_for(lambda: rpc(agent, "sweeps.show", sweep_id=sweep_id)["status"] == "done",
             timeout=150, interval=0.3, what="sweep to finish")
    sweep = agent.cli("sweep", "show", sweep_id, "--json", check=True).json()
    trials = sweep["trials"]
    assert trials[0]["params"]["x"] == 0 and trials[0]["status"] == "succeeded"
    pruned = [t for t in trials if t["status"] == "pruned"]
    assert pruned, trials
    assert all(t["status_reason"].startswith("median rule: best ") for t in pruned)
    assert all(t["params"]["x"] >= 5 for t in pruned)
    table = agent.cli("sweep", "show", sweep_id, check=True).out
    assert "RANK" in table and "pruned" in table and "median rule" in table


@pytest.mark.timeout(240)
def test_bad_input_creates_nothing(agent: AgentProc, scripts: Path) -> None:
    before = len(agent.cli("runs", "ls", "--json", check=True).json())
    cases = [
        (["run", str(scripts / "missing.py")], "not found"),
        (["run", str(scripts / "sleeper.py"), "--param", "lr"], "must look like name=value"),
        (["run", str(scripts / "sleeper.py"), "--gpus", "3"], "asked for 3 GPUs but this host has 2 GPUs"),
        (["run", "-m", "no_such_module_xyz"], "cannot be found"),
        (["run", str(scripts / "sleeper.py"), "--host", "nohost"], "nohost"),
        (["run", str(scripts / "sleeper.py"), "--nodes", "local,nohost"], "nohost"),
        (["sweep", str(scripts / "sleeper.py"), "--grid", "lr", "--metric", "m"], "name=values"),
        (["sweep", str(scripts / "sleeper.py"), "--random", "wd=loguniform(0,1)", "--metric", "m"],
         "loguniform needs low > 0"),
        (["sweep", str(scripts / "sleeper.py"), "--random", "wd=normal(0,1)", "--metric", "m"],
         "uniform(a,b)"),
        (["runs", "stop", "no-such-run"], "no run"),
        (["runs", "logs", "no-such-run"], "no run"),
    ]
    for args, message in cases:
        result = agent.cli(*args)
        assert result.code != 0, args
        assert message in result.err and "Traceback" not in result.err, (args, result.err)
        assert len(result.err.strip().splitlines()) == 1, result.err
    assert len(agent.cli("runs", "ls", "--json", check=True).json()) == before


@pytest.mark.timeout(60)
def test_params_out_of_range_are_refused_before_anything_is_written(agent: AgentProc, scripts: Path) -> None:
    """The Params structs declare the ranges; each method answers Invalid naming the field."""
    job = {"script": str(scripts / "sleeper.py")}
    sweep = {**job, "grid": ["x=1,2"], "metric": "loss"}
    before = len(rpc(agent, "runs.list")), len(rpc(agent, "sweeps.list"))
    cases = [
        ("runs.launch", {**job, "priority": 1001}, "$.priority"),
        ("runs.launch", {**job, "gpus": -1}, "$.gpus"),
        ("runs.launch", {**job, "amp": "fp8"}, "$.amp"),
        ("runs.launch", {**job, "dist": {"nnodes": 1, "node_rank": 0}}, "$.dist.nnodes"),
        ("runs.launch", {**job, "dist": {"nnodes": 2, "node_rank": 2}}, "node_rank 2 must be below nnodes 2"),
        ("runs.launch", {**job, "run_id": "../escape"}, "run id '../escape' is not allowed"),
        ("runs.launch", {**job, "env": {"1BAD": "x"}}, "environment variable name '1BAD'"),
        ("runs.stop", {"run_id": "x", "grace_s": -1}, "$.grace_s"),
        ("runs.logs", {"run_id": "x", "offset": -1}, "$.offset"),
        ("runs.logs", {"run_id": "x", "max_bytes": 0}, "$.max_bytes"),
        ("runs.logs", {"run_id": "x", "max_bytes": 1024 * 1024 + 1}, "$.max_bytes"),
        ("cost.host", {"since_s": 0}, "$.since_s"),
        ("cost.runs", {"limit": 0}, "$.limit"),
        ("sweeps.list", {"limit": 0}, "$.limit"),
        ("sweeps.create", {**sweep, "min_trials": 0}, "$.min_trials"),
        ("sweeps.create", {**sweep, "reduction_factor": 1, "early_stop": "asha"}, "$.reduction_factor"),
        ("sweeps.create", {**sweep, "mode": "best"}, "$.mode"),
        ("sweeps.create", {**sweep, "trials": 10_001}, "$.trials"),
        ("sweeps.create", {**sweep, "grid": ["x=1,,2"]}, "has an empty value"),
        ("sweeps.create", {**sweep, "metric": " "}, "metric must name the logged metric"),
    ]
    for method, params, message in cases:
        with pytest.raises(Invalid, match=re.escape(message)):
            rpc(agent, method, **params)
    assert (len(rpc(agent, "runs.list")), len(rpc(agent, "sweeps.list"))) == before


@pytest.mark.timeout(60)
def test_unknown_and_taken_run_ids(agent: AgentProc, scripts: Path) -> None:
    no_run = re.escape("no run 'nope' on this host (`mldeck runs ls` lists them)")
    for method in ("runs.stop", "runs.resume", "runs.logs", "cost.run"):
        with pytest.raises(NotFound, match=no_run):
            rpc(agent, method, run_id="nope")
    with pytest.raises(NotFound, match="no sweep 'nope'"):
        rpc(agent, "sweeps.stop", sweep_id="nope")
    run_id = rpc(agent, "runs.launch", script=str(scripts / "sleeper.py"), env={"SLEEP_S": "0"})["run_id"]
    with pytest.raises(Conflict, match="already exists"):
        rpc(agent, "runs.launch", script=str(scripts / "sleeper.py"), run_id=run_id)
    run = wait_status(agent, run_id, "succeeded")
    assert rpc(agent, "cost.run", run_id=run_id)["cpu_seconds"] == run["cpu_seconds"]
    logs = rpc(agent, "runs.logs", run_id=run_id, offset=0, max_bytes=8)
    assert logs["offset"] == 8 and not logs["done"] and len(logs["data"]) == 8
    rest = rpc(agent, "runs.logs", run_id=run_id, offset=logs["offset"])
    assert rest["done"] and (logs["data"] + rest["data"]).endswith("slept\n")


def killed_while_a_job_waits(home: Path, scripts: Path) -> tuple[AgentProc, str, int, Path]:
    """An agent killed (-9) while its job waits for a release file: (that agent, run id, job pid, file)."""
    first = start_agent(home, config=CONFIG)
    try:
        release = scripts / "release"
        run_id = launch(first, scripts / "waiter.py", gpus=1, release=str(release))
        job_pid = wait_status(first, run_id, "running") and _job_pid(first, run_id)
        first.kill(signal.SIGKILL)
    except BaseException:
        first.stop()
        raise
    return first, run_id, job_pid, release


@pytest.mark.timeout(120)
def test_restart_readopts_running_job(tmp_path: Path, scripts: Path) -> None:
    home = tmp_path / "home"
    first, run_id, job_pid, release = killed_while_a_job_waits(home, scripts)
    try:
        assert psutil.pid_exists(job_pid)
        second = start_agent(home, config=CONFIG)
        try:
            assert run_json(second, run_id)["status"] == "running"
            assert f"re-adopted job {run_id}" in (home / "agent.log").read_text()
            assert rpc(second, "jobs.queue")["running"][0]["gpus"] == run_json(second, run_id)["gpus"]
            release.touch()
            run = wait_status(second, run_id, "succeeded")
            assert run["exit_code"] == 0 and run["gpu_seconds"] > 0.5
            assert "released" in rpc(second, "runs.logs", run_id=run_id)["data"]
            queued = launch(second, scripts / "sleeper.py", sleep=0)
            assert wait_status(second, queued, "succeeded")["exit_code"] == 0
        finally:
            second.stop()
    finally:
        first.stop()


@pytest.mark.timeout(120)
def test_a_stop_asked_before_an_agent_restart_still_ends_stopped(tmp_path: Path, scripts: Path) -> None:
    """The job checkpoints for a while after SIGTERM; the agent dies meanwhile; the new one knows."""
    (scripts / "slow_exit.py").write_text(
        "import signal, sys, time\n"
        "def term(*a):\n    print('saving', flush=True)\n    time.sleep(3)\n    sys.exit(143)\n"
        "signal.signal(signal.SIGTERM, term)\nprint('up', flush=True)\ntime.sleep(60)\n"
    )
    home = tmp_path / "home"
    first = start_agent(home, config=CONFIG)
    try:
        run_id = launch(first, scripts / "slow_exit.py")
        wait_for(lambda: "up" in rpc(first, "runs.logs", run_id=run_id)["data"], what="job up")
        first.cli("runs", "stop", run_id, "--grace", "30", check=True)
        first.kill(signal.SIGKILL)
        second = start_agent(home, config=CONFIG)
        try:
            run = wait_status(second, run_id, "stopped", "failed", "preempted", timeout=30)
            assert (run["status"], run["status_reason"]) == ("stopped", "stopped on request")
            assert "saving" in rpc(second, "runs.logs", run_id=run_id)["data"]
            assert rpc(second, "jobs.queue")["queued"] == []
        finally:
            second.stop()
    finally:
        first.stop()


@pytest.mark.timeout(120)
def test_an_attempt_started_just_before_the_agent_died_is_taken_back_not_started_twice(
    tmp_path: Path, scripts: Path
) -> None:
    """The agent is killed after it started a job's process and before it recorded the start: the store
    says "queued", the process runs. The next agent adopts that process instead of starting another."""
    home = tmp_path / "home"
    first, run_id, job_pid, release = killed_while_a_job_waits(home, scripts)
    try:
        with duckdb.connect(str(home / "mldeck.duckdb")) as con:  # the store as that instant left it
            con.execute("UPDATE jobs SET state = 'queued', attempts = 0, pid = NULL, pid_create_time = NULL "
                        "WHERE run_id = ?", [run_id])
            con.execute("UPDATE runs SET status = 'queued' WHERE run_id = ?", [run_id])
        second = start_agent(home, config=CONFIG)
        try:
            run = wait_status(second, run_id, "running")
            assert _job_pid(second, run_id) == job_pid and run["resumed_count"] == 0
            time.sleep(1.5)  # several scheduling passes: none may start the run again
            wrappers = [p for p in psutil.process_iter(["cmdline"])
                        if str(home / "runs" / run_id) in (p.info["cmdline"] or [])]
            assert [p.pid for p in wrappers] == [job_pid]
            release.touch()
            run = wait_status(second, run_id, "succeeded")
            log = rpc(second, "runs.logs", run_id=run_id)["data"]
            assert log.count("attempt 1 started") == 1 and "attempt 2" not in log, log
        finally:
            second.stop()
    finally:
        first.stop()


def _job_pid(agent: AgentProc, run_id: str) -> int:
    return int(sql(agent, f"select pid from jobs where run_id = '{run_id}'")[0]["pid"])


@pytest.mark.timeout(120)
def test_job_dead_while_agent_down_is_marked(tmp_path: Path, scripts: Path) -> None:
    home = tmp_path / "home"
    first = start_agent(home, config=CONFIG)
    try:
        run_id = launch(first, scripts / "sleeper.py", sleep=30)
        wait_status(first, run_id, "running")
        pid = _job_pid(first, run_id)
        first.kill(signal.SIGKILL)
        os.killpg(pid, signal.SIGKILL)
        wait_for(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie",
                 what="job gone")
        second = start_agent(home, config=CONFIG)
        try:
            run = wait_status(second, run_id, "failed")
            assert "agent was down" in run["status_reason"]
        finally:
            second.stop()
    finally:
        first.stop()


# Reads should_stop as the README's loop does: on SIGTERM it breaks and exits 0 by itself.
POLITE = """
import pathlib, sys, time
import mldeck
run = mldeck.init()
step = 0
while not run.should_stop:
    run.log({"loss": 1.0}, step=step)
    step += 1
    time.sleep(0.05)
run.finish()
print("stopped by itself at", step, flush=True)
"""

# Ends its run, then lingers until released: a stop that comes now finds the work done.
DONE_FIRST = """
import pathlib, sys, time
import mldeck
release = pathlib.Path(sys.argv[sys.argv.index("--release") + 1])
run = mldeck.init()
run.log({"loss": 1.0}, step=0)
run.finish()
print("finished", flush=True)
while not release.exists():
    time.sleep(0.05)
"""


@pytest.mark.timeout(60)
def test_a_stop_the_script_saw_is_the_outcome_though_it_exits_0(agent: AgentProc, scripts: Path) -> None:
    (scripts / "polite.py").write_text(POLITE)
    run_id = launch(agent, scripts / "polite.py")
    wait_for(lambda: run_json(agent, run_id)["metrics"], what="a step logged")
    agent.cli("runs", "stop", run_id, check=True)
    run = wait_status(agent, run_id, "stopped", "succeeded", "failed")
    assert (run["status"], run["status_reason"], run["exit_code"]) == ("stopped", "stopped on request", 0)
    assert "stopped by itself" in rpc(agent, "runs.logs", run_id=run_id)["data"]


@pytest.mark.timeout(60)
def test_a_run_that_finished_before_the_stop_came_succeeded(agent: AgentProc, scripts: Path) -> None:
    (scripts / "done_first.py").write_text(DONE_FIRST)
    release = scripts / "release-done"
    run_id = launch(agent, scripts / "done_first.py", release=str(release))
    wait_for(lambda: "finished" in rpc(agent, "runs.logs", run_id=run_id)["data"], what="the run finished")
    rpc(agent, "runs.stop", run_id=run_id, requeue=True, grace_s=30)
    release.touch()
    run = wait_status(agent, run_id, "succeeded", "preempted", "stopped", "failed")
    assert (run["status"], run["exit_code"], run["resumed_count"]) == ("succeeded", 0, 0)
