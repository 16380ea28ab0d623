"""`mldeck hosts add|ls|rm|status`: the hosts file, and every host's health at a glance."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from mldeck.core.errors import NotFound
from mldeck.tui.cli.output import print_json, print_table, show
from mldeck.tui.cli.versions import warn_version_skew
from mldeck.tui.fleet import Fleet, Outcome
from mldeck.tui.hosts import LOCAL, Host, add_host, hosts_path, load_hosts, remove_host

COST_METHOD = "cost.now"
COST_KEYS = ("cost_per_hour", "per_hour", "usd_per_hour", "rate_per_hour")


def add(args: argparse.Namespace) -> int:
    host = add_host(args.name, args.target, home=args.remote_home, python=args.python, replace=args.replace)
    return show(args, {"name": args.name, **_entry(host)}, lambda _: print(
        f"added {args.name} -> {host.target} (in {hosts_path()}); "
        f"try `mldeck hosts status` or `mldeck agent install --host {args.name}`"
    ))


def _entry(host: Host) -> dict[str, Any]:
    return {"target": host.target, "home": host.home, "python": host.python, "timeout_s": host.timeout_s}


def _print_hosts(rows: list[dict[str, Any]]) -> None:
    if not rows:
        print(f"no hosts yet ({hosts_path()}); add one with `mldeck hosts add NAME ssh://user@host`")
        return
    print_table(["name", "target", "home", "python"],
                [[r["name"], r["target"], r["home"], r["python"]] for r in rows])


def ls(args: argparse.Namespace) -> int:
    rows = [{"name": name, **_entry(h)} for name, h in sorted(load_hosts().items())]
    return show(args, rows, _print_hosts)


def rm(args: argparse.Namespace) -> int:
    remove_host(args.name)
    return show(args, {"removed": args.name}, lambda _: print(f"removed {args.name}"))


def _gpus(metrics: Outcome | None) -> list[dict[str, Any]]:
    latest = (metrics.value or {}).get("latest") if metrics and metrics.ok else None
    return [
        {"index": g.get("index"), "util_pct": g.get("util_pct"), "mem_used": g.get("mem_used"),
         "mem_total": g.get("mem_total")}
        for g in (latest or {}).get("gpus") or []
    ]


def _cost(result: Outcome | None) -> float | None:
    if result is None or not result.ok or not isinstance(result.value, dict):
        return None
    return next((result.value[k] for k in COST_KEYS if k in result.value), None)


async def fleet_status(fleet: Fleet, timeout_s: float | None = None) -> list[dict[str, Any]]:
    """Per host: up or why not, version, GPUs, running jobs, cost per hour; no host waits on another."""
    hello = await fleet.gather("hello", timeout_s=timeout_s)
    up = [name for name, out in hello.items() if out.ok]
    with_cost = [n for n in up if COST_METHOD in (hello[n].value.get("methods") or [])]
    metrics, running, cost, health = await asyncio.gather(
        fleet.gather("host.metrics", hosts=up, timeout_s=timeout_s),
        fleet.gather("runs.list", hosts=up, timeout_s=timeout_s, status="running"),
        fleet.gather(COST_METHOD, hosts=with_cost, timeout_s=timeout_s),
        fleet.gather("agent.status", hosts=up, timeout_s=timeout_s),
    ) if up else ({}, {}, {}, {})
    rows = []
    for name, out in hello.items():
        status = fleet.status(name)
        row: dict[str, Any] = {"host": name, "up": out.ok, "state": fleet.state(name), "why": out.why,
                               "transport": status.mode or None}
        if out.ok:
            jobs = running.get(name)
            row.update({
                "agent_version": out.value.get("agent_version"),
                "hostname": out.value.get("host", {}).get("hostname"),
                "gpus": _gpus(metrics.get(name)),
                "running_jobs": len(jobs.value) if jobs and jobs.ok else None,
                "cost_per_hour": _cost(cost.get(name)),
                "problems": health[name].value.get("problems", []) if health[name].ok else [],
            })
        rows.append(row)
    return rows


def _gpu_cell(gpus: list[dict[str, Any]]) -> str:
    def one(g: dict[str, Any]) -> str:
        util = "-" if g["util_pct"] is None else f"{g['util_pct']:.0f}%"
        total = g["mem_total"]
        mem = f"{(g['mem_used'] or 0) / 2**30:.1f}/{total / 2**30:.0f}G" if total else "-"
        return f"{g['index']}:{util} {mem}"

    return ", ".join(one(g) for g in gpus) or "none"


async def status(args: argparse.Namespace) -> int:
    hosts: dict[str, Host | None] = {} if args.no_local else {LOCAL: None}
    hosts.update(load_hosts())
    if args.only:
        missing = [n for n in args.only if n not in hosts]
        if missing:
            raise NotFound(f"unknown host(s): {', '.join(missing)}; `mldeck hosts ls` lists them")
        hosts = {n: hosts[n] for n in args.only}
    async with Fleet(hosts, local_home=args.home) as fleet:
        rows = await fleet_status(fleet, args.timeout)
    if args.json:
        print_json(rows)
    else:
        print_table(
            ["host", "state", "version", "gpus (util mem)", "jobs", "$/h", "problems"],
            [[r["host"], "up" if r["up"] else f"down: {r['why']}", r.get("agent_version"),
              _gpu_cell(r["gpus"]) if r["up"] else "-", r.get("running_jobs"),
              None if r.get("cost_per_hour") is None else f"{r['cost_per_hour']:.2f}",
              "; ".join(r.get("problems") or []) or "-"] for r in rows],
        )
    for r in rows:
        warn_version_skew(r["host"], r.get("agent_version"))
    return 0 if all(r["up"] for r in rows) else 3


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    hosts = sub.add_parser("hosts", help="the hosts you manage over SSH, and their health")
    cmds = hosts.add_subparsers(dest="hosts_command", metavar="ACTION", required=True)
    p = cmds.add_parser("add", help="add a host: NAME ssh://user@host[:port]")
    p.add_argument("name", help="a short name to use with --host")
    p.add_argument("target", help="ssh://[user@]host[:port]; ~/.ssh/config aliases work as host")
    p.add_argument("--home", dest="remote_home", default=None,
                   help="the agent's data folder on that host (default: the remote user's default)")
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    p.add_argument("--python", default=None, help="the Python that runs mldeck there (default python3)")
    p.add_argument("--replace", action="store_true", help="overwrite an existing entry of that name")
    p.set_defaults(func=add)
    p = cmds.add_parser("ls", parents=[common], help="list the hosts file")
    p.set_defaults(func=ls)
    p = cmds.add_parser("rm", parents=[common], help="remove a host from the hosts file")
    p.add_argument("name")
    p.set_defaults(func=rm)
    p = cmds.add_parser("status", parents=[common], help="all hosts at once: up or why not, GPUs, jobs, cost")
    p.add_argument("only", nargs="*", help="only these hosts (default: local and every host of the file)")
    p.add_argument("--timeout", type=float, default=None, help="seconds per host (default: its own, 10)")
    p.add_argument("--no-local", action="store_true", help="leave out this machine's agent")
    p.set_defaults(func=status)
