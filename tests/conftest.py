"""Shared fixtures: a real agent process in a temporary home, and the real CLI."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pytest

from mldeck.core.paths import Layout

REPO = Path(__file__).resolve().parent.parent


def agent_env(home: Path, **extra: str) -> dict[str, str]:
    """The environment a test's agent, CLI and jobs run with: its own home, 2 simulated GPUs."""
    env = {**os.environ, "MLDECK_HOME": str(home), "MLDECK_SIMULATE_GPUS": "2", "PYTHONUNBUFFERED": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env.update(extra)
    return env


@dataclass
class CliResult:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return msgspec.json.decode(self.out)


@dataclass
class AgentHome:
    """A home with a running agent, and the user's ways in: the CLI and Python jobs."""

    home: Path

    @property
    def layout(self) -> Layout:
        return Layout(self.home)

    @property
    def env(self) -> dict[str, str]:
        return agent_env(self.home)

    def cli(self, *args: str, check: bool = False, timeout: float = 60, **env: str) -> CliResult:
        """Run `mldeck ARGS` against this agent, as a user would."""
        done = subprocess.run(
            [sys.executable, "-m", "mldeck.tui.cli", *args], capture_output=True, text=True,
            env=agent_env(self.home, **env), timeout=timeout, cwd=REPO,
        )
        result = CliResult(done.returncode, done.stdout, done.stderr)
        if check and done.returncode != 0:
            raise AssertionError(f"mldeck {' '.join(args)} failed ({done.returncode}): {done.stderr}")
        return result

    def python(self, *args: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess[str]:
        """Run a Python script or module as a job on this host would (same home)."""
        return subprocess.run(
            [sys.executable, *args], capture_output=True, text=True,
            env=agent_env(self.home, **env), timeout=timeout, cwd=REPO,
        )


@dataclass
class AgentProc(AgentHome):
    """A real `python -m mldeck.agent run` process owning a temporary home."""

    proc: subprocess.Popen[bytes]

    def kill(self, sig: int = 9) -> None:
        self.proc.send_signal(sig)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        """SIGTERM (a planned stop), then end the model server such a stop leaves serving."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        end_model_server(self.home)


def end_model_server(home: Path) -> None:
    """A test's agent takes its model server along: a planned agent stop leaves it running."""
    from mldeck.agent.servingctl import end_left_running

    end_left_running(Layout(home))


def rpc(home: Path, method: str, params: dict[str, Any] | None = None, timeout: float = 10) -> Any:
    """One raw JSON-RPC exchange on the agent's socket: the reply object, or {} if none answers."""
    request = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params or {}}
    try:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(timeout)
            sock.connect(str(Layout(home).socket))
            sock.sendall(msgspec.json.encode(request) + b"\n")
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = sock.recv(1 << 20)
                if not chunk:
                    return {}
                buf += chunk
            return msgspec.json.decode(buf)
    except OSError:
        return {}


def start_agent(home: Path, config: str | None = None, timeout: float = 30) -> AgentProc:
    """Start an agent and wait until its socket answers."""
    home.mkdir(parents=True, exist_ok=True)
    if config is not None:
        (home / "agent.toml").write_text(config)
    log = open(home / "agent.log", "ab")  # noqa: SIM115 (the child keeps it)
    proc = subprocess.Popen(
        [sys.executable, "-m", "mldeck.agent", "run", "--home", str(home)],
        stdout=log, stderr=log, env=agent_env(home), cwd=REPO,
    )
    agent = AgentProc(home, proc)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"agent exited: {(home / 'agent.log').read_text()[-2000:]}")
        if agent.layout.socket.exists() and rpc(home, "hello").get("result"):
            return agent
        time.sleep(0.1)
    agent.stop()
    raise RuntimeError(f"agent did not start: {(home / 'agent.log').read_text()[-2000:]}")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Files that hold a `slow` test run first: with `--dist loadfile --no-loadscope-reorder` each worker
    starts on a long file and the short files fill in beside them, instead of the long ones ending the run
    (xdist's own order, most tests first, leaves the long one-test files for last)."""
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)


@pytest.fixture
def agent_home(tmp_path: Path) -> Iterator[AgentProc]:
    """A running agent (2 simulated GPUs, collector at 5 Hz) in a fresh temporary home."""
    agent = start_agent(tmp_path / "home", config="[agent]\ncollector_interval_s = 0.2\n")
    yield agent
    agent.stop()


class InProcessAgent(AgentHome):
    """The agent on an event loop in a thread of the test process: the whole RPC surface, real socket and
    real store, without a process start (for tests that neither kill nor restart the agent)."""

    def __init__(self, home: Path, config: str | None = None) -> None:
        from mldeck.agent.daemon import Agent

        super().__init__(home)
        home.mkdir(parents=True, exist_ok=True)
        if config is not None:
            (home / "agent.toml").write_text(config)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="agent-loop", daemon=True)
        self._thread.start()
        with pytest.MonkeyPatch.context() as env:
            env.setenv("MLDECK_SIMULATE_GPUS", "2")
            self.agent = Agent(home)
        asyncio.run_coroutine_threadsafe(self.agent.start(), self._loop).result(30)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.agent.stop(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
        end_model_server(self.home)


@pytest.fixture
def live_agent(tmp_path: Path) -> Iterator[InProcessAgent]:
    """A running in-process agent (2 simulated GPUs, collector at 5 Hz) in a fresh temporary home."""
    agent = InProcessAgent(tmp_path / "home", config="[agent]\ncollector_interval_s = 0.2\n")
    yield agent
    agent.stop()


def wait_for(predicate: Any, timeout: float = 20, interval: float = 0.1, what: str = "condition") -> Any:
    """Poll until predicate() is truthy and return its value; fail with what was awaited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
