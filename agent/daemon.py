"""The agent daemon: owns the store, and composes the services in one visible order."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import fcntl
import logging
import os
import signal
from pathlib import Path
from typing import Any

import pyarrow as pa

from mldeck.agent.backups import Backups
from mldeck.agent.collector import Collector
from mldeck.agent.cost import Cost
from mldeck.agent.explain import Explainer
from mldeck.agent.host import Host
from mldeck.agent.ingest import Ingest
from mldeck.agent.jobs import Jobs
from mldeck.agent.monitor import Monitor
from mldeck.agent.nvml import Nvml
from mldeck.agent.pipelines import Pipelines
from mldeck.agent.query import Query
from mldeck.agent.recover import check_not_lost, open_checked, recover_store
from mldeck.agent.registry import Registry
from mldeck.agent.rpc import Dispatcher, Hub, RpcServer
from mldeck.agent.runs import Runs
from mldeck.agent.service import Context
from mldeck.agent.servingctl import Serving
from mldeck.agent.simgpu import SimulatedNvml
from mldeck.agent.slurm import Slurm, SlurmJobs
from mldeck.agent.storeops import StoreOps
from mldeck.agent.sweeps import Sweeps
from mldeck.agent.tasks import Tasks
from mldeck.core.config import AgentConfig, load_config
from mldeck.core.paths import Layout
from mldeck.core.store import Store

log = logging.getLogger("mldeck.agent")

class AlreadyRunning(RuntimeError):
    """Another agent holds this home."""


class Agent:
    """One agent per home: the only process that opens the store file."""

    def __init__(self, home: Path, config: AgentConfig | None = None) -> None:
        self.layout = Layout(home)
        self.config = config or load_config(self.layout.config)
        self.hub = Hub()
        self.tasks = Tasks()
        self.dispatcher = Dispatcher()
        self.rpc = RpcServer(self.dispatcher, self.hub, self.config.socket)
        sim = self.config.agent.simulate_gpus
        self.simulated = SimulatedNvml(sim) if sim else None
        self.nvml = Nvml(self.simulated) if self.simulated else Nvml()
        self.ctx: Context
        self.store: Store
        self.collector: Collector
        self.ingest: Ingest
        self.services: list[Any] = []
        self._writer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="store-writer")
        self._readers = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="store-reader")
        self._lock_fd: int | None = None
        self._stopping = asyncio.Event()

    def _take_lock(self) -> None:
        fd = os.open(self.layout.lockfile, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise AlreadyRunning(
                f"an agent is already running for {self.layout.home} "
                "(`mldeck agent status` shows it; `mldeck agent stop` stops it)"
            ) from None
        self._lock_fd = fd

    def compose(self, ctx: Context) -> list[Any]:
        """Every service, built in dependency order; each gets exactly what it uses."""
        store_ops = StoreOps(ctx, self.ingest)
        host = Host(ctx, self.nvml, self.simulated is not None, self.collector, self.ingest, store_ops,
                    self.dispatcher, self.rpc, self.request_stop)
        backend = Jobs if ctx.config.jobs.backend == "local" else SlurmJobs
        jobs = backend(ctx, self.nvml, self.simulated, self.collector, self.ingest)
        runs = Runs(ctx, jobs, store_ops)
        cost = Cost(ctx, jobs)
        registry = Registry(ctx)
        sweeps = Sweeps(ctx, jobs, registry)
        query = Query(ctx)
        serving = Serving(ctx, self.ingest, self.collector)
        pipelines = Pipelines(ctx, jobs, registry, self.ingest)
        monitor = Monitor(ctx, registry, pipelines)
        backups = Backups(ctx)
        explainer = Explainer(ctx)
        return [host, jobs, store_ops, runs, cost, registry, sweeps, query, serving, pipelines, monitor,
                backups, explainer, *([Slurm(ctx, jobs)] if isinstance(jobs, SlurmJobs) else [])]

    async def start(self) -> None:
        self.layout.ensure()
        self._take_lock()
        check_not_lost(self.layout)
        self.store = await asyncio.get_running_loop().run_in_executor(
            self._writer, open_checked, self.layout, self.config.store.duckdb_settings())
        self.ctx = Context(self.config, self.layout, self.store, self.hub, self.tasks, self._writer,
                           self._readers)
        self.nvml.start()
        self.collector = Collector(self.ctx, self.nvml)
        self.ingest = Ingest(self.store, self.layout.home, self.ctx.db, self.hub.publish)
        self.services = self.compose(self.ctx)
        for service in self.services:
            self.dispatcher.bind(service)
        for service in self.services:
            if hasattr(service, "start"):
                await service.start()
        await self.rpc.start(self.layout.socket)
        self.layout.pidfile.write_text(str(os.getpid()))
        self.ctx.tasks.every(self.config.agent.collector_interval_s, self.collector.tick, "collector",
                             first=0, from_start=True)
        self.tasks.spawn(self.ingest.run(), "ingest")
        log.info("agent up: home %s, pid %d", self.layout.home, os.getpid())

    async def recover(self) -> dict[str, Any]:
        """Rebuild a lost or damaged store from the home's files, holding the home as an agent would."""
        self.layout.ensure()
        self._take_lock()
        try:
            return await recover_store(self.layout, self._writer, self.config.store.duckdb_settings())
        finally:
            self._writer.shutdown()
            if self._lock_fd is not None:
                os.close(self._lock_fd)

    def request_stop(self) -> None:
        self._stopping.set()

    async def serve_forever(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        await self._stopping.wait()
        await self.stop()

    async def stop(self) -> None:
        for service in reversed(self.services):
            if hasattr(service, "stop"):
                await service.stop()
        self.ingest.stop()
        await self.rpc.stop()
        await self.collector.flush()
        await self.tasks.stop()
        await asyncio.to_thread(self._readers.shutdown)  # reads in flight end before the store closes
        await self.ctx.db(self.store.close)
        self._writer.shutdown()
        self.nvml.shutdown()
        for path in (self.layout.socket, self.layout.pidfile):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
        log.info("agent stopped")


async def run_agent(home: Path) -> None:
    # Arrow through malloc: mimalloc keeps what each ingest thread used after a backlog (~70 MB at 50 M)
    pa.set_memory_pool(pa.system_memory_pool())
    agent = Agent(home)
    await agent.start()
    await agent.serve_forever()
