"""The control socket under a flood of clients (issue 13): a cap below the file-handle limit, and idle
clients closed, so a local client with thousands of connections starves neither good clients nor ingest."""

from __future__ import annotations

import contextlib
import resource
import select
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from mldeck.core.errors import Unavailable, wire_code
from mldeck.core.paths import Layout
from tests.conftest import AgentProc, start_agent, wait_for

UNAVAILABLE = wire_code(Unavailable("x"))


class Line:
    """A raw client that keeps its connection and sends requests on it, line by line."""

    def __init__(self, home: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(10)
        self.sock.connect(str(Layout(home).socket))
        self.buf = b""

    def call(self, method: str, **params: Any) -> Any:
        self.sock.sendall(msgspec.json.encode({"jsonrpc": "2.0", "id": 1, "method": method,
                                               "params": params}) + b"\n")
        reply = self.read()
        assert reply is not None and "result" in reply, reply
        return reply["result"]

    def read(self) -> Any:
        """The next message, or None at EOF."""
        while b"\n" not in self.buf:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                return None
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return msgspec.json.decode(line)

    def close(self) -> None:
        self.sock.close()


def flood(home: Path, n: int) -> list[socket.socket]:
    """n connections that send nothing (past the listen backlog, each waits for the agent to accept)."""
    socks = []
    for _ in range(n):
        sock = socket.socket(socket.AF_UNIX)
        sock.setblocking(False)
        wait_for(lambda sock=sock: sock.connect_ex(str(Layout(home).socket)) == 0, interval=0.01,
                 what="the agent to accept")
        sock.settimeout(10)
        socks.append(sock)
    return socks


def refusals(socks: list[socket.socket], expected: int, timeout: float = 30) -> tuple[list[Any], list[Any]]:
    """What each refused connection got before the agent closed it (once `expected` were), and the
    connections still open."""
    open_ = list(socks)
    got: list[Any] = []
    deadline = time.monotonic() + timeout
    while len(got) < expected and time.monotonic() < deadline:
        ready, _, _ = select.select(open_, [], [], 0.5)
        for sock in ready:
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
            got.append([msgspec.json.decode(x) for x in data.splitlines()])
            open_.remove(sock)
    return got, open_


def still_open(socks: list[socket.socket]) -> bool:
    """No connection got anything or was closed."""
    ready, _, _ = select.select(socks, [], [], 0.5)
    return not ready


@contextlib.contextmanager
def file_limit(soft: int) -> Iterator[None]:
    """This process's soft RLIMIT_NOFILE lowered while the agent is started, which inherits it."""
    old = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, old[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, old)


def closing(socks: list[socket.socket]) -> None:
    for sock in socks:
        sock.close()


@pytest.mark.timeout(120)
def test_connections_over_the_cap_are_refused_with_one_error(tmp_path: Path) -> None:
    home = tmp_path / "home"
    agent = start_agent(home, config="[socket]\nmax_connections = 50\n")
    good = Line(home)
    socks: list[socket.socket] = []
    try:
        wait_for(lambda: good.call("agent.status")["connections"] == 1, what="start_agent's clients gone")
        socks = flood(home, 200)
        got, kept = refusals(socks, 151)
        assert len(got) == 151, "every connection over the cap of 50 (the good one is one) is refused"
        for messages in got:
            (reply,) = messages
            assert reply["id"] is None and reply["error"]["code"] == UNAVAILABLE
            assert reply["error"]["message"].startswith("too many connections (50 open); ")
        assert len(kept) == 49 and still_open(kept)
        assert good.call("agent.status")["connections"] == 50
        assert good.call("runs.list") == []
        cli = agent.cli("runs", "ls", timeout=30)
        assert cli.code != 0 and "too many connections (50 open)" in cli.err, cli.err
        closing(socks)
        wait_for(lambda: good.call("agent.status")["connections"] == 1, what="the flood's connections closed")
        assert agent.cli("runs", "ls", "--json", timeout=30).json() == []
        assert agent.proc.poll() is None
        log = (home / "agent.log").read_text()
        assert log.count("control socket full") == 1, "one line per burst, not one per connection"
    finally:
        good.close()
        closing(socks)
        agent.stop()


@pytest.mark.timeout(120)
def test_a_flood_past_the_file_limit_starves_neither_clients_nor_ingest(tmp_path: Path) -> None:
    """An agent allowed 256 files and 1,000 connections opened at it: the cap (half the limit) refuses the
    rest at once, a good client goes on, a run written during the flood is ingested."""
    home = tmp_path / "home"
    with file_limit(256):
        agent = start_agent(home)
    good = Line(home)
    socks: list[socket.socket] = []
    try:
        wait_for(lambda: good.call("agent.status")["connections"] == 1, what="start_agent's clients gone")
        socks = flood(home, 1000)
        got, kept = refusals(socks, 1000 - 127)
        assert len(got) == 1000 - 127 and all(m[0]["error"]["code"] == UNAVAILABLE for m in got)
        assert len(kept) == 127
        assert good.call("agent.status")["connections"] == 128
        script = ("from mldeck.core import track\nrun = track.init(name='during-the-flood')\n"
                  "for i in range(100):\n    run.log({'loss': 1.0 / (i + 1)}, step=i)\nrun.finish()\n")
        done = agent.python("-c", script)
        assert done.returncode == 0, done.stderr
        run = wait_for(lambda: [r for r in good.call("runs.list")
                                if r["name"] == "during-the-flood" and r["status"] == "succeeded"],
                       timeout=30, what="the run written during the flood ingested")
        assert run[0]["metrics"] == {"loss": 0.01}
        status = good.call("agent.status")
        assert status["ingest"]["errors"]["count"] == 0 and not status["task_failures"], status
        assert agent.proc.poll() is None
        assert "Too many open files" not in (home / "agent.log").read_text()
    finally:
        good.close()
        closing(socks)
        agent.stop()


@pytest.mark.timeout(60)
def test_idle_clients_are_closed_and_subscribers_are_not(agent_home_idle: AgentProc) -> None:
    home = agent_home_idle.home
    silent = Line(home)
    half = Line(home)
    half.sock.sendall(b'{"jsonrpc": "2.0", "id": 1, "method": "agent.st')
    subscriber = Line(home)
    subscriber.call("subscribe", topic="runs")
    busy = Line(home)
    try:
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            busy.call("hello")
            time.sleep(0.3)
        for client in (silent, half):
            error = client.read()["error"]
            assert error["code"] == UNAVAILABLE and "no whole request in 1 s" in error["message"]
            assert client.read() is None, "then closed"
        assert subscriber.call("agent.status")["connections"] == 2
        assert busy.call("hello")
    finally:
        for client in (silent, half, subscriber, busy):
            client.close()


@pytest.fixture
def agent_home_idle(tmp_path: Path) -> Iterator[AgentProc]:
    """An agent that closes a client without subscriptions after 1 s without a whole request."""
    agent = start_agent(tmp_path / "home", config="[socket]\nidle_timeout_s = 1\n")
    yield agent
    agent.stop()
