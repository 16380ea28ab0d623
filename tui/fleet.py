"""The connection pool of the CLI and the TUI: one link per host, supervised, reconnecting, fanned out."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mldeck.core import protocol
from mldeck.core.client import Client, ConnectionLost
from mldeck.core.errors import Conflict, MldeckError, Unavailable
from mldeck.core.paths import Layout, mldeck_home
from mldeck.tui.hosts import LOCAL, Host, load_hosts, parse_target
from mldeck.tui.local_agent import ensure_agent

if TYPE_CHECKING:
    import asyncssh

BACKOFF_START_S = 0.25
BACKOFF_MAX_S = 15.0
DEFAULT_TIMEOUT_S = 10.0
CLIENT_NAME = "mldeck-fleet"


class HostDown(Unavailable):
    """The host cannot be reached now; the message says why."""

    def __init__(self, host: str, why: str) -> None:
        super().__init__(f"{host}: {why}")
        self.host = host
        self.why = why


@dataclass
class HostStatus:
    """What a person sees for a host: state is "connecting", "up", "reconnecting" or "down: <why>"."""

    state: str
    why: str = ""
    mode: str = ""
    since: float = field(default_factory=time.time)
    attempts: int = 0
    hello: dict[str, Any] | None = None


@dataclass
class Outcome:
    """One host's answer in a fan-out: a value, or the error that replaced it."""

    value: Any = None
    error: MldeckError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def why(self) -> str | None:
        """The error in words (a host that is down: why, without its name again)."""
        if self.error is None:
            return None
        return self.error.why if isinstance(self.error, HostDown) else self.error.message


class _WatchedReader:
    """Passes reads through and flags end of stream, which is how the supervisor learns of a drop."""

    def __init__(self, reader: Any, lost: asyncio.Event) -> None:
        self._reader = reader
        self._lost = lost

    async def readline(self) -> bytes:
        try:
            line = await self._reader.readline()
        except BaseException:
            self._lost.set()
            raise
        if not line:
            self._lost.set()
        return bytes(line)


class FleetSubscription:
    """One topic on one host as an async iterator that outlives reconnects; close() ends it."""

    def __init__(self, link: _Link, topic: str, filters: dict[str, str]) -> None:
        self.host = link.name
        self.topic = topic
        self.filters = filters
        self.resumed = 0
        self._link = link
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._inner: Any = None
        self._pump: asyncio.Task[None] | None = None
        self._closed = False

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._iter()

    async def _iter(self) -> AsyncIterator[Any]:
        while True:
            item = await self._queue.get()
            if isinstance(item, Exception):
                raise item
            if item is _END:
                return
            yield item

    async def _attach(self, client: Client, resumed: bool) -> None:
        try:
            self._inner = await client.subscribe(self.topic, **self.filters)
        except MldeckError as exc:
            if client.closed:
                return  # the link dropped meanwhile; the next connect retries
            self._link.subs.discard(self)
            self._queue.put_nowait(exc)
            return
        self.resumed += resumed
        self._pump = asyncio.get_running_loop().create_task(self._forward(self._inner))

    async def _forward(self, inner: Any) -> None:
        with contextlib.suppress(MldeckError):
            async for item in inner:
                self._queue.put_nowait(item)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._link.subs.discard(self)
        if self._pump:
            self._pump.cancel()
        if self._inner is not None and not self._inner.client.closed:
            await self._inner.close()
        self._queue.put_nowait(_END)


_END = object()


class _Link:
    """One host's connection and the task that keeps it alive."""

    def __init__(self, name: str, host: Host | None, local_home: Path | None) -> None:
        self.name = name
        self.host = host
        self.local_home = local_home
        self.timeout_s = host.timeout_s if host else DEFAULT_TIMEOUT_S
        self.status = HostStatus("connecting")
        self.client: Client | None = None
        self.ssh: asyncssh.SSHClientConnection | None = None
        self.remote_home: str | None = host.home if host else None
        self.subs: set[FleetSubscription] = set()
        self.attaching: set[asyncio.Task[None]] = set()
        self.task: asyncio.Task[None] | None = None
        self.wake = asyncio.Event()
        self.outcome: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()

    @property
    def up(self) -> bool:
        return self.status.state == "up" and self.client is not None and not self.client.closed

    def set_state(self, state: str, why: str = "") -> None:
        if state != self.status.state or why != self.status.why:
            self.status.state, self.status.why, self.status.since = state, why, time.time()

    def settle(self, failure: str | None) -> None:
        """Tell whoever waits on this attempt how it ended, and arm the next attempt's future."""
        if not self.outcome.done():
            self.outcome.set_result(failure)
        self.outcome = asyncio.get_running_loop().create_future()


