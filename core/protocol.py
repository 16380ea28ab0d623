"""JSON-RPC 2.0 over JSON lines: framing, errors and the typed params both sides share."""

from __future__ import annotations

from typing import Any

import msgspec

PROTOCOL_VERSION = 1
MAX_MESSAGE = 8 * 1024 * 1024

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
APP_ERROR = -32000
NOT_FOUND = -32004
CONFLICT = -32009
TOO_LARGE = -32010


class RpcError(Exception):
    """An error a caller can act on; its message is shown to a person as it is."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data


def not_found(what: str) -> RpcError:
    return RpcError(NOT_FOUND, what)


def invalid(message: str) -> RpcError:
    return RpcError(INVALID_PARAMS, message)


_encoder = msgspec.json.Encoder()


def encode(message: Any) -> bytes:
    """One message as one line; every message on the wire goes through here."""
    return _encoder.encode(message) + b"\n"


def decode(line: bytes) -> Any:
    return msgspec.json.decode(line)


def request(msg_id: int | str | None, method: str, params: Any = None) -> dict[str, Any]:
    message: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
    if params is not None:
        message["params"] = params
    if msg_id is not None:
        message["id"] = msg_id
    return message


def response(msg_id: Any, result: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": msg_id, "result": result}


def error_response(msg_id: Any, err: RpcError) -> dict[str, Any]:
    body: dict[str, Any] = {"code": err.code, "message": err.message}
    if err.data is not None:
        body["data"] = err.data
    return {"jsonrpc": "2.0", "id": msg_id, "error": body}


def event(topic: str, subscription: int, data: Any) -> dict[str, Any]:
    return request(None, "event", {"topic": topic, "subscription": subscription, "data": data})


def validate(params: Any, kind: type[msgspec.Struct]) -> Any:
    """Turn raw params into their declared type, or say precisely what is wrong."""
    if params is None:
        params = {}
    if isinstance(params, list):
        raise invalid("params must be an object with named fields, not a list")
    try:
        return msgspec.convert(params, kind)
    except msgspec.ValidationError as exc:
        raise invalid(f"invalid params: {exc}") from None


class Params(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Base of every method's params: unknown fields are an error, not ignored."""


class NoParams(Params):
    pass


class HelloParams(Params):
    client: str = "unknown"
    protocol: int = PROTOCOL_VERSION


class HostMetricsParams(Params):
    window_s: float | None = None
    max_points: int = 1000


class RunsListParams(Params):
    status: str | None = None
    experiment: str | None = None
    sweep_id: str | None = None
    limit: int = 1000


class RunsTableParams(Params):
    """runs.table: a page of runs as columns (the TUI's Runs screen at 100,000 runs)."""

    offset: int = 0
    limit: int = 20_000
    status: str | None = None
    experiment: str | None = None
    columns: list[str] | None = None
    metrics: list[str] | None = None


class RunRef(Params):
    run_id: str


class RunsMetricsParams(Params):
    run_id: str
    keys: list[str] | None = None
    max_points: int = 1000


class QueryParams(Params):
    sql: str
    limit: int = 10000


class SubscribeParams(Params):
    topic: str
    filter: dict[str, str] = {}


class UnsubscribeParams(Params):
    subscription: int
