"""`mldeck query` runs a user's SQL where it can change nothing, read no file, and hold nothing up."""

from __future__ import annotations

import concurrent.futures
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from mldeck.core import protocol
from mldeck.core.errors import Refused, wire_code
from mldeck.core.paths import Layout
from mldeck.core.store import Store
from tests.conftest import AgentProc, rpc, start_agent

TIME_LIMIT_S = 2.0
SECRET = "hunter2-only-in-a-file"
LONG_SQL = "SELECT count(*) FROM range(100000000000) t(i) WHERE i % 7 = 5"  # minutes of work, one row
SNAPSHOT_SQL = """
    SELECT (SELECT count(*) FROM runs) AS runs,
           (SELECT count(*) FROM audit_log) AS audit,
           (SELECT list(actor ORDER BY seq) FROM audit_log) AS actors,
           (SELECT list(table_name ORDER BY table_name) FROM duckdb_tables()) AS tables,
           (SELECT list(database_name ORDER BY database_name) FROM duckdb_databases()) AS databases,
           (SELECT list(name || '=' || coalesce(value, '') ORDER BY name) FROM duckdb_settings()) AS settings
"""


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProc]:
    """An agent over a store that holds three runs and an audit trail, with a 2 s query time limit."""
    home = tmp_path_factory.mktemp("sandbox") / "home"
    layout = Layout(home)
    layout.ensure()
    store = Store(layout.db)
    cur = store.cur()
    for n in range(3):
        store.upsert_run({"run_id": f"run{n}", "name": f"run {n}", "status": "succeeded", "created_at": n})
    cur.execute("INSERT INTO audit_log (ts, actor, action, name, version, seq) "
                "VALUES (1, 'alice', 'register', 'clf', 1, 1), (2, 'bob', 'promote', 'clf', 1, 2)")
    cur.close()
    store.close()
    config = f"[agent]\ncollector_interval_s = 5\n[query]\ntime_limit_s = {TIME_LIMIT_S}\n"
    agent = start_agent(home, config=config)
    yield agent
    agent.stop()


def query(agent: AgentProc, sql: str, timeout: float = 30, **params: Any) -> dict[str, Any]:
    return rpc(agent.home, "query", {"sql": sql, **params}, timeout=timeout)


def timed_query(agent: AgentProc, sql: str) -> tuple[dict[str, Any], float]:
    reply = query(agent, sql)
    return reply, time.monotonic()


def snapshot(agent: AgentProc) -> list[Any]:
    reply = query(agent, SNAPSHOT_SQL)
    assert "result" in reply, reply
    return reply["result"]["rows"]


HOSTILE = [  # every statement the issue saw go through, and close variants
    "EXPLAIN ANALYZE DELETE FROM audit_log",
    "EXPLAIN ANALYZE UPDATE audit_log SET actor = 'mallory'",
    "EXPLAIN ANALYZE INSERT INTO runs (run_id, name) VALUES ('forged', 'forged')",
    "EXPLAIN ANALYZE CREATE TABLE forged AS SELECT 1 AS x",
    "EXPLAIN ANALYZE DROP TABLE audit_log",
    "EXPLAIN ANALYZE COPY (SELECT * FROM runs) TO '{out}/explain.csv'",
    "WITH d AS (DELETE FROM runs RETURNING *) SELECT * FROM d",
    "WITH d AS (DELETE FROM audit_log RETURNING *) SELECT count(*) FROM d",
    "PRAGMA disable_checkpoint_on_shutdown",
    "EXPLAIN ANALYZE PRAGMA disable_checkpoint_on_shutdown",
    "EXPLAIN ANALYZE SET GLOBAL threads = 1",
    "/* a comment first */ explain -- and one here\n analyze SET memory_limit = '10GB'",
    "EXPLAIN (ANALYZE, FORMAT json) SET threads = 1",
    "EXPLAIN ANALYZE RESET memory_limit",
    "SELECT * FROM glob('{archive}/../*')",
    "SELECT * FROM read_text('{archive}/../agent.toml')",
    "SELECT * FROM read_csv('{secret}')",
    "SELECT * FROM read_text('{secret}')",
    "SELECT * FROM glob('{outside}/**')",
    "ATTACH '{out}/other.duckdb' AS other",
    "INSTALL httpfs",
    "LOAD httpfs",
    "SET threads = 1",
    "SET GLOBAL enable_external_access = true",
    "CALL force_checkpoint()",
    "COPY runs TO '{out}/runs.csv'",
    "COPY audit_log FROM '{secret}'",
    "EXPORT DATABASE '{out}/export'",
    "DELETE FROM audit_log",
    "SELECT 1; DELETE FROM audit_log",
]


