"""Hugging Face Trainer: `Trainer(..., callbacks=[MLDeckCallback()])` records a run.

    callback = MLDeckCallback(experiment="gpt2-tiny")
    args = TrainingArguments(output_dir=callback.output_dir, save_strategy="epoch")
    trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[callback])
    trainer.train(resume_from_checkpoint=callback.resume())

TrainingArguments become the run's params, every `on_log` its metrics at the global step, and each
checkpoint folder the Trainer saves the run's newest checkpoint. When the agent asks the job to stop
(`mldeck runs stop`, `--requeue`, a sweep's pruning), the callback has the Trainer save a checkpoint at
the end of the current step and stop; a requeued job resumes from it through `resume_from_checkpoint`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from mldeck.core.track import Run
from mldeck.integrations.tracking import (
    StepLog,
    add_params,
    flat_params,
    numbers,
    record_checkpoint,
    resume_path,
    stopping_run,
)

OUTPUT_DIR = "transformers"
"""The folder in the run that `output_dir` names: the Trainer's checkpoints live with the run."""


class MLDeckCallback(TrainerCallback):
    """Logs a Trainer's params, metrics and checkpoints to an mldeck run, and stops it when asked."""

    def __init__(
        self,
        name: str | None = None,
        experiment: str | None = None,
        params: dict[str, Any] | None = None,
        tags: dict[str, str] | None = None,
        *,
        run: Run | None = None,
    ) -> None:
        self.run = stopping_run(run, name, experiment, params, tags)  # the Trainer saves, then stops
        self._steps = StepLog(self.run)

    @property
    def output_dir(self) -> str:
        """A folder in the run for `TrainingArguments(output_dir=...)`, kept across a job's attempts."""
        return str(self.run.dir / OUTPUT_DIR)

    def resume(self) -> str | None:
        """The checkpoint folder for `trainer.train(resume_from_checkpoint=...)`, or None on a fresh start."""
        return resume_path(self.run)

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if state.is_world_process_zero:
            add_params(self.run, flat_params(args.to_dict()))
            if state.max_steps > 0:
                self.run.set_total_steps(state.max_steps)  # Runs shows progress and an ETA

    def on_log(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
        logs: dict[str, Any] | None = None, **kwargs: Any,
    ) -> None:
        if state.is_world_process_zero and logs:
            self._steps.log(numbers(logs), state.global_step)

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self.run.should_stop and not control.should_training_stop:
            print(f"mldeck: stop asked; saving a checkpoint at step {state.global_step} and stopping",
                  file=sys.stderr, flush=True)
            control.should_save = True
            control.should_training_stop = True

    def on_save(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if not state.is_world_process_zero:
            return
        folder = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        record_checkpoint(self.run, folder, state.global_step)

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self.run.flush()
