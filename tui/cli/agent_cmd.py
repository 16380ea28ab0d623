"""`mldeck agent start|stop|status|install|unit`: manage the agent of a home, here or on a host over SSH."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mldeck.core.errors import Conflict, Invalid, MldeckError, NotFound, Unavailable, UsageError
from mldeck.tui import local_agent
from mldeck.tui.cli.connect import local_layout, remote_host
from mldeck.tui.cli.output import print_json
from mldeck.tui.cli.versions import warn_version_skew
from mldeck.tui.cli.watch import saying
from mldeck.tui.fleet import Fleet, HostDown
from mldeck.tui.hosts import Host, load_hosts, parse_target, update_host
from mldeck.tui.units import duration

if TYPE_CHECKING:
    import asyncssh

SERVING_STOP_S = 30.0  # serving.stop waits up to 15 s for the server to exit, then kills it
KEEPS_SERVING = "keeps serving; the next agent adopts it"
ENDS_IT = "`mldeck agent stop --with-serving` or `mldeck serve stop` ends it"


async def start(args: argparse.Namespace) -> int:
    name, host = remote_host(args)
    if host is not None:
        return await start_remote(args, name, host)
    layout = local_layout(args)
    if args.foreground:
        os.execv(sys.executable, [sys.executable, "-m", "mldeck.agent", "run", "--home", str(layout.home)])
    already = await local_agent.ping(layout)
    status = already or await local_agent.ensure_agent(layout)
    if args.json:
        print_json({**status, "already_running": bool(already)})
    else:
        word = "already running" if already else "started"
        print(f"agent {word}: pid {status['pid']}, home {status['home']}")
    return 0


Ask = Callable[[str, float], Awaitable[Any]]  # (method, seconds to wait) → the answer, None if none


async def serving_first(call: Ask, with_serving: bool) -> dict[str, Any] | None:
    """The model server's pid and url if one runs, stopped first with --with-serving: a planned agent
    stop leaves it serving (the next agent adopts it). None if none runs or the agent cannot say."""
    status = await call("serving.status", local_agent.PING_ANSWER_S)
    if not status or not status.get("running"):
        return None
    after = await call("serving.stop", SERVING_STOP_S) if with_serving else status
    return {"running": bool((after or status)["running"]), "pid": status["pid"], "url": status["url"]}


def serving_json(serving: dict[str, Any] | None) -> dict[str, Any]:
    """`serving` in a stop's JSON only where a model server was running."""
    return {} if serving is None else {"serving": serving}


def say_serving(serving: dict[str, Any] | None, with_serving: bool) -> None:
    if serving is None:
        if with_serving:
            print("no model server was running, or the agent could not say")
    elif serving["running"]:
        print(f"the model server (pid {serving['pid']}, {serving['url']}) {KEEPS_SERVING}; {ENDS_IT}")
    else:
        print(f"model server stopped (pid {serving['pid']})")


async def stop(args: argparse.Namespace) -> int:
    name, host = remote_host(args)
    if host is not None:
        return await stop_remote(args, name, host)
    layout = local_layout(args)

    def say(line: str) -> None:
        if not args.json:
            print(line, flush=True)

    serving = await serving_first(lambda method, wait_s: local_agent.ask(layout, method, wait_s),
                                  args.with_serving)
    pid = await local_agent.stop(layout, args.timeout, say)
    if args.json:
        print_json({"stopped": pid is not None, "running": False, "pid": pid, **serving_json(serving)})
        return 0
    if pid is None:
        print(f"no agent running for {layout.home}")
    else:
        print(f"agent stopped (pid {pid})")
        say_serving(serving, args.with_serving)
    return 0


