"""`mldeck runs ls|show|logs|stop|resume|archive|restore`: the runs an agent knows, control of its jobs,
and moving old runs' points out of the store into Parquet files and back."""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import time
from typing import Any

from mldeck.core.errors import UsageError
from mldeck.tui.cli.connect import agent_client, call_agent
from mldeck.tui.cli.output import print_table, show, when
from mldeck.tui.fleet import Fleet
from mldeck.tui.hosts import ALL
from mldeck.tui.units import duration

FOLLOW_POLL_S = 0.3
FLEET_HOST = "fleet_host"  # with --host all: which host of the fleet a run is on
AGE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 7 * 86_400}
SHOWN_IDS = 10  # a dry run names this many of the runs it would archive


def _duration(run: dict[str, Any]) -> float | None:
    if not run.get("started_at"):
        return None
    return (run.get("ended_at") or time.time()) - run["started_at"]


def _print_runs(runs: list[dict[str, Any]]) -> None:
    keys = sorted({k for r in runs for k in r["metrics"]})[:4]
    fleet = any(FLEET_HOST in r for r in runs)
    print_table(
        [*(["host"] if fleet else []), "run", "experiment", "name", "status", "created", "duration", *keys],
        [
            [*([r[FLEET_HOST]] if fleet else []), r["run_id"], r["experiment"], r["name"], r["status"],
             when(r["created_at"]), duration(_duration(r)), *(r["metrics"].get(k) for k in keys)]
            for r in runs
        ],
    )


def _print_archived(runs: list[dict[str, Any]]) -> None:
    fleet = any(FLEET_HOST in r for r in runs)
    print_table(
        [*(["host"] if fleet else []), "run", "experiment", "name", "status", "created", "archived", "points",
         "file"],
        [[*([r[FLEET_HOST]] if fleet else []), r["run_id"], r["experiment"], r["name"], r["status"],
          when(r["created_at"]), when(r["archived"]["at"]), r["archived"]["points"], r["archived"]["path"]]
         for r in runs],
    )


async def ls(args: argparse.Namespace) -> int:
    if args.archived and args.status:
        raise UsageError("`--archived` lists finished runs by experiment; leave out --status")
    params = {"experiment": args.experiment, "limit": args.limit}
    method, render = ("runs.archived", _print_archived) if args.archived else ("runs.list", _print_runs)
    if not args.archived:
        params["status"] = args.status
    if args.host == ALL:
        return await ls_fleet(args, method, params, render)
    return show(args, await call_agent(args, method, **params), render)


async def ls_fleet(args: argparse.Namespace, method: str, params: dict[str, Any], render: Any) -> int:
    """--host all: the runs of this machine and every host of the hosts file, newest first, as one list."""
    async with Fleet.from_config(local_home=args.home) as fleet:
        got = await fleet.gather(method, **params)
    runs = [{**run, FLEET_HOST: name} for name, out in got.items() if out.ok for run in out.value]
    runs.sort(key=lambda r: r["created_at"] or 0, reverse=True)
    for name, out in got.items():
        if not out.ok:
            print(f"mldeck: {name} left out: {out.why}", file=sys.stderr)
    show(args, runs[:args.limit], render)
    return 0 if all(out.ok for out in got.values()) else 3


def _print_run(run: dict[str, Any]) -> None:
    for key in ("run_id", "name", "experiment", "status", "status_reason", "host", "git_sha",
                "data_hash", "dir"):
        print(f"{key + ':':<15}{run.get(key) if run.get(key) is not None else '-'}")
    print(f"{'created:':<15}{when(run.get('created_at'))}")
    print(f"{'duration:':<15}{duration(_duration(run))}")
    print(f"{'command:':<15}{' '.join(run.get('command') or [])}")
    print("params:")
    for k, v in sorted((run.get("params") or {}).items()):
        print(f"  {k} = {v}")
    print("metrics (last value):")
    for k, v in sorted(run["metrics"].items()):
        print(f"  {k} = {'-' if v is None else f'{v:.6g}'}")
    if run.get("archived"):
        where = run["archived"]
        print(f"{'archived:':<15}{when(where['at'])}, {where['points']:,} points in {where['path']} "
              f"(`mldeck runs restore {run['run_id']}` brings it back)")


async def show_cmd(args: argparse.Namespace) -> int:
    return show(args, await call_agent(args, "runs.get", run_id=args.run), _print_run)


async def logs(args: argparse.Namespace) -> int:
    """Print the job's stdout.log from the start; with -f keep printing until the run ends."""
    offset = 0
    async with agent_client(args) as client:
        while True:
            chunk = await client.call("runs.logs", run_id=args.run, offset=offset, max_bytes=1 << 20)
            if chunk["data"]:
                sys.stdout.write(chunk["data"])
                sys.stdout.flush()
            offset = chunk["offset"]
            if offset < chunk["size"]:
                continue
            if not args.follow or chunk["done"]:
                return 0
            await asyncio.sleep(FOLLOW_POLL_S)


