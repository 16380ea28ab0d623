"""The NVML layer and collector, driven through pynvml's interface by the simulated device."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pynvml

from mldeck.agent.collector import Collector
from mldeck.agent.nvml import Nvml
from mldeck.agent.simgpu import MEM_TOTAL, SimulatedNvml
from mldeck.core.store import Store


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


def test_collector_writes_host_and_gpu_rows_in_batches(tmp_path: Path) -> None:
    import asyncio

    sim = SimulatedNvml(2)
    nvml = Nvml(sim)
    nvml.start()
    sim.place(0, pid=99)
    store = Store(tmp_path / "s.duckdb")
    events: list[Any] = []

    async def db(fn: Any, *args: Any) -> Any:
        return fn(*args)

    collector = Collector(nvml, store, db, lambda topic, data: events.append((topic, data)))

    async def tick_then_flush() -> list[dict[str, Any]]:
        await collector.tick()
        assert store.cur().execute("SELECT count(*) FROM system_metrics").fetchone() == (3,), \
            "the first sample is written at once: it marks when recording began"
        await collector.tick()
        held = collector.unwritten(0)
        assert store.cur().execute("SELECT count(*) FROM system_metrics").fetchone() == (3,)
        await collector.flush()
        return held

    held = asyncio.run(tick_then_flush())
    assert [r["gpu_index"] for r in held] == [None, 0, 1], "a history query sees samples not yet written"
    assert collector.unwritten(0) == []
    rows = store.cur().execute(
        "SELECT gpu_index, util_pct, cpu_pct, ram_total FROM system_metrics "
        "WHERE ts = (SELECT max(ts) FROM system_metrics) ORDER BY gpu_index NULLS FIRST"
    ).fetchall()
    assert [r[0] for r in rows] == [None, 0, 1]
    assert rows[0][2] is not None and rows[0][3] > 0, "the host row carries CPU and RAM"
    assert rows[1][1] > 0 and rows[2][1] == 0
    assert store.cur().execute("SELECT DISTINCT gpu_index, pid FROM gpu_processes").fetchall() == [(0, 99)]
    assert events[0][0] == "host.metrics" and len(events[0][1]["gpus"]) == 2
    store.close()
