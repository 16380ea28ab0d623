"""JSON-RPC 2.0 over JSON lines: framing, errors and the typed params both sides share."""

from __future__ import annotations

import re
from typing import Annotated, Any

import msgspec

from mldeck.core.errors import BadRequest, Invalid, MldeckError, ParseError, wire_code

PROTOCOL_VERSION = 1
MAX_MESSAGE = 8 * 1024 * 1024
MAX_POINTS = 100_000
MAX_TABLE_PAGE = 25_000  # ~4 MiB of JSON with a dozen columns: well under the message limit
MAX_TABLE_METRICS = 32
MAX_QUERY = 1000  # a `/` filter a person typed
MAX_OFFSET = 2**53  # any real offset is far below; larger numbers are mistakes, not pages
MAX_DEPTH = 64  # requests are a few levels deep; deeper is a broken or hostile client

Points = Annotated[int, msgspec.Meta(ge=2, le=MAX_POINTS)]
MAX_COMPARED = 64
"""Runs one runs.compare reads: more than Compare shows side by side."""
Seconds = Annotated[float, msgspec.Meta(gt=0)]

_encoder = msgspec.json.Encoder()


def encode(message: Any) -> bytes:
    """One message as one line; every message on the wire goes through here."""
    return _encoder.encode(message) + b"\n"


def decode(line: bytes) -> Any:
    """One line's JSON; anything undecodable, nesting too deep for the decoder included, is a ParseError."""
    try:
        return msgspec.json.decode(line)
    except msgspec.DecodeError as exc:
        raise ParseError(f"not valid JSON: {exc}") from None
    except RecursionError:
        raise ParseError("not accepted: JSON nested too deeply to decode") from None


_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_OBJECTS_AS_ARRAYS = bytes.maketrans(b"{}", b"[]")
_NOT_BRACKETS = bytes(sorted(set(range(256)) - set(b"[]{}")))


def _nests_deeper_than(line: bytes, depth: int) -> bool:
    """Whether valid JSON nests deeper than depth: peel innermost bracket pairs, depth times, at C speed."""
    if line.count(b"[") + line.count(b"{") <= depth:
        return False
    brackets = _JSON_STRING.sub(b"", line).translate(_OBJECTS_AS_ARRAYS, _NOT_BRACKETS)
    for _ in range(depth):
        brackets = brackets.replace(b"[]", b"")
        if not brackets:
            return False
    return True


def decode_request(line: bytes) -> Any:
    """A request line as the agent accepts it: valid JSON, at most MAX_DEPTH levels deep."""
    message = decode(line)
    if _nests_deeper_than(line, MAX_DEPTH):
        raise BadRequest(f"not accepted: a request nests at most {MAX_DEPTH} levels deep")
    return message


def request(msg_id: int | str | None, method: str, params: Any = None) -> dict[str, Any]:
    message: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
    if params is not None:
        message["params"] = params
    if msg_id is not None:
        message["id"] = msg_id
    return message


def response(msg_id: Any, result: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": msg_id, "result": result}


def error_response(msg_id: Any, err: MldeckError) -> dict[str, Any]:
    body: dict[str, Any] = {"code": wire_code(err), "message": err.message}
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
        raise Invalid("params must be an object with named fields, not a list")
    try:
        return msgspec.convert(params, kind)
    except msgspec.ValidationError as exc:
        raise Invalid(f"invalid params: {exc}") from None


class Params(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Base of every method's params: unknown fields are an error, not ignored."""


class NoParams(Params):
    pass


class HelloParams(Params):
    client: str = "unknown"
    protocol: int = PROTOCOL_VERSION


class HostMetricsParams(Params):
    window_s: Seconds | None = None
    max_points: Points = 1000


class RunsListParams(Params):
    status: str | None = None
    experiment: str | None = None
    sweep_id: str | None = None
    limit: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 1000


class RunsTableParams(Params):
    """runs.table: a page of runs as columns (the TUI's Runs screen at 100,000 runs)."""

    offset: Annotated[int, msgspec.Meta(ge=0, le=MAX_OFFSET)] = 0
    limit: Annotated[int, msgspec.Meta(ge=1, le=MAX_TABLE_PAGE)] = 20_000
    status: str | None = None
    experiment: str | None = None
    columns: list[str] | None = None
    metrics: Annotated[list[str], msgspec.Meta(max_length=MAX_TABLE_METRICS)] | None = None
    query: Annotated[str, msgspec.Meta(max_length=MAX_QUERY)] | None = None
    sort: Annotated[str, msgspec.Meta(max_length=MAX_QUERY)] | None = None
    descending: bool = True


class RunRef(Params):
    run_id: str


class RunsMetricsParams(Params):
    run_id: str
    keys: list[str] | None = None
    max_points: Points = 1000


class RunsCompareParams(Params):
    """runs.compare: Compare's read of several runs (rows and curves) in one turn."""

    run_ids: Annotated[list[str], msgspec.Meta(min_length=1, max_length=MAX_COMPARED)]
    keys: list[str] | None = None
    max_points: Points = 500


class QueryParams(Params):
    sql: str
    limit: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 10000


class SubscribeParams(Params):
    topic: str
    filter: dict[str, str] = {}


class UnsubscribeParams(Params):
    subscription: int
