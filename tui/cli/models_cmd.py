"""`mldeck models ...`: register, promote, roll back and archive model versions, and read their history."""

from __future__ import annotations

import argparse
import getpass
import re
import sys
from pathlib import Path
from typing import Any

from mldeck.core.errors import Invalid, NotFound, Refused
from mldeck.tui.cli.connect import agent_client, call_agent
from mldeck.tui.cli.output import print_json, print_table, show, when
from mldeck.tui.cli.watch import saying
from mldeck.tui.units import number

MAX_METRIC_COLUMNS = 6
_REF = re.compile(r"^(?P<name>[^@/]+)(?:@(?P<alias>[^@/]+)|/v?(?P<version>\d+))?$")


def actor() -> str:
    """Who the audit log names: the local user (over SSH the agent side sees the same name)."""
    return getpass.getuser()


def parse_ref(text: str, need_version: bool = False) -> dict[str, Any]:
    """NAME, NAME@ALIAS or NAME/VERSION as models.get params."""
    match = _REF.match(text)
    if not match or (need_version and match["version"] is None):
        form = "NAME/VERSION (e.g. demo/3)" if need_version else (
            "NAME@ALIAS or NAME/VERSION (e.g. demo@production)"
        )
        raise Invalid(f"{text!r} is not {form}")
    ref: dict[str, Any] = {"name": match["name"]}
    if match["alias"]:
        ref["alias"] = match["alias"]
    if match["version"]:
        ref["version"] = int(match["version"])
    return ref


def parse_version(text: str) -> int:
    digits = text.removeprefix("v")
    if not digits.isdigit() or int(digits) < 1:
        raise Invalid(f"version must be a number like 3 or v3, got {text!r}")
    return int(digits)


def _is_local(args: argparse.Namespace) -> bool:
    return getattr(args, "host", None) in (None, "", "local")


def metric_keys(versions: list[dict[str, Any]]) -> list[str]:
    keys = sorted({k for v in versions for k in (v.get("metrics") or {})})
    preferred = [k for k in keys if k.startswith("val")] + [k for k in keys if not k.startswith("val")]
    return preferred[:MAX_METRIC_COLUMNS]


def print_registered(row: dict[str, Any]) -> None:
    print(f"registered {row['name']} v{row['version']} from run {row['run_id']}")
    print(f"artifact: {row['artifact']} ({row['signature'].get('format')})")
    for note in row.get("notes") or []:
        print(f"note: {note}")


async def register_cmd(args: argparse.Namespace) -> int:
    artifact = args.artifact
    if artifact and _is_local(args):
        artifact = str(Path(artifact).expanduser().resolve())
    row = await saying(
        f"registering run {args.run}'s model as {args.name}: loading, checking and profiling it",
        call_agent(args, "models.register", run_id=args.run, name=args.name, artifact=artifact,
                   actor=actor()),
    )
    return show(args, row, print_registered)


async def _current(client: Any, name: str, alias: str) -> dict[str, Any] | None:
    try:
        return await client.call("models.get", name=name, alias=alias)
    except NotFound:
        return None


def confirm(question: str) -> bool:
    print(question + " [y/N] ", end="", flush=True)
    return sys.stdin.readline().strip().lower() in ("y", "yes")


async def promote_cmd(args: argparse.Namespace) -> int:
    version = parse_version(args.version)
    if args.force and not args.reason:
        raise Invalid("--force needs --reason TEXT: the audit log records why the gates were overridden")
    if not args.yes and not sys.stdin.isatty():
        raise Invalid(
            f"promoting changes what {args.to} serves; not on a terminal, so pass --yes to confirm"
        )
    async with agent_client(args) as client:
        if not args.yes:
            candidate = await client.call("models.get", name=args.name, version=version)
            current = await _current(client, args.name, args.to)
            now = f"replacing v{current['version']}" if current else "a new alias"
            metrics = ", ".join(f"{k} {number(v)}" for k, v in sorted(candidate["metrics"].items()))
            if not confirm(f"promote {args.name} v{version} ({metrics}) to {args.to}, {now}?"):
                raise Refused("not promoted")
        result = await client.call(
            "models.promote", name=args.name, version=version, alias=args.to, reason=args.reason,
            force=args.force, actor=actor(),
        )
    if args.json:
        print_json(result)
        return 0
    if not result["changed"]:
        print(f"{args.name} v{version} already is {args.to}; nothing changed")
        return 0
    was = f" (was v{result['from_version']})" if result["from_version"] is not None else ""
    print(f"{args.name} v{version} is now {args.to}{was}")
    if result["forced"]:
        print("forced past failed gates: " + "; ".join(result["failed_gates"]))
    return 0


