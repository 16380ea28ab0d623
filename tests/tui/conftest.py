"""A real agent for the TUI tests (2 simulated GPUs, a production gate), with runs and model versions."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mldeck.core.ports import free_port
from tests.conftest import REPO, AgentProc, agent_env, rpc, start_agent, wait_for

CONFIG = """
[agent]
collector_interval_s = 0.5

[serving]
port = {port}
max_queue_delay_ms = 2.0

[monitor]
window = "30rows"
interval_s = 0.5

[registry.gates."*".production]
metrics = ["val_acc >= 0.92"]
"""
RUNS = [("run-a", "mlp-small", "0.1", "32"), ("run-b", "mlp-wide", "0.05", "64"),
        ("run-c", "mlp-deep", "0.2", "32", "10")]  # run-c checkpoints every 10 steps


@dataclass
class Deck:
    agent: AgentProc

    @property
    def home(self) -> Path:
        return self.agent.home

    def rpc(self, method: str, **params: Any) -> Any:
        reply = rpc(self.home, method, params)
        if "error" in reply:
            raise AssertionError(f"{method}: {reply['error']}")
        return reply["result"]


def make_runs(agent: AgentProc) -> None:
    """Three tracked runs with fixed ids (so snapshots are stable), one after another."""
    for run_id, *args in RUNS:
        env = agent_env(agent.home, MLDECK_RUN_DIR=str(agent.layout.runs / run_id))
        subprocess.run([sys.executable, "tests/tui/make_runs.py", *args], env=env, cwd=REPO,
                       check=True, timeout=60)
        time.sleep(0.05)


def make_models(agent: AgentProc, plan: list[str]) -> None:
    """Real registered versions, trained by the registry tests' tiny job (NAME:VAL_ACC per version)."""
    done = subprocess.run([sys.executable, "tests/registry/tiny_train.py", *plan],
                          env=agent_env(agent.home), cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]



@pytest.fixture(scope="session")
def deck(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deck]:
    agent = start_agent(tmp_path_factory.mktemp("tui") / "home", config=CONFIG.format(port=free_port()))
    d = Deck(agent)
    try:
        make_runs(agent)
        make_models(agent, ["tiny:0.90", "tiny:0.95", "promo:0.90", "promo:0.95"])
        wait_for(lambda: len([r for r in d.rpc("runs.list") if r["status"] != "running"]) >= 7,
                 timeout=60, what="runs ingested")
        wait_for(lambda: len(d.rpc("models.list")) == 2, what="models registered")
        yield d
    finally:
        agent.stop()


def promo_from_scratch(deck: Deck) -> None:
    """promo v1 in production and staging: the tests that promote promo share one deck per worker, in
    either order, and each starts from here."""
    for alias in ("production", "staging"):
        deck.rpc("models.promote", name="promo", version=1, alias=alias, force=True,
                 reason="each promotion test starts from v1")


async def until(pilot: Any, predicate: Callable[[], Any], timeout: float = 15, what: str = "") -> Any:
    """Let the app run until predicate() holds (data arrived, a dialog opened)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        await pilot.pause(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")


def text_of(widget: Any) -> str:
    """What a Static shows, as plain text (it may hold a Rich table)."""
    from rich.console import Console

    console = Console(width=300, record=True, file=open(os.devnull, "w"))  # noqa: SIM115
    console.print(widget.content)
    return console.export_text()
