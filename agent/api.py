"""The foundation's RPC methods: hello, host.*, runs.* reads, query and subscriptions."""

from __future__ import annotations

import asyncio
import getpass
import os
import platform
import socket
import sys
import time
from typing import TYPE_CHECKING, Any

import duckdb
import psutil

from core import protocol
from core.protocol import (
    HelloParams,
    HostMetricsParams,
    NoParams,
    QueryParams,
    RunRef,
    RunsListParams,
    RunsMetricsParams,
    RunsTableParams,
    SubscribeParams,
    UnsubscribeParams,
)
from core.runlog import list_checkpoints
from core.store import QueryRefused

if TYPE_CHECKING:
    from agent.daemon import Agent
    from agent.rpc import Connection

AGENT_VERSION = "0.1.0"
MAX_POINTS = 100_000
MAX_TABLE_PAGE = 25_000  # ~4 MiB of JSON with a dozen columns: well under the message limit
MAX_TABLE_METRICS = 32


def host_facts(agent: Agent) -> dict[str, Any]:
    """What a client needs to know about this host once, at connect time."""
    gpus = agent.collector.latest.get("gpus") if agent.collector.latest else None
    if gpus is None:
        gpus = [
            {k: g.__dict__[k] for k in ("index", "name", "uuid", "mem_total")}
            for g in agent.nvml.sample()
        ]
    return {
        "hostname": socket.gethostname(),
        "user": getpass.getuser(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "cpu_count": psutil.cpu_count(),
        "ram_total": psutil.virtual_memory().total,
        "gpu_count": agent.nvml.count,
        "gpus": [{"index": g["index"], "name": g["name"], "mem_total": g["mem_total"]} for g in gpus],
        "gpu_simulated": agent.simulated is not None,
        "nvml": agent.nvml.reason or ("simulated" if agent.simulated else "ok"),
        "home": str(agent.layout.home),
        "pid": os.getpid(),
    }


def _check_points(n: int) -> int:
    if not 2 <= n <= MAX_POINTS:
        raise protocol.invalid(f"max_points must be between 2 and {MAX_POINTS}, got {n}")
    return n


def register(agent: Agent) -> None:
    d = agent.dispatcher
    store = agent.store

    async def hello(p: HelloParams, conn: Connection) -> dict[str, Any]:
        if p.protocol != protocol.PROTOCOL_VERSION:
            raise protocol.invalid(
                f"protocol {p.protocol} is not spoken here (agent speaks "
                f"{protocol.PROTOCOL_VERSION}); install the same mldeck version on both ends"
            )
        return {
            "protocol": protocol.PROTOCOL_VERSION,
            "agent_version": AGENT_VERSION,
            "host": host_facts(agent),
            "methods": sorted(d.methods),
            "topics": sorted(agent.topics),
        }

    async def host_info(p: NoParams, conn: Connection) -> dict[str, Any]:
        return host_facts(agent)

    async def host_metrics(p: HostMetricsParams, conn: Connection) -> dict[str, Any]:
        _check_points(p.max_points)
        history = None
        if p.window_s is not None:
            if p.window_s <= 0:
                raise protocol.invalid("window_s must be a positive number of seconds")
            since = time.time() - p.window_s
            history = await agent.read(store.host_metrics, since, p.max_points)
            history += agent.collector.unwritten(since)
        return {"latest": agent.collector.latest, "history": history}

    async def runs_list(p: RunsListParams, conn: Connection) -> list[dict[str, Any]]:
        if p.limit < 1:
            raise protocol.invalid("limit must be at least 1")
        runs = await agent.read(store.list_runs, p.status, p.experiment, p.sweep_id, p.limit)
        latest = await agent.read(store.latest_metrics, [r["run_id"] for r in runs])
        for r in runs:
            r["metrics"] = latest.get(r["run_id"], {})
        return runs

    async def runs_table(p: RunsTableParams, conn: Connection) -> dict[str, Any]:
        if not 1 <= p.limit <= MAX_TABLE_PAGE:
            raise protocol.invalid(f"limit must be between 1 and {MAX_TABLE_PAGE} (page with offset)")
        if p.offset < 0:
            raise protocol.invalid("offset must be 0 or more")
        if p.metrics is not None and len(p.metrics) > MAX_TABLE_METRICS:
            raise protocol.invalid(f"ask for at most {MAX_TABLE_METRICS} metrics per page")
        try:
            table, total, keys = await agent.read(store.runs_table, p.offset, p.limit, p.status, p.experiment,
                                                  p.columns, p.metrics)
        except ValueError as exc:
            raise protocol.invalid(str(exc)) from None
        return {"columns": table.to_pydict(), "total": total, "offset": p.offset, "metrics": keys}

    async def runs_get(p: RunRef, conn: Connection) -> dict[str, Any]:
        run = await agent.read(store.get_run, p.run_id)
        if run is None:
            raise protocol.not_found(f"no run {p.run_id!r} on this host (`mldeck runs ls` lists them)")
        run["metrics"] = (await agent.read(store.latest_metrics, [p.run_id])).get(p.run_id, {})
        run["dir"] = str(agent.layout.runs / p.run_id)
        return run

    async def runs_checkpoints(p: RunRef, conn: Connection) -> dict[str, Any]:
        if await agent.read(store.get_run, p.run_id) is None:
            raise protocol.not_found(f"no run {p.run_id!r} on this host (`mldeck runs ls` lists them)")
        run_dir = agent.layout.runs / p.run_id  # a known run's id: created through check_name
        return {"run_id": p.run_id, "checkpoints": await asyncio.to_thread(list_checkpoints, run_dir)}

    async def runs_metrics(p: RunsMetricsParams, conn: Connection) -> dict[str, Any]:
        _check_points(p.max_points)
        if await agent.read(store.get_run, p.run_id) is None:
            raise protocol.not_found(f"no run {p.run_id!r} on this host")
        series = await agent.read(store.run_metrics, p.run_id, p.keys, p.max_points)
        return {"run_id": p.run_id, "series": series}

    async def query(p: QueryParams, conn: Connection) -> dict[str, Any]:
        if not 1 <= p.limit <= 1_000_000:
            raise protocol.invalid("limit must be between 1 and 1000000")
        try:
            return await agent.read(store.read_only_query, p.sql, p.limit)
        except QueryRefused as exc:
            raise protocol.invalid(str(exc)) from None
        except duckdb.Error as exc:
            raise protocol.invalid(f"query failed: {str(exc).splitlines()[0]}") from None

    async def subscribe(p: SubscribeParams, conn: Connection) -> dict[str, Any]:
        if p.topic not in agent.topics:
            raise protocol.invalid(
                f"unknown topic {p.topic!r}; topics: {', '.join(sorted(agent.topics))}"
            )
        return {"subscription": agent.hub.subscribe(p.topic, p.filter, conn)}

    async def unsubscribe(p: UnsubscribeParams, conn: Connection) -> dict[str, Any]:
        if p.subscription not in conn.subscriptions:
            raise protocol.not_found(f"no subscription {p.subscription} on this connection")
        return {"unsubscribed": agent.hub.unsubscribe(p.subscription)}

    async def agent_stop(p: NoParams, conn: Connection) -> dict[str, Any]:
        asyncio.get_running_loop().call_later(0.2, agent.request_stop)
        return {"stopping": True, "pid": os.getpid()}

    async def agent_status(p: NoParams, conn: Connection) -> dict[str, Any]:
        proc = psutil.Process()
        return {
            "pid": os.getpid(),
            "home": str(agent.layout.home),
            "uptime_s": time.time() - proc.create_time(),
            "rss_bytes": proc.memory_info().rss,
            "cpu_pct": proc.cpu_percent(None),
            "connections": len(agent.rpc.connections),
            "ingest": {"rows": agent.ingest.rows_committed, "bad_lines": agent.ingest.bad_lines},
            "nvml": agent.nvml.reason or ("simulated" if agent.simulated else "ok"),
        }

    d.add("hello", HelloParams, hello)
    d.add("host.info", NoParams, host_info)
    d.add("host.metrics", HostMetricsParams, host_metrics)
    d.add("runs.list", RunsListParams, runs_list)
    d.add("runs.table", RunsTableParams, runs_table)
    d.add("runs.get", RunRef, runs_get)
    d.add("runs.checkpoints", RunRef, runs_checkpoints)
    d.add("runs.metrics", RunsMetricsParams, runs_metrics)
    d.add("query", QueryParams, query)
    d.add("subscribe", SubscribeParams, subscribe)
    d.add("unsubscribe", UnsubscribeParams, unsubscribe)
    d.add("agent.stop", NoParams, agent_stop)
    d.add("agent.status", NoParams, agent_status)

