"""The agent's one model verifier process (`python -m mldeck.core.modelfile serve`): registrations are
verified one after another in the same process, a dead verifier is counted and replaced, a mismatch is
still refused, and a model's prints never reach the answers."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
import torch
from torch import nn

from mldeck.core import modelfile
from mldeck.core.signature import SIGNATURE_FILE, Signature
from tests.conftest import REPO, AgentProc, agent_env, rpc, start_agent, wait_for

pytestmark = pytest.mark.timeout(240)

TRAIN = str(Path(__file__).with_name("tiny_train.py"))
VERIFY_TIMEOUT_S = 180  # the first registration starts the verifier: a torch import on a busy host


class Loud(nn.Module):
    """A linear model that prints on every call, as users' models do."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        print("the user's model speaks")
        return self.linear(x)


def loud_folder(folder: Path) -> Path:
    """An exported Loud model, saved as TorchScript so that it prints when the verifier runs it."""
    model = Loud().eval()
    modelfile.export_model(model, np.random.default_rng(0).normal(size=(16, 3)).astype(np.float32), folder)
    (folder / modelfile.EXPORT_FILE).unlink()
    torch.jit.save(torch.jit.script(model), str(folder / modelfile.SCRIPT_FILE))
    signature = Signature.read(folder)
    signature.format, signature.file = modelfile.FORMAT_SCRIPT, modelfile.SCRIPT_FILE
    (folder / SIGNATURE_FILE).write_text(json.dumps(signature.to_dict()))
    return folder


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")  # TorchScript is the models' fallback
def test_serve_answers_each_folder_as_verify_does_and_the_model_prints_to_stderr(tmp_path: Path) -> None:
    loud = loud_folder(tmp_path / "loud")
    requests = [{"folder": str(loud)}, {"folder": str(tmp_path / "none")}, {"folder": str(loud)}, {}]
    done = subprocess.run(
        [sys.executable, "-m", "mldeck.core.modelfile", "serve"], capture_output=True, text=True, cwd=REPO,
        input="".join(json.dumps(r) + "\n" for r in requests), timeout=120,
    )
    assert done.returncode == 0, done.stderr
    answers = [json.loads(line) for line in done.stdout.splitlines()]
    assert answers[0] == answers[2] == modelfile.verify_answer(loud)
    assert answers[0]["ok"] and answers[0]["signature"]["format"] == modelfile.FORMAT_SCRIPT
    assert answers[1] == modelfile.verify_answer(tmp_path / "none") and not answers[1]["ok"]
    assert "signature.json is missing" in answers[1]["message"]
    assert answers[3] == {"ok": False, "message": "'folder'"}
    assert done.stderr.count("the user's model speaks") == 2


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """An agent and two exported (not yet registered) runs of the tiny model, of different weights."""
    agent = start_agent(tmp_path_factory.mktemp("verifier") / "home")
    try:
        done = subprocess.run([sys.executable, TRAIN, "_:0.9", "_:0.9"], capture_output=True, text=True,
                              env=agent_env(agent.home), cwd=REPO, timeout=180)
        assert done.returncode == 0, done.stderr
        runs = json.loads(done.stdout.strip().splitlines()[-1])
        wait_for(lambda: all(status(agent, r) == "succeeded" for r in runs), what="the runs")
        yield {"agent": agent, "runs": runs}
    finally:
        agent.stop()


def status(agent: AgentProc, run_id: str) -> str | None:
    return rpc(agent.home, "runs.get", {"run_id": run_id}).get("result", {}).get("status")


def register(agent: AgentProc, run_id: str, name: str, artifact: Path | None = None) -> dict[str, Any]:
    """models.register over the socket: the reply, with its result or its error."""
    params = {"run_id": run_id, "name": name, **({"artifact": str(artifact)} if artifact else {})}
    return rpc(agent.home, "models.register", params, timeout=VERIFY_TIMEOUT_S)


def verifiers(agent: AgentProc) -> list[int]:
    """The pids of the agent's model verifier processes."""
    children = psutil.Process(agent.proc.pid).children()
    return [c.pid for c in children if "mldeck.core.modelfile" in c.cmdline()]


def verifier_failures(agent: AgentProc) -> Any:
    """What `agent status` counts of the verifier process's deaths."""
    return rpc(agent.home, "agent.status")["result"]["task_failures"].get("verify-worker")


@pytest.mark.slow
def test_one_verifier_process_verifies_registration_after_registration(agent: dict[str, Any],
                                                                       tmp_path: Path) -> None:
    proc: AgentProc = agent["agent"]
    first, other = agent["runs"]
    assert verifiers(proc) == []  # started on the first registration that needs it
    assert register(proc, first, "a")["result"]["version"] == 1
    (pid,) = verifiers(proc)
    assert register(proc, first, "b")["result"]["version"] == 1
    assert verifiers(proc) == [pid]

    os.kill(pid, signal.SIGKILL)
    died = wait_for(lambda: verifier_failures(proc), timeout=30, what="the dead verifier counted")
    assert died["count"] == 1 and "the model verifier process exited: exit code -9" in died["last"], died
    assert register(proc, first, "c")["result"]["version"] == 1
    (again,) = verifiers(proc)
    assert again != pid

    tampered = tmp_path / "tampered"  # the first run's folder with the other run's weights
    shutil.copytree(proc.layout.run_dir(first) / "artifacts" / "model", tampered)
    shutil.copy(proc.layout.run_dir(other) / "artifacts" / "model" / modelfile.EXPORT_FILE, tampered)
    refused = register(proc, first, "d", tampered)["error"]["message"]
    assert refused.startswith(f"model artifact {tampered} refused: ModelMismatch: output 'logits': "
                              "the saved model differs from the live model by up to")
    assert "no model 'd'" in rpc(proc.home, "models.versions", {"name": "d"})["error"]["message"]
    assert verifiers(proc) == [again] and verifier_failures(proc)["count"] == 1

    verifier = psutil.Process(again)
    proc.stop()  # the verifier goes with the agent
    assert psutil.wait_procs([verifier], timeout=30)[1] == []
