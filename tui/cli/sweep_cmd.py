"""`mldeck sweep SCRIPT --grid ... --random ... [--search tpe]`, `mldeck sweep show|ls|stop|register`."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from mldeck.core.errors import UsageError
from mldeck.tui.cli.connect import agent_client, call_agent
from mldeck.tui.cli.models_cmd import actor, print_registered
from mldeck.tui.cli.output import print_table, show
from mldeck.tui.cli.run_cmd import add_launch_options, is_local, launch_params, misplaced, order_note

ACTIONS = ("show", "ls", "stop", "register")
USAGE = """%(prog)s [OPTIONS] (SCRIPT | -m MODULE) --metric NAME [-- SCRIPT_ARGS ...]
       %(prog)s show|stop SWEEP_ID
       %(prog)s register SWEEP_ID --name MODEL
       %(prog)s ls"""
WAIT_POLL_S = 1.0


def _print_queued(result: dict[str, Any], count: int, args: argparse.Namespace) -> None:
    print(result["sweep_id"])
    if args.search:
        print(f"{count} trials, {args.parallel or 1} at a time, each asked of Optuna ({args.search})",
              flush=True)
    else:
        print(f"{count} trials queued", flush=True)


async def create(args: argparse.Namespace) -> int:
    from mldeck.core import sweep as sw  # it loads DuckDB, which completion and --help need not

    if args.sweep_id is not None:
        raise misplaced("mldeck sweep", [args.sweep_id])
    if not args.metric:
        raise UsageError("--metric is required: the logged metric the sweep optimizes (e.g. val_loss)")
    grid, rand = sw.parse_grid(args.grid or []), sw.parse_random(args.random or [])
    sw.check_search(grid, rand, args.search, args.early_stop, args.parallel)
    count = len(sw.trials(grid, rand, args.trials))
    base = launch_params(args, is_local(args))
    base.pop("priority")
    base.pop("name")
    params = {
        **base, "name": args.name, "grid": args.grid or [], "random": args.random or [],
        "trials": args.trials, "seed": args.seed, "metric": args.metric, "mode": args.mode,
        "early_stop": args.early_stop, "warmup_steps": args.warmup_steps, "min_trials": args.min_trials,
        "min_steps": args.min_steps, "reduction_factor": args.reduction_factor, "max_steps": args.max_steps,
        "search": args.search, "parallel": args.parallel,
    }
    result = await call_agent(args, "sweeps.create", **params)
    if not args.wait:
        return show(args, result, lambda r: _print_queued(r, count, args))
    if not args.json:
        _print_queued(result, count, args)
    sweep = await wait_done(args, result["sweep_id"])
    show(args, sweep, _print_sweep)
    return 0 if any(t["status"] == "succeeded" for t in sweep["trials"]) else 1


async def wait_done(args: argparse.Namespace, sweep_id: str) -> dict[str, Any]:
    """--wait: the sweep once its last trial has ended."""
    async with agent_client(args) as client:
        while (sweep := await client.call("sweeps.show", sweep_id=sweep_id))["status"] != "done":
            await asyncio.sleep(WAIT_POLL_S)
    return sweep


def _print_sweep(sweep: dict[str, Any]) -> None:
    stop = sweep["early_stop"] or "none"
    search = sweep["spec"].get("search")
    print(f"sweep {sweep['sweep_id']} ({sweep['status']}): {sweep['mode']} {sweep['metric']}, "
          f"early stopping: {stop}" + (f", search: {search} (Optuna)" if search else ""))
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


def _print_best(row: dict[str, Any]) -> None:
    print(f"best trial of {row['sweep_id']}: {row['run_id']} ({row['metric']} {row['best']:.6g})")
    print_registered(row)


async def register_best(args: argparse.Namespace, sweep_id: str) -> int:
    if not args.name:
        raise UsageError("mldeck sweep register needs --name MODEL: its best trial becomes a version of it")
    result = await call_agent(args, "sweeps.register", sweep_id=sweep_id, name=args.name, actor=actor())
    return show(args, result, _print_best)


async def sweep(args: argparse.Namespace) -> int:
    """`sweep SCRIPT ...` creates; `sweep show ID`, `sweep ls`, `sweep stop ID` inspect and stop;
    `sweep register ID --name MODEL` registers the best trial."""
    if args.script not in ACTIONS or args.module:
        return await create(args)
    if args.script_args:
        raise UsageError(f"mldeck sweep {args.script} takes no script arguments (nothing after `--`)")
    if args.script == "ls":
        if args.sweep_id is not None:
            raise UsageError(f"mldeck sweep ls takes no SWEEP_ID (`mldeck sweep show {args.sweep_id}`?)")
        return await ls(args)
    if args.sweep_id is None:
        raise UsageError(f"mldeck sweep {args.script} needs a SWEEP_ID (`mldeck sweep ls` lists them)")
    actions = {"show": show_cmd, "stop": stop, "register": register_best}
    return await actions[args.script](args, args.sweep_id)


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "sweep", parents=[common], help="run a hyperparameter sweep (or: sweep show|ls|stop|register)",
        description=__doc__, usage=USAGE,
        epilog=order_note("mldeck sweep train.py --grid lr=1e-3,1e-2 --metric val_loss -- --epochs 3"),
    )
    add_launch_options(p)
    p.add_argument("sweep_id", nargs="?", metavar="SWEEP_ID", help="with show, stop or register: the sweep")
    p.add_argument("--grid", action="append", metavar="K=V1,V2", help="a grid axis (repeat)")
    p.add_argument("--random", action="append", metavar="K=DIST(A,B)",
                   help="a random axis: uniform, loguniform, int or choice (repeat)")
    p.add_argument("--trials", type=int, help="number of trials (default: the grid's size)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random draws")
    p.add_argument("--metric", help="the metric to optimize, as the script logs it")
    p.add_argument("--mode", choices=["min", "max"], default="min")
    p.add_argument("--search", choices=["tpe", "cmaes", "random", "grid"],
                   help="ask an Optuna study for each trial's point (needs mldeck[optuna])")
    p.add_argument("--parallel", type=int, help="with --search: trials at once, the next asked as one ends "
                   "(default 1)")
    p.add_argument("--early-stop", choices=["median", "asha", "hyperband"],
                   help="stop clearly worse trials (with --search: Optuna's pruner; hyperband only there)")
    p.add_argument("--warmup-steps", type=int, default=2, help="median rule: steps before it judges")
    p.add_argument("--min-trials", type=int, default=2, help="median rule: other trials it needs")
    p.add_argument("--min-steps", type=int, default=1, help="ASHA, hyperband: the first rung's step")
    p.add_argument("--reduction-factor", type=int, default=3,
                   help="ASHA, hyperband: η, keep the top 1/η per rung")
    p.add_argument("--max-steps", type=int, default=100, help="ASHA, hyperband: the last step a trial runs")
    p.set_defaults(func=sweep)
