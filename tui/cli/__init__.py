"""`mldeck`: with no arguments the TUI; otherwise one subcommand per noun."""

from __future__ import annotations

import argparse
import asyncio
import inspect
import sys
from collections.abc import Callable
from typing import Any

from mldeck.core.errors import MldeckError
from mldeck.tui.cli import (
    agent_cmd,
    alerts_cmd,
    cost_cmd,
    demo_cmd,
    drift_cmd,
    hosts_cmd,
    models_cmd,
    pipeline_cmd,
    predict_cmd,
    query_cmd,
    run_cmd,
    runs_cmd,
    serve_cmd,
    sweep_cmd,
)

COMMANDS: list[Callable[[Any, argparse.ArgumentParser], None]] = [
    demo_cmd.register,
    agent_cmd.register,
    runs_cmd.register,
    query_cmd.register,
    hosts_cmd.register,
    models_cmd.register,
    serve_cmd.register,
    predict_cmd.register,
    run_cmd.register,
    sweep_cmd.register,
    cost_cmd.register,
    drift_cmd.register,
    alerts_cmd.register,
    pipeline_cmd.register,
]


def common_options() -> argparse.ArgumentParser:
    """Options every subcommand takes: which agent, and machine-readable output."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--host", default=None,
        help="NAME from the hosts file, ssh://user@host[:port], or local (default)",
    )
    common.add_argument("--home", default=None, help="the local agent's data folder ($MLDECK_HOME)")
    common.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    return common


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mldeck",
        description="MLOps control center: run with no arguments for the TUI.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    common = common_options()
    for register in COMMANDS:
        register(sub, common)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        from mldeck.tui.app import run_tui

        return run_tui()
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        result = args.func(args)
        if inspect.iscoroutine(result):
            result = asyncio.run(result)
        return int(result or 0)
    except MldeckError as exc:  # the one place the CLI prints an error
        print(f"mldeck: {exc.message}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
