"""`mldeck runs ls|show`: the runs an agent knows."""

from __future__ import annotations

import argparse
import time
from typing import Any

from tui.cli.connect import agent_client
from tui.cli.output import duration, print_json, print_table, when


def _duration(run: dict[str, Any]) -> float | None:
    if not run.get("started_at"):
        return None
    return (run.get("ended_at") or time.time()) - run["started_at"]


async def ls(args: argparse.Namespace) -> int:
    async with agent_client(args) as client:
        runs = await client.call(
            "runs.list", status=args.status, experiment=args.experiment, limit=args.limit
        )
    if args.json:
        print_json(runs)
        return 0
    keys = sorted({k for r in runs for k in r["metrics"]})[:4]
    print_table(
        ["run", "experiment", "name", "status", "created", "duration", *keys],
        [
            [r["run_id"], r["experiment"], r["name"], r["status"], when(r["created_at"]),
             duration(_duration(r)), *(r["metrics"].get(k) for k in keys)]
            for r in runs
        ],
    )
    return 0


async def show(args: argparse.Namespace) -> int:
    async with agent_client(args) as client:
        run = await client.call("runs.get", run_id=args.run)
    if args.json:
        print_json(run)
        return 0
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
        print(f"  {k} = {v:.6g}")
    return 0


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    runs = sub.add_parser("runs", help="list and inspect runs")
    cmds = runs.add_subparsers(dest="runs_command", metavar="ACTION", required=True)
    p = cmds.add_parser("ls", parents=[common], help="list runs, newest first")
    p.add_argument("--status", help="only runs with this status")
    p.add_argument("--experiment", help="only runs of this experiment")
    p.add_argument("--limit", type=int, default=1000)
    p.set_defaults(func=ls)
    p = cmds.add_parser("show", parents=[common], help="one run's details")
    p.add_argument("run", help="run id")
    p.set_defaults(func=show)
