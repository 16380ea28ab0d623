"""Slow and hostile clients: a header timeout, an idle timeout and a cap on open connections.

aiohttp closes a connection that waits past `keepalive_timeout` for its next request, but
counts a request trickled in a byte at a time as waiting too, and never limits how many
connections are open: a slowloris runs the process out of file handles and good clients
fail. Here every connection is a GuardedHandler the Guard knows about:

- a request's headers must be whole `header_timeout_s` after its first byte (or after the
  connection opened): past that the client gets a 408 and the connection closes;
- an idle keep-alive connection closes after `idle_timeout_s`;
- past `max_connections` one is closed to make room: the oldest that never sent a whole
  request, else the one idle the longest; a client mid-request is never cut off, and when
  every connection is mid-request the newcomer gets a 503.

The body timeout is the handler's (it reads the body). Every error aiohttp itself answers
(a malformed request line, say) is JSON too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any

import msgspec
from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from mldeck.agent.serving.metrics import Metrics

log = logging.getLogger("mldeck.serving.guard")

LINGER_S = 1.0  # how long an unread request body is drained after the answer, before closing
RESERVED_FILES = 256  # file handles kept for models, logs and the loader, below the process limit

_encode = msgspec.json.Encoder().encode


def raw_reply(status: int, message: str) -> bytes:
    """A whole HTTP/1.1 response that closes the connection, for when no handler runs."""
    body = _encode({"error": message})
    phrase = HTTPStatus(status).phrase
    head = (f"HTTP/1.1 {status} {phrase}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
    return head.encode() + body


def connection_limit(wanted: int) -> int:
    """max_connections, or fewer when the process may not open that many files (raised to the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = wanted + RESERVED_FILES
    if soft != resource.RLIM_INFINITY and soft < need:
        target = need if hard == resource.RLIM_INFINITY else min(need, hard)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    if soft == resource.RLIM_INFINITY:
        return wanted
    limit = max(16, min(wanted, soft - RESERVED_FILES))
    if limit < wanted:
        log.warning("max_connections %d is over what the file limit allows (%d files): using %d",
                    wanted, soft, limit)
    return limit


class GuardedHandler(RequestHandler):
    """aiohttp's connection handler, reporting to the Guard, answering its own errors as JSON."""

    __slots__ = ("busy", "first_byte", "guard", "since")

    def __init__(self, guard: Guard, manager: web.Server, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self.guard = guard
        self.since = 0.0  # when it opened, or its last request was answered
        self.first_byte: float | None = None  # when a request that is not yet whole began
        self.busy = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.guard.opened(self)

    def connection_lost(self, exc: BaseException | None) -> None:
        self.guard.closed(self)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if not self.busy and self.first_byte is None and data:
            self.first_byte = self.guard.now()
        super().data_received(data)

    def handle_error(
        self, request: Any, status: int = 500, exc: BaseException | None = None, message: str | None = None
    ) -> web.StreamResponse:
        """A request aiohttp could not parse or handle, answered as {"error": ...} like every other."""
        if request.writer.output_size > 0:
            raise ConnectionError("the response was already started: no error reply is possible")
        if status >= 500:
            log.error("%s answering %s", status, request.remote, exc_info=exc)
            text = HTTPStatus(status).phrase
        else:
            first = (message or "").strip().splitlines()
            text = f"bad HTTP request: {first[0].rstrip(':') if first else HTTPStatus(status).phrase}"
        resp = web.Response(body=_encode({"error": text}), status=status, content_type="application/json")
        resp.force_close()
        return resp


class Guard:
    """Open connections not mid-request, oldest first; a sweep closes the ones past their deadline.

    `fresh` ones have not sent a whole request yet (a slowloris stays there); `idle` ones have
    been answered and wait for their next request (good keep-alive clients).
    """

    def __init__(self, header_timeout_s: float, idle_timeout_s: float, max_connections: int,
                 metrics: Metrics) -> None:
        self.header_timeout_s = header_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self.max_connections = max_connections
        self.metrics = metrics
        self.open = 0
        self.fresh: OrderedDict[GuardedHandler, None] = OrderedDict()
        self.idle: OrderedDict[GuardedHandler, None] = OrderedDict()
        self._loop = asyncio.get_running_loop()
        self._sweeper: asyncio.Task[None] | None = None

    def now(self) -> float:
        return self._loop.time()

    def handler_factory(self, manager: web.Server) -> Callable[[], GuardedHandler]:
        def make() -> GuardedHandler:
            return GuardedHandler(self, manager, loop=self._loop, keepalive_timeout=self.idle_timeout_s,
                                  lingering_time=LINGER_S, access_log=None)

        return make

    # what connections report ------------------------------------------------------

    def opened(self, conn: GuardedHandler) -> None:
        conn.since = self.now()
        self.open += 1
        if self.open > self.max_connections:
            victim = next(iter(self.fresh), None)
            if victim is None:
                victim = next(iter(self.idle), None)
            if victim is None:
                self._close(conn, "refused", raw_reply(503, "the server is at its connection limit, "
                                                               "every connection busy; retry shortly"))
                return
            self._close(victim, "evicted")
        self.fresh[conn] = None

    def closed(self, conn: GuardedHandler) -> None:
        self.open -= 1
        self.fresh.pop(conn, None)
        self.idle.pop(conn, None)

    def started(self, conn: GuardedHandler) -> None:
        self.fresh.pop(conn, None)
        self.idle.pop(conn, None)
        conn.busy = True
        conn.first_byte = None

    def finished(self, conn: GuardedHandler) -> None:
        conn.busy = False
        if conn.transport is not None:  # still open
            conn.since = self.now()
            self.idle[conn] = None

    def middleware(self) -> Callable[..., Awaitable[web.StreamResponse]]:
        """Marks a connection mid-request while its handler runs: never evicted, no header deadline."""

        @web.middleware
        async def guarded(request: web.Request, handler: Callable[..., Awaitable[web.StreamResponse]]
                          ) -> web.StreamResponse:
            conn = request.protocol
            if not isinstance(conn, GuardedHandler):
                return await handler(request)
            self.started(conn)
            try:
                return await handler(request)
            finally:
                self.finished(conn)

        return guarded

    # the sweep ---------------------------------------------------------------------------

    def start(self) -> None:
        self._sweeper = self._loop.create_task(self._sweep_forever())

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper

    async def _sweep_forever(self) -> None:
        every = min(1.0, max(0.05, min(self.header_timeout_s, self.idle_timeout_s) / 4))
        while True:
            await asyncio.sleep(every)
            try:
                self.sweep()
            except Exception:
                log.exception("the connection sweep failed; it runs again in %.2fs", every)

    def sweep(self) -> None:
        """Close what is past its deadline; both orders are by `since`, so a scan stops at a young one."""
        now = self.now()
        header_due = now - self.header_timeout_s
        late: list[tuple[GuardedHandler, str]] = []
        for conn in self.fresh:  # a first request's headers are due header_timeout_s after connecting
            if conn.since > header_due:
                break
            late.append((conn, "header_timeout"))
        for conn in self.idle:
            if conn.since > now - min(self.header_timeout_s, self.idle_timeout_s):
                break
            if conn.first_byte is not None:
                if conn.first_byte <= header_due:
                    late.append((conn, "header_timeout"))
            elif now - conn.since > self.idle_timeout_s:
                late.append((conn, "idle"))
        for conn, reason in late:
            reply = None
            if conn.first_byte is not None:
                reply = raw_reply(408, f"the headers did not arrive within {self.header_timeout_s:g}s")
            self._close(conn, reason, reply)

    def _close(self, conn: GuardedHandler, reason: str, reply: bytes | None = None) -> None:
        self.fresh.pop(conn, None)
        self.idle.pop(conn, None)
        self.metrics.count("mldeck_connections_closed", reason=reason)
        transport = conn.transport
        if transport is None:
            return
        if reply is not None:
            transport.write(reply)
            transport.close()
        else:
            transport.abort()


class GuardedSite(web.BaseSite):
    """A TCP site whose connections are GuardedHandlers; the sweep runs while it listens."""

    __slots__ = ("_guard", "_host", "_port")

    def __init__(self, runner: web.AppRunner, guard: Guard, host: str, port: int, backlog: int) -> None:
        super().__init__(runner, backlog=backlog)
        self._guard = guard
        self._host = host
        self._port = port

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None  # the runner was set up before the site was made
        self._server = await asyncio.get_running_loop().create_server(
            self._guard.handler_factory(server), self._host, self._port, backlog=self._backlog,
            reuse_address=True,
        )
        self._guard.start()

    async def stop(self) -> None:
        await self._guard.stop()
        await super().stop()
