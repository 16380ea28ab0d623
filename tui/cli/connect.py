"""From --host/--home to a connected client: the local socket, or (later) SSH."""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import AsyncIterator

from core.client import Client, connect_unix
from core.paths import Layout, mldeck_home
from tui.cli.output import CliError


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
    host = getattr(args, "host", None)
    if host not in (None, "", "local"):
        raise CliError(f"remote host {host!r}: SSH support is not available in this build")
    client = await open_local(local_layout(args))
    try:
        yield client
    finally:
        await client.close()
