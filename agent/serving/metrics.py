"""Prometheus text metrics named after Triton's, and the last minute's figures for the agent.

Triton's counters keep their exact names (`nv_inference_request_success`, not
`..._total`), so existing Triton dashboards read them; what Triton lacks is
prefixed `mldeck_`. Everything is updated on the event loop thread only.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict, deque
from typing import Any

import numpy as np

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
WINDOW_S = 60

Labels = tuple[tuple[str, str], ...]

_COUNTERS = {
    "nv_inference_request_success": "Number of successful inference requests, all batch sizes",
    "nv_inference_request_failure": "Number of failed inference requests, all batch sizes",
    "nv_inference_count": "Number of inferences performed (a request of n rows counts n)",
    "nv_inference_exec_count": "Number of model executions (batches) performed",
    "nv_inference_request_duration_us": "Cumulative inference request duration in microseconds",
    "nv_inference_queue_duration_us": "Cumulative inference queuing duration in microseconds",
    "nv_inference_compute_infer_duration_us": "Cumulative compute inference duration in microseconds",
    "mldeck_prediction_log_dropped": "Predictions not logged because the log queue was saturated",
    "mldeck_shadow_dropped": "Shadow requests skipped because the challenger was saturated",
    "mldeck_model_loads": "Model version loads, by result",
}
_HISTOGRAMS = {
    "mldeck_batch_size": ("Rows per model execution", BATCH_BUCKETS),
    "mldeck_request_duration_seconds": ("Inference request duration, end to end", LATENCY_BUCKETS),
}


def _labels(**kv: Any) -> Labels:
    return tuple((k, str(v)) for k, v in kv.items())


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _fmt_labels(labels: Labels, extra: str = "") -> str:
    parts = [f'{k}="{_escape(v)}"' for k, v in labels]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _num(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


class _Histogram:
    __slots__ = ("buckets", "count", "counts", "total")

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * len(buckets)
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1
                break
        self.total += value
        self.count += 1

    def lines(self, name: str, labels: Labels) -> list[str]:
        out, running = [], 0
        for bound, n in zip(self.buckets, self.counts, strict=True):
            running += n
            le = 'le="' + _num(bound) + '"'
            out.append(f"{name}_bucket{_fmt_labels(labels, le)} {running}")
        inf = 'le="+Inf"'
        out.append(f"{name}_bucket{_fmt_labels(labels, inf)} {self.count}")
        out.append(f"{name}_sum{_fmt_labels(labels)} {_num(self.total)}")
        out.append(f"{name}_count{_fmt_labels(labels)} {self.count}")
        return out


class _Second:
    """One second of one model variant: requests, errors and their latencies."""

    __slots__ = ("errors", "latencies", "second", "versions")

    def __init__(self, second: int) -> None:
        self.second = second
        self.latencies: list[float] = []
        self.errors = 0
        self.versions: set[int] = set()


class Metrics:
    """Counters and histograms for /metrics, plus per-second windows for the stats endpoint."""

    def __init__(self) -> None:
        self.counters: dict[str, dict[Labels, float]] = {name: defaultdict(float) for name in _COUNTERS}
        self.histograms: dict[str, dict[Labels, _Histogram]] = {name: {} for name in _HISTOGRAMS}
        self.windows: dict[tuple[str, str], deque[_Second]] = defaultdict(deque)
        self.gauges: dict[str, dict[Labels, float]] = {"mldeck_queue_depth": {}}
        self.started = time.time()

    def _hist(self, name: str, labels: Labels) -> _Histogram:
        hist = self.histograms[name].get(labels)
        if hist is None:
            hist = self.histograms[name][labels] = _Histogram(_HISTOGRAMS[name][1])
        return hist

    def _second(self, model: str, variant: str) -> _Second:
        window = self.windows[(model, variant)]
        now = int(time.time())
        if not window or window[-1].second != now:
            window.append(_Second(now))
            while window and window[0].second <= now - WINDOW_S:
                window.popleft()
        return window[-1]

    def success(
        self, model: str, version: int, variant: str, rows: int,
        duration_s: float, queue_s: float, compute_s: float,
    ) -> None:
        labels = _labels(model=model, version=version, variant=variant)
        c = self.counters
        c["nv_inference_request_success"][labels] += 1
        c["nv_inference_count"][labels] += rows
        c["nv_inference_request_duration_us"][labels] += duration_s * 1e6
        c["nv_inference_queue_duration_us"][labels] += queue_s * 1e6
        c["nv_inference_compute_infer_duration_us"][labels] += compute_s * 1e6
        self._hist("mldeck_request_duration_seconds", labels).observe(duration_s)
        second = self._second(model, variant)
        second.latencies.append(duration_s * 1000.0)
        second.versions.add(version)

    def failure(self, model: str, version: int | None, variant: str, reason: str) -> None:
        labels = _labels(model=model, version="" if version is None else version, variant=variant,
                         reason=reason)
        self.counters["nv_inference_request_failure"][labels] += 1
        if model != "unknown":
            self._second(model, variant).errors += 1

    def batch(self, model: str, version: int, rows: int, compute_s: float) -> None:
        labels = _labels(model=model, version=version)
        self.counters["nv_inference_exec_count"][labels] += 1
        self._hist("mldeck_batch_size", labels).observe(rows)

    def count(self, name: str, **labels: Any) -> None:
        self.counters[name][_labels(**labels)] += 1

    def queue_depth(self, model: str, version: int, depth: int) -> None:
        self.gauges["mldeck_queue_depth"][_labels(model=model, version=version)] = depth

    def render(self) -> str:
        """The Prometheus text exposition format (version 0.0.4)."""
        out: list[str] = []
        for name, doc in _COUNTERS.items():
            out += [f"# HELP {name} {doc}", f"# TYPE {name} counter"]
            out += [f"{name}{_fmt_labels(k)} {_num(v)}" for k, v in self.counters[name].items()]
        for name, (doc, _) in _HISTOGRAMS.items():
            out += [f"# HELP {name} {doc}", f"# TYPE {name} histogram"]
            for labels, hist in self.histograms[name].items():
                out += hist.lines(name, labels)
        out += ["# HELP mldeck_queue_depth Requests waiting for a batch", "# TYPE mldeck_queue_depth gauge"]
        out += [f"mldeck_queue_depth{_fmt_labels(k)} {_num(v)}"
                for k, v in self.gauges["mldeck_queue_depth"].items()]
        return "\n".join(out) + "\n"

    def window(self, window_s: float) -> dict[str, dict[str, Any]]:
        """Per model and variant over the last window_s seconds: rps, p50/p95/p99 and error rate."""
        now = time.time()
        since = int(now - min(window_s, WINDOW_S))
        span = max(1.0, min(window_s, now - self.started))
        out: dict[str, dict[str, Any]] = {}
        for (model, variant), seconds in self.windows.items():
            recent = [s for s in seconds if s.second > since]
            lat = np.fromiter((x for s in recent for x in s.latencies), dtype=np.float64)
            errors = sum(s.errors for s in recent)
            total = lat.size + errors
            if not total:
                continue
            p50, p95, p99 = (np.percentile(lat, [50, 95, 99]).tolist() if lat.size else [None] * 3)
            out.setdefault(model, {})[variant] = {
                "versions": sorted({v for s in recent for v in s.versions}),
                "requests": total,
                "rps": total / span,
                "p50_ms": p50,
                "p95_ms": p95,
                "p99_ms": p99,
                "error_rate": errors / total,
            }
        return out

    def batch_histogram(self, model: str) -> dict[str, dict[str, int]]:
        """Batch sizes per served version of a model, as bucket upper bound → executions."""
        out = {}
        for labels, hist in self.histograms["mldeck_batch_size"].items():
            d = dict(labels)
            if d["model"] == model:
                out[d["version"]] = {str(b): n for b, n in zip(hist.buckets, hist.counts, strict=True) if n}
        return out
