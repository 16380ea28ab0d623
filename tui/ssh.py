"""SSH transport: one asyncssh connection per host, a stream to the remote agent.sock, clear errors."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import socket
from pathlib import Path
from typing import Any

import asyncssh

from mldeck.core.errors import Unavailable
from mldeck.tui.hosts import DEFAULT_PORT, Target

KEEPALIVE_INTERVAL_S = 5.0
KEEPALIVE_COUNT_MAX = 3
DEFAULT_PYTHON = "python3"
REMOTE_HOME_CODE = "from mldeck.core.paths import mldeck_home; print(mldeck_home())"


class SshError(Unavailable):
    """A failure to reach a host, in one line that says what to do about it."""


def _known_hosts_file(options: dict[str, Any]) -> str:
    given = options.get("known_hosts")
    return str(given) if isinstance(given, str | os.PathLike) else "~/.ssh/known_hosts"


def _host_key_error(target: Target, options: dict[str, Any]) -> SshError:
    """Unknown and changed keys both fail; tell them apart so the advice fits."""
    path = _known_hosts_file(options)
    port = target.port or DEFAULT_PORT
    entry = target.host if port == DEFAULT_PORT else f"[{target.host}]:{port}"
    known: tuple[Any, ...] = ()
    with contextlib.suppress(OSError, ValueError):
        known = asyncssh.read_known_hosts(os.path.expanduser(path)).match(target.host, "", port)[0]
    if known:
        return SshError(
            f"{target}: the host key CHANGED since it was recorded in {path}; this may be an attack "
            f"or a reinstalled host. If you know the key changed, remove the old one with "
            f"`ssh-keygen -R '{entry}'` and add the new one; mldeck will not connect until then"
        )
    login = f"{target.user}@{target.host}" if target.user else target.host
    return SshError(
        f"{target}: host key is unknown (not in {path}); verify its fingerprint, then record it by "
        f"connecting once with `ssh -p {port} {login}` or `ssh-keyscan -p {port} {target.host} >> {path}`"
    )


def describe(exc: BaseException, target: Target, timeout_s: float) -> str:
    """One line for the host's state and for the CLI."""
    where = f"{target.host}:{target.port or DEFAULT_PORT}"
    if isinstance(exc, SshError):
        return str(exc)
    if isinstance(exc, TimeoutError):
        return f"no answer from {where} within {timeout_s:g}s"
    if isinstance(exc, ConnectionRefusedError):
        return f"connection refused by {where} (is sshd running there?)"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve host name {target.host!r}"
    if isinstance(exc, asyncssh.PermissionDenied):
        return (f"permission denied by {where}: no key accepted; load one into ssh-agent or set "
                "IdentityFile for this host in ~/.ssh/config")
    if isinstance(exc, asyncssh.Error):
        return f"SSH error from {where}: {exc.reason}"
    if isinstance(exc, OSError):
        return f"cannot reach {where}: {exc.strerror or exc}"
    return f"{type(exc).__name__}: {exc}"


async def connect(target: Target, timeout_s: float, options: dict[str, Any] | None = None,
                  ) -> asyncssh.SSHClientConnection:
    """Open an SSH connection honouring ~/.ssh/config, ssh-agent and known_hosts; keepalives on."""
    options = dict(options or {})
    if "known_hosts" in options and options["known_hosts"] is None:
        raise ValueError("host-key checking cannot be turned off; pin the key in a known_hosts file")
    kwargs: dict[str, Any] = {
        "keepalive_interval": KEEPALIVE_INTERVAL_S,
        "keepalive_count_max": KEEPALIVE_COUNT_MAX,
        "connect_timeout": timeout_s,
        **options,
    }
    if target.user:
        kwargs["username"] = target.user
    if target.port:
        kwargs["port"] = target.port
    try:
        return await asyncssh.connect(target.host, **kwargs)
    except asyncssh.HostKeyNotVerifiable:
        raise _host_key_error(target, options) from None


class Stream:
    """Reader and writer of one channel to the agent, and how it was opened."""

    def __init__(self, reader: Any, writer: Any, mode: str, process: Any = None) -> None:
        self.reader = reader
        self.writer = writer
        self.mode = mode
        self.process = process

    async def bridge_error(self) -> str:
        """What the exec bridge printed on stderr before it gave up, if it did."""
        if self.process is None:
            return ""
        try:
            return (await asyncio.wait_for(self.process.stderr.read(4096), 1.0)).decode(errors="replace")
        except (TimeoutError, asyncssh.Error, OSError):
            return ""


async def run_checked(conn: asyncssh.SSHClientConnection, argv: list[str], timeout_s: float,
                      what: str) -> str:
    """Run one remote command (argv quoted part by part); its stdout, or SshError with its stderr."""
    try:
        done = await conn.run(shlex.join(argv), timeout=timeout_s)
    except asyncssh.TimeoutError:
        raise SshError(f"{what}: no result within {timeout_s:g}s") from None
    if done.exit_status != 0:
        err = str(done.stderr or done.stdout or "").strip().splitlines()[-1:] or [f"exit {done.exit_status}"]
        raise SshError(f"{what} failed: {err[0]}")
    return str(done.stdout)


async def remote_home(conn: asyncssh.SSHClientConnection, python: str, timeout_s: float) -> str:
    """The agent home the remote user gets by default (its $MLDECK_HOME or XDG default)."""
    out = await run_checked(conn, [python, "-c", REMOTE_HOME_CODE], timeout_s,
                            f"asking {python} on the host for mldeck's home")
    return out.strip()


async def open_agent_stream(conn: asyncssh.SSHClientConnection, home: str, python: str) -> Stream:
    """direct-streamlocal to agent.sock; where sshd refuses it, an exec channel running the bridge."""
    try:
        reader, writer = await conn.open_unix_connection(str(Path(home) / "agent.sock"))
        return Stream(reader, writer, "streamlocal")
    except asyncssh.ChannelOpenError:
        pass
    process = await conn.create_process(
        shlex.join([python, "-m", "mldeck.agent", "bridge", "--home", home]), encoding=None
    )
    return Stream(process.stdout, process.stdin, "bridge", process)
