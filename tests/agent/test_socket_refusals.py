"""Nothing the control socket refuses goes unseen: a client over the connection cap, a message over the size
limit, a line that is no request of this agent's, a client closed for saying nothing and a message a client
did not read in time are each counted by why in `agent status` (a problem line each, the counts under
"refused" in --json), logged once however many come at once, and the agent answers on."""

from __future__ import annotations

import socket
from pathlib import Path

from mldeck.agent.rpc import CONNECTION_QUEUE
from mldeck.core import protocol
from mldeck.core.paths import Layout
from tests.agent.test_socket_limits import Line, closing, flood, refusals
from tests.conftest import rpc, start_agent, wait_for

CAP = 10
FLOOD = 40
HOSTILE = [b"\x00\xff not json\n", b"[]\n", b'{"jsonrpc": "2.0", "id": {"n": 1}, "method": "hello"}\n']
RUNS = 3000


def write_run(home: Path, run_id: str) -> None:
    """A finished run of one point, as the SDK writes it."""
    folder = home / "runs" / run_id
    folder.mkdir(parents=True)
    lines = [{"t": 1.0, "e": "init", "d": {"name": run_id, "created_at": 1.0}},
             {"t": 2.0, "s": 0, "m": {"loss": 0.5}},
             {"t": 3.0, "e": "finish", "d": {"status": "succeeded", "reason": None}}]
    (folder / "metrics.jsonl").write_bytes(b"".join(protocol.encode(line) for line in lines))


def send(home: Path, data: bytes) -> bytes:
    """Send data on a fresh connection, then read until the agent answers a line (or closes)."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(30)
        sock.connect(str(Layout(home).socket))
        sock.sendall(data)
        got = b""
        while not got.endswith(b"\n") and (chunk := sock.recv(1 << 16)):
            got += chunk
        return got


def test_refused_clients_and_lines_are_counted_logged_once_and_the_agent_answers_on(tmp_path: Path) -> None:
    home = tmp_path / "home"
    agent = start_agent(home, config=f"[socket]\nmax_connections = {CAP}\n")
    good = Line(home)
    socks: list[socket.socket] = []
    try:
        wait_for(lambda: good.call("agent.status")["connections"] == 1, what="start_agent's clients gone")
        socks = flood(home, FLOOD)
        got, kept = refusals(socks, FLOOD - (CAP - 1))
        assert len(got) == FLOOD - (CAP - 1) and len(kept) == CAP - 1
        closing(socks)
        wait_for(lambda: good.call("agent.status")["connections"] == 1, what="the flood's connections closed")
        for _ in range(2):
            reply = send(home, b'{"jsonrpc": "2.0", "id": 1, "method": "' + b"x" * protocol.MAX_MESSAGE
                         + b'"}\n')
            assert b"larger than" in reply, reply[:300]
        for line in HOSTILE:
            assert b'"error"' in send(home, line)

        status = good.call("agent.status")
        counts = {kind: seen["count"] for kind, seen in status["refused"].items()}
        assert counts == {"full": FLOOD - (CAP - 1), "too_large": 2, "bad_request": len(HOSTILE)}, status
        assert 'a request\'s "id" is a string' in status["refused"]["bad_request"]["last"], status
        shown = agent.cli("agent", "status", check=True).out
        assert f"control socket: refused {FLOOD - (CAP - 1)} clients: too many connections" in shown, shown
        assert "control socket: refused 2 messages larger than" in shown, shown
        assert f"control socket: refused {len(HOSTILE)} lines that are no request" in shown, shown
        assert agent.cli("agent", "status", "--json", check=True).json()["refused"] == status["refused"]

        log = (home / "agent.log").read_text()
        assert log.count("control socket full") == 1, "one line for the flood, not one per connection"
        assert log.count("larger than") == 1 and log.count("no request of this agent's") == 1, log[-3000:]
        assert agent.proc.poll() is None and good.call("runs.list") == []
        assert rpc(home, "hello").get("result"), "a new client is served after it all"
    finally:
        good.close()
        closing(socks)
        agent.stop()


def test_clients_closed_for_saying_nothing_are_counted(tmp_path: Path) -> None:
    home = tmp_path / "home"
    agent = start_agent(home, config="[socket]\nidle_timeout_s = 1\n")
    socks: list[socket.socket] = []
    try:
        socks = flood(home, 3)
        got, _ = refusals(socks, 3)
        assert len(got) == 3 and all("no whole request in 1 s" in m[0]["error"]["message"] for m in got)
        status = rpc(home, "agent.status")["result"]
        assert status["refused"]["idle"]["count"] == 3, status
        assert any(p.startswith("control socket: closed 3 clients that sent no whole request")
                   for p in status["problems"]), status["problems"]
        assert (home / "agent.log").read_text().count("sent no whole request") == 1
        assert agent.proc.poll() is None
    finally:
        closing(socks)
        agent.stop()


def test_messages_to_a_subscriber_that_does_not_read_are_counted_and_it_is_served_on(tmp_path: Path) -> None:
    """A client (a TUI behind a stalled SSH link, say) subscribed to every run's events reads nothing while
    3,000 runs are ingested: what overflows its queue is counted in agent status and logged once; every run
    is stored; once it reads again, it is answered on the same connection."""
    home = tmp_path / "home"
    agent = start_agent(home)
    stalled = Line(home)
    good = Line(home)
    try:
        for topic in ("runs", "run.metrics"):
            stalled.call("subscribe", topic=topic)
        for i in range(RUNS):
            write_run(home, f"r{i:05d}")
        wait_for(lambda: len(good.call("runs.list", limit=RUNS + 1)) == RUNS, timeout=120, interval=0.5,
                 what="every run ingested")
        status = good.call("agent.status")
        dropped = status["refused"]["dropped"]["count"]
        assert dropped > 0 and "does not read" in status["refused"]["dropped"]["last"], status["refused"]
        assert any(p.startswith(f"control socket: dropped {dropped} events to clients that did not read")
                   for p in status["problems"]), status["problems"]
        assert (home / "agent.log").read_text().count("does not read") == 1
        stalled.sock.sendall(protocol.encode({"jsonrpc": "2.0", "id": 7, "method": "hello"}))
        received = 0
        while (message := stalled.read()) is not None and message.get("id") != 7:
            received += 1
        assert message is not None and "result" in message, "the stalled client is answered once it reads"
        assert received >= CONNECTION_QUEUE, "what waited for it when the queue was full still came"
        assert agent.proc.poll() is None
    finally:
        stalled.close()
        good.close()
        agent.stop()

