"""Host and GPU sampling at a fixed cadence: psutil for the host, agent.nvml for the GPUs.

The daemon calls `tick` every `agent.collector_interval_s` (agent/tasks.py, counted from when the
last tick began); samples are published at once and written to the store in batches.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict
from typing import Any

import psutil
import pyarrow as pa

from mldeck.agent.nvml import GpuSample, Nvml
from mldeck.agent.service import Context

WRITE_EVERY_S = 5.0
TOPIC = "host.metrics"


class Collector:
    """The latest sample of the host and its GPUs, and the samples not written to the store yet."""

    def __init__(self, ctx: Context, nvml: Nvml) -> None:
        self.ctx = ctx
        self.nvml = nvml
        ctx.hub.declare(TOPIC)
        self.latest: dict[str, Any] = {}
        self._pending: list[tuple[pa.Table, pa.Table]] = []
        self._recorded = False  # the first sample is written at once: it marks when recording began
        psutil.cpu_percent(None)

    def sample(self) -> dict[str, Any]:
        """One reading of the host and each GPU, JSON-ready."""
        mem = psutil.virtual_memory()
        gpus = self.nvml.sample() if self.nvml.available else []
        return {
            "ts": time.time(),
            "cpu_pct": psutil.cpu_percent(None),
            "cpu_count": psutil.cpu_count(),
            "ram_used": mem.total - mem.available,
            "ram_total": mem.total,
            "gpus": [asdict(g) for g in gpus],
        }

    @staticmethod
    def rows(snapshot: dict[str, Any]) -> tuple[pa.Table, pa.Table]:
        """The snapshot as system_metrics rows (host row has gpu_index NULL) and process rows."""
        gpus = [GpuSample(**g) for g in snapshot["gpus"]]
        n = len(gpus) + 1
        ts = [snapshot["ts"]] * n

        def col(attr: str) -> list[Any]:
            return [None, *(getattr(g, attr) for g in gpus)]

        metrics = pa.table({
            "ts": pa.array(ts, pa.float64()),
            "gpu_index": pa.array(col("index"), pa.int32()),
            "util_pct": pa.array(col("util_pct"), pa.float64()),
            "mem_used": pa.array(col("mem_used"), pa.int64()),
            "mem_total": pa.array(col("mem_total"), pa.int64()),
            "power_w": pa.array(col("power_w"), pa.float64()),
            "temp_c": pa.array(col("temp_c"), pa.float64()),
            "cpu_pct": pa.array([snapshot["cpu_pct"]] + [None] * (n - 1), pa.float64()),
            "ram_used": pa.array([snapshot["ram_used"]] + [None] * (n - 1), pa.int64()),
            "ram_total": pa.array([snapshot["ram_total"]] + [None] * (n - 1), pa.int64()),
            "sm_clock_mhz": pa.array(col("sm_clock_mhz"), pa.float64()),
            "energy_j": pa.array(col("energy_j"), pa.float64()),
            "sm_active_pct": pa.array(col("sm_active_pct"), pa.float64()),
            "tensor_active_pct": pa.array(col("tensor_active_pct"), pa.float64()),
        })
        procs = [(g.index, pid, mem) for g in gpus for pid, mem in g.processes]
        processes = pa.table({
            "ts": pa.array([snapshot["ts"]] * len(procs), pa.float64()),
            "gpu_index": pa.array([p[0] for p in procs], pa.int32()),
            "pid": pa.array([p[1] for p in procs], pa.int32()),
            "mem_used": pa.array([p[2] for p in procs], pa.int64()),
        })
        return metrics, processes

    def _write(self, batches: list[tuple[pa.Table, pa.Table]]) -> None:
        store = self.ctx.store
        with store.transaction():
            store.append("system_metrics", pa.concat_tables([m for m, _ in batches]))
            store.append("gpu_processes", pa.concat_tables([p for _, p in batches]))

    def unwritten(self, since: float) -> list[dict[str, Any]]:
        """Samples not in the store yet, as system_metrics rows: a history query adds them."""
        rows = [r for m, _ in self._pending for r in m.to_pylist()]
        return [r for r in rows if r["ts"] >= since]

    async def flush(self) -> None:
        """Write the samples held since the last flush in one transaction."""
        batches, self._pending = self._pending, []
        if batches:
            await self.ctx.db(self._write, batches)

    async def tick(self) -> dict[str, Any]:
        """Sample and publish now; the store gets samples every WRITE_EVERY_S (the first at once)."""
        snapshot = await asyncio.to_thread(self.sample)
        self._pending.append(self.rows(snapshot))
        first = self._pending[0][0]["ts"][0].as_py()
        if not self._recorded or snapshot["ts"] - first >= WRITE_EVERY_S:
            await self.flush()
            self._recorded = True
        self.latest = snapshot
        self.ctx.hub.publish(TOPIC, snapshot)
        return snapshot
