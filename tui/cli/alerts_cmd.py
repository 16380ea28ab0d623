"""`mldeck alerts [--all]`, `mldeck alerts resolve ID`: what the monitor and the server flagged."""

from __future__ import annotations

import argparse
import getpass
from typing import Any

from mldeck.tui.cli.connect import call_agent
from mldeck.tui.cli.output import print_table, show, when


def _print_alerts(alerts: list[dict[str, Any]], resolved_too: bool) -> None:
    if not alerts:
        print("no open alerts" if not resolved_too else "no alerts")
        return
    print_table(["id", "time", "model", "version", "kind", "status", "message"],
                [[a["alert_id"], when(a["ts"]), a["model"], a["version"], a["kind"], a["status"],
                  a["message"]] for a in alerts])


async def list_alerts(args: argparse.Namespace) -> int:
    params: dict[str, Any] = {"all": args.all}
    if args.model:
        params["name"] = args.model
    alerts = (await call_agent(args, "alerts.list", **params))["alerts"]
    return show(args, alerts, lambda a: _print_alerts(a, args.all))


async def resolve(args: argparse.Namespace) -> int:
    alert = await call_agent(args, "alerts.resolve", alert_id=args.id, reason=args.reason,
                             actor=getpass.getuser())
    return show(args, alert, lambda a: print(
        f"resolved {a['alert_id']} ({a['kind']} on {a['model']} v{a['version']})"
    ))


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("alerts", parents=[common], help="alerts: drift, accuracy, rollback, load")
    p.add_argument("--all", action="store_true", help="resolved ones too")
    p.add_argument("--model", help="only this model's")
    p.set_defaults(func=list_alerts)
    cmds = p.add_subparsers(dest="alerts_command", metavar="COMMAND")
    r = cmds.add_parser("resolve", parents=[common], help="close an alert (audited)")
    r.add_argument("id", help="alert id (from `mldeck alerts`)")
    r.add_argument("--reason", help="why; recorded in the audit log")
    r.set_defaults(func=resolve)
