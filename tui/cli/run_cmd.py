"""`mldeck run SCRIPT|-m MODULE`: launch a job on an agent (or on several, as one torchrun rendezvous)."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path
from typing import Any

from mldeck.core.errors import MldeckError, NotFound, UsageError
from mldeck.tui.cli.connect import agent_client, call_agent, remote_host
from mldeck.tui.cli.output import print_json
from mldeck.tui.cli.watch import Progress, wait_for_end

SLURM_METHOD = "slurm.status"
"""Only an agent on Slurm has it: there --nodes N is Slurm's to place."""
USAGE = "%(prog)s [OPTIONS] (SCRIPT | -m MODULE) [-- SCRIPT_ARGS ...]"


def order_note(example: str) -> str:
    """The help's word on argument order, with a command line that shows it."""
    return ("Options go before or after the script; the script's own arguments go after `--` and reach it "
            f"exactly as written: `{example}`.")


def misplaced(prog: str, words: list[str]) -> UsageError:
    """Words before `--` that `prog` does not take: most likely meant for the script."""
    given = shlex.join(words)
    return UsageError(
        f"`{prog}` does not take {given}; the script's own arguments go after `--`: "
        f"{prog} SCRIPT [OPTIONS] -- {given}"
    )


def parse_launch(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """`run` and `sweep`: options and the script in any order, and everything after the first `--`
    for the script exactly as given."""
    cut = argv.index("--") if "--" in argv else len(argv)
    args, unknown = parser.parse_known_intermixed_args(argv[:cut])
    if unknown:
        raise misplaced(parser.prog, unknown)
    args.script_args = argv[cut + 1:]
    return args


def parse_params(pairs: list[str] | None) -> dict[str, Any]:
    """`--param k=v` pairs → dict, numbers and booleans typed."""
    from mldeck.core.sweep import parse_value  # it loads DuckDB, which completion and --help need not

    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--param {pair!r} must look like name=value (e.g. --param lr=0.01)")
        out[key.strip()] = parse_value(value)
    return out


def parse_env(pairs: list[str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--env {pair!r} must look like NAME=value")
        out[key] = value
    return out


def node_args(args: argparse.Namespace, node: str) -> argparse.Namespace:
    """One --nodes entry as connection options: `local`, `local:/agent/home`, or a host name/URL."""
    ns = argparse.Namespace(**vars(args))
    if node == "local" or node.startswith("local:"):
        ns.host, ns.home = None, (node.partition(":")[2] or None)
    else:
        ns.host, ns.home = node, None
    return ns


def is_local(args: argparse.Namespace) -> bool:
    return remote_host(args)[1] is None


def launch_params(args: argparse.Namespace, local: bool) -> dict[str, Any]:
    """The runs.launch params common to every node; paths resolved here when the agent is local."""
    if (args.script is None) == (args.module is None):
        raise UsageError("give a SCRIPT or -m MODULE (one of them)")
    params: dict[str, Any] = {
        "args": list(args.script_args or []), "name": args.name, "experiment": args.experiment,
        "params": parse_params(args.param), "gpus": args.gpus, "amp": args.amp,
        "env": parse_env(args.env), "priority": args.priority,
    }
    if args.gpus < 0:
        raise UsageError("--gpus must be 0 or more")
    cwd = args.cwd
    if args.script is not None:
        script = Path(args.script).expanduser()
        if local:
            script = (Path(cwd) if cwd else Path.cwd()) / script
            if not script.is_file():
                raise NotFound(f"script {args.script} not found (looked at {script.resolve()})")
            script = script.resolve()
        params["script"] = str(script)
    else:
        params["module"] = args.module
    if local:
        cwd = str(Path(cwd).resolve()) if cwd else os.getcwd()
    params["cwd"] = cwd
    return params


async def launch_on_nodes(args: argparse.Namespace, nodes: list[str]) -> list[dict[str, Any]]:
    """Rank 0's agent picks the rendezvous endpoint; the others join it under the same run id."""
    targets = [node_args(args, n) for n in nodes]
    locals_ = [is_local(t) for t in targets]
    base = launch_params(args, all(locals_))
    done: list[tuple[argparse.Namespace, dict[str, Any]]] = []
    try:
        for rank, target in enumerate(targets):
            dist: dict[str, Any] = {"nnodes": len(nodes), "node_rank": rank}
            extra: dict[str, Any] = {}
            if rank == 0:
                if all(locals_):
                    dist["rdzv_host"] = "127.0.0.1"
            else:
                dist["endpoint"] = done[0][1]["dist"]["endpoint"]
                extra["run_id"] = done[0][1]["run_id"]
            result = await call_agent(target, "runs.launch", **base, **extra, dist=dist)
            done.append((target, {**result, "node": nodes[rank]}))
    except MldeckError:
        for target, result in done:
            await call_agent(target, "runs.stop", run_id=result["run_id"])
        raise
    return [r for _, r in done]


async def launch_on_slurm(args: argparse.Namespace, count: int) -> dict[str, Any]:
    """--nodes N: one run on the agent, whose Slurm places it on N nodes (the rendezvous on the first)."""
    params = launch_params(args, is_local(args))
    async with agent_client(args) as client:
        hello = await client.call("hello", client="mldeck-cli")
        if SLURM_METHOD not in hello.get("methods", []):
            raise UsageError(
                f"--nodes {count} asks Slurm for {count} nodes, and this agent does not run its jobs on "
                'Slurm ([jobs] backend = "slurm" in its agent.toml); to run across hosts, name them: '
                "--nodes gpu-1,gpu-2"
            )
        return dict(await client.call("runs.launch", **params, dist={"nnodes": count, "node_rank": 0}))


def parse_nodes(text: str) -> list[str]:
    nodes = [n.strip() for n in text.split(",") if n.strip()]
    if len(nodes) < 2:
        raise UsageError("--nodes takes a number of Slurm nodes (e.g. 2) or two or more hosts, "
                         "comma-separated (e.g. gpu-1,gpu-2)")
    return nodes


async def run(args: argparse.Namespace) -> int:
    """Launch; print the run id at once; with --wait follow it (progress on stderr) until it ends."""
    count = int(args.nodes) if args.nodes and args.nodes.strip().isdigit() else None
    hosts = parse_nodes(args.nodes) if args.nodes and count is None else []
    if count is not None and count < 1:
        raise UsageError("--nodes N takes 1 or more nodes")
    if hosts:
        for node in hosts:
            remote_host(node_args(args, node))
        results = await launch_on_nodes(args, hosts)
    elif count is not None and count > 1:
        results = [await launch_on_slurm(args, count)]
    else:
        results = [await call_agent(args, "runs.launch", **launch_params(args, is_local(args)))]
    run_id = results[0]["run_id"]
    if not args.json:
        print(run_id, flush=True)
    if args.wait:
        for r in results:
            target = node_args(args, r["node"]) if hosts else args
            label = f"{run_id} on {r['node']}" if hosts else run_id
            end = await wait_for_end(target, run_id, None if args.json else Progress(sys.stderr, label))
            r.update(status=end["status"], status_reason=end.get("status_reason"))
    if args.json:
        print_json(results if hosts else results[0])
    return 1 if args.wait and any(r["status"] != "succeeded" for r in results) else 0


def add_launch_options(p: argparse.ArgumentParser) -> None:
    """The options `run` and `sweep` share."""
    p.add_argument("script", nargs="?", help="the training script (a path on the agent's host)")
    p.add_argument("-m", "--module", help="run a module (python -m MODULE) instead of a script")
    p.add_argument("--name", help="run name (default: the script's name)")
    p.add_argument("--experiment", help="experiment (default: default)")
    p.add_argument("--param", action="append", metavar="K=V", help="a param, passed as --k v (repeat)")
    p.add_argument("--gpus", type=int, default=0, help="GPUs per run (N>1 starts torchrun)")
    p.add_argument("--amp", choices=["bf16", "fp16"], help="mixed precision (--amp and $MLDECK_AMP)")
    p.add_argument("--cwd", help="working directory on the agent's host")
    p.add_argument("--env", action="append", metavar="NAME=VALUE", help="extra environment (repeat)")
    p.add_argument("--priority", type=int, default=0, help="higher runs first")
    p.add_argument("--wait", action="store_true",
                   help="follow it until it ends (progress on stderr); exit 1 unless it succeeded")


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("run", parents=[common], help="launch a training job", description=__doc__,
                       usage=USAGE, epilog=order_note("mldeck run train.py --gpus 1 -- --epochs 3"))
    add_launch_options(p)
    p.add_argument(
        "--nodes", help="run on several nodes as one torchrun rendezvous: N (on a Slurm agent: Slurm "
        "places it on N nodes) or H1,H2 (host names, ssh:// URLs, local, or local:/path/to/agent/home)",
    )
    p.set_defaults(func=run)
