"""The control socket under arbitrary input: each line gets a JSON-RPC reply, the agent stays up and small."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mldeck.core import protocol
from mldeck.core.errors import BadRequest, Invalid, ParseError, wire_code
from tests.conftest import AgentProc, start_agent

SAFE_METHODS = (  # methods that only read: a fuzzed request may well be valid
    "hello", "agent.status", "host.info", "host.metrics", "runs.list", "runs.table", "runs.get",
    "runs.metrics", "query", "subscribe", "unsubscribe",
)
PARAM_NAMES = (
    "client", "protocol", "window_s", "max_points", "status", "experiment", "sweep_id", "limit", "offset",
    "columns", "metrics", "run_id", "keys", "sql", "topic", "filter", "subscription",
)
FUZZ = settings(derandomize=True, database=None, deadline=None, suppress_health_check=list(HealthCheck))

scalars = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
           | st.text(max_size=20))
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
param_values = st.integers() | st.text(max_size=20) | st.lists(st.text(max_size=8), max_size=3) | json_values
requests = st.fixed_dictionaries(  # well formed: they reach the methods, with params right or wrong
    {"jsonrpc": st.just("2.0"), "method": st.sampled_from(SAFE_METHODS)},
    optional={
        "id": st.integers(-(2**63), 2**64 - 1) | st.text(max_size=8),
        "params": st.dictionaries(st.sampled_from(PARAM_NAMES), param_values, max_size=3),
    },
)
envelopes = st.fixed_dictionaries(  # anything from nearly right to nothing like a request
    {"method": st.sampled_from(SAFE_METHODS) | st.text(max_size=12) | scalars},
    optional={
        "jsonrpc": st.just("2.0") | scalars,
        "id": st.none() | st.integers() | st.text(max_size=8) | json_values,
        "params": st.dictionaries(st.sampled_from(PARAM_NAMES), json_values, max_size=4) | json_values,
    },
)


@st.composite
def deep_lines(draw: st.DrawFn) -> bytes:
    """Nesting at, around and far past every limit, bare or as a request's params, closed or not."""
    depth = draw(st.sampled_from([63, 64, 65, 999, 1000, 1001, 5000, 100_000]) | st.integers(1, 3000))
    opener, closer = draw(st.sampled_from([(b"[", b"]"), (b'{"a":', b"}")]))
    inner = draw(st.sampled_from([b"1", b"[]", b"{}", b'"]]}"']))
    body = opener * depth + inner + (closer * depth if draw(st.booleans()) else b"")
    if draw(st.booleans()):
        return b'{"jsonrpc": "2.0", "id": 7, "method": "hello", "params": ' + body + b"}"
    return body


def one_line(data: bytes) -> bytes:
    return data.replace(b"\n", b"")


def blank(data: bytes) -> bool:
    return not data.strip()


CASES = [  # (what, how many): 4,100 lines in all
    (json_values.map(msgspec.json.encode), 900),
    (requests.map(msgspec.json.encode), 1200),
    (envelopes.map(msgspec.json.encode), 500),
    (st.lists(requests | envelopes, max_size=4).map(msgspec.json.encode), 200),
    (deep_lines(), 300),
    (st.binary(min_size=1, max_size=300).map(one_line).filter(lambda b: not blank(b)), 700),
    (st.text(min_size=1, max_size=100).map(str.encode).map(one_line).filter(lambda b: not blank(b)), 300),
]


