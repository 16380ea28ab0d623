"""The README's SDK section is the contract: its python block, taken from README.md as it stands and
wrapped with a real small torch model and data, trains, stops, resumes, sweeps and registers as the
README says it does, in a fresh home with a real agent."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mldeck.core.runlog import Line
from tests.agent.test_jobs import rpc, sql, wait_status
from tests.conftest import REPO, AgentProc, start_agent, wait_for

CONFIG = """
[agent]
collector_interval_s = 0.5
[jobs]
poll_interval_s = 0.1
grace_s = 60
max_cpu_jobs = 1
"""

# What the README's block leaves to the script around it: arguments, data, model, optimizer, and
# the train/evaluate functions. `--worse` is a sweep axis that adds to val_loss; `--epoch-s` paces
# an epoch so a test can stop the run in the middle; `--reference` picks the form of the data.
PRELUDE = """
import argparse, time
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int, default=3)
parser.add_argument("--lr", type=float, default=0.05)
parser.add_argument("--worse", type=float, default=0.0)
parser.add_argument("--epoch-s", type=float, default=0.0)
parser.add_argument("--reference", choices=["numpy", "tensor", "pandas"], default="numpy")
args, _ = parser.parse_known_args()
lr, epochs = args.lr, args.epochs

torch.manual_seed(0)
rng = np.random.default_rng(0)
images = rng.random((600, 1, 8, 8), dtype=np.float32)
labels = (images[:, 0, :4].mean(axis=(1, 2)) > images[:, 0, 4:].mean(axis=(1, 2))).astype(np.int64)
y_train, y_val = torch.from_numpy(labels[:500]), torch.from_numpy(labels[500:])
if args.reference == "pandas":  # a flat table of 64 pixel columns and an MLP
    import pandas as pd

    flat = images.reshape(600, 64)
    x_train, x_val = pd.DataFrame(flat[:500]), pd.DataFrame(flat[500:])
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 2))
    train_in, val_in = torch.from_numpy(flat[:500]), torch.from_numpy(flat[500:])
else:  # 8x8 one-channel images and a small CNN
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(512, 2))
    train_in, val_in = torch.from_numpy(images[:500]), torch.from_numpy(images[500:])
    x_train, x_val = (train_in, val_in) if args.reference == "tensor" else (images[:500], images[500:])
optimizer = torch.optim.SGD(model.parameters(), lr=lr)


