"""The control socket: every kind of bad input gets an error, and the connection and agent stay up."""

from __future__ import annotations

import asyncio
import os
import stat
import time
from typing import Any

import msgspec

from mldeck.core import protocol
from mldeck.core.client import connect_unix
from mldeck.core.errors import (
    BadRequest,
    Invalid,
    MethodNotAvailable,
    NotFound,
    ParseError,
    TooLarge,
    wire_code,
)
from tests.conftest import AgentHome, AgentProc, InProcessAgent, wait_for


class Raw:
    """A bare socket conversation, so tests can send what no well-behaved client would."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def send(self, data: bytes) -> dict[str, Any]:
        self.writer.write(data)
        await self.writer.drain()
        return msgspec.json.decode(await asyncio.wait_for(self.reader.readline(), 10))


async def raw(agent: AgentHome) -> Raw:
    reader, writer = await asyncio.open_unix_connection(str(agent.layout.socket), limit=2**26)
    return Raw(reader, writer)


def call_line(method: str, params: Any = None, msg_id: int = 1) -> bytes:
    return protocol.encode(protocol.request(msg_id, method, params))


def test_socket_is_owner_only(live_agent: InProcessAgent) -> None:
    mode = stat.S_IMODE(os.stat(live_agent.layout.socket).st_mode)
    assert mode == 0o600
    assert stat.S_IMODE(os.stat(live_agent.home).st_mode) == 0o700


def test_bad_requests_get_errors_and_the_connection_lives(agent_home: AgentProc) -> None:
    async def scenario() -> None:
        c = await raw(agent_home)
        r = await c.send(b"{this is not json\n")
        assert r["error"]["code"] == wire_code(ParseError) and "not valid JSON" in r["error"]["message"]
        r = await c.send(b'{"id": 2, "method": "hello"}\n')
        assert r["error"]["code"] == wire_code(BadRequest) and r["id"] == 2
        r = await c.send(call_line("no.such.method"))
        assert r["error"]["code"] == wire_code(MethodNotAvailable)
        assert "runs.list" in r["error"]["message"], "the error lists the methods that exist"
        r = await c.send(call_line("runs.list", {"limit": "ten"}))
        assert r["error"]["code"] == wire_code(Invalid)
        assert "$.limit" in r["error"]["message"] and "int" in r["error"]["message"]
        r = await c.send(call_line("runs.list", {"colour": "red"}))
        assert r["error"]["code"] == wire_code(Invalid) and "colour" in r["error"]["message"]
        r = await c.send(call_line("runs.list", [1, 2]))
        assert r["error"]["code"] == wire_code(Invalid)
        r = await c.send(call_line("runs.get", {"run_id": "../../etc"}))
        assert r["error"]["code"] == wire_code(NotFound)
        r = await c.send(call_line("runs.metrics", {"run_id": "x", "max_points": 1}))
        assert r["error"]["code"] == wire_code(Invalid) and "max_points" in r["error"]["message"]
        r = await c.send(call_line("subscribe", {"topic": "gossip"}))
        assert "unknown topic" in r["error"]["message"]
        r = await c.send(call_line("query", {"sql": "DROP TABLE runs"}))
        assert "read-only" in r["error"]["message"]
        r = await c.send(call_line("query", {"sql": "SELECT 1; DELETE FROM runs"}))
        assert "exactly one statement" in r["error"]["message"]
        r = await c.send(call_line("query", {"sql": "SELEC nonsense"}))
        assert r["error"]["code"] == wire_code(Invalid)
        big = b'{"jsonrpc": "2.0", "id": 9, "method": "hello", "params": {"client": "' + \
            b"x" * (protocol.MAX_MESSAGE + 10) + b'"}}\n'
        r = await c.send(big)
        assert r["error"]["code"] == wire_code(TooLarge)
        r = await c.send(call_line("hello", {"client": "test"}, msg_id=10))
        assert r["id"] == 10 and r["result"]["protocol"] == protocol.PROTOCOL_VERSION
        c.writer.close()

    asyncio.run(scenario())
    assert agent_home.proc.poll() is None


def test_hello_and_host_facts(live_agent: InProcessAgent) -> None:
    async def scenario() -> dict[str, Any]:
        client = await connect_unix(live_agent.layout.socket)
        try:
            return await client.call("hello", client="test")
        finally:
            await client.close()

    hello = asyncio.run(scenario())
    host = hello["host"]
    assert host["gpu_count"] == 2 and host["gpu_simulated"] is True
    assert {"host.metrics", "runs", "run.metrics"} <= set(hello["topics"])


def test_closing_a_client_keeps_the_callers_cancel(live_agent: InProcessAgent) -> None:
    """A task cancelled while it closes its client ends; the fleet's supervisors once hung on this."""

    async def scenario() -> bool:
        client = await connect_unix(live_agent.layout.socket)
        await client.call("hello", client="test")

        async def close_then_linger() -> None:
            await client.close()
            await asyncio.sleep(30)

        task = asyncio.create_task(close_then_linger())
        await asyncio.sleep(0)  # the task is now inside close(), waiting for the reader to stop
        task.cancel()
        await asyncio.wait([task], timeout=5)
        return task.cancelled()

    assert asyncio.run(scenario())


