"""The CLI as people type it: options on either side of the script and the script's arguments after `--`,
--version, shell completion from a live agent, did-you-mean, and `run --wait` showing progress."""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from mldeck.core.version import VERSION
from mldeck.tui.cli.versions import version_skew
from tests.conftest import REPO, AgentProc, CliResult, agent_env, start_agent, wait_for

CONFIG = """
[agent]
collector_interval_s = 0.2
[jobs]
poll_interval_s = 0.1
grace_s = 5
"""

# Writes the arguments it got, as JSON, where $ARGV_OUT says (one line per run: sweeps append).
ARGV = """
import json, os, sys
from mldeck.core import track
run = track.init()
run.log({"m": 1.0}, step=0)
with open(os.environ["ARGV_OUT"], "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
run.finish()
"""

STEPS = """
import time
from mldeck.core import track
run = track.init(total_steps=15)
for step in range(15):
    time.sleep(0.2)
    run.log({"loss": 1.0 / (step + 1)}, step=step)
run.finish()
"""

MODEL = """
import numpy as np
import torch
from mldeck.core import track
run = track.init()
run.log({"acc": 0.5}, step=0)
run.log_model(torch.nn.Linear(4, 2).eval(), sample=np.zeros((8, 4), np.float32))
run.finish()
"""

FAILS = "import sys\nprint('loading data', flush=True)\nprint('about to fail', flush=True)\nsys.exit(3)\n"


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProc]:
    proc = start_agent(tmp_path_factory.mktemp("usage") / "home", config=CONFIG)
    yield proc
    proc.stop()


@pytest.fixture
def scripts(tmp_path: Path) -> Path:
    for name, text in (("argv.py", ARGV), ("steps.py", STEPS), ("fails.py", FAILS), ("model.py", MODEL)):
        (tmp_path / name).write_text(text)
    return tmp_path


