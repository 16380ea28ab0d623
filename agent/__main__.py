"""`python -m mldeck.agent run|bridge|recover`: the daemon, a stdin/stdout relay to its socket for SSH exec,
or the rebuild of a lost store from the home's files."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from mldeck.core.paths import mldeck_home


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mldeck.agent")
    sub = parser.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="run the agent daemon in the foreground")
    run.add_argument("--home", help="data folder (default $MLDECK_HOME)")
    bridge = sub.add_parser("bridge", help="relay stdin/stdout to the agent's socket")
    bridge.add_argument("--home", help="data folder (default $MLDECK_HOME)")
    recover = sub.add_parser("recover", help="rebuild a lost or damaged store from the home's files")
    recover.add_argument("--home", help="data folder (default $MLDECK_HOME)")
    recover.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    home = mldeck_home(args.home)
    if args.cmd == "bridge":
        from mldeck.agent.bridge import run_bridge

        return asyncio.run(run_bridge(home))
    from mldeck.agent.daemon import AlreadyRunning, run_agent
    from mldeck.core.config import ConfigError
    from mldeck.core.errors import MldeckError

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("watchfiles").setLevel(logging.WARNING)  # it logs every batch of changes at INFO
    try:
        if args.cmd == "recover":
            return _recover(home, args.json)
        asyncio.run(run_agent(home))
    except (AlreadyRunning, ConfigError, MldeckError) as exc:
        print(f"mldeck agent: {exc}", file=sys.stderr)
        return 2
    return 0


def _recover(home: Path, as_json: bool) -> int:
    import json

    from mldeck.agent.daemon import Agent
    from mldeck.agent.recover import describe

    report = asyncio.run(Agent(home).recover())
    print(json.dumps(report) if as_json else describe(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
