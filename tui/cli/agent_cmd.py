"""`mldeck agent start|stop|status`: manage the agent of a home."""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from typing import Any

from core.client import connect_unix
from core.paths import Layout
from core.protocol import RpcError
from tui.cli.connect import agent_client, local_layout
from tui.cli.output import CliError, duration, print_json

START_TIMEOUT_S = 30.0


async def ping(layout: Layout) -> dict[str, Any] | None:
    """The agent's status if one answers on this home's socket."""
    try:
        client = await asyncio.wait_for(connect_unix(layout.socket), 2)
    except (OSError, TimeoutError):
        return None
    try:
        return await asyncio.wait_for(client.call("agent.status"), 5)
    except (RpcError, TimeoutError):
        return None
    finally:
        await client.close()


def spawn_agent(layout: Layout) -> subprocess.Popen[bytes]:
    """Start `python -m agent run` detached from this terminal, logging to agent.log."""
    layout.ensure()
    log = open(layout.log, "ab")  # noqa: SIM115 (handed to the child)
    return subprocess.Popen(
        [sys.executable, "-m", "agent", "run", "--home", str(layout.home)],
        stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


async def ensure_agent(layout: Layout, timeout_s: float = START_TIMEOUT_S) -> dict[str, Any]:
    """Return the running agent's status, starting one first if none answers."""
    status = await ping(layout)
    if status:
        return status
    proc = spawn_agent(layout)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = layout.log.read_text(errors="replace").strip().splitlines()[-1:]
            why = " ".join(tail) or f"see {layout.log}"
            raise CliError(f"the agent exited at start: {why}")
        status = await ping(layout)
        if status:
            return status
        await asyncio.sleep(0.1)
    raise CliError(f"the agent did not answer within {timeout_s:.0f}s; see {layout.log}")


async def start(args: argparse.Namespace) -> int:
    layout = local_layout(args)
    if args.foreground:
        os.execv(sys.executable, [sys.executable, "-m", "agent", "run", "--home", str(layout.home)])
    already = await ping(layout)
    status = already or await ensure_agent(layout)
    if args.json:
        print_json({**status, "already_running": bool(already)})
    else:
        word = "already running" if already else "started"
        print(f"agent {word}: pid {status['pid']}, home {status['home']}")
    return 0


async def stop(args: argparse.Namespace) -> int:
    layout = local_layout(args)
    status = await ping(layout)
    if not status:
        if args.json:
            print_json({"stopped": False, "running": False})
        else:
            print(f"no agent running for {layout.home}")
        return 0
    async with agent_client(args) as client:
        await client.call("agent.stop")
    for _ in range(100):
        if not layout.socket.exists():
            break
        await asyncio.sleep(0.1)
    if args.json:
        print_json({"stopped": True, "pid": status["pid"]})
    else:
        print(f"agent stopped (pid {status['pid']})")
    return 0


async def status_cmd(args: argparse.Namespace) -> int:
    layout = local_layout(args)
    status = await ping(layout)
    if args.json:
        print_json({"running": bool(status), **(status or {"home": str(layout.home)})})
        return 0 if status else 3
    if not status:
        print(f"agent: not running (home {layout.home})")
        return 3
    print(f"agent: running, pid {status['pid']}, up {duration(status['uptime_s'])}")
    print(f"home: {status['home']}")
    print(f"memory: {status['rss_bytes'] / 2**20:.0f} MiB, clients: {status['connections']}")
    print(f"ingest: {status['ingest']['rows']} lines, {status['ingest']['bad_lines']} bad")
    print(f"gpus: {status['nvml']}")
    return 0


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    agent = sub.add_parser("agent", help="start, stop or inspect the agent")
    cmds = agent.add_subparsers(dest="agent_command", metavar="ACTION", required=True)
    p = cmds.add_parser("start", parents=[common], help="start the agent in the background")
    p.add_argument("--foreground", action="store_true", help="run in this terminal")
    p.set_defaults(func=start)
    p = cmds.add_parser("stop", parents=[common], help="stop the agent")
    p.set_defaults(func=stop)
    p = cmds.add_parser("status", parents=[common], help="is it running, and how is it doing")
    p.set_defaults(func=status_cmd)
