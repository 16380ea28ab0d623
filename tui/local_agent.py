"""This machine's agent for a home: is one answering, start one detached, stop it and see it exit.

The CLI (`mldeck agent start|stop|status`, `mldeck demo`) and the TUI's Fleet (which starts the local agent
when none runs) share these, so both start and find an agent the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import psutil

from mldeck.core.client import ConnectionLost, connect_unix
from mldeck.core.errors import Conflict, MldeckError, Unavailable
from mldeck.core.paths import Layout

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 30.0
PING_CONNECT_S = 2.0
PING_ANSWER_S = 5.0


async def ping(layout: Layout) -> dict[str, Any] | None:
    """The agent's status if one answers on this home's socket."""
    return await ask(layout, "agent.status")


async def ask(layout: Layout, method: str, answer_s: float = PING_ANSWER_S) -> Any:
    """One call to this home's agent, without params; None if no agent answers (or it answers an error)."""
    try:
        client = await asyncio.wait_for(connect_unix(layout.socket), PING_CONNECT_S)
    except (OSError, TimeoutError):
        return None
    try:
        return await asyncio.wait_for(client.call(method), answer_s)
    except (MldeckError, TimeoutError):
        return None
    finally:
        await client.close()


def spawn_agent(layout: Layout) -> subprocess.Popen[bytes]:
    """Start `python -m mldeck.agent run` detached from this terminal, logging to agent.log."""
    layout.ensure()
    with open(layout.log, "ab") as log:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "mldeck.agent", "run", "--home", str(layout.home)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )


async def ensure_agent(layout: Layout, timeout_s: float = START_TIMEOUT_S) -> dict[str, Any]:
    """The running agent's status, starting one first if none answers."""
    status = await ping(layout)
    if status:
        return status
    proc = spawn_agent(layout)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = layout.log.read_text(errors="replace").strip().splitlines()[-1:]
            why = " ".join(tail) or f"see {layout.log}"
            raise Unavailable(f"the agent exited at start: {why}")
        status = await ping(layout)
        if status:
            return status
        await asyncio.sleep(0.1)
    raise Unavailable(f"the agent did not answer within {timeout_s:.0f}s; see {layout.log}")


def agent_process(layout: Layout) -> psutil.Process | None:
    """The process that holds this home's lock, named by agent.pid: the agent, whether it answers or not.

    Holding the lock file open is the proof, so a stale agent.pid whose number now belongs to another
    process never names it.
    """
    try:
        proc = psutil.Process(int(layout.pidfile.read_text().strip()))
        held = any(os.path.samefile(f.path, layout.lockfile) for f in proc.open_files()
                   if os.path.exists(f.path))
    except (FileNotFoundError, ValueError, psutil.Error):
        return None
    return proc if held and alive(proc) else None


def alive(proc: psutil.Process) -> bool:
    """Whether the process still runs (a zombie has exited; only its parent has not read its status)."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


async def wait_exit(proc: psutil.Process, timeout_s: float) -> bool:
    """True once the process has exited, False if it still runs after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while alive(proc):
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.1)
    return True


async def stop(layout: Layout, timeout_s: float, say: Callable[[str], None]) -> int | None:
    """Stop this home's agent and wait until its process has exited: its pid, or None if none ran.

    An agent that answers is asked with agent.stop; one that holds the home but does not answer gets
    SIGTERM, which it handles the same way. Conflict if its process still runs after timeout_s.
    """
    status = await ping(layout)
    if status is not None:
        pid = int(status["pid"])
        proc = process(pid)
    else:
        proc = agent_process(layout)
        if proc is None:
            return None
        pid = proc.pid
    if status is not None and await ask_to_stop(layout):
        asked = f"asked the agent (pid {pid}) to stop"
    else:
        if proc is not None:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.terminate()
        asked = f"the agent (pid {pid}) does not answer; sent it SIGTERM"
    if proc is None:  # it answered, then exited before its process could be looked up
        return pid
    say(f"{asked}; waiting up to {timeout_s:g}s for its process to exit…")
    if not await wait_exit(proc, timeout_s):
        raise Conflict(
            f"the agent (pid {pid}) is still running {timeout_s:g}s after it was asked to stop; "
            f"wait and run `mldeck agent stop` again, or end it with `kill -9 {pid}`"
        )
    return pid


async def ask_to_stop(layout: Layout) -> bool:
    """agent.stop; False if no answer (or an error) came back. A connection that closes before the reply
    is an agent already stopping."""
    try:
        client = await asyncio.wait_for(connect_unix(layout.socket), PING_CONNECT_S)
    except (OSError, TimeoutError):
        return False
    try:
        await asyncio.wait_for(client.call("agent.stop"), PING_ANSWER_S)
    except ConnectionLost:
        return True
    except (MldeckError, TimeoutError):
        return False
    finally:
        await client.close()
    return True


def process(pid: int) -> psutil.Process | None:
    """The process with this pid, None if there is none (any more)."""
    try:
        return psutil.Process(pid)
    except psutil.NoSuchProcess:
        return None
