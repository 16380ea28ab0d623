"""Prometheus text metrics named and labelled as Triton's, Triton's statistics, and the last minute.

Triton's families keep their exact names (`nv_inference_request_success`, not `..._total`)
and labels (`model`, `version`; `reason` on failures), so Triton dashboards read them; what
Triton lacks is prefixed `mldeck_`, and only there is a request's variant (production,
canary, shadow, an alias) a label. Everything is updated on the event loop thread only.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict, deque
from collections.abc import Iterable
from typing import Any

import numpy as np

from mldeck.agent.serving.batcher import Timing

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
WINDOW_S = 60
MAX_FAILURE_SERIES = 1000  # past this many, failures to versions never seen are labelled version="other"
TRITON_REASON = {"internal": "BACKEND"}  # every other failure is Triton's OTHER

Labels = tuple[tuple[str, str], ...]
Sample = tuple[Labels, float]

_COUNTERS = {
    "mldeck_request_failure": "Failed inference requests, by variant and reason",
    "mldeck_prediction_log_dropped": "Predictions not logged because the log queue was saturated",
    "mldeck_shadow_dropped": "Shadow requests skipped because the challenger was saturated",
    "mldeck_model_loads": "Model version loads, by result",
    "mldeck_connections_closed": "Connections the server closed: header_timeout, idle, evicted or refused",
}
_HISTOGRAMS = {
    "mldeck_batch_size": ("Rows per model execution", BATCH_BUCKETS),
    "mldeck_request_duration_seconds": ("Inference request duration, end to end", LATENCY_BUCKETS),
}


def labels_of(**kv: Any) -> Labels:
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


def family(name: str, kind: str, doc: str, samples: Iterable[Sample]) -> list[str]:
    """One metric family in the text exposition format (version 0.0.4)."""
    return [f"# HELP {name} {doc}", f"# TYPE {name} {kind}",
            *(f"{name}{_fmt_labels(labels)} {_num(value)}" for labels, value in samples)]


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


class Duration:
    """Triton's {"count", "ns"} pair."""

    __slots__ = ("count", "ns")

    def __init__(self) -> None:
        self.count = 0
        self.ns = 0

    def add(self, seconds: float) -> None:
        self.count += 1
        self.ns += int(seconds * 1e9)

    def json(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


class VersionStats:
    """One served version's totals: Triton's statistics extension, and its nv_inference_* counters."""

    __slots__ = ("batches", "compute_infer", "compute_input", "compute_output", "execution_count", "fail",
                 "inference_count", "last_inference_ms", "queue", "success")

    def __init__(self) -> None:
        self.success = Duration()
        self.fail = Duration()
        self.queue = Duration()
        self.compute_input = Duration()
        self.compute_infer = Duration()
        self.compute_output = Duration()
        self.inference_count = 0
        self.execution_count = 0
        self.last_inference_ms = 0
        self.batches: dict[int, tuple[Duration, Duration, Duration]] = {}

    def json(self, name: str, version: str) -> dict[str, Any]:
        """The model_stats entry of GET /v2/models/{name}/stats."""
        phases = ("compute_input", "compute_infer", "compute_output")
        return {
            "name": name,
            "version": version,
            "last_inference": self.last_inference_ms,
            "inference_count": self.inference_count,
            "execution_count": self.execution_count,
            "inference_stats": {
                "success": self.success.json(), "fail": self.fail.json(), "queue": self.queue.json(),
                "compute_input": self.compute_input.json(), "compute_infer": self.compute_infer.json(),
                "compute_output": self.compute_output.json(),
                "cache_hit": Duration().json(), "cache_miss": Duration().json(),
            },
            "batch_stats": [
                {"batch_size": size, **{p: d.json() for p, d in zip(phases, durations, strict=True)}}
                for size, durations in sorted(self.batches.items())
            ],
            "memory_usage": [],
        }


class _Second:
    """One second of one model variant: requests, errors and their latencies."""

    __slots__ = ("errors", "latencies", "second", "versions")

    def __init__(self, second: int) -> None:
        self.second = second
        self.latencies: list[float] = []
        self.errors = 0
        self.versions: set[int] = set()


class Metrics:
    """Per-version totals, counters and histograms for /metrics, per-second windows for the stats."""

    def __init__(self) -> None:
        self.versions: dict[tuple[str, int], VersionStats] = {}
        self.failures: dict[Labels, float] = defaultdict(float)  # Triton's labels: model, version, reason
        self.counters: dict[str, dict[Labels, float]] = {name: defaultdict(float) for name in _COUNTERS}
        self.histograms: dict[str, dict[Labels, _Histogram]] = {name: {} for name in _HISTOGRAMS}
        self.windows: dict[tuple[str, str], deque[_Second]] = defaultdict(deque)
        self.started = time.time()

    def stats(self, model: str, version: int) -> VersionStats:
        found = self.versions.get((model, version))
        if found is None:
            found = self.versions[(model, version)] = VersionStats()
        return found

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
        self, model: str, version: int, variant: str, rows: int, duration_s: float, queue_s: float,
        timing: Timing,
    ) -> None:
        s = self.stats(model, version)
        s.success.add(duration_s)
        s.queue.add(queue_s)
        s.compute_input.add(timing.input_s)
        s.compute_infer.add(timing.infer_s)
        s.compute_output.add(timing.output_s)
        s.inference_count += rows
        s.last_inference_ms = int(time.time() * 1000)
        self._hist("mldeck_request_duration_seconds",
                   labels_of(model=model, version=version, variant=variant)).observe(duration_s)
        second = self._second(model, variant)
        second.latencies.append(duration_s * 1000.0)
        second.versions.add(version)

    def failure(self, model: str, version: str, variant: str, reason: str, duration_s: float,
                served: bool) -> None:
        """A failed request; `version` is the one it asked for, served or not (the label says which)."""
        if served:
            self.stats(model, int(version)).fail.add(duration_s)
        triton = labels_of(model=model, version=version, reason=TRITON_REASON.get(reason, "OTHER"))
        if triton not in self.failures and not served and len(self.failures) >= MAX_FAILURE_SERIES:
            version = "other"
            triton = labels_of(model=model, version=version, reason=TRITON_REASON.get(reason, "OTHER"))
        self.failures[triton] += 1
        self.counters["mldeck_request_failure"][
            labels_of(model=model, version=version, variant=variant, reason=reason)] += 1
        if model != "unknown":
            self._second(model, variant).errors += 1

    def batch(self, model: str, version: int, rows: int, timing: Timing) -> None:
        s = self.stats(model, version)
        s.execution_count += 1
        phases = s.batches.get(rows)
        if phases is None:
            phases = s.batches[rows] = (Duration(), Duration(), Duration())
        for d, seconds in zip(phases, (timing.input_s, timing.infer_s, timing.output_s), strict=True):
            d.add(seconds)
        self._hist("mldeck_batch_size", labels_of(model=model, version=version)).observe(rows)

    def count(self, name: str, **labels: Any) -> None:
        self.counters[name][labels_of(**labels)] += 1

    def render(self, pending: dict[tuple[str, int], int]) -> list[str]:
        """The inference families; `pending` is each served version's queue depth now."""
        v = sorted(self.versions.items())

        def per_version(value: Any) -> list[Sample]:
            return [(labels_of(model=m, version=n), value(s)) for (m, n), s in v]

        out = family("nv_inference_request_success", "counter",
                     "Number of successful inference requests, all batch sizes",
                     per_version(lambda s: s.success.count))
        out += family("nv_inference_request_failure", "counter",
                      "Number of failed inference requests, all batch sizes", self.failures.items())
        for name, doc, value in (
            ("nv_inference_count", "Number of inferences performed (does not include cached requests)",
             lambda s: s.inference_count),
            ("nv_inference_exec_count", "Number of model executions performed (does not include cached "
             "requests)", lambda s: s.execution_count),
            ("nv_inference_request_duration_us", "Cumulative inference request duration in microseconds "
             "(includes cached requests)", lambda s: s.success.ns / 1000),
            ("nv_inference_queue_duration_us", "Cumulative inference queuing duration in microseconds "
             "(includes cached requests)", lambda s: s.queue.ns / 1000),
            ("nv_inference_compute_input_duration_us", "Cumulative compute input duration in microseconds "
             "(does not include cached requests)", lambda s: s.compute_input.ns / 1000),
            ("nv_inference_compute_infer_duration_us", "Cumulative compute inference duration in "
             "microseconds (does not include cached requests)", lambda s: s.compute_infer.ns / 1000),
            ("nv_inference_compute_output_duration_us", "Cumulative inference compute output duration in "
             "microseconds (does not include cached requests)", lambda s: s.compute_output.ns / 1000),
        ):
            out += family(name, "counter", doc, per_version(value))
        out += family("nv_inference_pending_request_count", "gauge",
                      "Instantaneous number of pending requests awaiting execution per-model.",
                      [(labels_of(model=m, version=n), depth) for (m, n), depth in sorted(pending.items())])
        for name, doc in _COUNTERS.items():
            out += family(name, "counter", doc, self.counters[name].items())
        for name, (doc, _) in _HISTOGRAMS.items():
            out += [f"# HELP {name} {doc}", f"# TYPE {name} histogram"]
            for labels, hist in self.histograms[name].items():
                out += hist.lines(name, labels)
        return out

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