class Fleet:
    """All hosts the user manages; use `async with Fleet(...)` or call close()."""

    def __init__(self, hosts: Mapping[str, Host | None] | None = None, *,
                 local_home: Path | str | None = None, ssh_options: dict[str, Any] | None = None,
                 start_local: bool = False) -> None:
        self._local_home = Path(local_home) if local_home else None
        self._start_local = start_local
        self._ssh_options = dict(ssh_options or {})
        self._links: dict[str, _Link] = {}
        self._closing = False
        for name, host in (hosts or {}).items():
            self.add(name, host)

    @classmethod
    def from_config(cls, local_home: Path | str | None = None, include_local: bool = True,
                    **kwargs: Any) -> Fleet:
        """The local agent (if wanted) plus every host of the hosts file."""
        hosts: dict[str, Host | None] = {LOCAL: None} if include_local else {}
        hosts.update(load_hosts())
        return cls(hosts, local_home=local_home, **kwargs)

    async def __aenter__(self) -> Fleet:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def names(self) -> list[str]:
        return list(self._links)

    @property
    def hosts(self) -> list[str]:
        """Host names in the order they were added ("local" first when it is there)."""
        return list(self._links)

    def add(self, name: str, host: Host | None) -> None:
        """Add a host (None: the local agent); connecting starts at its first use."""
        if name in self._links:
            raise Conflict(f"host {name!r} is in the fleet already")
        if host is not None:
            parse_target(host.target)
        self._links[name] = _Link(name, host, self._local_home)

    def status(self, name: str) -> HostStatus:
        return self._link(name).status

    def state(self, name: str) -> str:
        """ "connecting", "up", "reconnecting" or "down: <why>"."""
        status = self._link(name).status
        return f"down: {status.why}" if status.state == "down" else status.state

    def states(self) -> dict[str, str]:
        return {name: self.state(name) for name in self._links}

    def start(self, names: Iterable[str] | None = None) -> None:
        """Begin connecting now (the TUI does this at start); calls do it on demand anyway."""
        for name in names or self.names:
            self._ensure(self._link(name))

    async def client(self, name: str, timeout_s: float | None = None) -> Client:
        """The host's live client, waiting for the current connection attempt; HostDown if it fails."""
        link = self._link(name)
        timeout_s = link.timeout_s if timeout_s is None else timeout_s
        self._ensure(link)
        if link.up:
            return link.client  # type: ignore[return-value]
        link.wake.set()
        try:
            failure = await asyncio.wait_for(asyncio.shield(link.outcome), timeout_s)
        except TimeoutError:
            raise HostDown(name, f"{link.status.state}: no connection within {timeout_s:g}s"
                           + (f" ({link.status.why})" if link.status.why else "")) from None
        if failure is not None or not link.up:
            raise HostDown(name, failure or "connection lost again")
        return link.client  # type: ignore[return-value]

    async def call(self, host: str, method: str, /, *, timeout_s: float | None = None, **params: Any) -> Any:
        """One RPC on one host within timeout_s (the host's own timeout by default)."""
        link = self._link(host)
        timeout_s = link.timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout_s
        client = await self.client(host, timeout_s)
        try:
            left = max(0.0, deadline - time.monotonic())
            return await asyncio.wait_for(client.call(method, **params), left)
        except TimeoutError:
            raise HostDown(host, f"no answer to {method} within {timeout_s:g}s") from None
        except ConnectionLost as exc:  # the link dropped mid-call: the host is down until it reconnects
            raise HostDown(host, exc.message) from None

    def subscribe(self, host: str, topic: str, **filters: str) -> FleetSubscription:
        """Events of a topic as an async iterator; it resubscribes by itself after every reconnect."""
        link = self._link(host)
        sub = FleetSubscription(link, topic, filters)
        link.subs.add(sub)
        self._ensure(link)
        if link.up:
            task = asyncio.get_running_loop().create_task(sub._attach(link.client, False))  # type: ignore[arg-type]
            link.attaching.add(task)
            task.add_done_callback(link.attaching.discard)
        return sub

    async def gather(self, method: str, /, *, hosts: Iterable[str] | None = None,
                     timeout_s: float | None = None, **params: Any) -> dict[str, Outcome]:
        """The same call on many hosts at once; each has its own timeout, so a slow one delays none."""
        names = list(self.names if hosts is None else hosts)

        async def one(name: str) -> Outcome:
            try:
                return Outcome(await self.call(name, method, timeout_s=timeout_s, **params))
            except MldeckError as exc:
                return Outcome(error=exc)

        results = await asyncio.gather(*(one(n) for n in names))
        return dict(zip(names, results, strict=True))

    async def close(self) -> None:
        """Stop every supervisor; each also ends on its own at _closing, as a cancel can get lost."""
        self._closing = True
        for link in self._links.values():
            for sub in list(link.subs):
                await sub.close()
            while link.task and not link.task.done():
                link.task.cancel()
                link.wake.set()
                await asyncio.wait([link.task], timeout=1.0)
            await self._drop(link)

    def _link(self, name: str) -> _Link:
        try:
            return self._links[name]
        except KeyError:
            raise HostDown(name, f"not in this fleet (hosts: {', '.join(self._links)})") from None

    def _ensure(self, link: _Link) -> None:
        if self._closing:
            raise HostDown(link.name, "the fleet is closed")
        if link.task is None or link.task.done():
            if link.host is not None:
                import mldeck.tui.ssh  # noqa: F401  asyncssh's import (0.5 s, more on a busy box) on no host's clock
            loop = asyncio.get_running_loop()
            link.task = loop.create_task(self._supervise(link), name=f"fleet:{link.name}")

    async def _supervise(self, link: _Link) -> None:
        """Connect, serve until the stream ends, reconnect with backoff; restore subscriptions each time."""
        backoff = BACKOFF_START_S
        was_up = False
        while not self._closing:
            link.set_state("reconnecting" if was_up else "connecting", link.status.why)
            link.status.attempts += 1
            lost = asyncio.Event()
            try:
                await asyncio.wait_for(self._open(link, lost), link.timeout_s)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                why = self._describe(link, exc)
                await self._drop(link)
                link.set_state("reconnecting" if was_up else "down", why)
                link.settle(why)
                link.wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(link.wake.wait(), backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_S)
                continue
            was_up, backoff = True, BACKOFF_START_S
            link.set_state("up")
            link.settle(None)
            for sub in list(link.subs):
                await sub._attach(link.client, link.status.attempts > 1)  # type: ignore[arg-type]
            await lost.wait()
            link.status.why = "connection lost"
            await self._drop(link)

    def _describe(self, link: _Link, exc: BaseException) -> str:
        if link.host is None:
            sock = Layout(mldeck_home(link.local_home)).socket
            if isinstance(exc, FileNotFoundError | ConnectionRefusedError):
                return f"no agent running at {sock}; start one with `mldeck agent start`"
            if isinstance(exc, TimeoutError):
                return f"the agent at {sock} did not answer within {link.timeout_s:g}s"
            return exc.message if isinstance(exc, MldeckError) else f"{sock}: {exc}"
        if isinstance(exc, MldeckError):
            return exc.message
        from mldeck.tui import ssh

        return ssh.describe(exc, parse_target(link.host.target), link.timeout_s)

    async def _open(self, link: _Link, lost: asyncio.Event) -> None:
        if link.host is None:
            layout = Layout(mldeck_home(link.local_home))
            if self._start_local:
                await ensure_agent(layout)
            sock = layout.socket
            reader, writer = await asyncio.open_unix_connection(str(sock), limit=protocol.MAX_MESSAGE)
            link.status.mode = "unix"
            link.client = Client(_WatchedReader(reader, lost), writer)
        else:
            from mldeck.tui import ssh  # asyncssh costs ~0.5 s to import: only when a remote host is used

            host = link.host
            python = host.python or ssh.DEFAULT_PYTHON
            link.ssh = await ssh.connect(parse_target(host.target), link.timeout_s, self._ssh_options)
            if link.remote_home is None:
                link.remote_home = await ssh.remote_home(link.ssh, python, link.timeout_s)
            stream = await ssh.open_agent_stream(link.ssh, link.remote_home, python)
            link.status.mode = stream.mode
            link.client = Client(_WatchedReader(stream.reader, lost), stream.writer)
            try:
                link.status.hello = await link.client.call("hello", client=CLIENT_NAME)
                return
            except MldeckError as exc:
                said = (await stream.bridge_error()).strip()
                if not said:
                    raise
                raise ssh.SshError(f"{said.splitlines()[-1]} (on {link.name}; "
                                   f"`mldeck agent start --host {link.name}` starts one)") from exc
        link.status.hello = await link.client.call("hello", client=CLIENT_NAME)

    async def _drop(self, link: _Link) -> None:
        client, conn = link.client, link.ssh
        link.client, link.ssh = None, None
        if client is not None:
            await client.close()
        if conn is not None:
            conn.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.wait_closed(), 1.0)
