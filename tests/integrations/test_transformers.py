"""MLDeckCallback end to end: a two-layer GPT-2 (built from a config) trained by the Hugging Face Trainer
through `mldeck run`, stopped with `--requeue` mid-way, resumed through `resume_from_checkpoint`."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import AgentProc
from tests.integrations.conftest import attempt_starts, points_per_step, requeue_midway

pytest.importorskip("transformers")
pytest.importorskip("accelerate")

SCRIPT = Path(__file__).with_name("transformers_train.py")
EPOCHS, STEPS = 4, 8  # 32 sequences in batches of 4


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_stop_requeue_resume(agent: AgentProc) -> None:
    at_step = STEPS + 4  # in the second epoch, past the first epoch's checkpoint
    run = requeue_midway(agent, SCRIPT, ["--epochs", str(EPOCHS), "--step-s", "0.05",
                                                   "--hold-at", str(at_step + 1)], "loss", at_step)
    run_id = run["run_id"]
    assert run["resumed_count"] == 1
    first, second = attempt_starts(agent, run_id)
    assert first == 0 and at_step < second < EPOCHS * STEPS, (first, second)
    steps = points_per_step(agent, run_id)
    assert steps["loss"] == list(range(1, EPOCHS * STEPS + 1))
    # the Trainer ends a stopped epoch as any: it evaluates there too
    assert steps["eval_loss"] == sorted({STEPS * (e + 1) for e in range(EPOCHS)} | {second})
    assert steps["train_runtime"] == [second, EPOCHS * STEPS]  # each attempt's closing summary
    assert run["params"]["learning_rate"] == 0.001 and run["params"]["num_train_epochs"] == EPOCHS
    assert run["total_steps"] == EPOCHS * STEPS
    folder = agent.layout.run_dir(run_id) / "transformers"
    assert (folder / f"checkpoint-{second}" / "trainer_state.json").is_file()
    assert "stop asked; saving a checkpoint" in agent.cli("runs", "logs", run_id, check=True).out
