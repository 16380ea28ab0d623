"""Slow and hostile clients: a slowloris past the connection cap, a Content-Length liar, idle keep-alive.

Good requests run at a steady rate the whole time and every one must succeed, while thousands
of half-open connections are closed within the configured timeouts (set low here).
"""

from __future__ import annotations

import asyncio
import json
import resource
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import numpy as np
import pytest

from tests.conftest import REPO
from tests.serving.conftest import FEATURES, ServerProc, infer_body, metric, start_server

pytestmark = pytest.mark.timeout(240)

HEADER_S = 2.0
BODY_S = 2.0
IDLE_S = 4.0
MAX_CONNECTIONS = 1500
ATTACKERS = 3000
SLACK_S = 2.5
"""The sweep runs every HEADER_S / 4; the rest is the server accepting 2,000 connections a second on two
cores that the whole suite shares (1.9 s late was seen there, once in two full runs, at 1.5 s of slack)."""
PARTIAL = b"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"


@dataclass
class Held:
    """One hostile connection: how it behaved, when it opened and closed, and what it was told."""

    kind: str
    opened: float = 0.0
    closed: float = 0.0
    answered: float = 0.0
    data: bytes = b""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, model_dirs: dict[str, Path]) -> Iterator[ServerProc]:
    proc = start_server(tmp_path_factory.mktemp("slowloris-home"), "--header-timeout-s", str(HEADER_S),
                        "--body-timeout-s", str(BODY_S), "--idle-timeout-s", str(IDLE_S),
                        "--max-connections", str(MAX_CONNECTIONS))
    proc.manifest({"mlp": {"aliases": {"production": (1, model_dirs["v1"])}}})
    proc.wait_serving("mlp", {"production": 1})
    yield proc
    proc.stop()


async def hold(port: int, held: Held) -> None:
    """Open a connection, misbehave as `kind` says, and wait for the server to close it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    held.opened = time.monotonic()
    trickle = None
    if held.kind == "partial":
        writer.write(PARTIAL)
    elif held.kind == "liar":
        writer.write(b"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1000\r\n\r\n" + b"[" * 232)
    elif held.kind == "keepalive":
        writer.write(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
    elif held.kind == "trickle":
        async def drip() -> None:
            for byte in PARTIAL:
                writer.write(bytes([byte]))
                await asyncio.sleep(0.4)

        trickle = asyncio.create_task(drip())
    try:
        async with asyncio.timeout(30):
            while chunk := await reader.read(65536):
                if not held.data:
                    held.answered = time.monotonic()
                held.data += chunk
    except ConnectionError:
        pass  # an evicted connection is reset: that is closed too
    held.closed = time.monotonic()
    if trickle is not None:
        trickle.cancel()
    writer.close()


def test_slowloris_past_the_cap_and_a_liar_leave_good_clients_served(server: ServerProc) -> None:
    body = json.dumps(infer_body(np.ones((1, FEATURES), np.float32))).encode()
    good: list[int] = []
    kinds = ["silent", "partial"]
    attackers = [Held(kinds[i % len(kinds)]) for i in range(ATTACKERS)]
    attackers += [Held("trickle") for _ in range(50)] + [Held("liar"), Held("keepalive")]

    async def good_client(stop: asyncio.Event) -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            i = 0
            while not stop.is_set():
                headers = {"Connection": "close"} if i % 5 == 0 else {}  # some on fresh connections
                try:
                    async with session.post(server.url + "/v2/models/mlp/infer", data=body,
                                            headers=headers) as resp:
                        await resp.read()
                        good.append(resp.status)
                except (aiohttp.ClientError, TimeoutError) as exc:
                    good.append(-1)
                    print("good request failed:", exc)
                i += 1
                await asyncio.sleep(0.02)

    async def attack() -> None:
        stop = asyncio.Event()
        client = asyncio.create_task(good_client(stop))
        await asyncio.sleep(0.5)
        tasks = []
        for start in range(0, len(attackers), 100):  # about 2,000 connections a second
            tasks += [asyncio.create_task(hold(server.port, h)) for h in attackers[start:start + 100]]
            await asyncio.sleep(0.05)
        await asyncio.gather(*tasks)
        await asyncio.sleep(0.5)
        stop.set()
        await client

    asyncio.run(attack())

    assert good and set(good) == {200}, f"{good.count(200)} good requests answered of {len(good)}"
    assert len(good) >= 100
    for h in attackers:
        assert h.closed, h
    hostile = [h for h in attackers if h.kind in ("silent", "partial", "trickle")]
    late = [h for h in hostile if h.closed - h.opened > HEADER_S + SLACK_S]
    assert not late, f"{len(late)} half-open connections outlived the {HEADER_S}s header timeout: {late[:3]}"
    timed_out = [h for h in hostile if h.kind != "silent" and h.data.startswith(b"HTTP/1.1 408")]
    assert timed_out, "no partial request was told 408"
    assert all(json.loads(h.data.partition(b"\r\n\r\n")[2])["error"] for h in timed_out)
    (liar,) = [h for h in attackers if h.kind == "liar"]
    assert liar.data.startswith(b"HTTP/1.1 408"), liar.data
    assert b"did not arrive within" in liar.data and liar.answered - liar.opened <= BODY_S + SLACK_S
    assert liar.closed - liar.opened <= BODY_S + SLACK_S + 1.0  # the answer, then aiohttp's short drain
    (idle,) = [h for h in attackers if h.kind == "keepalive"]
    assert idle.data.startswith(b"HTTP/1.1 200")
    assert IDLE_S - 0.5 <= idle.closed - idle.answered <= IDLE_S + SLACK_S, idle

    with urllib.request.urlopen(server.url + "/metrics", timeout=10) as resp:
        text = resp.read().decode()
    assert metric(text, "mldeck_connections_closed", reason="evicted") > 0  # the cap was reached
    assert metric(text, "mldeck_connections_closed", reason="header_timeout") > 0
    assert metric(text, "mldeck_open_connections") < 10
    connections = server.stats()["connections"]
    assert connections["limit"] == MAX_CONNECTIONS and connections["open"] <= 2  # this request's, at most


@pytest.mark.parametrize(("soft", "hard", "want"), [(600, 600, 600 - 256), (600, 20_000, 8192)])
def test_the_connection_cap_stays_below_the_file_limit(soft: int, hard: int, want: int) -> None:
    """Under a hard limit the cap shrinks to fit; under a soft one the limit is raised to fit the cap."""
    if resource.getrlimit(resource.RLIMIT_NOFILE)[1] < hard:
        pytest.skip(f"this machine's hard file limit is under {hard}")
    code = (f"import resource; resource.setrlimit(resource.RLIMIT_NOFILE, ({soft}, {hard}))\n"
            "from mldeck.agent.serving.guard import connection_limit\n"
            "print(connection_limit(8192), resource.getrlimit(resource.RLIMIT_NOFILE)[0])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert done.returncode == 0, done.stderr
    limit, files = map(int, done.stdout.split())
    assert limit == want and limit + 256 <= files
