"""MLDeckLogger end to end: a tiny Lightning model trained through `mldeck run`, stopped with `--requeue`
mid-way, resumed by Lightning from the checkpoint the logger recorded, its best model registered after."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import AgentProc
from tests.integrations.conftest import attempt_starts, points_per_step, requeue_midway

pytest.importorskip("lightning")

SCRIPT = Path(__file__).with_name("lightning_train.py")
EPOCHS, BATCHES = 4, 8


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_stop_requeue_resume_and_register(agent: AgentProc) -> None:
    at_step = BATCHES + 3  # in the second epoch, past the first epoch's checkpoint
    run = requeue_midway(agent, SCRIPT, ["--epochs", str(EPOCHS), "--step-s", "0.05",
                                                   "--hold-at", str(at_step + 1)], "train_loss", at_step)
    run_id = run["run_id"]
    assert run["resumed_count"] == 1
    first, second = attempt_starts(agent, run_id)
    assert first == 0 and at_step < second < EPOCHS * BATCHES, (first, second)
    steps = points_per_step(agent, run_id)
    assert steps["train_loss"] == list(range(EPOCHS * BATCHES))
    assert steps["val_acc"] == [BATCHES * (e + 1) - 1 for e in range(EPOCHS)]
    assert run["params"]["hidden"] == 16 and run["params"]["lr"] == 0.05
    assert run["total_steps"] == EPOCHS * BATCHES and run["last_step"] == EPOCHS * BATCHES - 1

    run_dir = agent.layout.run_dir(run_id)
    # resumed from the checkpoint saved where Lightning stopped (or at the epoch's end, if it stopped there)
    assert list((run_dir / "lightning" / "checkpoints").glob(f"*step={second}.ckpt"))
    assert (run_dir / "artifacts" / "model" / "signature.json").is_file()
    registered = agent.cli("models", "register", run_id, "--name", "tiny-lightning", "--json", check=True)
    assert registered.json()["version"] == 1
