"""This host and this agent: hello, host.*, agent.status / agent.stop, and the subscribe methods."""

from __future__ import annotations

import asyncio
import getpass
import os
import platform
import socket
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import psutil

from mldeck.agent.service import Context, rpc
from mldeck.core import protocol
from mldeck.core.errors import Invalid, NotFound
from mldeck.core.health import problems
from mldeck.core.protocol import (
    HelloParams,
    HostMetricsParams,
    NoParams,
    SubscribeParams,
    UnsubscribeParams,
)
from mldeck.core.version import VERSION

if TYPE_CHECKING:
    from mldeck.agent.collector import Collector
    from mldeck.agent.ingest import Ingest
    from mldeck.agent.nvml import Nvml
    from mldeck.agent.rpc import Connection, Dispatcher, RpcServer
    from mldeck.agent.storeops import StoreOps


class Host:
    """Facts and live metrics of the host, and the agent's own status and lifecycle."""

    def __init__(
        self, ctx: Context, nvml: Nvml, simulated: bool, collector: Collector, ingest: Ingest,
        store_ops: StoreOps, dispatcher: Dispatcher, server: RpcServer, request_stop: Callable[[], None],
    ) -> None:
        self.ctx = ctx
        self.nvml = nvml
        self.simulated = simulated
        self.collector = collector
        self.ingest = ingest
        self.store_ops = store_ops
        self.dispatcher = dispatcher
        self.server = server
        self.request_stop = request_stop
        ctx.hub.declare("host.metrics")

    @property
    def nvml_state(self) -> str:
        return self.nvml.reason or ("simulated" if self.simulated else "ok")

    def facts(self) -> dict[str, Any]:
        """What a client needs to know about this host once, at connect time."""
        gpus = self.collector.latest.get("gpus") if self.collector.latest else None
        if gpus is None:
            gpus = [
                {k: g.__dict__[k] for k in ("index", "name", "uuid", "mem_total")}
                for g in self.nvml.sample()
            ]
        return {
            "hostname": socket.gethostname(),
            "user": getpass.getuser(),
            "platform": platform.platform(),
            "python": sys.version.split()[0],
            "cpu_count": psutil.cpu_count(),
            "ram_total": psutil.virtual_memory().total,
            "gpu_count": self.nvml.count,
            "gpus": [{"index": g["index"], "name": g["name"], "mem_total": g["mem_total"]} for g in gpus],
            "gpu_simulated": self.simulated,
            "nvml": self.nvml_state,
            "home": str(self.ctx.layout.home),
            "pid": os.getpid(),
            "agent_version": VERSION,
        }

    @rpc("hello")
    async def hello(self, p: HelloParams) -> dict[str, Any]:
        if p.protocol != protocol.PROTOCOL_VERSION:
            raise Invalid(
                f"protocol {p.protocol} is not spoken here (agent speaks "
                f"{protocol.PROTOCOL_VERSION}); install the same mldeck version on both ends"
            )
        return {
            "protocol": protocol.PROTOCOL_VERSION,
            "agent_version": VERSION,
            "host": self.facts(),
            "methods": sorted(self.dispatcher.methods),
            "topics": sorted(self.ctx.hub.topics),
        }

    @rpc("host.info")
    async def info(self, p: NoParams) -> dict[str, Any]:
        return self.facts()

    @rpc("host.metrics")
    async def metrics(self, p: HostMetricsParams) -> dict[str, Any]:
        history = None
        if p.window_s is not None:
            since = time.time() - p.window_s
            history = await self.ctx.read(self.ctx.store.host_metrics, since, p.max_points)
            history += self.collector.unwritten(since)
        return {"latest": self.collector.latest, "history": history}

    @rpc("subscribe")
    async def subscribe(self, p: SubscribeParams, conn: Connection) -> dict[str, Any]:
        topics = self.ctx.hub.topics
        if p.topic not in topics:
            raise Invalid(f"unknown topic {p.topic!r}; topics: {', '.join(sorted(topics))}")
        return {"subscription": self.ctx.hub.subscribe(p.topic, p.filter, conn)}

    @rpc("unsubscribe")
    async def unsubscribe(self, p: UnsubscribeParams, conn: Connection) -> dict[str, Any]:
        if p.subscription not in conn.subscriptions:
            raise NotFound(f"no subscription {p.subscription} on this connection")
        return {"unsubscribed": self.ctx.hub.unsubscribe(p.subscription)}

    @rpc("agent.stop")
    async def stop_agent(self, p: NoParams) -> dict[str, Any]:
        asyncio.get_running_loop().call_later(0.2, self.request_stop)
        return {"stopping": True, "pid": os.getpid()}

    @rpc("agent.status")
    async def status(self, p: NoParams) -> dict[str, Any]:
        proc = psutil.Process()
        return {
            "pid": os.getpid(),
            "version": VERSION,
            "home": str(self.ctx.layout.home),
            "uptime_s": time.time() - proc.create_time(),
            "rss_bytes": proc.memory_info().rss,
            "cpu_pct": proc.cpu_percent(None),
            "connections": len(self.server.connections),
            "ingest": self.ingest.status(),
            "store": self.store_ops.memory(),
            "nvml": self.nvml_state,
            "task_failures": self.ctx.tasks.status(),
            "refused": self.server.refusals.status(),
            "problems": problems(self.ingest.status(), self.ctx.tasks.status(),
                                 self.server.refusals.status()),
        }
