"""The NVML layer and collector, driven through pynvml's interface by the simulated device."""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pynvml
import pytest

from mldeck.agent.collector import Collector
from mldeck.agent.nvml import Nvml
from mldeck.agent.rpc import Hub
from mldeck.agent.service import Context
from mldeck.agent.simgpu import MEM_TOTAL, SimulatedNvml
from mldeck.agent.tasks import Tasks
from mldeck.core.config import AgentConfig
from mldeck.core.paths import Layout
from mldeck.core.store import Store


@pytest.fixture
def ctx(tmp_path: Path) -> Iterator[Context]:
    """What the daemon gives its services: a real store file, its writer and reader threads, a hub."""
    layout = Layout(tmp_path / "home")
    layout.ensure()
    writer = concurrent.futures.ThreadPoolExecutor(1)
    readers = concurrent.futures.ThreadPoolExecutor(2)
    store = writer.submit(Store, layout.db).result()
    yield Context(AgentConfig(), layout, store, Hub(), Tasks(), writer, readers)
    writer.submit(store.close).result()
    writer.shutdown()
    readers.shutdown()


def test_without_a_driver_there_are_no_gpus_and_one_reason() -> None:
    nvml = Nvml()
    assert nvml.start() is False
    assert nvml.count == 0 and nvml.sample() == []
    assert "NVML unavailable" in (nvml.reason or "")


def test_simulated_devices_read_through_the_real_path() -> None:
    sim = SimulatedNvml(2)
    nvml = Nvml(sim)
    assert nvml.start() and nvml.count == 2
    sim.place(1, pid=4242, mem_bytes=8 * 1024**3)
    nvml.sample()
    idle, busy = nvml.sample()
    assert idle.util_pct == 0 and idle.processes == []
    assert busy.util_pct is not None and busy.util_pct > 50
    assert busy.processes == [(4242, 8 * 1024**3)]
    assert busy.mem_total == MEM_TOTAL and busy.mem_used is not None and busy.mem_used > 8 * 1024**3
    assert busy.sm_active_pct is not None and busy.tensor_active_pct is not None
    assert busy.power_w is not None and busy.power_w > idle.power_w


class NoGpm(SimulatedNvml):
    """A pre-Hopper card: GPM is not supported and temperature reading fails."""

    def nvmlGpmQueryDeviceSupport(self, dev: Any) -> Any:
        raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)

    def nvmlDeviceGetTemperature(self, dev: Any, sensor: int) -> int:
        raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)


def test_unsupported_readings_are_none_not_exceptions() -> None:
    nvml = Nvml(NoGpm(1))
    nvml.start()
    (gpu,) = nvml.sample()
    assert gpu.sm_active_pct is None and gpu.tensor_active_pct is None and gpu.temp_c is None
    assert gpu.util_pct == 0


def test_collector_writes_host_and_gpu_rows_in_batches(ctx: Context) -> None:
    sim = SimulatedNvml(2)
    nvml = Nvml(sim)
    nvml.start()
    sim.place(0, pid=99)
    events: list[Any] = []
    ctx.hub.on("host.metrics", events.append)
    collector = Collector(ctx, nvml)
    assert "host.metrics" in ctx.hub.topics

    def count() -> Any:
        return ctx.store.cur().execute("SELECT count(*) FROM system_metrics").fetchone()

    async def tick_then_flush() -> list[dict[str, Any]]:
        await collector.tick()
        assert count() == (3,), "the first sample is written at once: it marks when recording began"
        await collector.tick()
        held = collector.unwritten(0)
        assert count() == (3,)
        await collector.flush()
        return held

    held = asyncio.run(tick_then_flush())
    assert [r["gpu_index"] for r in held] == [None, 0, 1], "a history query sees samples not yet written"
    assert collector.unwritten(0) == []
    rows = ctx.store.cur().execute(
        "SELECT gpu_index, util_pct, cpu_pct, ram_total FROM system_metrics "
        "WHERE ts = (SELECT max(ts) FROM system_metrics) ORDER BY gpu_index NULLS FIRST"
    ).fetchall()
    assert [r[0] for r in rows] == [None, 0, 1]
    assert rows[0][2] is not None and rows[0][3] > 0, "the host row carries CPU and RAM"
    assert rows[1][1] > 0 and rows[2][1] == 0
    processes = ctx.store.cur().execute("SELECT DISTINCT gpu_index, pid FROM gpu_processes").fetchall()
    assert processes == [(0, 99)]
    assert len(events) == 2 and len(events[0]["gpus"]) == 2


class SlowCollector(Collector):
    """A collector whose every sample takes 0.2 s (a slow NVML call), noting when each began."""

    began: list[float]

    def sample(self) -> dict[str, Any]:
        self.began.append(time.monotonic())
        time.sleep(0.2)
        return super().sample()


def test_a_slow_sample_does_not_stretch_the_interval(ctx: Context) -> None:
    """The collector's schedule (as the daemon sets it): ticks begin every interval, not interval + tick."""
    collector = SlowCollector(ctx, Nvml())
    collector.began = []

    async def run_a_while() -> None:
        ctx.tasks.every(0.3, collector.tick, "collector", first=0, from_start=True)
        await asyncio.sleep(1.6)
        await ctx.tasks.stop()

    asyncio.run(run_a_while())
    gaps = [b - a for a, b in itertools.pairwise(collector.began)]
    assert len(gaps) >= 3 and ctx.tasks.failures == {}
    assert all(0.25 < g < 0.45 for g in gaps), f"ticks began {gaps} s apart; 0.5 s would be interval + tick"
