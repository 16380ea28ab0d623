"""`mldeck sweep SCRIPT --grid ... --random ...`, `mldeck sweep show|ls|stop`: hyperparameter sweeps."""

from __future__ import annotations

import argparse
from typing import Any

from mldeck.core import sweep as sw
from mldeck.tui.cli.connect import call_agent
from mldeck.tui.cli.output import CliError, print_table, show
from mldeck.tui.cli.run_cmd import add_launch_options, is_local, launch_params

ACTIONS = ("show", "ls", "stop")


def _print_queued(result: dict[str, Any], count: int) -> None:
    print(result["sweep_id"])
    print(f"{count} trials queued", flush=True)


async def create(args: argparse.Namespace) -> int:
    if not args.metric:
        raise CliError("--metric is required: the logged metric the sweep optimizes (e.g. val_loss)")
    try:
        grid, rand = sw.parse_grid(args.grid or []), sw.parse_random(args.random or [])
        count = len(sw.trials(grid, rand, args.trials))
    except sw.SweepError as exc:
        raise CliError(str(exc)) from None
    base = launch_params(args, is_local(args))
    base.pop("priority")
    base.pop("name")
    params = {
        **base, "name": args.name, "grid": args.grid or [], "random": args.random or [],
        "trials": args.trials, "seed": args.seed, "metric": args.metric, "mode": args.mode,
        "early_stop": args.early_stop, "warmup_steps": args.warmup_steps, "min_trials": args.min_trials,
        "min_steps": args.min_steps, "reduction_factor": args.reduction_factor, "max_steps": args.max_steps,
    }
    result = await call_agent(args, "sweeps.create", **params)
    return show(args, result, lambda r: _print_queued(r, count))


def _print_sweep(sweep: dict[str, Any]) -> None:
    stop = sweep["early_stop"] or "none"
    print(f"sweep {sweep['sweep_id']} ({sweep['status']}): {sweep['mode']} {sweep['metric']}, "
          f"early stopping: {stop}")
    keys = sorted({k for t in sweep["trials"] for k in (t["params"] or {})})
    print_table(
        ["rank", "run", "status", f"best {sweep['metric']}", "step", *keys, "reason"],
        [[t["rank"], t["run_id"], t["status"], t["best"], t["last_step"],
          *((t["params"] or {}).get(k) for k in keys), t["status_reason"]] for t in sweep["trials"]],
    )


async def show_cmd(args: argparse.Namespace, sweep_id: str) -> int:
    return show(args, await call_agent(args, "sweeps.show", sweep_id=sweep_id), _print_sweep)


def _print_sweeps(sweeps: list[dict[str, Any]]) -> None:
    print_table(["sweep", "name", "status", "metric", "mode", "early stop"],
                [[s["sweep_id"], s["name"], s["status"], s["metric"], s["mode"], s["early_stop"]]
                 for s in sweeps])


async def ls(args: argparse.Namespace) -> int:
    return show(args, await call_agent(args, "sweeps.list"), _print_sweeps)


async def stop(args: argparse.Namespace, sweep_id: str) -> int:
    result = await call_agent(args, "sweeps.stop", sweep_id=sweep_id)
    return show(args, result, lambda r: print(f"{sweep_id}: stopped {len(r['stopped'])} trials"))


async def sweep(args: argparse.Namespace) -> int:
    """`sweep SCRIPT ...` creates; `sweep show ID`, `sweep ls`, `sweep stop ID` inspect and stop."""
    if args.script in ACTIONS and not args.module:
        if args.script == "ls":
            return await ls(args)
        if len(args.script_args) != 1:
            raise CliError(f"usage: mldeck sweep {args.script} SWEEP_ID")
        action = show_cmd if args.script == "show" else stop
        return await action(args, args.script_args[0])
    return await create(args)


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "sweep", parents=[common], help="run a hyperparameter sweep (or: sweep show|ls|stop)",
        description=__doc__,
    )
    add_launch_options(p)
    p.add_argument("--grid", action="append", metavar="K=V1,V2", help="a grid axis (repeat)")
    p.add_argument("--random", action="append", metavar="K=DIST(A,B)",
                   help="a random axis: uniform, loguniform, int or choice (repeat)")
    p.add_argument("--trials", type=int, help="number of trials (default: the grid's size)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random draws")
    p.add_argument("--metric", help="the metric to optimize, as the script logs it")
    p.add_argument("--mode", choices=["min", "max"], default="min")
    p.add_argument("--early-stop", choices=["median", "asha"], help="stop clearly worse trials")
    p.add_argument("--warmup-steps", type=int, default=2, help="median rule: steps before it judges")
    p.add_argument("--min-trials", type=int, default=2, help="median rule: other trials it needs")
    p.add_argument("--min-steps", type=int, default=1, help="ASHA: the first rung's step")
    p.add_argument("--reduction-factor", type=int, default=3, help="ASHA: η, keep the top 1/η per rung")
    p.add_argument("--max-steps", type=int, default=100, help="ASHA: the last step a trial runs")
    p.set_defaults(func=sweep)
