"""`mldeck serve start|stop|status|stats|traffic|token`: the model server of a host."""

from __future__ import annotations

import argparse
from typing import Any

from mldeck.core.errors import UsageError
from mldeck.tui.cli.connect import call_agent
from mldeck.tui.cli.output import print_table, show, when
from mldeck.tui.units import duration


def _print_status(status: dict[str, Any]) -> None:
    if status["running"]:
        print(f"model server: running, pid {status['pid']}, {status['url']}, restarts {status['restarts']}")
    else:
        last = status.get("last_exit") or {}
        why = f" ({last['message']})" if last.get("message") else ""
        print(f"model server: not running{why}")
    models = status["manifest"]["models"]
    if not models:
        print("nothing served yet: promote a version (`mldeck models promote NAME VERSION --to production`)")
        return
    print_table(
        ["model", "aliases", "shadow", "canary %"],
        [[name, ", ".join(f"{a}={v['version']}" for a, v in sorted(m["aliases"].items())),
          "on" if m["shadow"] else "off", m["canary"]] for name, m in sorted(models.items())],
    )


async def _status_after(args: argparse.Namespace, method: str) -> int:
    """serving.start and serving.status both answer with the server's status."""
    return show(args, await call_agent(args, method), _print_status)


async def start(args: argparse.Namespace) -> int:
    return await _status_after(args, "serving.start")


async def stop(args: argparse.Namespace) -> int:
    return show(args, await call_agent(args, "serving.stop"), lambda _: print("model server stopped"))


async def status_cmd(args: argparse.Namespace) -> int:
    return await _status_after(args, "serving.status")


def _print_stats(data: dict[str, Any]) -> None:
    if not data.get("running"):
        print("model server: not running (`mldeck serve start`)")
        return
    print(f"up {duration(data.get('uptime_s'))}, swaps {data.get('swaps', 0)}, "
          f"manifest of {when(data.get('manifest_at'))}")
    rows = []
    for name, model in sorted(data.get("models", {}).items()):
        for variant, v in sorted(model.get("variants", {}).items()):
            rows.append([name, variant, ",".join(map(str, v["versions"])), v["rps"], v["p50_ms"],
                         v["p95_ms"], v["p99_ms"], f"{100 * v['error_rate']:.2f}%"])
    print_table(["model", "variant", "version", "req/s", "p50 ms", "p95 ms", "p99 ms", "errors"], rows)
    for failure in data.get("load_failures", []):
        print(f"load failure: {failure}")


async def stats(args: argparse.Namespace) -> int:
    return show(args, await call_agent(args, "serving.stats", window_s=args.window), _print_stats)


def _print_split(split: dict[str, Any]) -> None:
    challenger = split["challenger"] if split["challenger"] is not None else "none"
    print(f"{split['name']}: shadow {'on' if split['shadow'] else 'off'}, canary {split['canary']:g}% "
          f"(challenger: {challenger})")
    if split.get("warning"):
        print(f"note: {split['warning']}")


async def traffic(args: argparse.Namespace) -> int:
    if args.canary is None and args.shadow is None:
        raise UsageError("say what to change: --canary PERCENT and/or --shadow on|off")
    params: dict[str, Any] = {"name": args.name}
    if args.canary is not None:
        params["canary"] = args.canary
    if args.shadow is not None:
        params["shadow"] = args.shadow == "on"
    return show(args, await call_agent(args, "serving.traffic", **params), _print_split)


async def token(args: argparse.Namespace) -> int:
    """The token alone on stdout, so `$(mldeck serve token)` fills a header; --json adds how to send it."""
    return show(args, await call_agent(args, "serving.token"), lambda t: print(t["token"]))


def _percent(text: str) -> float:
    try:
        value = float(text.rstrip("%"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a percentage") from None
    if not 0 <= value <= 100:
        raise argparse.ArgumentTypeError(f"the canary share is 0 to 100 percent, not {text}")
    return value


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    serve = sub.add_parser("serve", help="the model server: start, stop, status, stats, traffic split, token")
    cmds = serve.add_subparsers(dest="serve_command", metavar="ACTION", required=True)
    cmds.add_parser("start", parents=[common], help="start the model server").set_defaults(func=start)
    cmds.add_parser("stop", parents=[common], help="stop the model server").set_defaults(func=stop)
    cmds.add_parser("status", parents=[common], help="is it running, and what it serves").set_defaults(
        func=status_cmd)
    p = cmds.add_parser("stats", parents=[common], help="requests/s, latency and errors per model")
    p.add_argument("--window", type=float, default=60.0, help="seconds to look back (1-60)")
    p.set_defaults(func=stats)
    p = cmds.add_parser("traffic", parents=[common], help="shadow and canary for a model's challenger")
    p.add_argument("name", help="model name")
    p.add_argument("--canary", type=_percent, help="percent of requests the challenger answers")
    p.add_argument("--shadow", choices=["on", "off"], help="mirror every request to the challenger")
    p.set_defaults(func=traffic)
    cmds.add_parser("token", parents=[common], help="print the token feedback needs (Authorization: Bearer …)"
                    ).set_defaults(func=token)
