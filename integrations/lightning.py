"""PyTorch Lightning: `Trainer(logger=MLDeckLogger())` records hparams, metrics and checkpoints in a run.

    logger = MLDeckLogger(experiment="mnist")
    trainer = L.Trainer(max_epochs=10, logger=logger)
    trainer.fit(model, data, ckpt_path=logger.resume())

Each checkpoint Lightning writes becomes the run's newest checkpoint, so a job stopped with
`mldeck runs stop --requeue` (or preempted) resumes from it through `Trainer.fit(ckpt_path=...)`.
SIGTERM is left to Lightning, which stops at the end of the batch; the logger then saves a checkpoint
there. At the end of a fit the best checkpoint's weights are exported (`run.log_model`) with the
module's `example_input_array` as the sample, ready for `mldeck models register RUN --name NAME`.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities import rank_zero_only

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

CHECKPOINT_DIR = "lightning"
"""Lightning's checkpoints go to <run folder>/lightning/checkpoints unless a ModelCheckpoint names one."""


class MLDeckLogger(Logger):
    """A Lightning logger writing to an mldeck run (a new one, or the job's own under `mldeck run`)."""

    def __init__(
        self,
        name: str | None = None,
        experiment: str | None = None,
        params: dict[str, Any] | None = None,
        tags: dict[str, str] | None = None,
        *,
        log_model: bool = True,
        run: Run | None = None,
    ) -> None:
        super().__init__()
        self.run = stopping_run(run, name, experiment, params, tags)  # Lightning stops at the batch's end
        self.log_model = log_model
        self._steps = StepLog(self.run)
        self._trainer: Trainer | None = None
        self._module: LightningModule | None = None
        self._saved_at: int | None = None
        """The trainer's global step at the last checkpoint recorded."""

    # what Lightning asks of a logger -----------------------------------------------

    @property
    def name(self) -> str:
        """Lightning's name for the logger; with the empty version it names the checkpoint folder."""
        return CHECKPOINT_DIR

    @property
    def version(self) -> str:
        return ""

    @property
    def save_dir(self) -> str:
        return str(self.run.dir)

    @property
    def experiment(self) -> Run:
        return self.run

    @rank_zero_only
    def log_hyperparams(self, params: dict[str, Any] | argparse.Namespace, *args: Any, **kwargs: Any) -> None:
        if isinstance(params, argparse.Namespace):
            params = vars(params)
        add_params(self.run, flat_params(params))

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        self._steps.log(numbers(metrics), self._steps.last_step + 1 if step is None else step)

    def log_graph(self, model: torch.nn.Module, input_array: Any = None) -> None:
        """Lightning hands every logger the module as a fit starts: kept for the checkpoint on SIGTERM and
        the model export at the end."""
        if isinstance(model, LightningModule):
            self._module = model
            self._trainer = model.trainer
            total = self._trainer.estimated_stepping_batches
            if self._trainer.is_global_zero and math.isfinite(total) and total > 0:
                self.run.set_total_steps(int(total))  # Runs shows progress and an ETA

    @rank_zero_only
    def after_save_checkpoint(self, checkpoint_callback: ModelCheckpoint) -> None:
        folder = Path(checkpoint_callback.dirpath or "")
        files = [p for p in folder.glob(f"*{checkpoint_callback.FILE_EXTENSION}") if p.is_file()]
        if files:
            self._record(max(files, key=lambda p: p.stat().st_mtime_ns))

    def finalize(self, status: str) -> None:
        """After a stop: a checkpoint where Lightning stopped. After a fit: the best checkpoint's model."""
        if status == "failed" and self.run.stop_seen:
            self._checkpoint_on_stop()
        elif status == "success" and self.log_model and self._module is not None and self._trainer:
            self._export_best(self._trainer, self._module)
        self.run.flush()

    # resume ----------------------------------------------------------------------------

    def resume(self) -> str | None:
        """The checkpoint for `Trainer.fit(ckpt_path=...)`: the run's newest, or None on a fresh start."""
        return resume_path(self.run)

    # inside ------------------------------------------------------------------------------

    def _record(self, path: Path) -> None:
        if self._trainer is not None:
            self._saved_at = self._trainer.global_step
        record_checkpoint(self.run, path, self._steps.last_step)

    def _checkpoint_on_stop(self) -> None:
        """Save where Lightning stopped (on every rank: saving is collective), unless that step is saved."""
        trainer = self._trainer
        if trainer is None or trainer.sanity_checking or self._saved_at == trainer.global_step:
            return
        callback = trainer.checkpoint_callback
        folder = Path(callback.dirpath) if callback is not None and callback.dirpath else (
            self.run.dir / CHECKPOINT_DIR / "checkpoints")
        path = folder / f"stopped-step={trainer.global_step}.ckpt"
        trainer.save_checkpoint(path)
        if trainer.is_global_zero:
            self._record(path)

    @rank_zero_only
    def _export_best(self, trainer: Trainer, module: LightningModule) -> None:
        """Export the best checkpoint's weights through the module (its own weights are put back after)."""
        sample = module.example_input_array
        if sample is None:
            print("mldeck: the model was not logged: set `example_input_array` on the LightningModule "
                  "(a batch of inputs) so it can be exported and registered", file=sys.stderr)
            return
        callback = trainer.checkpoint_callback
        best = getattr(callback, "best_model_path", "") if callback is not None else ""
        current = {k: v.detach().clone() for k, v in module.state_dict().items()}
        training = module.training
        try:
            if best:
                state = torch.load(best, map_location="cpu", weights_only=False)["state_dict"]
                module.load_state_dict(state)
            module.eval()
            self.run.log_model(module, sample)
        finally:
            module.load_state_dict(current)
            module.train(training)
