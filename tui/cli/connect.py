"""From --host/--home to a connected client: the local socket, or a host over SSH through the Fleet."""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from mldeck.core.client import Client, connect_unix
from mldeck.core.errors import Refused, Unavailable
from mldeck.core.paths import Layout, mldeck_home
from mldeck.tui.fleet import Fleet
from mldeck.tui.hosts import LOCAL, Host, resolve


def local_layout(args: argparse.Namespace) -> Layout:
    return Layout(mldeck_home(getattr(args, "home", None)))


async def open_local(layout: Layout) -> Client:
    try:
        return await connect_unix(layout.socket)
    except (FileNotFoundError, ConnectionRefusedError):
        raise Unavailable(
            f"no agent running for {layout.home}; start one with `mldeck agent start`"
            + (f" --home {layout.home}" if layout.home != mldeck_home() else "")
        ) from None
    except PermissionError:
        raise Refused(f"{layout.socket} belongs to another user") from None


@contextlib.asynccontextmanager
async def agent_client(args: argparse.Namespace) -> AsyncIterator[Client]:
    """The agent the command is about, connected, and closed afterwards."""
    name, host = remote_host(args)
    if host is None:
        client = await open_local(local_layout(args))
        try:
            yield client
        finally:
            await client.close()
        return
    async with Fleet({name: host}) as fleet:
        yield await fleet.client(name)


async def call_agent(args: argparse.Namespace, method: str, /, **params: Any) -> Any:
    """Most commands ask their agent one thing: connecting and closing need not be spelled out in each."""
    async with agent_client(args) as client:
        return await client.call(method, **params)


def remote_host(args: argparse.Namespace) -> tuple[str, Host | None]:
    """--host → (name, Host), Host None for the local agent; an unknown name is a HostsError."""
    name, host = resolve(getattr(args, "host", None))
    if host is not None and getattr(args, "home", None) and name.startswith("ssh://"):
        host = Host(target=host.target, home=args.home)
    return (LOCAL, None) if host is None else (name, host)
