"""The one JSON-RPC client: the CLI and the TUI use it over a UNIX socket or an SSH channel."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, Protocol

from mldeck.core import protocol
from mldeck.core.errors import MldeckError, Unavailable, from_wire
from mldeck.core.runlog import NONFINITE

SUBSCRIPTION_QUEUE = 10_000


def _floats(values: list[Any]) -> list[Any]:
    """Metric values off the wire, where a NaN or an infinity comes by name (core.runlog.by_name)."""
    return [NONFINITE.get(v, v) if v.__class__ is str else v for v in values]


def _run(run: dict[str, Any]) -> dict[str, Any]:
    metrics = run.get("metrics")
    if isinstance(metrics, dict):
        run["metrics"] = dict(zip(metrics, _floats(list(metrics.values())), strict=True))
    return run


def _runs(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [_run(r) for r in runs]


def _series(result: dict[str, Any]) -> dict[str, Any]:
    for curve in result["series"].values():
        curve["value"] = _floats(curve["value"])
    return result


def _compare(result: dict[str, Any]) -> dict[str, Any]:
    _runs(result["runs"])
    for series in result["series"].values():
        _series({"series": series})
    return result


def _table(result: dict[str, Any]) -> dict[str, Any]:
    columns = result["columns"]
    for name in columns:
        if name.startswith("m:"):
            columns[name] = _floats(columns[name])
    return result


def _points(event: dict[str, Any]) -> dict[str, Any]:
    event["value"] = _floats(event["value"])
    return event


def _best(row: dict[str, Any]) -> dict[str, Any]:
    """A sweep's trial, or its best trial as registered (a version, with its metrics)."""
    (row["best"],) = _floats([row["best"]])
    return _run(row)


def _sweep(result: dict[str, Any]) -> dict[str, Any]:
    for trial in result["trials"]:
        _best(trial)
    return result


def _lineage(result: dict[str, Any]) -> dict[str, Any]:
    _run(result["version"])
    return result


def _promotion(result: dict[str, Any]) -> dict[str, Any]:
    for delta in result.get("deltas", {}).values():  # a dry run's preview
        delta.update(zip(delta, _floats(list(delta.values())), strict=True))
    return result


METRIC_RESULTS: dict[str, Callable[[Any], Any]] = {
    "runs.list": _runs, "runs.get": _run, "runs.metrics": _series, "runs.table": _table,
    "runs.compare": _compare, "sweeps.show": _sweep, "sweeps.register": _best, "models.register": _run,
    "models.get": _run, "models.versions": _runs, "models.lineage": _lineage, "models.promote": _promotion,
}
"""The results that carry metric values, and how their NaN and infinities are read back into floats."""
METRIC_EVENTS: dict[str, Callable[[Any], Any]] = {"run.metrics": _points}


class Reader(Protocol):
    async def readline(self) -> bytes: ...


class Writer(Protocol):
    def write(self, data: bytes) -> None: ...
    async def drain(self) -> None: ...
    def close(self) -> None: ...


class ConnectionLost(Unavailable):
    def __init__(self, why: str) -> None:
        super().__init__(f"connection to the agent lost: {why}")


class Subscription:
    """Events of one topic, as an async iterator; unsubscribe by closing it."""

    def __init__(self, client: Client, sub_id: int, topic: str) -> None:
        self.client = client
        self.id = sub_id
        self.topic = topic
        self.queue: asyncio.Queue[Any] = asyncio.Queue(SUBSCRIPTION_QUEUE)

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._iter()

    async def _iter(self) -> AsyncIterator[Any]:
        while True:
            item = await self.queue.get()
            if isinstance(item, Exception):
                raise item
            yield METRIC_EVENTS[self.topic](item) if self.topic in METRIC_EVENTS else item

    async def close(self) -> None:
        self.client._subs.pop(self.id, None)
        with contextlib.suppress(MldeckError):
            await self.client.call("unsubscribe", subscription=self.id)


