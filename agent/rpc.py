"""The control socket: JSON-RPC dispatch, subscriptions, and the framing that never drops a client."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import logging
import os
import resource
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import msgspec

from mldeck.core import protocol
from mldeck.core.config import SocketSection
from mldeck.core.errors import BadRequest, Internal, MethodNotAvailable, MldeckError, TooLarge, Unavailable

log = logging.getLogger("mldeck.rpc")

CONNECTION_QUEUE = 1000
"""Messages that may wait for one client: past it, its events are dropped (counted) and its requests are
not read until it reads; a reply is never dropped."""
ACCEPT_BACKLOG = 128
ACCEPT_RETRY_S = 0.5  # after accept failed (the process out of file handles, say)
REFUSE_LINGER_S = 0.5  # how long a refused client's request is read and dropped before it is closed
MAX_LINGERING = 16  # refused clients that linger at once; past that (a flood) they are closed at once
REFUSAL_LOG_S = 60.0
"""One kind of refusal is logged at most once in this long (a flood is one line); `agent status` counts
every one."""


@dataclass
class Refused:
    """How often the control socket refused something for one reason, the last refusal, and what it has
    not logged since its last line about them."""

    count: int = 0
    last: str = ""
    last_at: float = 0.0
    logged_at: float | None = None
    unlogged: int = 0


class Refusals:
    """What the control socket refused or lost (clients over its cap, oversized messages, lines that are no
    request, clients that said nothing, messages to clients that do not read, failed accepts), by why:
    counted for `agent status`, logged at most every REFUSAL_LOG_S."""

    def __init__(self) -> None:
        self.kinds: dict[str, Refused] = {}

    def add(self, kind: str, why: str) -> None:
        seen = self.kinds.setdefault(kind, Refused())
        seen.count += 1
        seen.last, seen.last_at = why, time.time()
        now = time.monotonic()
        if seen.logged_at is not None and now - seen.logged_at < REFUSAL_LOG_S:
            seen.unlogged += 1
            return
        more = f" ({seen.unlogged} more like it since the last such line)" if seen.unlogged else ""
        log.warning("%s%s; `mldeck agent status` counts them", why, more)
        seen.logged_at, seen.unlogged = now, 0

    def status(self) -> dict[str, dict[str, Any]]:
        return {kind: {"count": seen.count, "last": seen.last, "last_at": seen.last_at}
                for kind, seen in self.kinds.items()}


class Method(NamedTuple):
    params: type[msgspec.Struct]
    handler: Callable[..., Awaitable[Any]]
    takes_conn: bool


def _method(handler: Callable[..., Awaitable[Any]]) -> Method:
    """A bound `@rpc` method's params type (its first argument's annotation) and whether it takes conn."""
    args = list(inspect.signature(handler).parameters.values())
    kind = args[0].annotation
    if isinstance(kind, str):  # postponed annotations: resolve the name where the method was written
        kind = eval(kind, handler.__globals__)  # our own source's annotation, as get_type_hints does
    return Method(kind, handler, len(args) > 1)


class Dispatcher:
    """Method name → its params type and handler, bound from the services' `@rpc` methods."""

    def __init__(self) -> None:
        self.methods: dict[str, Method] = {}
        self.refusals = Refusals()

    def bind(self, service: object) -> None:
        """Add every method of `service` marked with `@rpc`."""
        for attr in dir(type(service)):
            name = getattr(getattr(type(service), attr), "__rpc_method__", None)
            if name is None:
                continue
            if name in self.methods:
                raise ValueError(f"method {name} bound twice")
            self.methods[name] = _method(getattr(service, attr))

    async def handle(self, line: bytes, conn: Connection) -> dict[str, Any] | None:
        """Answer one line: its result or a JSON-RPC error; only a notification (no "id") goes unanswered."""
        msg: Any = None
        request = notification = False
        try:
            msg = protocol.decode_request(line)
            _check_request(msg)
            request = True
            notification = "id" not in msg
            entry = self.methods.get(msg["method"])
            if entry is None:
                raise MethodNotAvailable(
                    f"unknown method {msg['method'][:100]!r}; known: {', '.join(sorted(self.methods))}"
                )
            params = protocol.validate(msg.get("params"), entry.params)
            result = await (entry.handler(params, conn) if entry.takes_conn else entry.handler(params))
        except MldeckError as err:  # the one place where errors become wire errors
            if not request:
                self.refusals.add("bad_request", f"control socket: refused a line that is no request of this "
                                  f"agent's: {err.message[:200]}")
            return None if notification else protocol.error_response(_request_id(msg), err)
        except Exception as exc:
            log.exception("method %s failed", msg.get("method") if isinstance(msg, dict) else None)
            err = Internal(f"internal error: {type(exc).__name__}: {exc}")
            return None if notification else protocol.error_response(_request_id(msg), err)
        return None if notification else protocol.response(msg["id"], result)


