"""The store's memory at rest (issue 18): DuckDB caches what it read up to `[store] memory_limit`; once ingest
rests, the agent gives the cache above a quarter of the limit back, with no read beside it failing and no
point lost."""

from __future__ import annotations

import concurrent.futures
import json
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from mldeck.agent.storeops import TRIM_ABOVE, TRIM_TO
from tests.agent.test_summaries import query
from tests.conftest import rpc, start_agent, wait_for

STEPS, KEYS = 400_000, 10
FULL_READ = "SELECT round(sum(value), 3), sum(step), count(DISTINCT key), count(DISTINCT run_id) FROM metrics"


def write_run(home: Path, run_id: str) -> None:
    """One finished run of STEPS x KEYS points in the SDK's line format."""
    lines = [json.dumps({"t": 1.0, "e": "init", "d": {"name": run_id, "experiment": "mem"}})]
    lines += [json.dumps({"t": 1.0 + s, "s": s, "m": {f"k{k}": s * 0.001 + k for k in range(KEYS)}})
              for s in range(STEPS)]
    lines.append(json.dumps({"t": 2.0 + STEPS, "e": "finish", "d": {"status": "succeeded"}}))
    path = home / "runs" / run_id / "metrics.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def store(home: Path) -> dict[str, Any]:
    return rpc(home, "agent.status", timeout=30)["result"]["store"]


@pytest.mark.slow
def test_the_cache_is_given_back_at_rest_and_reads_beside_it_never_fail(tmp_path: Path) -> None:
    home = tmp_path / "home"
    write_run(home, "big")
    agent = start_agent(home, config='[store]\nmemory_limit = "64MB"\n')
    try:
        wait_for(lambda: query(home, "SELECT count(*) FROM metrics") == [[STEPS * KEYS]], timeout=120,
                 what="every point ingested")
        total = query(home, FULL_READ)
        limit = store(home)["limit_bytes"]
        failures: list[Any] = []
        peak_rss = 0
        stop = threading.Event()

        def read_meanwhile(whole: bool) -> int:
            """The Runs screen's page without a pause, or every block of the store (which fills the cache
            again) every half second."""
            nonlocal peak_rss
            reads = 0
            while not stop.is_set():
                if whole:
                    reply = rpc(home, "query", {"sql": FULL_READ}, timeout=30)
                    if reply.get("result", {}).get("rows") != total:
                        failures.append(reply)
                    peak_rss = max(peak_rss, psutil.Process(agent.proc.pid).memory_info().rss)
                    time.sleep(0.5)
                elif "result" not in (reply := rpc(home, "runs.table", {"limit": 50}, timeout=30)):
                    failures.append(reply)
                reads += 1
            return reads

        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            readers = [pool.submit(read_meanwhile, whole) for whole in (True, False)]
            try:
                wait_for(lambda: store(home)["trims"] >= 2, timeout=90, what="two trims while reads go on")
            finally:
                stop.set()
            reads = sum(r.result(timeout=60) for r in readers)
        assert failures == [] and reads > 4, store(home)
        wait_for(lambda: store(home)["cache_bytes"] <= limit * TRIM_TO, timeout=30,
                 what="the cache given back")
        time.sleep(1)
        given_back = peak_rss - psutil.Process(agent.proc.pid).memory_info().rss
        assert given_back > limit * (TRIM_ABOVE - TRIM_TO) / 2, f"RSS fell by only {given_back >> 20} MiB"
        assert query(home, FULL_READ) == total
        status = agent.cli("agent", "status", check=True).out
        assert "store cache:" in status and "([store] memory_limit)" in status
    finally:
        agent.stop()