def _print_stopped(args: argparse.Namespace, result: dict[str, Any]) -> None:
    if result["status"] == "stopping":
        then = "requeued to resume" if args.requeue else "stopped"
        print(f"{args.run}: SIGTERM sent; it will be {then} once it exits")
    else:
        print(f"{args.run}: {result['status']}")


async def stop(args: argparse.Namespace) -> int:
    result = await call_agent(args, "runs.stop", run_id=args.run, requeue=args.requeue, grace_s=args.grace)
    return show(args, result, lambda r: _print_stopped(args, r))


async def resume(args: argparse.Namespace) -> int:
    result = await call_agent(args, "runs.resume", run_id=args.run)
    return show(args, result, lambda _: print(f"{args.run}: queued to resume from its last checkpoint"))


def age_seconds(text: str) -> float:
    """`90d`, `12h`, `2w`, `30m`, `45s`: an age in seconds."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([smhdw])", text.strip())
    if match is None:
        raise UsageError(f"--before {text!r}: give an age such as 90d, 12h, 2w, 30m or 45s")
    return float(match[1]) * AGE_UNITS[match[2]]


def _print_archive(result: dict[str, Any]) -> None:
    runs, kept = result["runs"], result["kept"]
    if result["dry_run"]:
        names = ", ".join(runs[:SHOWN_IDS]) + (", …" if len(runs) > SHOWN_IDS else "")
        print(f"would archive {len(runs):,} runs ({result['points']:,} points) into {result['folder']}"
              + (f": {names}" if runs else ""))
    else:
        print(f"archived {len(runs):,} runs ({result['points']:,} points, {result['bytes'] / 2**20:,.1f} MiB "
              f"of Parquet) into {result['folder']}")
    if kept:
        print(f"kept {sum(kept.values()):,}: " + "; ".join(f"{n:,} because {why}" for why, n in kept.items()))


async def archive(args: argparse.Namespace) -> int:
    result = await call_agent(args, "runs.archive", before_s=age_seconds(args.before),
                              experiment=args.experiment, status=args.status, dry_run=args.dry_run)
    return show(args, result, _print_archive)


async def restore(args: argparse.Namespace) -> int:
    result = await call_agent(args, "runs.restore", run_id=args.run)
    return show(args, result, lambda r: print(f"{r['run_id']}: {r['points']:,} points back in the store "
                                              f"(from {r['path']}, now removed)"))


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    runs = sub.add_parser("runs", help="list and inspect runs")
    cmds = runs.add_subparsers(dest="runs_command", metavar="ACTION", required=True)
    p = cmds.add_parser("ls", parents=[common], help="list runs, newest first (--host all: of every host)")
    p.add_argument("--status", help="only runs with this status")
    p.add_argument("--experiment", help="only runs of this experiment")
    p.add_argument("--limit", type=int, default=1000)
    p.add_argument("--archived", action="store_true", help="the archived runs instead (`runs archive`)")
    p.set_defaults(func=ls)
    p = cmds.add_parser("show", parents=[common], help="one run's details")
    p.add_argument("run", help="run id")
    p.set_defaults(func=show_cmd)
    p = cmds.add_parser("logs", parents=[common], help="a job's stdout and stderr")
    p.add_argument("run", help="run id")
    p.add_argument("-f", "--follow", action="store_true", help="keep following until the run ends")
    p.set_defaults(func=logs)
    p = cmds.add_parser("stop", parents=[common], help="stop a job (SIGTERM, then SIGKILL after a grace)")
    p.add_argument("run", help="run id")
    p.add_argument("--requeue", action="store_true", help="requeue it to resume from its checkpoint")
    p.add_argument("--grace", type=float, default=None, help="seconds before SIGKILL (agent default 30)")
    p.set_defaults(func=stop)
    p = cmds.add_parser("resume", parents=[common], help="queue a stopped/failed/preempted run again")
    p.add_argument("run", help="run id")
    p.set_defaults(func=resume)
    p = cmds.add_parser("archive", parents=[common],
                        help="move finished runs' points out of the store into Parquet files in the home")
    p.add_argument("--before", required=True, metavar="AGE",
                   help="runs that ended longer ago than this: 90d, 12h, 2w, 30m, 45s")
    p.add_argument("--experiment", help="only runs of this experiment")
    p.add_argument("--status", help="only runs with this status (succeeded, failed, stopped, pruned)")
    p.add_argument("--dry-run", action="store_true", help="say what would be archived, and archive nothing")
    p.set_defaults(func=archive)
    p = cmds.add_parser("restore", parents=[common], help="bring an archived run back into the store")
    p.add_argument("run", help="run id (`mldeck runs ls --archived` lists them)")
    p.set_defaults(func=restore)