async def status_cmd(args: argparse.Namespace) -> int:
    name, host = remote_host(args)
    if host is not None:
        async with Fleet({name: host}) as fleet:
            status, where, why = await _remote_status(fleet, name), name, fleet.status(name).why
            serving = await _remote_call(fleet, name, "serving.status") if status else None
    else:
        layout = local_layout(args)
        status, where, why = await local_agent.ping(layout), str(layout.home), ""
        serving = await local_agent.ask(layout, "serving.status") if status else None
    if args.json:
        print_json({"running": bool(status), **(status or {"home": where, "why": why or None}),
                    **({"serving": serving} if status else {})})
        return 0 if status else 3
    if not status:
        print(f"agent: not running ({where}{': ' + why if why else ''})")
        return 3
    print_status(status)
    if serving is not None and serving.get("running"):
        print(f"model server: pid {serving['pid']} on {serving['url']}, keeps serving across an agent stop "
              f"({ENDS_IT})")
    warn_version_skew(name, status.get("version"))
    return 0


def recover(args: argparse.Namespace) -> int:
    """`python -m mldeck.agent recover` on this machine's home, in this terminal: it prints its report."""
    if remote_host(args)[1] is not None:
        raise UsageError("`agent recover` rebuilds this machine's store; for a host, run it there")
    home = str(local_layout(args).home)
    argv = [sys.executable, "-m", "mldeck.agent", "recover", "--home", home]
    argv += ["--json"] if args.json else []
    return subprocess.run(argv).returncode


def print_status(status: dict[str, Any]) -> None:
    print(f"agent: running, pid {status['pid']}, up {duration(status['uptime_s'])}")
    print(f"version: mldeck {status.get('version', '-')}")
    print(f"home: {status['home']}")
    print(f"memory: {status['rss_bytes'] / 2**20:.0f} MiB, clients: {status['connections']}")
    if store := status.get("store"):  # an agent older than the store's memory line has none
        print(f"store cache: {store['cache_bytes'] / 2**20:.0f} of {store['limit_bytes'] / 2**20:.0f} MiB "
              f"([store] memory_limit), given back at rest {store['trims']} times")
    print(f"ingest: {status['ingest']['rows']} lines, {status['ingest']['bad_lines']} bad")
    print(f"gpus: {status['nvml']}")
    for problem in status.get("problems", []):
        print(f"problem: {problem}")


async def _remote_status(fleet: Fleet, name: str, timeout_s: float | None = None) -> dict[str, Any] | None:
    try:
        return await fleet.call(name, "agent.status", timeout_s=timeout_s)
    except HostDown:
        return None


async def _remote_call(fleet: Fleet, name: str, method: str, timeout_s: float | None = None) -> Any:
    """One call to a host's agent; None if it does not answer (or answers an error)."""
    try:
        return await fleet.call(name, method, timeout_s=timeout_s)
    except MldeckError:
        return None