class Conversation:
    """One connection for everything; each line is followed by a `hello` whose reply ends the line's."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(30)
        self.sock.connect(str(path))
        self.replies = self.sock.makefile("rb")
        self.marks = (f"mark-{uuid.uuid4()}-{n}" for n in range(10**9))

    def exchange(self, line: bytes) -> list[Any]:
        """What came back for `line` (events of a subscription aside), up to the reply to the mark."""
        mark = next(self.marks)
        self.sock.sendall(line + b"\n" + protocol.encode(protocol.request(mark, "hello")))
        replies = []
        while True:
            raw = self.replies.readline()
            assert raw.endswith(b"\n"), f"the agent closed the connection after {line[:200]!r}"
            message = msgspec.json.decode(raw)
            if isinstance(message, dict) and message.get("method") == "event":
                continue
            if isinstance(message, dict) and message.get("id") == mark:
                return replies
            replies.append(message)

    def close(self) -> None:
        self.replies.close()
        self.sock.close()


def depth(value: Any) -> int:
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, level)
            stack.extend((child, level + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def expected(line: bytes) -> tuple[bool, Any]:
    """(whether JSON-RPC wants a reply, and the id it carries): a valid notification alone gets none."""
    try:
        message = msgspec.json.decode(line)
    except (msgspec.DecodeError, RecursionError):
        return True, None
    if not isinstance(message, dict) or depth(message) > protocol.MAX_DEPTH:
        return True, None
    msg_id = message.get("id")
    valid_id = msg_id is None or isinstance(msg_id, str) or type(msg_id) in (int, float)
    notification = (message.get("jsonrpc") == "2.0" and isinstance(message.get("method"), str)
                    and "id" not in message)
    return not notification, msg_id if valid_id else None


def check(conversation: Conversation, line: bytes) -> None:
    replies = conversation.exchange(line)
    wanted, msg_id = expected(line)
    assert len(replies) == int(wanted), f"{len(replies)} replies to {line[:200]!r}: {replies}"
    for reply in replies:
        assert isinstance(reply, dict) and reply.get("jsonrpc") == "2.0" and "id" in reply, reply
        assert ("result" in reply) != ("error" in reply), reply
        if "error" in reply:
            assert isinstance(reply["error"]["code"], int) and isinstance(reply["error"]["message"], str)
        assert reply["id"] == msg_id, f"reply to {line[:200]!r} has id {reply['id']!r}"


def fuzz(conversation: Conversation, strategy: st.SearchStrategy[bytes], examples: int) -> None:
    @settings(FUZZ, max_examples=examples)
    @given(strategy)
    def case(line: bytes) -> None:
        check(conversation, line)

    case()


def rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(row for row in status.splitlines() if row.startswith("VmRSS:")).split()[1])


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProc]:
    home = tmp_path_factory.mktemp("fuzz") / "home"
    agent = start_agent(home, config="[agent]\ncollector_interval_s = 1\n")
    yield agent
    agent.stop()


def error_code(conversation: Conversation, line: bytes) -> int:
    (reply,) = conversation.exchange(line)
    return reply["error"]["code"]


def test_batches_bare_values_deep_nesting_and_huge_numbers_get_errors(agent: AgentProc) -> None:
    conversation = Conversation(agent.layout.socket)
    hello = protocol.encode(protocol.request(1, "hello"))[:-1]
    for line in (b"[" + hello + b"," + hello + b"]", b"[]", b"5", b"null", b'"x"', b"true", b'{"id": [1]}'):
        assert error_code(conversation, line) == wire_code(BadRequest), line
    for levels in (65, 1001, 5000, 100_000):
        line = b"[" * levels + b"]" * levels
        assert error_code(conversation, line) in (wire_code(ParseError), wire_code(BadRequest)), levels
    for offset in (b"1e20", b"100000000000000000000", b"-1"):
        line = b'{"jsonrpc": "2.0", "id": 3, "method": "runs.table", "params": {"offset": ' + offset + b"}}"
        assert error_code(conversation, line) == wire_code(Invalid), offset
    (reply,) = conversation.exchange(protocol.encode(protocol.request(9, "hello"))[:-1])
    assert reply["result"]["protocol"] == protocol.PROTOCOL_VERSION
    conversation.close()


@pytest.mark.slow
def test_every_fuzzed_line_gets_a_json_rpc_reply_and_the_agent_stays_small(agent: AgentProc) -> None:
    conversation = Conversation(agent.layout.socket)
    subscribe = protocol.encode(protocol.request(1, "subscribe", {"topic": "host.metrics"}))[:-1]
    check(conversation, subscribe)  # events interleave with the replies from here on
    for strategy, _ in CASES:  # warm up: the first of each kind loads what the agent loads lazily
        fuzz(conversation, strategy, 20)
    before = rss_kib(agent.proc.pid)
    for strategy, examples in CASES:
        fuzz(conversation, strategy, examples)
    after = rss_kib(agent.proc.pid)
    assert after <= before * 1.2, f"the agent grew from {before} KiB to {after} KiB"
    (reply,) = conversation.exchange(protocol.encode(protocol.request(2, "hello"))[:-1])
    assert reply["result"]["protocol"] == protocol.PROTOCOL_VERSION
    conversation.close()
    assert agent.proc.poll() is None
