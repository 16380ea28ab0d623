"""A simulated NVIDIA host behind pynvml's own function names, for machines without a GPU.

The agent drives it like the real library (agent.nvml takes either). Load follows the
processes placed on each device, so a demo's jobs show up as busy GPUs, clearly labelled.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pynvml

SIMULATED_NAME = "Simulated A100-SXM4-40GB"
MEM_TOTAL = 40 * 1024**3


@dataclass
class SimDevice:
    index: int
    processes: dict[int, int] = field(default_factory=dict)
    energy_mj: float = 0.0
    last: float = field(default_factory=time.monotonic)


class SimulatedNvml:
    """Just the pynvml functions agent.nvml calls, with plausible, load-driven values."""

    def __init__(self, count: int = 2, gpm: bool = True) -> None:
        self.devices = [SimDevice(i) for i in range(count)]
        self.gpm = gpm
        self.initialized = False

    # placement, driven by the job runner --------------------------------

    def place(self, index: int, pid: int, mem_bytes: int = 6 * 1024**3) -> None:
        self.devices[index].processes[pid] = mem_bytes

    def remove(self, pid: int) -> None:
        for dev in self.devices:
            dev.processes.pop(pid, None)

    # the pynvml surface ---------------------------------------------------

    def nvmlInit(self) -> None:
        self.initialized = True

    def nvmlShutdown(self) -> None:
        self.initialized = False

    def nvmlDeviceGetCount(self) -> int:
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> SimDevice:
        if not 0 <= index < len(self.devices):
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return self.devices[index]

    def nvmlDeviceGetName(self, dev: SimDevice) -> str:
        return SIMULATED_NAME

    def nvmlDeviceGetUUID(self, dev: SimDevice) -> str:
        return f"GPU-sim-{dev.index:08d}"

    def _load(self, dev: SimDevice) -> float:
        if not dev.processes:
            return 0.0
        return 0.82 + 0.1 * math.sin(time.time() / 3 + dev.index)

    def nvmlDeviceGetUtilizationRates(self, dev: SimDevice) -> Any:
        load = self._load(dev)
        return SimpleNamespace(gpu=round(load * 100), memory=round(load * 60))

    def nvmlDeviceGetMemoryInfo(self, dev: SimDevice) -> Any:
        used = 512 * 1024**2 + sum(dev.processes.values())
        return SimpleNamespace(used=min(used, MEM_TOTAL), total=MEM_TOTAL, free=MEM_TOTAL - used)

    def nvmlDeviceGetPowerUsage(self, dev: SimDevice) -> int:
        return int((60 + 320 * self._load(dev)) * 1000)

    def nvmlDeviceGetTemperature(self, dev: SimDevice, sensor: int) -> int:
        return int(34 + 40 * self._load(dev))

    def nvmlDeviceGetClockInfo(self, dev: SimDevice, kind: int) -> int:
        return 1410 if dev.processes else 210

    def nvmlDeviceGetTotalEnergyConsumption(self, dev: SimDevice) -> int:
        now = time.monotonic()
        dev.energy_mj += self.nvmlDeviceGetPowerUsage(dev) * (now - dev.last)
        dev.last = now
        return int(dev.energy_mj)

    def nvmlDeviceGetComputeRunningProcesses(self, dev: SimDevice) -> list[Any]:
        return [SimpleNamespace(pid=p, usedGpuMemory=m) for p, m in dev.processes.items()]

    def nvmlGpmQueryDeviceSupport(self, dev: SimDevice) -> Any:
        return SimpleNamespace(isSupportedDevice=int(self.gpm))

    def nvmlGpmSampleAlloc(self) -> Any:
        return pynvml.c_nvmlGpmSample_t()

    def nvmlGpmSampleGet(self, dev: SimDevice, sample: Any) -> Any:
        self._gpm_dev = dev
        return sample

    def nvmlGpmMetricsGet(self, request: Any) -> Any:
        load = self._load(self._gpm_dev)
        request.metrics[0].value = load * 71.0
        request.metrics[1].value = load * 38.0
        return request

    def nvmlGpmSampleFree(self, sample: Any) -> None:
        return None
