"""What GPU and CPU time costs: default prices by GPU model, cost from seconds held, the cost.* params.

Defaults are typical cloud list prices per GPU-hour (USD, on-demand and spot), as a
starting point; `[cost]` in agent.toml overrides them for the host's real price.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Annotated, Any

import msgspec

from mldeck.core.config import CostSection
from mldeck.core.protocol import Params, Seconds
from mldeck.core.store import Store, rows_as_dicts

# (name fragments that must all appear in the NVML name, on-demand, spot), most specific first.
GPU_PRICES: list[tuple[tuple[str, ...], float, float]] = [
    (("H200",), 4.50, 2.25),
    (("H100",), 3.90, 1.95),
    (("A100", "80GB"), 4.10, 1.64),
    (("A100",), 3.20, 1.28),
    (("L40S",), 1.86, 0.74),
    (("L40",), 1.60, 0.64),
    (("L4",), 0.80, 0.32),
    (("A10G",), 1.01, 0.40),
    (("A10",), 0.75, 0.30),
    (("V100",), 3.06, 0.92),
    (("T4",), 0.53, 0.21),
    (("RTX", "4090"), 0.70, 0.35),
]
UNKNOWN_GPU_PRICE = (2.00, 0.80)
CPU_CORE_PRICE = 0.04


class CostParams(Params, kw_only=True):
    """cost.host, cost.runs, cost.models: the window (seconds back from now) and the most rows."""

    since_s: Seconds = 86400.0
    limit: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 100


@dataclass(frozen=True)
class Prices:
    """The prices this host charges, and where they came from."""

    gpu_per_hour: float
    cpu_core_per_hour: float
    spot: bool
    gpu_model: str | None
    source: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "gpu_price_per_hour": self.gpu_per_hour, "cpu_core_price_per_hour": self.cpu_core_per_hour,
            "spot": self.spot, "gpu_model": self.gpu_model, "source": self.source,
        }


def default_gpu_price(gpu_name: str, spot: bool = False) -> tuple[float, str]:
    """The default price of a GPU model, matched on its NVML name."""
    upper = gpu_name.upper()
    for fragments, on_demand, spot_price in GPU_PRICES:
        if all(f in upper for f in fragments):
            return (spot_price if spot else on_demand), " ".join(fragments)
    return UNKNOWN_GPU_PRICE[1 if spot else 0], "unknown model"


def host_prices(gpu_name: str | None, section: CostSection) -> Prices:
    """Config overrides first (a fixed price, then a price per model name), then the defaults."""
    cpu = section.cpu_core_price_per_hour if section.cpu_core_price_per_hour is not None else CPU_CORE_PRICE
    fixed = section.spot_price_per_hour if section.spot else section.gpu_price_per_hour
    if fixed is not None:
        return Prices(fixed, cpu, section.spot, gpu_name, "config")
    if gpu_name is None:
        return Prices(0.0, cpu, section.spot, None, "no GPU")
    for fragment, price in section.prices.items():
        if fragment.upper() in gpu_name.upper():
            return Prices(price, cpu, section.spot, gpu_name, f"config prices[{fragment!r}]")
    price, matched = default_gpu_price(gpu_name, section.spot)
    kind = "spot" if section.spot else "on-demand"
    return Prices(price, cpu, section.spot, gpu_name, f"default {kind} price for {matched}")


def run_cost(gpu_seconds: float, cpu_seconds: float, prices: Prices) -> float:
    """GPU jobs pay for the GPUs they held (the instance price covers its CPUs); CPU jobs per core."""
    if gpu_seconds > 0:
        return gpu_seconds / 3600 * prices.gpu_per_hour
    return cpu_seconds / 3600 * prices.cpu_core_per_hour


def held_gpu_seconds(store: Store, since: float, until: float) -> float:
    """GPU-seconds held by jobs within a window, from each run's start, end and GPU list."""
    row = store.cur().execute(
        """
        SELECT coalesce(sum(json_array_length(gpus) *
               greatest(0, least(coalesce(ended_at, ?), ?) - greatest(started_at, ?))), 0)
        FROM runs WHERE managed AND started_at IS NOT NULL AND gpus IS NOT NULL
        """,
        [until, until, since],
    ).fetchone()
    return float(row[0] if row else 0.0)


def first_sample_ts(store: Store) -> float | None:
    """When this host started recording, so idle time is not counted before the agent existed."""
    row = store.cur().execute("SELECT min(ts) FROM system_metrics").fetchone()
    return row[0] if row else None


def cost_in_window(store: Store, since: float) -> dict[str, Any]:
    """Total run cost and GPU-seconds of the runs active in a window."""
    row = store.cur().execute(
        """
        SELECT count(*), coalesce(sum(cost_usd), 0), coalesce(sum(gpu_seconds), 0),
               coalesce(sum(cpu_seconds), 0)
        FROM runs WHERE managed AND started_at IS NOT NULL AND coalesce(ended_at, ?) >= ?
        """,
        [time.time(), since],
    ).fetchone()
    n, usd, gpu_s, cpu_s = row if row else (0, 0.0, 0.0, 0.0)
    return {"runs": n, "cost_usd": usd, "gpu_seconds": gpu_s, "cpu_seconds": cpu_s}


def runs_by_cost(store: Store, since: float, limit: int) -> list[dict[str, Any]]:
    """Runs active in a window with their cost and memory use, costliest first."""
    cur = store.cur().execute(
        """
        SELECT run_id, name, experiment, status, gpus, started_at, ended_at, cost_usd, gpu_seconds,
               cpu_seconds, peak_gpu_mem, held_gpu_mem, price_per_hour,
               CASE WHEN held_gpu_mem > 0 THEN peak_gpu_mem / held_gpu_mem END AS mem_used_frac
        FROM runs WHERE managed AND started_at IS NOT NULL AND coalesce(ended_at, ?) >= ?
        ORDER BY coalesce(cost_usd, 0) DESC, started_at DESC LIMIT ?
        """,
        [time.time(), since, limit],
    )
    rows = rows_as_dicts(cur)
    for row in rows:
        row["gpus"] = json.loads(row["gpus"]) if isinstance(row["gpus"], str) else row["gpus"]
    return rows


def record_serving_usage(store: Store, ts: float, pid: int, gpu_seconds: float, cpu_seconds: float) -> None:
    """One accounting tick of the model server: what it used since the last."""
    with store.transaction() as cur:
        cur.execute("INSERT INTO serving_usage VALUES (?, ?, ?, ?)", [ts, pid, gpu_seconds, cpu_seconds])


def serving_cost_by_model(store: Store, since: float, prices: Prices) -> list[dict[str, Any]]:
    """The model server's cost in a window, shared among the models by the requests each was sent."""
    row = store.cur().execute(
        "SELECT coalesce(sum(gpu_seconds), 0), coalesce(sum(cpu_seconds), 0) FROM serving_usage "
        "WHERE ts >= ?", [since],
    ).fetchone()
    gpu_s, cpu_s = row if row else (0.0, 0.0)
    total = run_cost(gpu_s, cpu_s, prices)
    counts = store.cur().execute(
        "SELECT model, count(*) FROM predictions WHERE ts >= ? GROUP BY model ORDER BY count(*) DESC", [since]
    ).fetchall()
    requests = sum(n for _, n in counts)
    return [{"model": model, "requests": n, "share": n / requests, "serving_usd": total * n / requests,
             "server_gpu_seconds": gpu_s, "server_cpu_seconds": cpu_s} for model, n in counts]