async def rollback_cmd(args: argparse.Namespace) -> int:
    result = await call_agent(
        args, "models.rollback", name=args.name, alias=args.alias, reason=args.reason, actor=actor()
    )
    return show(args, result, lambda r: print(
        f"{args.name} {args.alias} rolled back to v{r['version']} (was v{r['from_version']})"
    ))


async def archive_cmd(args: argparse.Namespace) -> int:
    version = parse_version(args.version)
    result = await call_agent(
        args, "models.archive", name=args.name, version=version, reason=args.reason, actor=actor()
    )
    return show(args, result, lambda _: print(f"{args.name} v{version} archived"))


def _print_models(models: list[dict[str, Any]]) -> None:
    if not models:
        print("no models registered yet (`mldeck models register RUN --name NAME`)")
        return
    print_table(
        ["model", "versions", "latest", "aliases", "updated"],
        [[m["name"], m["versions"], f"v{m['latest']}",
          ", ".join(f"{a}=v{v}" for a, v in m["aliases"].items()) or "-", when(m["updated_at"])]
         for m in models],
    )


async def ls_cmd(args: argparse.Namespace) -> int:
    return show(args, await call_agent(args, "models.list"), _print_models)


def _print_versions(versions: list[dict[str, Any]]) -> None:
    keys = metric_keys(versions)
    print_table(
        ["version", "aliases", *keys, "run", "created", "state"],
        [[f"v{v['version']}", ", ".join(v["aliases"]) or "-", *((v["metrics"] or {}).get(k) for k in keys),
          v["run_id"], when(v["created_at"]), "archived" if v["archived"] else "-"]
         for v in versions],
    )


async def versions_cmd(args: argparse.Namespace) -> int:
    versions = await call_agent(args, "models.versions", name=args.name)
    return show(args, versions, _print_versions)


def _print_version(v: dict[str, Any]) -> None:
    print(f"{'model:':<12}{v['name']} v{v['version']}" + (" (archived)" if v["archived"] else ""))
    print(f"{'aliases:':<12}{', '.join(v['aliases']) or '-'}")
    for key in ("run_id", "artifact", "git_sha", "data_hash"):
        print(f"{key + ':':<12}{number(v.get(key))}")
    print(f"{'dirty:':<12}{number(v.get('git_dirty'))}")
    print(f"{'created:':<12}{when(v['created_at'])}")
    sig = v.get("signature") or {}
    print(f"{'format:':<12}{sig.get('format', '-')}")
    for side in ("inputs", "outputs"):
        for t in sig.get(side) or []:
            print(f"{side[:-1] + ':':<12}{t['name']} {t['datatype']} {t['shape']}")
    print("metrics:")
    for k, value in sorted((v.get("metrics") or {}).items()):
        print(f"  {k} = {number(value)}")


async def show_cmd(args: argparse.Namespace) -> int:
    version = await call_agent(args, "models.get", **parse_ref(args.ref))
    return show(args, version, _print_version)


def _moved(row: dict[str, Any]) -> str:
    if row["from_version"] is None:
        return f"v{row['version']}" if row["version"] is not None else "-"
    return f"v{row['from_version']} -> v{row['version']}"


def _print_audit(rows: list[dict[str, Any]]) -> None:
    print_table(
        ["time", "actor", "action", "model", "alias", "version", "reason", "note"],
        [[when(r["ts"]), r["actor"], r["action"], r["name"], r["alias"], _moved(r), r["comment"],
          ("FORCED past: " + "; ".join(r["details"]["failed_gates"]))
          if (r.get("details") or {}).get("forced") else None]
         for r in rows],
    )


async def audit_cmd(args: argparse.Namespace) -> int:
    rows = await call_agent(args, "models.audit", name=args.name, limit=args.limit)
    return show(args, rows, _print_audit)


