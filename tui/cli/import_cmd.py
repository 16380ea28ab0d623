"""`mldeck import mlflow URI`: bring an MLflow store's history (runs, metrics, registered models) along.

Runs are written as run folders into the local agent's home, which the agent ingests (it stays the one
writer of its store); registered versions that could be re-exported are then registered through the agent
and their aliases set. Importing again adds nothing: what is there already is named as skipped.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import time
from typing import Any, TextIO

from mldeck.core.client import Client
from mldeck.core.errors import MldeckError, Unavailable, UsageError
from mldeck.tui.cli.connect import agent_client, local_layout, remote_host
from mldeck.tui.cli.output import print_json

INGEST_WAIT_S = 120.0
"""How long the import waits for the agent to ingest the runs it wrote before registering models."""


class Bar:
    """`[#####.....] 12/40 runs` redrawn on a terminal; nothing when the stream is piped."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.live = stream.isatty()

    def __call__(self, done: int, total: int) -> None:
        if not self.live:
            return
        width = max(10, min(40, shutil.get_terminal_size().columns - 30))
        filled = width * done // max(total, 1)
        self.stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} runs")
        if done == total:
            self.stream.write("\n")
        self.stream.flush()


async def wait_ingested(client: Client, run_ids: list[str]) -> None:
    """Until the agent has read each run's whole file (its finish line sets its end)."""
    deadline = time.monotonic() + INGEST_WAIT_S
    waiting = list(run_ids)
    while waiting:
        still = []
        for run_id in waiting:
            try:
                row = await client.call("runs.get", run_id=run_id)
            except MldeckError:
                row = None
            if row is None or not row.get("ended_at"):
                still.append(run_id)
        waiting = still
        if waiting and time.monotonic() > deadline:
            raise Unavailable(f"the agent has not ingested {len(waiting)} imported runs after "
                              f"{INGEST_WAIT_S:.0f}s; run the import again later to register their models")
        if waiting:
            await asyncio.sleep(0.2)


async def register_versions(client: Client, versions: list[Any]) -> list[dict[str, Any]]:
    """Register each re-exported version (once) and set its aliases; one line of outcome per version."""
    outcomes = []
    registered: dict[str, dict[str, int]] = {}
    for v in versions:
        out: dict[str, Any] = {"name": v.name, "mlflow_version": v.version, "run_id": v.run_id,
                               "version": None, "aliases": v.aliases, "outcome": ""}
        outcomes.append(out)
        if v.artifact is None or v.run_id is None:
            out["outcome"] = f"import-only: {v.note}"
            continue
        if v.name not in registered:
            try:
                rows = await client.call("models.versions", name=v.name)
            except MldeckError:
                rows = []
            registered[v.name] = {r["run_id"]: r["version"] for r in rows}
        try:
            if v.run_id in registered[v.name]:
                out["version"] = registered[v.name][v.run_id]
                out["outcome"] = "registered before"
            else:
                row = await client.call("models.register", run_id=v.run_id, name=v.name, artifact=v.artifact,
                                        actor="mlflow-import")
                out["version"] = registered[v.name][v.run_id] = row["version"]
                out["outcome"] = "registered"
            for alias in v.aliases:
                moved = await client.call(
                    "models.promote", name=v.name, version=out["version"], alias=alias, force=True,
                    actor="mlflow-import",
                    reason=f"imported from MLflow, where {alias} names version {v.version}",
                )
                out["outcome"] += f"; {alias} {'set' if moved['changed'] else 'already set'}"
        except MldeckError as exc:
            out["outcome"] = f"not registered: {exc.message}"
    return outcomes


async def import_mlflow(args: argparse.Namespace) -> int:
    if remote_host(args)[1] is not None:
        raise UsageError("`mldeck import` writes into the agent's home: run it on the agent's host, "
                         "without --host")
    from mldeck.integrations import mlflow as importer

    layout = local_layout(args)
    async with agent_client(args) as client:
        mlflow_client = importer.open_client(args.uri)
        bar = None if args.json else Bar(sys.stderr)
        result = await asyncio.to_thread(importer.import_store, mlflow_client, layout, bar)
        await wait_ingested(client, result.runs)
        versions = await register_versions(client, result.versions)
    if args.json:
        print_json({"uri": args.uri, "runs": result.runs, "points": result.points, "skipped": result.skipped,
                    "versions": versions})
        return 0
    count = len(result.runs)
    if count:
        print(f"imported {count} run{'s' if count != 1 else ''} with {result.points:,} metric points "
              f"from {args.uri}")
    else:
        print(f"nothing new in {args.uri}")
    for v in versions:
        target = f" → {v['name']} v{v['version']}" if v["version"] is not None else ""
        print(f"  model {v['name']} version {v['mlflow_version']}{target}: {v['outcome']}")
    if result.skipped:
        print(f"skipped {len(result.skipped)}:")
        for line in result.skipped:
            print(f"  {line}")
    return 0


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("import", help="bring runs and models from another tracker")
    kinds = p.add_subparsers(dest="import_kind", metavar="SOURCE", required=True)
    q = kinds.add_parser(
        "mlflow", parents=[common], help="an MLflow store: an mlruns folder, sqlite:///FILE, or a server URL",
        description=__doc__,
    )
    q.add_argument("uri", help="mlruns folder, sqlite:///path/mlflow.db, or http(s)://tracking-server")
    q.set_defaults(func=import_mlflow)
