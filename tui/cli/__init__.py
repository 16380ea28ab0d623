"""`mldeck`: with no arguments the TUI; otherwise one subcommand per noun."""

from __future__ import annotations

import argparse
import asyncio
import difflib
import inspect
import sys
from collections.abc import Callable
from typing import Any, NoReturn

from mldeck.core.errors import MldeckError, UsageError
from mldeck.core.version import VERSION
from mldeck.tui.cli import (
    agent_cmd,
    alerts_cmd,
    backup_cmd,
    completion,
    cost_cmd,
    demo_cmd,
    drift_cmd,
    explain_cmd,
    hosts_cmd,
    import_cmd,
    models_cmd,
    pipeline_cmd,
    predict_cmd,
    query_cmd,
    run_cmd,
    runs_cmd,
    serve_cmd,
    store_cmd,
    sweep_cmd,
)

COMMANDS: list[Callable[[Any, argparse.ArgumentParser], None]] = [
    demo_cmd.register,
    agent_cmd.register,
    backup_cmd.register,
    runs_cmd.register,
    store_cmd.register,
    query_cmd.register,
    hosts_cmd.register,
    import_cmd.register,
    models_cmd.register,
    serve_cmd.register,
    predict_cmd.register,
    run_cmd.register,
    sweep_cmd.register,
    cost_cmd.register,
    drift_cmd.register,
    explain_cmd.register,
    alerts_cmd.register,
    pipeline_cmd.register,
    completion.register,
]
# Commands whose command line goes through run_cmd.parse_launch: the script's arguments after `--`.
LAUNCHERS = ("run", "sweep")
EXIT_CODES = """exit codes:
  0    done
  1    failed: the message on stderr says why and what to do
  2    usage: the command line cannot work as written
  3    a host or agent is down or cannot be reached
  130  interrupted (Ctrl-C)"""


class Parser(argparse.ArgumentParser):
    """argparse that says usage errors in one line (exit 2) and suggests the closest choice."""

    def _check_value(self, action: argparse.Action, value: Any) -> None:  # argparse's check of a choice
        choices = action.choices
        if choices is not None and value not in choices:
            close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
            if close:
                typed = " ".join([self.prog, *action.option_strings[:1], str(value)])
                raise UsageError(f"`{typed}`: did you mean `{close[0]}`?")
        super()._check_value(action, value)

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (`{self.prog} --help` shows the usage)")


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


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The whole command line, and each command's own parser by name."""
    parser = Parser(
        prog="mldeck", description="MLOps control center: run with no arguments for the TUI.",
        epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"mldeck {VERSION}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    common = common_options()
    for register in COMMANDS:
        register(sub, common)
    completion.attach(parser)
    return parser, sub.choices


def parse(
    parser: argparse.ArgumentParser, commands: dict[str, argparse.ArgumentParser], argv: list[str]
) -> argparse.Namespace:
    """`run` and `sweep` keep all after `--` for the script (run_cmd.parse_launch); the rest is argparse."""
    if argv[0] in LAUNCHERS:
        return run_cmd.parse_launch(commands[argv[0]], argv[1:])
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    parser, commands = build_parser()
    if argv is None:
        completion.complete(parser)  # when the shell is asking, this answers and exits
        argv = sys.argv[1:]
    if not argv:
        from mldeck.tui.app import run_tui

        return run_tui()
    try:
        args = parse(parser, commands, argv)
        if not getattr(args, "func", None):
            parser.print_help()
            return 2
        result = args.func(args)
        if inspect.iscoroutine(result):
            result = asyncio.run(result)
        return int(result or 0)
    except MldeckError as exc:  # the one place the CLI prints an error
        print(f"mldeck: {exc.message}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
