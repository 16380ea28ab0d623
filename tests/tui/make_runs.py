"""A tiny tracked training script for the TUI tests: `make_runs.py NAME LR [BATCH [CHECKPOINT_EVERY]]`.

Run with MLDECK_HOME (and, for a fixed run id, MLDECK_RUN_DIR) set; it logs 30 steps of a loss and
val_acc curve that depend on lr, so runs differ the way real ones do.
"""

from __future__ import annotations

import math
import sys

from mldeck.core import track


def main() -> None:
    name = sys.argv[1] if len(sys.argv) > 1 else "launched"
    lr = float(sys.argv[2]) if len(sys.argv) > 2 else 0.1
    batch = int(sys.argv[3]) if len(sys.argv) > 3 else 32
    every = int(sys.argv[4]) if len(sys.argv) > 4 else 0
    run = track.init(name=name, experiment="tui-tests", params={"lr": lr, "batch": batch, "layers": 2})
    for step in range(30):
        acc = 0.5 + 0.45 * (1 - math.exp(-lr * 8 * step))
        run.log({"loss": 2.0 * math.exp(-lr * 10 * step), "val_acc": acc}, step=step)
        if every and step % every == every - 1:
            run.checkpoint({"step": step, "acc": acc}, step=step)
    run.finish()


if __name__ == "__main__":
    main()