def test_host_metrics_latest_and_history(live_agent: InProcessAgent) -> None:
    async def scenario() -> dict[str, Any]:
        client = await connect_unix(live_agent.layout.socket)
        try:
            await asyncio.sleep(1.2)
            return await client.call("host.metrics", window_s=60, max_points=100)
        finally:
            await client.close()

    result = asyncio.run(scenario())
    assert len(result["latest"]["gpus"]) == 2
    hist = result["history"]
    assert {r["gpu_index"] for r in hist} == {None, 0, 1}
    assert all(r["mem_total"] == 40 * 1024**3 for r in hist if r["gpu_index"] is not None)


def test_subscription_delivers_new_points_fast(live_agent: InProcessAgent) -> None:
    """run.log → run.metrics notification on a subscribed socket, and the downsampled fetch."""

    async def scenario() -> tuple[list[float], dict[str, Any]]:
        from mldeck.core import track

        client = await connect_unix(live_agent.layout.socket)
        run = track.init(name="live", home=live_agent.home)
        sub = await client.subscribe("run.metrics", run_id=run.id)
        latencies = []
        for step in range(20):
            sent = time.time()
            run.log({"loss": 1.0 / (step + 1)}, step=step)
            while True:
                event = await asyncio.wait_for(sub.__aiter__().__anext__(), 5)
                if step in event["step"]:
                    break
            latencies.append(time.time() - sent)
        run.finish()
        await sub.close()
        series = await client.call("runs.metrics", run_id=run.id, max_points=10)
        await client.close()
        return latencies, series

    latencies, series = asyncio.run(scenario())
    latencies.sort()
    assert latencies[int(len(latencies) * 0.95) - 1] < 1.0, latencies
    loss = series["series"]["loss"]
    assert 2 <= len(loss["step"]) <= 10 and loss["step"] == sorted(loss["step"])
    assert loss["value"][0] == 1.0 and min(loss["value"]) == 1.0 / 20


def test_agent_survives_clients_vanishing_mid_stream(agent_home: AgentProc) -> None:
    async def scenario() -> None:
        for _ in range(5):
            c = await raw(agent_home)
            c.writer.write(call_line("subscribe", {"topic": "host.metrics"}))
            c.writer.write(b'{"jsonrpc": "2.0", "id": 3, "meth')
            c.writer.close()
        client = await connect_unix(agent_home.layout.socket)
        status = await client.call("agent.status")
        await client.close()
        assert status["pid"] == agent_home.proc.pid

    asyncio.run(scenario())
    wait_for(lambda: agent_home.proc.poll() is None, timeout=1)