def _by(row: dict[str, Any]) -> str:
    return f"{row['action']} by {row['actor']}, {when(row['ts'])}"


def _print_lineage(info: dict[str, Any]) -> None:
    v, run = info["version"], info["run"]
    print(f"{v['name']} v{v['version']}" + (f"  [{', '.join(v['aliases'])}]" if v["aliases"] else ""))
    if run is None:
        print(f"└─ run {v['run_id']} (no longer in the store)")
    else:
        dirty = " (dirty)" if run.get("git_dirty") else ""
        print(f"└─ run {run['run_id']}  {run['name']} / {run['experiment']}  {run['status']}")
        params = ", ".join(f"{k}={p}" for k, p in sorted((run["params"] or {}).items()))
        print(f"   ├─ params: {params or '-'}")
        print(f"   ├─ code:   {run.get('git_sha') or 'not in git'}{dirty}")
        print(f"   ├─ data:   {run.get('data_hash') or 'no data files declared'}")
        parents = " <- ".join(
            p["run_id"] + (" (missing)" if p.get("missing") else "") for p in info["parents"]
        )
        print(f"   └─ parent runs: {parents or 'none'}")
    for r in info["replaced"]:
        print(f"replaced v{r['replaced_version']} in {r['alias']} ({_by(r)})")
    for r in info["replaced_by"]:
        print(f"replaced by v{r['by_version']} in {r['alias']} ({_by(r)})")


async def lineage_cmd(args: argparse.Namespace) -> int:
    ref = parse_ref(args.ref, need_version=True)
    info = await call_agent(args, "models.lineage", name=ref["name"], version=ref["version"])
    return show(args, info, _print_lineage)


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    models = sub.add_parser("models", help="the model registry: versions, aliases, audit")
    cmds = models.add_subparsers(dest="models_command", metavar="ACTION", required=True)

    p = cmds.add_parser("register", parents=[common], help="register a run's model as a new version")
    p.add_argument("run", help="run id")
    p.add_argument("--name", required=True, help="model name")
    p.add_argument("--artifact", help="model folder (default: the run's artifacts/model)")
    p.set_defaults(func=register_cmd)

    p = cmds.add_parser("promote", parents=[common], help="point an alias at a version, through its gates")
    p.add_argument("name")
    p.add_argument("version", help="version number (3 or v3)")
    p.add_argument("--to", required=True, metavar="ALIAS", help="production, staging, challenger, ...")
    p.add_argument("--reason", help="why; recorded in the audit log")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    p.add_argument("--force", action="store_true", help="override failed gates (needs --reason)")
    p.set_defaults(func=promote_cmd)

    p = cmds.add_parser("rollback", parents=[common], help="move an alias back to its previous version")
    p.add_argument("name")
    p.add_argument("--alias", required=True)
    p.add_argument("--reason", help="why; recorded in the audit log")
    p.set_defaults(func=rollback_cmd)

    p = cmds.add_parser("archive", parents=[common], help="retire a version (it can hold no alias)")
    p.add_argument("name")
    p.add_argument("version")
    p.add_argument("--reason", help="why; recorded in the audit log")
    p.set_defaults(func=archive_cmd)

    p = cmds.add_parser("ls", parents=[common], help="list models and their aliases")
    p.set_defaults(func=ls_cmd)

    p = cmds.add_parser("versions", parents=[common], help="a model's versions, metrics side by side")
    p.add_argument("name")
    p.set_defaults(func=versions_cmd)

    p = cmds.add_parser("show", parents=[common], help="one version: NAME@ALIAS or NAME/VERSION")
    p.add_argument("ref", metavar="NAME@ALIAS|NAME/VERSION")
    p.set_defaults(func=show_cmd)

    p = cmds.add_parser("audit", parents=[common], help="who changed what, when and why")
    p.add_argument("name", nargs="?", help="one model (default: all)")
    p.add_argument("--limit", type=int, default=1000)
    p.set_defaults(func=audit_cmd)

    p = cmds.add_parser("lineage", parents=[common], help="run, params, code, data and what it replaced")
    p.add_argument("ref", metavar="NAME/VERSION")
    p.set_defaults(func=lineage_cmd)
