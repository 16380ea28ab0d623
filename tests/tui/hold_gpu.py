"""A job for the TUI tests that holds its GPU until told: `STOP_FILE=... python tests/tui/hold_gpu.py`
(`TOTAL_STEPS=N` says how many steps it would take)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from mldeck.core import track


def main() -> None:
    total = os.environ.get("TOTAL_STEPS")
    run = track.init(name="gpu-holder", experiment="tui-tests", params={"hold": True},
                     total_steps=int(total) if total else None)
    stop = Path(os.environ["STOP_FILE"])
    step = 0
    deadline = time.monotonic() + 90
    while not stop.exists() and time.monotonic() < deadline:
        run.log({"loss": 1.0 / (step + 1)}, step=step)
        step += 1
        time.sleep(0.2)
    run.finish()


if __name__ == "__main__":
    main()