def lines_of(path: Path) -> list[list[str]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def run_count(agent: AgentProc) -> int:
    return len(agent.cli("runs", "ls", "--json", check=True).json())


@pytest.mark.timeout(120)
def test_run_takes_options_on_either_side_and_gives_the_script_its_args_exactly(
    agent: AgentProc, scripts: Path
) -> None:
    script = str(scripts / "argv.py")
    forms = [
        ["run", script, "--gpus", "1", "--env", "ARGV_OUT={}", "--wait", "--", "--epochs", "3"],
        ["run", "--gpus", "1", "--env", "ARGV_OUT={}", "--wait", script, "--", "--epochs", "3"],
        ["run", "--gpus", "1", script, "--wait", "--env", "ARGV_OUT={}", "--", "--epochs", "3"],
        ["run", script, "--wait", "--env", "ARGV_OUT={}", "--", "--epochs", "3", "--", "a b", "", "--gpus"],
        ["run", script, "--wait", "--env", "ARGV_OUT={}"],
    ]
    for n, form in enumerate(forms):
        out = scripts / f"argv-{n}.json"
        result = agent.cli(*[word.format(out) for word in form])
        assert result.code == 0, result
        run_id = result.out.strip()
        assert run_id and "\n" not in run_id, result.out  # stdout is the run id alone, for scripts
        assert f"{run_id} succeeded" in result.err, result.err
        cut = form.index("--") if "--" in form else len(form)
        assert lines_of(out) == [form[cut + 1:]], form
        run = agent.cli("runs", "show", run_id, "--json", check=True).json()
        assert len(run["gpus"]) == (1 if "--gpus" in form[:cut] else 0), form


@pytest.mark.timeout(60)
def test_an_unknown_option_before_dashdash_says_where_script_arguments_go(
    agent: AgentProc, scripts: Path
) -> None:
    before = run_count(agent)
    script = str(scripts / "argv.py")
    for args in (
        ["run", script, "--gpus", "1", "--epochs", "3"],
        ["run", "--epochs", "3", script],
        ["run", script, "stray"],
        ["sweep", script, "--grid", "x=1,2", "--metric", "m", "--epochs", "3"],
    ):
        result = agent.cli(*args)
        assert result.code == 2, result
        assert result.err.count("\n") == 1, result.err
        assert "the script's own arguments go after `--`" in result.err, result.err
    epochs = agent.cli("run", script, "--gpus", "1", "--epochs", "3")
    assert "`mldeck run` does not take --epochs 3" in epochs.err
    assert "mldeck run SCRIPT [OPTIONS] -- --epochs 3" in epochs.err
    assert run_count(agent) == before


@pytest.mark.timeout(180)
def test_sweep_takes_options_on_either_side_and_gives_each_trial_the_script_args(
    agent: AgentProc, scripts: Path
) -> None:
    script = str(scripts / "argv.py")
    for n, form in enumerate([
        ["sweep", script, "--grid", "x=1,2", "--metric", "m", "--env", "ARGV_OUT={}", "--json",
         "--", "--epochs", "3"],
        ["sweep", "--grid", "x=1,2", "--metric", "m", "--json", script, "--env", "ARGV_OUT={}",
         "--", "--epochs", "3"],
    ]):
        out = scripts / f"sweep-{n}.jsonl"
        created = agent.cli(*[word.format(out) for word in form])
        assert created.code == 0, created
        sweep_id = created.json()["sweep_id"]
        wait_for(lambda sid=sweep_id: agent.cli("sweep", "show", "--json", sid,
                                                 check=True).json()["status"] == "done",
                 timeout=90, interval=0.5, what="the sweep to finish")
        assert sorted(lines_of(out)) == [["--epochs", "3", "--x", "1"], ["--epochs", "3", "--x", "2"]]
    listed = agent.cli("sweep", "ls", "--json", check=True).json()
    assert len(listed) >= 2
    assert agent.cli("sweep", "show").code == 2
    assert agent.cli("sweep", "show", sweep_id, "--", "x").code == 2


@pytest.mark.timeout(90)
def test_run_wait_prints_progress_lines_when_piped_then_how_it_ended(agent: AgentProc, scripts: Path) -> None:
    done = agent.cli("run", str(scripts / "steps.py"), "--wait", "--name", "stepper", timeout=80)
    assert done.code == 0, done
    run_id = done.out.strip()
    progress = [line for line in done.err.splitlines() if line.startswith(f"{run_id}  ")]
    assert any(" running " in line for line in progress), done.err
    stepped = [line for line in progress if "step " in line]
    assert stepped and "loss " in stepped[0], done.err
    assert re.search(r"step \d+/15 \d+% · ETA \S+", stepped[0]), done.err  # the script said its total
    assert "\r" not in done.err and "\033" not in done.err  # plain lines, no colour, when piped
    assert done.err.splitlines()[-1].startswith(f"{run_id} succeeded after ")

    failed = agent.cli("run", str(scripts / "fails.py"), "--wait")
    assert failed.code == 1, failed
    run_id = failed.out.strip()
    assert f"{run_id} failed after " in failed.err and "exit code 3" in failed.err, failed.err
    tail = failed.err[failed.err.index(f"`mldeck runs logs {run_id}` has all of it"):]
    assert "  loading data\n  about to fail" in tail, failed.err

    as_json = agent.cli("run", str(scripts / "fails.py"), "--wait", "--json")
    assert as_json.code == 1 and as_json.err == ""
    assert as_json.json()["status"] == "failed" and "exit code 3" in as_json.json()["status_reason"]


def on_terminal(agent: AgentProc, *args: str, **env: str) -> tuple[int, str]:
    """`mldeck ARGS` with a terminal on stdin, stdout and stderr: its exit code, and all the terminal got."""
    main, child = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "mldeck.tui.cli", *args], stdin=child, stdout=child,
                            stderr=child, env=agent_env(agent.home, TERM="xterm", **env), cwd=REPO)
    os.close(child)
    out = b""
    while True:
        try:
            chunk = os.read(main, 1 << 16)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    os.close(main)
    return proc.wait(timeout=60), out.decode()


@pytest.mark.timeout(90)
def test_run_wait_on_a_terminal_rewrites_one_line_and_respects_no_color(
    agent: AgentProc, scripts: Path
) -> None:
    code, coloured = on_terminal(agent, "run", str(scripts / "steps.py"), "--wait", NO_COLOR="")
    assert code == 0, coloured
    assert "\r" in coloured and "step " in coloured, coloured
    assert "\033[32msucceeded\033[0m after " in coloured, coloured
    code, plain = on_terminal(agent, "run", str(scripts / "fails.py"), "--wait", NO_COLOR="1")
    assert code == 1, plain
    assert "\033[" not in plain and " failed after " in plain and "about to fail" in plain, plain


@pytest.mark.timeout(120)
def test_models_register_says_what_it_waits_for_on_a_terminal_only(agent: AgentProc, scripts: Path) -> None:
    run_id = agent.cli("run", str(scripts / "model.py"), "--wait", check=True).out.strip()
    code, shown = on_terminal(agent, "models", "register", run_id, "--name", "said")
    assert code == 0, shown
    said = f"registering run {run_id}'s model as said: loading, checking and profiling it... 0s"
    assert said in shown, shown
    assert "registered said v1" in shown, shown
    piped = agent.cli("models", "register", run_id, "--name", "quiet")
    assert piped.code == 0 and piped.err == "" and "registered quiet v1" in piped.out, piped


