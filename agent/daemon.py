"""The agent daemon: owns the store, and runs the RPC server, collector and ingest side by side."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import fcntl
import functools
import logging
import os
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from agent import api, jobs, monitor, pipelines, registry, servingctl, sweeps
from agent.collector import Collector
from agent.ingest import Ingest
from agent.nvml import Nvml
from agent.rpc import Dispatcher, Hub, RpcServer
from agent.simgpu import SimulatedNvml
from core.config import AgentConfig, load_config
from core.paths import Layout
from core.store import Store

log = logging.getLogger("mldeck.agent")
T = TypeVar("T")

FEATURES: list[Callable[[Agent], None]] = [
    api.register, registry.register, jobs.register, sweeps.register, servingctl.register,
    pipelines.register, monitor.register,
]


class AlreadyRunning(RuntimeError):
    """Another agent holds this home."""


class Agent:
    """One agent per home: the only process that opens the store file."""

    def __init__(self, home: Path, config: AgentConfig | None = None) -> None:
        self.layout = Layout(home)
        self.config = config or load_config(self.layout.config)
        self.hub = Hub()
        self.dispatcher = Dispatcher()
        self.rpc = RpcServer(self.dispatcher, self.hub)
        sim = self.config.agent.simulate_gpus
        self.simulated = SimulatedNvml(sim) if sim else None
        self.nvml = Nvml(self.simulated) if self.simulated else Nvml()
        self.store: Store
        self.collector: Collector
        self.ingest: Ingest
        self._writer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="store-writer")
        self._readers = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="store-reader")
        self._lock_fd: int | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._stopping = asyncio.Event()
        self.on_stop: list[Callable[[], Any]] = []
        self.topics: set[str] = {"host.metrics", "runs", "run.metrics", "run.event"}

    async def db(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run store work on the single writer thread: writes never race each other."""
        call = functools.partial(fn, *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(self._writer, call)

    async def read(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a read-only query off the writer thread, on its own cursor."""
        call = functools.partial(fn, *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(self._readers, call)

    def spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.append(task)
        return task

    def every(self, seconds: float, tick: Callable[[], Awaitable[None]], name: str) -> asyncio.Task[Any]:
        """A periodic job: a tick that fails is logged, and the next one still comes."""

        async def loop() -> None:
            while True:
                await asyncio.sleep(seconds)
                try:
                    await tick()
                except Exception:
                    log.exception("%s failed; trying again in %gs", name, seconds)

        return self.spawn(loop(), name)

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

    async def start(self) -> None:
        self.layout.ensure()
        self._take_lock()
        self.store = await self.db(Store, self.layout.db)
        self.nvml.start()
        self.collector = Collector(
            self.nvml, self.store, self.db, self.hub.publish, self.config.agent.collector_interval_s
        )
        self.ingest = Ingest(self.store, self.layout.home, self.db, self.hub.publish)
        for feature in FEATURES:
            feature(self)
        await self.rpc.start(self.layout.socket)
        self.layout.pidfile.write_text(str(os.getpid()))
        self.spawn(self.collector.run(), "collector")
        self.spawn(self.ingest.run(), "ingest")
        log.info("agent up: home %s, pid %d", self.layout.home, os.getpid())

    def request_stop(self) -> None:
        self._stopping.set()

    async def serve_forever(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        await self._stopping.wait()
        await self.stop()

    async def stop(self) -> None:
        for hook in self.on_stop:
            result = hook()
            if asyncio.iscoroutine(result):
                await result
        self.ingest.stop()
        await self.rpc.stop()
        await self.collector.flush()
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks)
        await self.db(self.store.close)
        self._writer.shutdown()
        self._readers.shutdown()
        self.nvml.shutdown()
        for path in (self.layout.socket, self.layout.pidfile):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
        log.info("agent stopped")


async def run_agent(home: Path) -> None:
    agent = Agent(home)
    await agent.start()
    await agent.serve_forever()
