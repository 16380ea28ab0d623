"""`mldeck backup [--to DIR]` and `mldeck restore FILE`: a consistent copy of the store, and bringing it back.

A backup is made by the running agent (backups.create), so it is the store as of one commit even while
runs are being ingested. A restore happens with the agent stopped, on this machine's home.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from mldeck.core.errors import UsageError
from mldeck.tui.cli.connect import call_agent, local_layout, remote_host
from mldeck.tui.cli.output import print_json

SHOWN_TABLES = (("runs", "runs"), ("metrics", "metric points"), ("model_versions", "model versions"),
                ("audit_log", "audit rows"))


def _summary(tables: dict[str, int]) -> str:
    return ", ".join(f"{tables.get(t, 0):,} {what}" for t, what in SHOWN_TABLES)


async def backup(args: argparse.Namespace) -> int:
    local = remote_host(args)[1] is None
    to = str(Path(args.to).expanduser().resolve()) if args.to and local else args.to
    result = await call_agent(args, "backups.create", to=to)
    if args.json:
        print_json(result)
    else:
        print(f"backup {result['path']}: {result['bytes'] / 2**20:.1f} MiB, {_summary(result['tables'])} "
              f"({result['took_s']:.1f} s)")
    return 0


def restore(args: argparse.Namespace) -> int:
    from mldeck.core import backups  # DuckDB and pyarrow: only this command needs them, not every CLI start

    if remote_host(args)[1] is not None:
        raise UsageError("`mldeck restore` replaces this machine's store; for a host, run it there with its "
                         "agent stopped")
    result: dict[str, Any] = backups.restore(local_layout(args), Path(args.file).expanduser().resolve(),
                                             time.time())
    if args.json:
        print_json(result)
        return 0
    print(f"restored {result['restored']} as {result['store']} ({_summary(result['tables'])})")
    if result["replaced"]:
        print(f"the store it replaced is kept at {result['replaced']}")
    print("start the agent with `mldeck agent start`: what runs logged since the backup is ingested again "
          "from their files")
    return 0


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("backup", parents=[common], help="copy the store while the agent runs")
    p.add_argument("--to", metavar="DIR", help="the folder to write it into (default: backups/ in the home)")
    p.set_defaults(func=backup)
    p = sub.add_parser("restore", parents=[common], help="bring back a backup (the agent stopped)")
    p.add_argument("file", metavar="FILE", help="a backup file, e.g. HOME/backups/daily-….duckdb")
    p.set_defaults(func=restore)