async def _wait_remote(fleet: Fleet, name: str, running: bool, timeout_s: float) -> dict[str, Any] | None:
    """Poll until the remote agent is (or is no longer) answering."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = await _remote_status(fleet, name, max(1.0, deadline - time.monotonic()))
        if bool(status) == running:
            return status
        await asyncio.sleep(0.2)
    if running:
        raise Unavailable(f"{name}: the agent did not answer within {timeout_s:g}s of its start; "
                          f"its log is agent.log in its home there")
    raise Conflict(f"{name}: the agent still answers {timeout_s:g}s after it was asked to stop; "
                   f"wait and run `mldeck agent stop --host {name}` again")


async def _ssh(host: Host) -> asyncssh.SSHClientConnection:
    import asyncssh

    from mldeck.tui import ssh

    target = parse_target(host.target)
    try:
        return await ssh.connect(target, host.timeout_s)
    except (OSError, asyncssh.Error, ssh.SshError, TimeoutError) as exc:
        raise Unavailable(ssh.describe(exc, target, host.timeout_s)) from None


async def start_remote(args: argparse.Namespace, name: str, host: Host) -> int:
    """`python -m mldeck.agent run` on the host, detached by setsid, its output in agent.log there."""
    from mldeck.tui import ssh

    async with Fleet({name: host}) as fleet:
        already = await _remote_status(fleet, name)
        if not already:
            python = host.python or ssh.DEFAULT_PYTHON
            conn = await _ssh(host)
            async with conn:
                home = host.home or await ssh.remote_home(conn, python, host.timeout_s)
                command = (
                    shlex.join(["mkdir", "-p", "-m", "700", home]) + " && "
                    + shlex.join(["setsid", "-f", python, "-m", "mldeck.agent", "run", "--home", home])
                    + " </dev/null >>" + shlex.quote(str(Path(home) / "agent.log")) + " 2>&1"
                )
                done = await conn.run(command, timeout=host.timeout_s)
                if done.exit_status != 0:
                    raise Unavailable(f"{name}: starting the agent failed: {str(done.stderr).strip()}")
        status = already or await _wait_remote(fleet, name, True, local_agent.START_TIMEOUT_S)
    assert status is not None
    if args.json:
        print_json({**status, "host": name, "already_running": bool(already)})
    else:
        print(f"agent {'already running' if already else 'started'} on {name}: "
              f"pid {status['pid']}, home {status['home']}")
    return 0


async def stop_remote(args: argparse.Namespace, name: str, host: Host) -> int:
    """agent.stop, then wait until it no longer answers (a link dropped before the reply: it is stopping)."""
    async with Fleet({name: host}) as fleet:
        status = await _remote_status(fleet, name)
        serving = None
        if status:
            serving = await serving_first(lambda method, wait_s: _remote_call(fleet, name, method, wait_s),
                                          args.with_serving)
            with contextlib.suppress(HostDown):
                await fleet.call(name, "agent.stop")
            await _wait_remote(fleet, name, False, args.timeout)
    if args.json:
        print_json({"stopped": bool(status), "pid": status and status["pid"], "host": name,
                    **serving_json(serving)})
    elif status:
        print(f"agent stopped on {name} (pid {status['pid']})")
        say_serving(serving, args.with_serving)
    else:
        print(f"no agent running on {name}")
    return 0


def source_checkout() -> Path:
    root = Path(__file__).resolve().parents[2]
    if not (root / "pyproject.toml").exists():
        raise NotFound("`agent install` builds a wheel from a source checkout of mldeck; run it from one")
    return root


def build_wheel(out: Path) -> Path:
    """A wheel of the local checkout (mldeck only, no dependencies)."""
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
         str(source_checkout())], capture_output=True, text=True,
    )
    wheels = sorted(out.glob("mldeck-*.whl"))
    if done.returncode != 0 or not wheels:
        raise Invalid(f"building the wheel failed: {(done.stderr.strip().splitlines() or ['?'])[-1]}")
    return wheels[-1]


async def install(args: argparse.Namespace) -> int:
    """Wheel over SFTP into a venv on the host; the host's entry then points at that venv's Python."""
    from mldeck.tui import ssh

    name, host = remote_host(args)
    if host is None:
        raise UsageError("`agent install` needs --host NAME (locally, `pip install .` does it)")
    with tempfile.TemporaryDirectory(prefix="mldeck-wheel-") as tmp:
        wheel = await saying("building mldeck's wheel", asyncio.to_thread(build_wheel, Path(tmp)))
        conn = await saying(f"connecting to {name}", _ssh(host))
        async with conn:
            step = host.timeout_s
            user_home = (await ssh.run_checked(conn, ["printenv", "HOME"], step, "reading $HOME")).strip()
            venv = args.venv or f"{user_home}/.local/share/mldeck/venv"
            python = f"{venv}/bin/python"
            base = args.base_python or ssh.DEFAULT_PYTHON
            slow = max(step, 600.0)

            async def remote(argv: list[str], what: str, timeout: float = slow) -> str:
                return await saying(f"{name}: {what}", ssh.run_checked(conn, argv, timeout, what))

            shared = ["--system-site-packages"] if args.system_site_packages else []
            await remote([base, "-m", "venv", *shared, venv], f"creating the venv {venv} with {base}")
            remote_wheel = f"{venv}/wheels/{wheel.name}"
            async with conn.start_sftp_client() as sftp:
                await sftp.makedirs(f"{venv}/wheels", exist_ok=True)
                await saying(f"{name}: copying {wheel.name}", sftp.put(str(wheel), remote_wheel))
            pip = [python, "-m", "pip", "install", "--no-input", "--disable-pip-version-check", "-q"]
            if not args.no_deps:
                await remote([*pip, remote_wheel], "installing mldeck's dependencies (torch too: minutes)")
            await remote([*pip, "--no-deps", "--force-reinstall", remote_wheel], "installing mldeck")
            check = [python, "-c", "import mldeck.agent; print(mldeck.agent.__file__)"]
            where = await remote(check, "checking the install", step)
    if name in load_hosts():
        update_host(name, python=python)
    if args.json:
        print_json({"host": name, "venv": venv, "python": python, "wheel": wheel.name,
                    "agent": where.strip()})
    else:
        print(f"installed {wheel.name} on {name} into {venv}; "
              f"start it with `mldeck agent start --host {name}`")
    return 0


def _systemd_quote(arg: str) -> str:
    return arg if arg and all(c.isalnum() or c in "/._-=:%" for c in arg) else '"' + arg.replace(
        "\\", "\\\\").replace('"', '\\"') + '"'


def unit(args: argparse.Namespace) -> int:
    """A systemd user unit (for ~/.config/systemd/user/mldeck-agent.service) that keeps the agent up."""
    host = remote_host(args)[1]
    if host is not None:
        python, home = host.python or "/usr/bin/python3", host.home or "%h/.local/share/mldeck"
    else:
        python, home = sys.executable, str(local_layout(args).home)
    argv = [python, "-m", "mldeck.agent", "run", "--home", home]
    print("\n".join([
        "# ~/.config/systemd/user/mldeck-agent.service; then: systemctl --user daemon-reload &&",
        "#   systemctl --user enable --now mldeck-agent && loginctl enable-linger $USER",
        "[Unit]", f"Description=mldeck agent ({home})", "After=network-online.target", "",
        "[Service]", "Type=simple", f"ExecStart={' '.join(_systemd_quote(a) for a in argv)}",
        "Environment=PYTHONUNBUFFERED=1", "Restart=on-failure", "RestartSec=5", "", "[Install]",
        "WantedBy=default.target",
    ]))
    return 0


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    agent = sub.add_parser("agent", help="start, stop or inspect the agent")
    cmds = agent.add_subparsers(dest="agent_command", metavar="ACTION", required=True)
    p = cmds.add_parser("start", parents=[common], help="start the agent in the background")
    p.add_argument("--foreground", action="store_true", help="run in this terminal")
    p.set_defaults(func=start)
    p = cmds.add_parser("stop", parents=[common], help="stop the agent and wait until it has exited; the "
                        "model server keeps serving (the next agent adopts it)")
    p.add_argument("--with-serving", action="store_true",
                   help="stop the model server too (it outlives a plain stop, so a restart drops no request)")
    p.add_argument("--timeout", type=float, default=local_agent.STOP_TIMEOUT_S, metavar="SECONDS",
                   help="how long to wait for it to exit (default %(default)g); if it still runs after "
                        "that, say so and exit 1")
    p.set_defaults(func=stop)
    p = cmds.add_parser("status", parents=[common], help="is it running, and how is it doing")
    p.set_defaults(func=status_cmd)
    p = cmds.add_parser("recover", parents=[common],
                        help="rebuild a lost or damaged store from the home's files (the agent stopped)")
    p.set_defaults(func=recover)
    p = cmds.add_parser("install", parents=[common], help="put mldeck on a host over SSH (--host)")
    p.add_argument("--venv", help="where on the host (default ~/.local/share/mldeck/venv)")
    p.add_argument("--base-python", help="the host's Python that creates the venv (default python3)")
    p.add_argument("--system-site-packages", action="store_true",
                   help="let the venv see the host's installed packages (e.g. its torch)")
    p.add_argument("--no-deps", action="store_true",
                   help="install mldeck only; its dependencies must already be importable there")
    p.set_defaults(func=install)
    p = cmds.add_parser("unit", parents=[common], help="print a systemd user unit that runs the agent")
    p.set_defaults(func=unit)
