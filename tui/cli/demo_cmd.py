"""`mldeck demo`: a local agent in a throwaway home and the whole story, in the TUI or as text."""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import pynvml

from mldeck.core.errors import MldeckError
from mldeck.core.paths import Layout, mldeck_home
from mldeck.tui import demo, local_agent
from mldeck.tui.cli.connect import agent_client, remote_host
from mldeck.tui.cli.output import print_json

RETRAIN_PIPELINE = Path(demo.__file__).resolve().parents[1] / "agent" / "demo" / "retrain.toml"


def has_gpu() -> bool:
    """A real NVIDIA driver here? Otherwise the demo agent simulates a 2-GPU host."""
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return False
    try:
        return pynvml.nvmlDeviceGetCount() > 0
    finally:
        pynvml.nvmlShutdown()


def prepare_home(args: argparse.Namespace) -> Layout:
    """The demo's home: --home if given (reused as it is), else a fresh temporary folder."""
    home = Path(args.home).expanduser().resolve() if args.home else Path(
        tempfile.mkdtemp(prefix="mldeck-demo-"))
    layout = Layout(home)
    layout.ensure()
    if not layout.config.exists():
        layout.config.write_text(demo.demo_config(demo.free_port(), RETRAIN_PIPELINE))
    return layout


async def headless(args: argparse.Namespace, gpus: int) -> int:
    def say(line: str) -> None:
        if not args.json:
            print(line, flush=True)

    async with agent_client(args) as client:
        try:
            figures = await demo.run_story(client, say, gpus=gpus, auto=True)
        except demo.DemoFailed as exc:
            raise MldeckError(f"demo failed at {exc}") from None
    if args.json:
        print_json(figures)
    else:
        print(f"done in {figures['seconds']:.0f}s: aliases {figures['aliases']}")
        for line in figures["audit"]:
            print(f"    audit: {line}")
    return 0


def demo_cmd(args: argparse.Namespace) -> int:
    """Start (or reuse) the demo agent, then tell the story headless or under the TUI."""
    gpus = 2
    local = remote_host(args)[1] is None
    throwaway = local and not args.home
    if local:
        layout = prepare_home(args)
        args.home = str(layout.home)
        if not has_gpu():
            os.environ["MLDECK_SIMULATE_GPUS"] = "2"
        started = time.monotonic()
        status = asyncio.run(local_agent.ensure_agent(layout))
        if not args.json:
            print(f"agent up in {time.monotonic() - started:.1f}s: home {status['home']}"
                  + (" (2 simulated GPUs)" if os.environ.get("MLDECK_SIMULATE_GPUS") else ""))
    try:
        if args.headless:
            return asyncio.run(headless(args, gpus))
        from mldeck.tui.app import run_tui

        async def story(client: Any, say: Any) -> dict[str, Any]:
            return await demo.run_story(client, say, gpus=gpus, auto=args.auto)

        return run_tui(Path(args.home) if args.home else mldeck_home(), story)
    finally:
        if throwaway:  # its model server outlives a plain agent stop: end it first
            layout = Layout(Path(args.home))
            asyncio.run(local_agent.ask(layout, "serving.stop", local_agent.STOP_TIMEOUT_S))
            asyncio.run(local_agent.stop(layout, local_agent.STOP_TIMEOUT_S, lambda _: None))
        elif local and not args.json:
            print(f"the agent keeps running for {args.home}: `mldeck runs ls --home {args.home}`; "
                  f"`mldeck agent stop --with-serving --home {args.home}` stops it and its model server")


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("demo", parents=[common], help="the whole story on a local agent, in the TUI")
    p.add_argument("--headless", action="store_true", help="no TUI: print each step and its figures")
    p.add_argument("--auto", action="store_true", help="promote the retrained model without you")
    p.set_defaults(func=demo_cmd)
