"""The one thin NVML layer: every reading is a value or None ("N/A"), never an exception.

It takes the `pynvml` module, or anything with the same functions (the simulated
device in agent.simgpu), so the real code path is the one the tests drive.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, TypeVar

import pynvml

log = logging.getLogger("mldeck.nvml")
T = TypeVar("T")


@dataclass
class GpuSample:
    """One GPU at one moment; None where the device or driver cannot say."""

    index: int
    name: str | None = None
    uuid: str | None = None
    util_pct: float | None = None
    mem_used: int | None = None
    mem_total: int | None = None
    power_w: float | None = None
    temp_c: float | None = None
    sm_clock_mhz: float | None = None
    energy_j: float | None = None
    sm_active_pct: float | None = None
    tensor_active_pct: float | None = None
    processes: list[tuple[int, int | None]] = field(default_factory=list)


class Nvml:
    """Reads every GPU through an NVML-shaped library; absent NVML means no GPUs, said once."""

    def __init__(self, lib: ModuleType | Any = pynvml) -> None:
        self.lib = lib
        self.available = False
        self.reason: str | None = None
        self._handles: list[Any] = []
        self._gpm_prev: dict[int, Any] = {}
        self._gpm_ok: dict[int, bool] = {}

    def start(self) -> bool:
        try:
            self.lib.nvmlInit()
            count = self.lib.nvmlDeviceGetCount()
            self._handles = [self.lib.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
        except pynvml.NVMLError as exc:
            self.reason = f"NVML unavailable ({exc}); reporting CPU and memory only"
            log.info(self.reason)
            return False
        self.available = True
        return True

    @property
    def count(self) -> int:
        return len(self._handles)

    def _get(self, fn: Callable[..., T], *args: Any) -> T | None:
        try:
            return fn(*args)
        except pynvml.NVMLError:
            return None

    def sample(self) -> list[GpuSample]:
        return [self._sample_one(i, h) for i, h in enumerate(self._handles)]

    def _sample_one(self, index: int, handle: Any) -> GpuSample:
        lib, get = self.lib, self._get
        s = GpuSample(index=index)
        name = get(lib.nvmlDeviceGetName, handle)
        s.name = name.decode() if isinstance(name, bytes) else name
        uuid = get(lib.nvmlDeviceGetUUID, handle)
        s.uuid = uuid.decode() if isinstance(uuid, bytes) else uuid
        util = get(lib.nvmlDeviceGetUtilizationRates, handle)
        s.util_pct = float(util.gpu) if util is not None else None
        mem = get(lib.nvmlDeviceGetMemoryInfo, handle)
        if mem is not None:
            s.mem_used, s.mem_total = int(mem.used), int(mem.total)
        power = get(lib.nvmlDeviceGetPowerUsage, handle)
        s.power_w = power / 1000.0 if power is not None else None
        temp = get(lib.nvmlDeviceGetTemperature, handle, pynvml.NVML_TEMPERATURE_GPU)
        s.temp_c = float(temp) if temp is not None else None
        clock = get(lib.nvmlDeviceGetClockInfo, handle, pynvml.NVML_CLOCK_SM)
        s.sm_clock_mhz = float(clock) if clock is not None else None
        energy = get(lib.nvmlDeviceGetTotalEnergyConsumption, handle)
        s.energy_j = energy / 1000.0 if energy is not None else None
        procs = get(lib.nvmlDeviceGetComputeRunningProcesses, handle) or []
        s.processes = [(int(p.pid), _mem(p.usedGpuMemory)) for p in procs]
        s.sm_active_pct, s.tensor_active_pct = self._gpm(index, handle)
        return s

    def _gpm(self, index: int, handle: Any) -> tuple[float | None, float | None]:
        """SM and tensor-pipe activity from two GPM samples (Hopper and newer only)."""
        lib = self.lib
        if index not in self._gpm_ok:
            support = self._get(lib.nvmlGpmQueryDeviceSupport, handle)
            self._gpm_ok[index] = bool(support and support.isSupportedDevice)
        if not self._gpm_ok[index]:
            return None, None
        try:
            current = lib.nvmlGpmSampleGet(handle, lib.nvmlGpmSampleAlloc())
            prev, self._gpm_prev[index] = self._gpm_prev.get(index), current
            if prev is None:
                return None, None
            request = pynvml.c_nvmlGpmMetricsGet_t()
            request.version = pynvml.NVML_GPM_METRICS_GET_VERSION
            request.numMetrics = 2
            request.sample1, request.sample2 = prev, current
            request.metrics[0].metricId = pynvml.NVML_GPM_METRIC_SM_UTIL
            request.metrics[1].metricId = pynvml.NVML_GPM_METRIC_ANY_TENSOR_UTIL
            lib.nvmlGpmMetricsGet(request)
            lib.nvmlGpmSampleFree(prev)
            return float(request.metrics[0].value), float(request.metrics[1].value)
        except pynvml.NVMLError:
            self._gpm_ok[index] = False
            return None, None

    def shutdown(self) -> None:
        if self.available:
            self._get(self.lib.nvmlShutdown)
            self.available = False


def _mem(value: Any) -> int | None:
    if value is None or value == pynvml.NVML_VALUE_NOT_AVAILABLE_ulonglong.value:
        return None
    return int(value)