def completions(agent: AgentProc, line: str, tmp_path: Path, **env: str) -> list[str]:
    """What `mldeck` answers the shell for `line` (cursor at its end), through argcomplete's protocol."""
    out = tmp_path / "completions"
    result = agent.cli(_ARGCOMPLETE="1", COMP_LINE=line, COMP_POINT=str(len(line)),
                       _ARGCOMPLETE_STDOUT_FILENAME=str(out), **env)
    assert result.code == 0 and result.out == "" and result.err == "", result
    return [word.strip() for word in out.read_text().split("\013") if word]


@pytest.mark.timeout(120)
def test_completion_script_and_live_completion_of_runs_hosts_and_commands(
    agent: AgentProc, scripts: Path, tmp_path: Path
) -> None:
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    config = {"XDG_CONFIG_HOME": str(tmp_path / "config"), "PATH": path}
    script = agent.cli("completion", "bash", check=True).out
    assert "_python_argcomplete" in script and "complete " in script and "mldeck" in script
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0
    for shell, words in (("zsh", "#compdef mldeck"), ("fish", "complete --command mldeck")):
        assert words in agent.cli("completion", shell, check=True).out, shell
    assert agent.cli("completion", "tcsh").code == 2

    run_id = agent.cli("run", str(scripts / "argv.py"), "--env", f"ARGV_OUT={tmp_path / 'a'}",
                       check=True).out.strip()
    assert run_id in completions(agent, "mldeck runs show ", tmp_path)
    assert completions(agent, f"mldeck runs logs {run_id[:-2]}", tmp_path) == [run_id]
    assert set(completions(agent, "mldeck runs ", tmp_path)) >= {"ls", "show", "logs", "stop", "resume"}
    assert "runs" in completions(agent, "mldeck ru", tmp_path)
    assert "--gpus" in completions(agent, "mldeck run --g", tmp_path)

    agent.cli("hosts", "add", "gpu9", "ssh://me@gpu9.example.org", check=True, **config)
    assert {"local", "gpu9"} <= set(completions(agent, "mldeck runs ls --host ", tmp_path, **config))
    # no agent: nothing offered, nothing said, at once
    assert completions(agent, "mldeck runs show ", tmp_path, MLDECK_HOME=str(tmp_path / "none")) == []

    # the shell's side too: bash runs the function the script defines, which runs `mldeck` on PATH
    in_bash = (script + '\nCOMP_LINE="mldeck runs show "; COMP_POINT=${#COMP_LINE}; '
               'COMP_WORDS=(mldeck runs show ""); COMP_CWORD=3\n'
               '_python_argcomplete mldeck "" show\nprintf "%s\\n" "${COMPREPLY[@]}"\n')
    done = subprocess.run(["bash", "-c", in_bash], capture_output=True, text=True, cwd=REPO, timeout=60,
                          env=agent_env(agent.home, **config))
    assert run_id in done.stdout.split(), done


def test_version_and_exit_codes_in_help(agent: AgentProc) -> None:
    version = agent.cli("--version")
    assert version.code == 0 and version.out == f"mldeck {VERSION}\n"
    helped = agent.cli("--help", check=True).out
    assert "exit codes:" in helped and "130" in helped and "completion" in helped
    status = agent.cli("agent", "status", check=True)
    assert f"version: mldeck {VERSION}" in status.out and "warning" not in status.err
    assert agent.cli("agent", "status", "--json", check=True).json()["version"] == VERSION
    assert version_skew("local", VERSION) is None
    assert "mldeck agent install --host gpu1" in str(version_skew("gpu1", "0.0.1"))


def test_a_mistyped_command_or_action_gets_a_suggestion(tmp_path: Path) -> None:
    def mldeck(*args: str) -> CliResult:
        done = subprocess.run([sys.executable, "-m", "mldeck.tui.cli", *args], capture_output=True, text=True,
                              env=agent_env(tmp_path), cwd=REPO, timeout=60)
        return CliResult(done.returncode, done.stdout, done.stderr)

    for args, said in (
        (("runs", "lss"), "`mldeck runs lss`: did you mean `ls`?"),
        (("modles", "ls"), "`mldeck modles`: did you mean `models`?"),
        (("run", "--amp", "bf61", "x.py"), "`mldeck run --amp bf61`: did you mean `bf16`?"),
    ):
        result = mldeck(*args)
        assert result.code == 2 and result.err == f"mldeck: {said}\n", result
    nothing_close = mldeck("zzzz")
    assert nothing_close.code == 2 and "invalid choice" in nothing_close.err
    assert nothing_close.err.count("\n") == 1
