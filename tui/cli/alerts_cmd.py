"""`mldeck alerts [--all]`, `mldeck alerts resolve ID`: what the monitor and the server flagged."""

from __future__ import annotations

import argparse
import getpass
from typing import Any

from tui.cli.connect import agent_client
from tui.cli.output import print_json, print_table, when


async def list_alerts(args: argparse.Namespace) -> int:
    params: dict[str, Any] = {"all": args.all}
    if args.model:
        params["name"] = args.model
    async with agent_client(args) as client:
        alerts = (await client.call("alerts.list", **params))["alerts"]
    if args.json:
        print_json(alerts)
        return 0
    if not alerts:
        print("no open alerts" if not args.all else "no alerts")
        return 0
    print_table(["id", "time", "model", "version", "kind", "status", "message"],
                [[a["alert_id"], when(a["ts"]), a["model"], a["version"], a["kind"], a["status"],
                  a["message"]] for a in alerts])
    return 0


async def resolve(args: argparse.Namespace) -> int:
    async with agent_client(args) as client:
        alert = await client.call("alerts.resolve", alert_id=args.id, reason=args.reason,
                                  actor=getpass.getuser())
    if args.json:
        print_json(alert)
    else:
        print(f"resolved {alert['alert_id']} ({alert['kind']} on {alert['model']} v{alert['version']})")
    return 0


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
