"""Triton's GPU and CPU families for /metrics: NVML (or the simulated device) and psutil.

Read at most once a second however often /metrics is scraped (Triton polls on an interval
too), in a worker thread so a slow driver call never holds up the event loop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import psutil

from mldeck.agent.nvml import GpuSample, Nvml
from mldeck.agent.serving.metrics import Sample, family, labels_of

MIN_INTERVAL_S = 1.0


class Hardware:
    """The GPUs and the host's CPU and memory as Triton reports them; energy counts from start."""

    def __init__(self, nvml: Nvml) -> None:
        self.nvml = nvml
        self._energy_at_start: dict[str, float] = {}
        self._lines: list[str] = []
        self._at = -MIN_INTERVAL_S
        self._lock = asyncio.Lock()
        psutil.cpu_percent(None)  # the first reading starts the interval the next one measures

    async def lines(self) -> list[str]:
        async with self._lock:
            if time.monotonic() - self._at >= MIN_INTERVAL_S:
                self._lines = await asyncio.to_thread(self._read)
                self._at = time.monotonic()
            return self._lines

    def _read(self) -> list[str]:
        gpus = [g for g in self.nvml.sample() if g.uuid] if self.nvml.available else []
        out: list[str] = []
        for name, kind, doc, value in (
            ("nv_gpu_utilization", "gauge", "GPU utilization rate [0.0 - 1.0)",
             lambda g: None if g.util_pct is None else g.util_pct / 100.0),
            ("nv_gpu_memory_total_bytes", "gauge", "GPU total memory, in bytes", lambda g: g.mem_total),
            ("nv_gpu_memory_used_bytes", "gauge", "GPU used memory, in bytes", lambda g: g.mem_used),
            ("nv_gpu_power_usage", "gauge", "GPU power usage in watts", lambda g: g.power_w),
            ("nv_energy_consumption", "counter", "GPU energy consumption in joules since the Triton Server "
             "started", self._energy),
        ):
            out += family(name, kind, doc, _per_gpu(gpus, value))
        mem = psutil.virtual_memory()
        out += family("nv_cpu_utilization", "gauge", "CPU utilization rate [0.0 - 1.0]",
                      [((), psutil.cpu_percent(None) / 100.0)])
        out += family("nv_cpu_memory_total_bytes", "gauge", "CPU total memory (RAM), in bytes",
                      [((), mem.total)])
        out += family("nv_cpu_memory_used_bytes", "gauge", "CPU used memory (RAM), in bytes",
                      [((), mem.total - mem.available)])
        return out

    def _energy(self, gpu: GpuSample) -> float | None:
        if gpu.energy_j is None or gpu.uuid is None:
            return None
        start = self._energy_at_start.setdefault(gpu.uuid, gpu.energy_j)
        return gpu.energy_j - start


def _per_gpu(gpus: list[GpuSample], value: Callable[[GpuSample], float | None]) -> list[Sample]:
    out = []
    for gpu in gpus:
        v = value(gpu)
        if v is not None:
            out.append((labels_of(gpu_uuid=gpu.uuid), float(v)))
    return out
