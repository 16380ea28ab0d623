"""Shell completion through argcomplete: `mldeck completion bash|zsh|fish` prints the shell's part, and
what the agent knows (run ids, sweep ids, model names, versions and aliases) and the hosts file's names
are completed live.

The shell runs `mldeck` itself with the line in its environment; `complete()` answers before anything
else runs. A completer asks only the local agent (a remote one would cost an SSH connection per Tab),
gives up after ASK_TIMEOUT_S, and says nothing on the terminal when it cannot answer: the reason goes to
argcomplete's debug stream (`_ARC_DEBUG=1`).
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable
from typing import Any

import argcomplete
from argcomplete.completers import FilesCompleter

from mldeck.core.client import connect_unix
from mldeck.core.errors import MldeckError
from mldeck.core.paths import Layout, mldeck_home
from mldeck.tui.hosts import ALL, LOCAL, HostsError, load_hosts

SHELLS = ("bash", "zsh", "fish")
ASK_TIMEOUT_S = 1.0
RUNS_SHOWN = 200
SWEEP_ACTIONS = ("show", "ls", "stop")

Completions = dict[str, str]
Completer = Callable[..., Completions | list[str]]


def ask(parsed_args: argparse.Namespace, method: str, **params: Any) -> Any:
    """One call to the local agent of the command line's --home; None when --host names another host,
    or when no agent answers within ASK_TIMEOUT_S."""
    if getattr(parsed_args, "host", None) not in (None, LOCAL):
        return None
    socket = Layout(mldeck_home(getattr(parsed_args, "home", None))).socket

    async def call() -> Any:
        client = await connect_unix(socket)
        try:
            return await client.call(method, **params)
        finally:
            await client.close()

    try:
        return asyncio.run(asyncio.wait_for(call(), ASK_TIMEOUT_S))
    except (OSError, TimeoutError, MldeckError) as exc:
        argcomplete.debug(f"mldeck completion: {method} on {socket}: {exc!r}")
        return None


def run_ids(parsed_args: argparse.Namespace, **_: Any) -> Completions:
    runs = ask(parsed_args, "runs.list", limit=RUNS_SHOWN) or []
    return {r["run_id"]: f"{r['name'] or '-'} ({r['status']})" for r in runs}


def sweep_ids(parsed_args: argparse.Namespace, **_: Any) -> Completions:
    sweeps = ask(parsed_args, "sweeps.list") or []
    return {s["sweep_id"]: f"{s['name'] or s['metric']} ({s['status']})" for s in sweeps}


def model_names(parsed_args: argparse.Namespace, **_: Any) -> Completions:
    models = ask(parsed_args, "models.list") or []
    return {m["name"]: f"{m['versions']} versions, latest v{m['latest']}" for m in models}


def model_versions(parsed_args: argparse.Namespace, **_: Any) -> Completions:
    """The versions of the model named earlier on the line."""
    name = getattr(parsed_args, "name", None)
    versions = ask(parsed_args, "models.versions", name=name) if name else None
    return {str(v["version"]): ", ".join(v["aliases"]) or "-" for v in versions or []}


def model_refs(prefix: str, parsed_args: argparse.Namespace, **_: Any) -> Completions:
    """NAME, NAME@ALIAS, and once a `/` is typed, NAME/VERSION."""
    name, slash, _version = prefix.partition("/")
    if slash:
        versions = ask(parsed_args, "models.versions", name=name) or []
        return {f"{name}/{v['version']}": ", ".join(v["aliases"]) or "-" for v in versions}
    out: Completions = {}
    for m in ask(parsed_args, "models.list") or []:
        out[m["name"]] = f"latest v{m['latest']}"
        out.update({f"{m['name']}@{alias}": f"v{v}" for alias, v in m["aliases"].items()})
    return out


def hosts_file(**_: Any) -> Completions:
    try:
        hosts = load_hosts()
    except HostsError as exc:
        argcomplete.debug(f"mldeck completion: {exc}")
        return {}
    return {name: host.target for name, host in hosts.items()}


def host_names(**_: Any) -> Completions:
    return {LOCAL: "this machine", **hosts_file()}


def host_options(**_: Any) -> Completions:
    return {**host_names(), ALL: "every host (commands that list)"}


def sweep_script(prefix: str, **kwargs: Any) -> list[str]:
    """A script to sweep, or one of the actions that inspect sweeps."""
    return [a for a in SWEEP_ACTIONS if a.startswith(prefix)] + list(FilesCompleter()(prefix, **kwargs))


# (command path, argument) → its completer. An argument is its dest when positional, else its first
# option string; the longest command path that matches wins, "" matching every command.
COMPLETERS: dict[tuple[str, str], Completer] = {
    ("", "--host"): host_options,
    ("", "run"): run_ids,
    ("hosts", "only"): host_names,
    ("hosts rm", "name"): hosts_file,
    ("models", "name"): model_names,
    ("models", "version"): model_versions,
    ("models", "ref"): model_refs,
    ("drift", "name"): model_names,
    ("serve", "name"): model_names,
    ("predict", "model"): model_refs,
    ("sweep", "script"): sweep_script,
    ("sweep", "sweep_id"): sweep_ids,
}


def completer_for(path: tuple[str, ...], action: argparse.Action) -> Completer | None:
    key = action.option_strings[0] if action.option_strings else action.dest
    for end in range(len(path), -1, -1):
        found = COMPLETERS.get((" ".join(path[:end]), key))
        if found is not None:
            return found
    return None


def attach(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> None:
    """Give every argument of every subcommand its completer from COMPLETERS (argcomplete reads the
    `completer` attribute of an argparse action)."""
    for action in parser._actions:  # argparse lists a parser's arguments nowhere public
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                attach(sub, (*path, name))
            continue
        completer = completer_for(path, action)
        if completer is not None:
            action.completer = completer


def complete(parser: argparse.ArgumentParser) -> None:
    """When the shell is asking (argcomplete's environment), print the completions and exit; options are
    offered once a `-` is typed, so an empty word lists what the agent knows (run ids, models...)."""
    argcomplete.autocomplete(parser, always_complete_options=False)


def completion(args: argparse.Namespace) -> int:
    print(argcomplete.shellcode(["mldeck"], shell=args.shell), end="")
    return 0


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "completion", help="print the shell code that completes mldeck (bash, zsh or fish)",
        description="Print the completion script for a shell. bash: add `eval \"$(mldeck completion bash)\"` "
        "to ~/.bashrc; zsh: `eval \"$(mldeck completion zsh)\"` in ~/.zshrc; fish: "
        "`mldeck completion fish > ~/.config/fish/completions/mldeck.fish`.",
    )
    p.add_argument("shell", choices=SHELLS)
    p.set_defaults(func=completion)
