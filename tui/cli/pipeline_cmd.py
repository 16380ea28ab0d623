"""`mldeck pipeline run FILE`, `mldeck pipeline ls`, `mldeck pipeline show ID`: steps as jobs, then a gate."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys
from pathlib import Path
from typing import Any

from mldeck.core.errors import Invalid, NotFound
from mldeck.tui.cli.connect import agent_client, call_agent, remote_host
from mldeck.tui.cli.output import print_json, print_table, show, when
from mldeck.tui.units import duration

POLL_S = 1.0


def _steps(row: dict[str, Any]) -> str:
    return " → ".join(f"{s['step']}:{s['status']}" for s in row.get("steps") or [])


def print_pipeline(row: dict[str, Any]) -> None:
    print(f"{row['pipeline_id']} {row['name']}: {row['status']}  ({_steps(row)})")
    if row.get("registered_version"):
        alias = f", promoted to {row['promoted_alias']}" if row.get("promoted_alias") else ""
        print(f"registered {row['model']} v{row['registered_version']}{alias}")
    for failed in row.get("gate_failed") or []:
        print(f"gate failed: {failed}")
    if row.get("message"):
        print(row["message"])


async def run(args: argparse.Namespace) -> int:
    path = Path(args.file).expanduser()
    _, host = remote_host(args)
    params: dict[str, Any] = {"actor": getpass.getuser()}
    if host is None:
        if not path.is_file():
            raise NotFound(f"no pipeline file {path}")
        params["file"] = str(path.resolve())
    else:
        try:
            params["spec"] = path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise Invalid(f"cannot read {path}: {exc}") from None
    async with agent_client(args) as client:
        row = await client.call("pipelines.run", **params)
        if args.detach:
            if args.json:
                print_json(row)
            else:
                pid = row["pipeline_id"]
                print(f"started {pid} ({_steps(row)}); `mldeck pipeline show {pid}`")
            return 0
        seen = ""
        while True:
            row = await client.call("pipelines.get", pipeline_id=row["pipeline_id"])
            progress = _steps(row)
            if progress != seen and not args.json and sys.stdout.isatty():
                print(f"  {progress}", flush=True)
            seen = progress
            if row["status"] != "running":
                break
            await asyncio.sleep(POLL_S)
    if args.json:
        print_json(row)
    else:
        print_pipeline(row)
    return 0 if row["status"] == "succeeded" else 1


async def show_cmd(args: argparse.Namespace) -> int:
    return show(args, await call_agent(args, "pipelines.get", pipeline_id=args.id), print_pipeline)


def _print_pipelines(rows: list[dict[str, Any]]) -> None:
    print_table(["id", "name", "status", "started", "took", "steps", "model", "version", "alias", "trigger"],
                [[r["pipeline_id"], r["name"], r["status"], when(r["created_at"]),
                  duration((r["ended_at"] or r["created_at"]) - r["created_at"]), _steps(r), r["model"],
                  r["registered_version"], r["promoted_alias"], (r.get("trigger") or {}).get("alert_id")]
                 for r in rows])


async def ls(args: argparse.Namespace) -> int:
    return show(args, await call_agent(args, "pipelines.list", limit=args.limit), _print_pipelines)


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    pipe = sub.add_parser("pipeline", help="pipelines: data → preprocess → train → evaluate → gated register")
    cmds = pipe.add_subparsers(dest="pipeline_command", metavar="COMMAND", required=True)
    p = cmds.add_parser("run", parents=[common], help="run a pipeline TOML file and wait for it")
    p.add_argument("file", help="pipeline file (e.g. agent/demo/retrain.toml)")
    p.add_argument("--detach", action="store_true", help="return once started")
    p.set_defaults(func=run)
    p = cmds.add_parser("ls", parents=[common], help="pipeline runs, newest first")
    p.add_argument("--limit", type=int, default=50)
    p.set_defaults(func=ls)
    p = cmds.add_parser("show", parents=[common], help="one pipeline run: steps, gate, version")
    p.add_argument("id", help="pipeline id (from `mldeck pipeline ls`)")
    p.set_defaults(func=show_cmd)
