"""`mldeck store compact`: give back the space that deletes and archives freed in the store file."""

from __future__ import annotations

import argparse
from typing import Any

from mldeck.tui.cli.connect import call_agent
from mldeck.tui.cli.output import show


def _print_compacted(result: dict[str, Any]) -> None:
    before, after = result["bytes_before"], result["bytes_after"]
    tables = result["tables"]
    print(f"store compacted: {before / 2**20:,.1f} MiB -> {after / 2**20:,.1f} MiB "
          f"({(before - after) / 2**20:,.1f} MiB given back) in {result['took_s']:.1f} s; "
          f"every table's rows the same ({tables.get('runs', 0):,} runs, "
          f"{tables.get('metrics', 0):,} points)")


async def compact(args: argparse.Namespace) -> int:
    return show(args, await call_agent(args, "store.compact"), _print_compacted)


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    store = sub.add_parser("store", help="the agent's store file")
    cmds = store.add_subparsers(dest="store_command", metavar="ACTION", required=True)
    p = cmds.add_parser("compact", parents=[common],
                        help="rewrite the store into a fresh file to give back freed space (writes wait)")
    p.set_defaults(func=compact)