def _request_id(msg: Any) -> Any:
    """The id to answer with: the request's own if it is a valid one, else null (as JSON-RPC says)."""
    msg_id = msg.get("id") if isinstance(msg, dict) else None
    valid = msg_id is None or isinstance(msg_id, str) or type(msg_id) in (int, float)
    return msg_id if valid else None


def _check_request(msg: Any) -> None:
    """Say what is wrong with a message that is not one JSON-RPC request object."""
    if isinstance(msg, list):
        raise BadRequest("batches are not supported: send one request object per line" if msg
                         else "an empty array is not a request: send one request object per line")
    if not isinstance(msg, dict) or msg.get("jsonrpc") != "2.0" or not isinstance(msg.get("method"), str):
        raise BadRequest(
            'a request is an object with "jsonrpc": "2.0", a "method" string, optional "params" and an "id"'
        )
    if "id" in msg and msg["id"] is not None and _request_id(msg) is None:
        raise BadRequest('a request\'s "id" is a string, a number or null')


class Hub:
    """Topics and their subscribers; publishing never waits on a slow client."""

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self._subs: dict[int, tuple[str, dict[str, str], Connection]] = {}
        self._listeners: dict[str, list[Callable[[Any], None]]] = {}
        self._wire: dict[str, Callable[[Any], Any]] = {}
        self.topics: set[str] = set()

    def declare(self, *topics: str) -> None:
        """Topics a service publishes on, which clients may subscribe to."""
        self.topics.update(topics)

    def wire_form(self, topic: str, form: Callable[[Any], Any]) -> None:
        """What clients get of a topic's data where JSON cannot carry it as it is; listeners get it as is."""
        self._wire[topic] = form

    def on(self, topic: str, callback: Callable[[Any], None]) -> None:
        """An in-process listener (another part of the agent), called on every publish."""
        self._listeners.setdefault(topic, []).append(callback)

    def subscribe(self, topic: str, filters: dict[str, str], conn: Connection) -> int:
        sub_id = next(self._ids)
        self._subs[sub_id] = (topic, filters, conn)
        conn.subscriptions.add(sub_id)
        return sub_id

    def unsubscribe(self, sub_id: int) -> bool:
        entry = self._subs.pop(sub_id, None)
        if entry:
            entry[2].subscriptions.discard(sub_id)
        return entry is not None

    def has_subscribers(self, topic: str) -> bool:
        return any(t == topic for t, _, _ in self._subs.values())

    def publish(self, topic: str, data: Any) -> None:
        for callback in self._listeners.get(topic, ()):
            try:
                callback(data)
            except Exception:
                log.exception("listener on %s failed", topic)
        sent: Any = None
        for sub_id, (t, filters, conn) in list(self._subs.items()):
            if t != topic:
                continue
            if filters and not (
                isinstance(data, dict) and all(str(data.get(k)) == v for k, v in filters.items())
            ):
                continue
            if sent is None:
                sent = self._wire[topic](data) if topic in self._wire else data
            conn.send(protocol.event(topic, sub_id, sent))