def train_one_epoch(model, optimizer):
    model.train()
    total = 0.0
    for batch in torch.arange(500).split(100):
        loss = F.cross_entropy(model(train_in[batch]), y_train[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        total += loss.item() / 5
    time.sleep(args.epoch_s)
    return total


def evaluate(model):
    model.eval()
    with torch.no_grad():
        return F.cross_entropy(model(val_in), y_val).item() + args.worse
"""


def readme_block() -> str:
    """The python block of the README's SDK section, verbatim."""
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## The SDK"):]
    match = re.search(r"^```python\n(.*?)^```", section, re.MULTILINE | re.DOTALL)
    assert match, "the README's SDK section has no python block"
    return match.group(1)


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProc]:
    proc = start_agent(tmp_path_factory.mktemp("sdk-readme") / "home", config=CONFIG)
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def train(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """train.py: the README's block inside PRELUDE, beside the data file it declares."""
    folder = tmp_path_factory.mktemp("project")
    (folder / "data").mkdir()
    pq.write_table(pa.table({"pixel": [0.0, 0.5, 1.0]}), folder / "data" / "train.parquet")
    script = folder / "train.py"
    script.write_text(PRELUDE + "\n" + readme_block())
    return script


def launch(agent: AgentProc, script: Path, *script_args: str) -> str:
    """`mldeck run train.py -- ARGS` from the project's folder, as its user would."""
    done = agent.cli("run", str(script), "--cwd", str(script.parent), "--", *script_args, check=True)
    return done.out.strip()


def finish_lines(agent: AgentProc, run_id: str) -> list[dict[str, Any]]:
    text = (agent.layout.run_dir(run_id) / "metrics.jsonl").read_bytes()
    lines = msgspec.json.Decoder(Line).decode_lines(text)
    return [line.d or {} for line in lines if line.e == "finish"]


def steps_of(agent: AgentProc, run_id: str, key: str) -> list[int]:
    rows = sql(agent, f"select step from metrics where run_id = '{run_id}' and key = '{key}' order by step")
    return [r["step"] for r in rows]


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize(("reference", "shape"), [
    ("numpy", [-1, 1, 8, 8]), ("tensor", [-1, 1, 8, 8]), ("pandas", [-1, 64]),
])
def test_the_readme_script_trains_and_registers(
    agent: AgentProc, train: Path, reference: str, shape: list[int]
) -> None:
    """Trained to the end, it logged its model with `reference=x_train` (numpy images, a torch tensor,
    a DataFrame); `mldeck models register RUN --name NAME` then makes a version with a drift reference."""
    run_id = launch(agent, train, "--reference", reference)
    run = wait_status(agent, run_id, "succeeded", "failed", "stopped", timeout=180)
    assert run["status"] == "succeeded", rpc(agent, "runs.logs", run_id=run_id)["data"]
    assert run["params"] == {"lr": 0.05, "epochs": 3} and run["data_hash"]
    assert steps_of(agent, run_id, "val_loss") == [0, 1, 2]
    version = agent.cli("models", "register", run_id, "--name", f"digits-{reference}", "--json",
                        check=True, timeout=120).json()
    assert version["run_id"] == run_id and version["signature"]["inputs"][0]["shape"] == shape
    assert version["reference"]["n_rows"] == 500
    assert version["reference"]["columns"] == [f"input__0[{i}]" for i in range(64)]


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_readme_run_stopped_with_requeue_resumes_every_step_once(agent: AgentProc, train: Path) -> None:
    run_id = launch(agent, train, "--epochs", "30", "--epoch-s", "0.15")
    wait_for(lambda: len(steps_of(agent, run_id, "val_loss")) >= 3, timeout=120, what="three epochs")
    stop = agent.cli("runs", "stop", run_id, "--requeue", check=True).out
    assert "requeue" in stop
    run = wait_status(agent, run_id, "succeeded", "failed", "stopped", timeout=180)
    assert (run["status"], run["resumed_count"], run["exit_code"]) == ("succeeded", 1, 0)
    assert steps_of(agent, run_id, "val_loss") == list(range(30))
    assert steps_of(agent, run_id, "train_loss") == list(range(30))
    first, last = finish_lines(agent, run_id)
    assert first == {"status": "stopped", "reason": "SIGTERM", "stop_seen": True}, "the loop broke by itself"
    assert last["status"] == "succeeded" and not last["stop_seen"]
    assert (agent.layout.run_dir(run_id) / "artifacts" / "model" / "signature.json").is_file()


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_readme_run_stopped_without_requeue_ends_stopped(agent: AgentProc, train: Path) -> None:
    run_id = launch(agent, train, "--epochs", "30", "--epoch-s", "0.15")
    wait_for(lambda: len(steps_of(agent, run_id, "val_loss")) >= 2, timeout=120, what="two epochs")
    agent.cli("runs", "stop", run_id, check=True)
    run = wait_status(agent, run_id, "succeeded", "failed", "stopped", timeout=120)
    assert (run["status"], run["status_reason"], run["exit_code"]) == ("stopped", "stopped on request", 0)
    assert finish_lines(agent, run_id) == [{"status": "stopped", "reason": "SIGTERM", "stop_seen": True}]
    assert not (agent.layout.run_dir(run_id) / "artifacts" / "model").exists(), "stopped: nothing exported"
    assert agent.cli("runs", "resume", run_id, check=True).code == 0
    assert wait_status(agent, run_id, "succeeded", "failed", "stopped", timeout=180)["status"] == "succeeded"
    assert steps_of(agent, run_id, "val_loss") == list(range(30))
