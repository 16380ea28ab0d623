"""`mldeck cost`: what this host costs now, what its runs cost, and what idle GPUs wasted."""

from __future__ import annotations

import argparse
from typing import Any

from mldeck.tui.cli.connect import agent_client
from mldeck.tui.cli.output import print_table, show
from mldeck.tui.units import duration

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_period(text: str) -> float:
    """`30m`, `24h`, `7d` (or plain seconds) → seconds."""
    unit = UNITS.get(text[-1:].lower())
    try:
        value = float(text[:-1]) if unit else float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a period like 30m, 24h or 7d") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("the period must be positive")
    return value * (unit or 1)


def _gib(n: Any) -> str:
    return "-" if not n else f"{n / 2**30:.1f}G"


def _print_cost(data: dict[str, Any]) -> None:
    host, runs = data["host"], data["runs"]
    kind = "spot" if host["spot"] else "on-demand"
    print(f"GPUs: {host['gpu_count']} × {host['gpu_model'] or '-'} at ${host['gpu_price_per_hour']:.2f}/h "
          f"({kind}; {host['source']}); CPU core ${host['cpu_core_price_per_hour']:.3f}/h")
    print(f"now: {len(host['gpus_busy'])} GPUs busy, {host['running_jobs']} jobs, "
          f"burning ${host['burn_per_hour']:.2f}/h of ${host['host_per_hour']:.2f}/h")
    print(f"last {duration(host['until'] - host['since'])}: {host['runs']} runs cost "
          f"${host['runs_cost_usd']:.2f}; idle GPUs {host['idle_gpu_seconds'] / 3600:.2f} GPU-h "
          f"= ${host['idle_cost_usd']:.2f} wasted")
    if runs:
        print_table(
            ["run", "name", "status", "gpus", "gpu-h", "cost $", "peak mem", "held mem"],
            [[r["run_id"], r["name"], r["status"], len(r["gpus"] or []), (r["gpu_seconds"] or 0) / 3600,
              r["cost_usd"], _gib(r["peak_gpu_mem"]), _gib(r["held_gpu_mem"])] for r in runs],
        )


async def cost(args: argparse.Namespace) -> int:
    async with agent_client(args) as client:
        host = await client.call("cost.host", since_s=args.since)
        runs = await client.call("cost.runs", since_s=args.since, limit=args.limit)
    return show(args, {"host": host, "runs": runs}, _print_cost)


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("cost", parents=[common], help="cost per host and per run, idle GPU waste")
    p.add_argument("--since", type=parse_period, default=86400.0, help="period: 30m, 24h (default), 7d")
    p.add_argument("--limit", type=int, default=20, help="runs to list, costliest first")
    p.set_defaults(func=cost)