class Connection:
    """One client: a reader task, and an outbox drained by a writer task (see CONNECTION_QUEUE)."""

    def __init__(self, writer: asyncio.StreamWriter, peer: str, refusals: Refusals) -> None:
        self.writer = writer
        self.peer = peer
        self.refusals = refusals
        self.subscriptions: set[int] = set()
        self.outbox: asyncio.Queue[bytes] = asyncio.Queue()
        self.room = asyncio.Event()
        """Set while fewer than CONNECTION_QUEUE messages wait: the client's next request is read then."""
        self.room.set()

    def send(self, message: Any) -> None:
        try:
            data = protocol.encode(message)
        except (TypeError, ValueError, OverflowError) as exc:  # a result JSON cannot carry: a bug, answered
            log.exception("a message to %s cannot be encoded", self.peer)
            if "id" not in message:
                return
            data = protocol.encode(protocol.error_response(
                message["id"], Internal(f"internal error: the result cannot be sent as JSON: {exc}")))
        if not self.room.is_set() and "id" not in message:
            self.refusals.add("dropped", f"control socket: dropped an event to a {self.peer} client that "
                              f"does not read ({CONNECTION_QUEUE} messages already wait for it)")
            return
        self.outbox.put_nowait(data)
        if self.outbox.qsize() >= CONNECTION_QUEUE:
            self.room.clear()

    async def write_loop(self) -> None:
        while True:
            data = await self.outbox.get()
            if self.outbox.qsize() < CONNECTION_QUEUE:
                self.room.set()
            self.writer.write(data)
            await self.writer.drain()
            self.outbox.task_done()

    async def flush(self, timeout_s: float) -> None:
        """Let the replies already queued (agent.stop's own, say) reach the client before closing."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.outbox.join(), timeout_s)


def connection_cap(wanted: int) -> int:
    """max_connections, or half the process's file-handle limit when that is lower: the other half stays
    for the store, ingest, jobs and logs, so a flood of clients cannot starve them."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or wanted <= soft // 2:
        return wanted
    cap = max(1, soft // 2)
    log.info("[socket] max_connections %d is over half the file-handle limit (%d): using %d",
             wanted, soft, cap)
    return cap


class RpcServer:
    """Serves a Dispatcher on a UNIX socket only its owner can open, to at most `max_connections` clients;
    one that sends no whole request for `idle_timeout_s` (and has no subscription) is closed.

    It accepts one connection at a time itself (asyncio's server accepts up to its backlog at once and logs
    a traceback for each that the file-handle limit refuses), so open handles never pass the cap by more
    than the few refused clients still being answered."""

    def __init__(self, dispatcher: Dispatcher, hub: Hub, limits: SocketSection) -> None:
        self.dispatcher = dispatcher
        self.hub = hub
        self.connections: set[Connection] = set()
        self.max_connections = connection_cap(limits.max_connections)
        self.idle_timeout_s = limits.idle_timeout_s
        self.served = 0  # connections accepted and not yet closed (self.connections once each is set up)
        self.lingering = 0
        self.refused = 0
        """Connections refused since the socket was last under its cap (said when it takes clients again)."""
        self.refusals = dispatcher.refusals
        self._listener: socket.socket | None = None
        self._accepting: asyncio.Future[None] | None = None
        self._tasks: set[asyncio.Future[None]] = set()

    async def start(self, path: Path) -> None:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            listener.bind(str(path))
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        listener.listen(ACCEPT_BACKLOG)
        listener.setblocking(False)
        self._listener = listener
        self._accepting = self._spawn(self._accept_loop(listener))

    async def stop(self) -> None:
        if self._listener is None or self._accepting is None:
            return
        self._accepting.cancel()
        await asyncio.wait([self._accepting])
        self._listener.close()
        conns = list(self.connections)
        await asyncio.gather(*(conn.flush(1.0) for conn in conns))
        for conn in conns:
            conn.writer.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=2)

    async def serve_streams(self, reader: asyncio.StreamReader, writer: Any) -> None:
        """Serve one client on any stream pair (the socket, or a bridge's stdin/stdout)."""
        await self._serve(reader, writer)

    def _spawn(self, coro: Awaitable[None]) -> asyncio.Future[None]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Future[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("control socket: a client's task failed", exc_info=task.exception())

    async def _accept_loop(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        failing = False
        while True:
            try:
                sock, _ = await loop.sock_accept(listener)
            except OSError as exc:  # no file handle left, say: counted, retried until it passes
                self.refusals.add("accept", f"control socket: cannot accept clients: {exc}; retrying every "
                                  f"{ACCEPT_RETRY_S:g} s")
                failing = True
                await asyncio.sleep(ACCEPT_RETRY_S)
                continue
            if failing:
                log.info("control socket: accepting clients again")
            failing = False
            if self.served >= self.max_connections:
                self._refuse(sock)
                continue
            if self.refused:
                log.info("control socket: accepting clients again (%d refused while full)", self.refused)
                self.refused = 0
            self.served += 1
            self._spawn(self._serve_socket(sock))

    async def _serve_socket(self, sock: socket.socket) -> None:
        try:
            reader, writer = await asyncio.open_unix_connection(sock=sock, limit=protocol.MAX_MESSAGE)
        except OSError as exc:
            log.warning("control socket: a client could not be set up: %s", exc)
            self.served -= 1
            sock.close()
            return
        try:
            await self._serve(reader, writer)
        finally:
            if writer.transport.get_write_buffer_size():  # a client that does not read: drop what it left
                writer.transport.abort()
            self.served -= 1

    async def _serve(self, reader: asyncio.StreamReader, writer: Any) -> None:
        conn = Connection(writer, "local", self.refusals)
        self.connections.add(conn)
        writer_task = asyncio.create_task(conn.write_loop())
        try:
            while True:
                await conn.room.wait()
                line = await self._next_line(reader, conn)
                if line is None:
                    break
                if not line.strip():
                    continue
                reply = await self.dispatcher.handle(line, conn)
                if reply is not None:
                    conn.send(reply)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            for sub_id in list(conn.subscriptions):
                self.hub.unsubscribe(sub_id)
            self.connections.discard(conn)
            with contextlib.suppress(asyncio.TimeoutError, Exception):
                await asyncio.wait_for(self._drain(conn), 1)
            writer_task.cancel()
            with contextlib.suppress(Exception):
                writer.close()

    def _refuse(self, sock: socket.socket) -> None:
        """One error for a client over the cap, then it is closed. What it sent meanwhile is read and dropped
        for a moment (for a few clients at a time), so its write does not fail before it reads why."""
        self.refused += 1
        self.refusals.add("full", f"control socket full ({self.served} open): refusing new clients "
                          "([socket] max_connections in agent.toml)")
        err = Unavailable(
            f"too many connections ({self.served} open); the agent serves at most "
            f"{self.max_connections} clients at once ([socket] max_connections in agent.toml): "
            "close idle clients and retry"
        )
        try:  # a few hundred bytes into a new connection's empty buffer: sent whole or not at all
            sock.send(protocol.encode(protocol.error_response(None, err)))
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            sock.close()
            return
        if self.lingering >= MAX_LINGERING:
            sock.close()
            return
        self.lingering += 1
        self._spawn(self._linger(sock))

    async def _linger(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        try:
            with contextlib.suppress(OSError, TimeoutError):
                async with asyncio.timeout(REFUSE_LINGER_S):
                    while await loop.sock_recv(sock, 65536):
                        pass
        finally:
            self.lingering -= 1
            sock.close()

    async def _next_line(self, reader: asyncio.StreamReader, conn: Connection) -> bytes | None:
        """The next line; None at EOF, or once a client without subscriptions sent no whole line for
        idle_timeout_s (it is told why)."""
        if conn.subscriptions:
            return await self._read_line(reader, conn)
        try:
            return await asyncio.wait_for(self._read_line(reader, conn), self.idle_timeout_s)
        except TimeoutError:
            self.refusals.add("idle", f"control socket: closed a client that sent no whole request in "
                              f"{self.idle_timeout_s:g} s ([socket] idle_timeout_s in agent.toml)")
            conn.send(protocol.error_response(None, Unavailable(
                f"closed: no whole request in {self.idle_timeout_s:g} s ([socket] idle_timeout_s, agent.toml)"
            )))
            return None

    @staticmethod
    async def _drain(conn: Connection) -> None:
        while not conn.outbox.empty():
            await asyncio.sleep(0.01)

    async def _read_line(self, reader: asyncio.StreamReader, conn: Connection) -> bytes | None:
        """The next line, or None at EOF; an oversized line is skipped with an error."""
        try:
            line = await reader.readuntil(b"\n")
        except asyncio.IncompleteReadError as exc:
            return exc.partial or None
        except asyncio.LimitOverrunError:
            await RpcServer._skip_line(reader)
            self.refusals.add("too_large", "control socket: refused a message larger than "
                              f"{protocol.MAX_MESSAGE} bytes")
            conn.send(protocol.error_response(None, TooLarge(
                f"message larger than {protocol.MAX_MESSAGE} bytes refused; send smaller requests"
            )))
            return b""
        return line

    @staticmethod
    async def _skip_line(reader: asyncio.StreamReader) -> None:
        while True:
            try:
                await reader.readuntil(b"\n")
                return
            except asyncio.LimitOverrunError as exc:
                await reader.readexactly(exc.consumed)
            except asyncio.IncompleteReadError:
                return
