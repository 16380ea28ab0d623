"""From --host/--home to a connected client: the local socket, or a host over SSH through the Fleet."""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from mldeck.core.client import Client, connect_unix
from mldeck.core.paths import Layout, mldeck_home
from mldeck.tui.cli.output import CliError
from mldeck.tui.hosts import LOCAL, Host, HostsError, resolve


def local_layout(args: argparse.Namespace) -> Layout:
    return Layout(mldeck_home(getattr(args, "home", None)))


async def open_local(layout: Layout) -> Client:
    try:
        return await connect_unix(layout.socket)
    except (FileNotFoundError, ConnectionRefusedError):
        raise CliError(
            f"no agent running for {layout.home}; start one with `mldeck agent start`"
            + (f" --home {layout.home}" if layout.home != mldeck_home() else "")
        ) from None
    except PermissionError:
        raise CliError(f"{layout.socket} belongs to another user") from None


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
    from mldeck.tui.fleet import Fleet, HostDown  # asyncssh loads only for remote hosts

    async with Fleet({name: host}) as fleet:
        try:
            client = await fleet.client(name)
        except HostDown as exc:
            raise CliError(f"host {exc.message}") from None
        yield client


async def call_agent(args: argparse.Namespace, method: str, /, **params: Any) -> Any:
    """Most commands ask their agent one thing: connecting and closing need not be spelled out in each."""
    async with agent_client(args) as client:
        return await client.call(method, **params)


def remote_host(args: argparse.Namespace) -> tuple[str, Host | None]:
    """--host → (name, Host), Host None for the local agent; unknown names are a CliError."""
    try:
        name, host = resolve(getattr(args, "host", None))
    except HostsError as exc:
        raise CliError(str(exc)) from None
    if host is not None and getattr(args, "home", None) and name.startswith("ssh://"):
        host = Host(target=host.target, home=args.home)
    return (LOCAL, None) if host is None else (name, host)