class Client:
    """Calls and subscriptions multiplexed over one stream."""

    def __init__(self, reader: Reader, writer: Writer) -> None:
        self._reader = reader
        self._writer = writer
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._subs: dict[int, Subscription] = {}
        self._early: dict[int, list[Any]] = {}
        self._closed: Exception | None = None
        self._said: Unavailable | None = None  # why the agent is closing this connection, when it said
        self._pump = asyncio.get_running_loop().create_task(self._read_loop())

    async def call(self, method: str, **params: Any) -> Any:
        """Send one request and wait for its result; an error reply raises the error the agent raised."""
        if self._closed:
            raise self._closed
        msg_id = next(self._ids)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[msg_id] = fut
        try:
            try:
                self._writer.write(protocol.encode(protocol.request(msg_id, method, params)))
                await self._writer.drain()
            except OSError as exc:  # the agent closed the connection: the read loop has (or soon has) why
                await asyncio.wait([self._pump], timeout=1.0)
                if not fut.done():
                    fut.set_exception(ConnectionLost(str(exc) or type(exc).__name__))
            result = await fut
        finally:
            self._pending.pop(msg_id, None)
        return METRIC_RESULTS[method](result) if method in METRIC_RESULTS else result

    async def subscribe(self, topic: str, **filters: str) -> Subscription:
        result = await self.call("subscribe", topic=topic, filter=filters)
        sub = Subscription(self, result["subscription"], topic)
        self._subs[sub.id] = sub
        for data in self._early.pop(sub.id, []):
            sub.queue.put_nowait(data)
        return sub

    async def _read_loop(self) -> None:
        why = "closed by the agent"
        try:
            while line := await self._reader.readline():
                self._dispatch(protocol.decode(line))
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            why = str(exc) or type(exc).__name__
        finally:
            self._fail_all(ConnectionLost(self._said.message if self._said else why))

    def _dispatch(self, msg: dict[str, Any]) -> None:
        if msg.get("method") == "event":
            params = msg["params"]
            sub_id = params.get("subscription")
            sub = self._subs.get(sub_id)
            if sub is not None:
                with contextlib.suppress(asyncio.QueueFull):
                    sub.queue.put_nowait(params["data"])
            elif any(not f.done() for f in self._pending.values()):
                early = self._early.setdefault(sub_id, [])
                if len(early) < SUBSCRIPTION_QUEUE:
                    early.append(params["data"])
            return
        if "error" in msg and msg.get("id") is None:  # no answer: a line refused, or the connection itself
            err = msg["error"]
            said = from_wire(err.get("code"), err.get("message"), err.get("data"))
            if isinstance(said, Unavailable):  # refused or idle: the agent closes it next
                self._said = said
            for fut in self._pending.values():
                if not fut.done():
                    fut.set_exception(said)
            return
        fut = self._pending.get(msg.get("id"))  # type: ignore[arg-type]
        if fut is None or fut.done():
            return
        if "error" in msg:
            err = msg["error"]
            fut.set_exception(from_wire(err.get("code"), err.get("message"), err.get("data")))
        else:
            fut.set_result(msg.get("result"))

    def _fail_all(self, exc: Exception) -> None:
        self._closed = exc
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(exc)
        for sub in self._subs.values():
            with contextlib.suppress(asyncio.QueueFull):
                sub.queue.put_nowait(exc)

    @property
    def closed(self) -> bool:
        return self._closed is not None

    async def close(self) -> None:
        self._writer.close()
        self._pump.cancel()
        await asyncio.wait([self._pump])  # unlike awaiting it, keeps a cancel of the caller


async def connect_unix(path: Path | str) -> Client:
    """A client on a local agent's socket."""
    reader, writer = await asyncio.open_unix_connection(str(path), limit=protocol.MAX_MESSAGE)
    return Client(reader, writer)