@pytest.mark.parametrize("template", HOSTILE)
def test_a_hostile_statement_is_refused_and_changes_nothing(
    agent: AgentProc, tmp_path: Path, template: str
) -> None:
    """Refused, with the store, its settings and the file system as they were, and no secret in the reply."""
    out = tmp_path / "out"
    out.mkdir()
    secret = tmp_path / "outside" / "shadow.csv"
    secret.parent.mkdir()
    secret.write_text(f"user,password\nroot,{SECRET}\n")
    sql = template.format(out=out, secret=secret, outside=secret.parent, archive=agent.home / "archive")
    before = snapshot(agent)
    reply = query(agent, sql)
    assert "error" in reply, f"{sql!r} was not refused: {reply}"
    assert SECRET not in msgspec.json.encode(reply).decode()
    assert snapshot(agent) == before, f"{sql!r} changed the store or its settings"
    assert list(out.iterdir()) == [], f"{sql!r} wrote {list(out.iterdir())}"
    assert agent.proc.poll() is None


def test_reading_still_works_and_refusals_say_why(agent: AgentProc) -> None:
    assert snapshot(agent)[0][:3] == [3, 2, ["alice", "bob"]]
    refused = query(agent, "PRAGMA disable_checkpoint_on_shutdown")["error"]
    assert refused["code"] == wire_code(Refused) and "read-only" in refused["message"]
    rows = query(agent, "SELECT run_id FROM runs ORDER BY created_at")["result"]["rows"]
    assert rows == [["run0"], ["run1"], ["run2"]]
    assert query(agent, "DESCRIBE runs")["result"]["rows"][0][0] == "run_id"
    assert "result" in query(agent, "EXPLAIN ANALYZE SELECT count(*) FROM metrics")


def test_long_queries_are_cancelled_at_the_limit_and_hold_nothing_up(agent: AgentProc) -> None:
    for _ in range(2):  # abandoned by their clients: they must not keep threads busy either
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(str(agent.layout.socket))
            sock.sendall(protocol.encode(protocol.request(1, "query", {"sql": LONG_SQL})))
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        started = time.monotonic()
        waits = [pool.submit(timed_query, agent, LONG_SQL) for _ in range(3)]
        time.sleep(0.5)
        for _ in range(3):
            asked = time.monotonic()
            assert rpc(agent.home, "runs.list", timeout=5).get("result"), "runs.list must answer meanwhile"
            assert time.monotonic() - asked < 3
        for wait in waits:
            reply, answered = wait.result(timeout=60)
            assert reply.get("error", {}).get("code") == wire_code(Refused), reply
            assert "time limit" in reply["error"]["message"] and "time_limit_s" in reply["error"]["message"]
            assert answered - started < 3 * TIME_LIMIT_S + 4, "each ends at the limit, two at a time"
    asked = time.monotonic()
    assert query(agent, "SELECT 42", timeout=10)["result"]["rows"] == [[42]]
    assert time.monotonic() - asked < 3, "no cancelled query still holds a thread"


def test_a_huge_result_is_truncated_and_the_connection_lives(agent: AgentProc) -> None:
    wide = "SELECT repeat('x', 10000) AS wide, i FROM range(2000) t(i)"  # 20 MB of JSON
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(30)
        sock.connect(str(agent.layout.socket))
        replies = sock.makefile("rb")
        sock.sendall(protocol.encode(protocol.request(1, "query", {"sql": wide, "limit": 1_000_000})))
        line = replies.readline()
        assert len(line) < protocol.MAX_MESSAGE
        result = msgspec.json.decode(line)["result"]
        assert result["truncated"] and 100 < len(result["rows"]) < 1000
        assert result["message"] == (f"result truncated at {len(result['rows'])} rows / 7.0 MiB; "
                                     "add LIMIT or select fewer columns")
        sock.sendall(protocol.encode(protocol.request(2, "query", {"sql": "FROM range(50)", "limit": 10})))
        capped = msgspec.json.decode(replies.readline())["result"]
        assert capped["truncated"] and len(capped["rows"]) == 10 and "10 rows" in capped["message"]
        sock.sendall(protocol.encode(protocol.request(3, "hello", {"client": "test"})))
        assert msgspec.json.decode(replies.readline())["result"]["protocol"] == protocol.PROTOCOL_VERSION


def test_stopping_the_agent_cancels_a_running_query(tmp_path: Path) -> None:
    agent = start_agent(tmp_path / "home", config="[query]\ntime_limit_s = 600\n")
    try:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            wait = pool.submit(query, agent, LONG_SQL, 60)
            time.sleep(1)
            agent.proc.send_signal(signal.SIGTERM)
            agent.proc.wait(timeout=15)
            reply = wait.result(timeout=5)
        assert reply == {} or "agent is stopping" in reply["error"]["message"], reply
    finally:
        agent.stop()
