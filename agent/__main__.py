"""`python -m mldeck.agent run|bridge`: the daemon, or a stdin/stdout relay to its socket for SSH exec."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from mldeck.core.paths import mldeck_home


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mldeck.agent")
    sub = parser.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="run the agent daemon in the foreground")
    run.add_argument("--home", help="data folder (default $MLDECK_HOME)")
    bridge = sub.add_parser("bridge", help="relay stdin/stdout to the agent's socket")
    bridge.add_argument("--home", help="data folder (default $MLDECK_HOME)")
    args = parser.parse_args(argv)
    home = mldeck_home(args.home)
    if args.cmd == "bridge":
        from mldeck.agent.bridge import run_bridge

        return asyncio.run(run_bridge(home))
    from mldeck.agent.daemon import AlreadyRunning, run_agent
    from mldeck.core.config import ConfigError

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("watchfiles").setLevel(logging.WARNING)  # it logs every batch of changes at INFO
    try:
        asyncio.run(run_agent(home))
    except (AlreadyRunning, ConfigError) as exc:
        print(f"mldeck agent: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
