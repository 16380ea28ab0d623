"""`python -m mldeck.agent.jobwrap RUN_DIR -- ARGV...`: run a job, leave its exit code in RUN_DIR/exit_code.

The agent starts every job through this wrapper as the leader of the job's process group.
If the agent restarts while the job runs, the job is no longer its child and its exit
status would be lost; the file keeps it. SIGTERM/SIGINT/SIGHUP sent to the group reach the
job itself; the wrapper only waits (a handler, not SIG_IGN, so the job does not inherit it).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path


def _ignore(signum: int, frame: object) -> None:
    """The job decides what a signal means; the wrapper outlives it to record the outcome."""


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print("usage: python -m mldeck.agent.jobwrap RUN_DIR -- ARGV...", file=sys.stderr)
        return 2
    run_dir, cmd = Path(argv[0]), argv[2:]
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, _ignore)
    (run_dir / "exit_code").unlink(missing_ok=True)
    try:
        code = subprocess.call(cmd)
    except OSError as exc:
        print(f"mldeck: cannot start {cmd[0]}: {exc}", file=sys.stderr, flush=True)
        code = 127
    if code < 0:
        code = 128 - code
    tmp = run_dir / f".exit_code.{os.getpid()}"
    tmp.write_text(str(code))
    os.replace(tmp, run_dir / "exit_code")
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
