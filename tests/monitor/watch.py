"""Waiting on a real agent through its RPC socket: a poll is one request on the socket, where a CLI call
per poll would start a Python process each time on a busy machine. What a test asserts on is still read
through the CLI, once the wait is over."""

from __future__ import annotations

from typing import Any

from tests.conftest import AgentProc, rpc, wait_for


def call(agent: AgentProc, method: str, **params: Any) -> Any:
    """The result of one RPC; a failed call fails the test with the error."""
    reply = rpc(agent.home, method, params)
    assert "result" in reply, reply
    return reply["result"]


def stored(agent: AgentProc, sql: str) -> int:
    """The one number a count query gives."""
    ((value,),) = call(agent, "query", sql=sql)["rows"]
    return int(value)


def judged_windows(agent: AgentProc, model: str, n: int, timeout: float = 60) -> dict[str, Any]:
    """`mldeck drift history MODEL --json` once the monitor has judged n windows of the model."""
    wait_for(lambda: len(call(agent, "drift.history", name=model)["windows"]) >= n, timeout=timeout,
             interval=0.5, what=f"{n} judged windows of {model}")
    return agent.cli("drift", "history", model, "--json", check=True).json()
