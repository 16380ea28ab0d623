"""`mldeck query SQL`: read-only SQL against an agent's store, for power users."""

from __future__ import annotations

import argparse
from typing import Any

from mldeck.tui.cli.connect import agent_client
from mldeck.tui.cli.output import print_json, print_table


async def query(args: argparse.Namespace) -> int:
    async with agent_client(args) as client:
        result = await client.call("query", sql=args.sql, limit=args.limit)
    cols = result["columns"]
    if args.json:
        print_json([dict(zip(cols, row, strict=True)) for row in result["rows"]])
        return 0
    print_table(cols, result["rows"])
    if result["truncated"]:
        print(f"({result.get('message') or f'first {args.limit} rows; raise --limit for more'})")
    return 0


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("query", parents=[common], help="run read-only SQL on the store")
    p.add_argument("sql", help='e.g. "SELECT key, count(*) FROM metrics GROUP BY key"')
    p.add_argument("--limit", type=int, default=10000)
    p.set_defaults(func=query)
