"""A tiny Hugging Face Trainer job for the integration test: a two-layer GPT-2 built from a config (nothing
downloaded) on a few hundred synthetic tokens.

`python transformers_train.py --epochs 4 --step-s 0.1 [--hold-at STEP]` prints the global step it starts
at (0, or the resumed checkpoint's) and trains through MLDeckCallback, resuming from the run's checkpoint if
there is one.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from torch.utils.data import Dataset
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    Trainer,
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
)

from mldeck.integrations.transformers import MLDeckCallback

SEQUENCES, LENGTH, VOCAB = 32, 16, 64


class Tokens(Dataset):
    """Counting sequences mod the vocabulary: a pattern two layers learn quickly."""

    def __init__(self, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        starts = torch.randint(0, VOCAB, (SEQUENCES, 1), generator=g)
        self.ids = (starts + torch.arange(LENGTH)) % VOCAB

    def __len__(self) -> int:
        return SEQUENCES

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


class Pace(TrainerCallback):
    """Says where training starts, slows each step and holds one until the stop arrives, so the test
    stops it mid-epoch whatever the machine's load."""

    def __init__(self, step_s: float, hold_at: int, stopped: Callable[[], bool]) -> None:
        self.step_s = step_s
        self.hold_at = hold_at
        self.stopped = stopped

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                       **kwargs: Any) -> None:
        print("starting at", state.global_step, flush=True)

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                    **kwargs: Any) -> None:
        time.sleep(self.step_s)
        deadline = time.monotonic() + 120
        while state.global_step == self.hold_at and not self.stopped() and time.monotonic() < deadline:
            time.sleep(0.05)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--step-s", type=float, default=0.0)
    parser.add_argument("--hold-at", type=int, default=-1, help="wait at this global step for SIGTERM")
    cli = parser.parse_args()
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(
        n_layer=2, n_head=2, n_embd=32, vocab_size=VOCAB, n_positions=LENGTH, bos_token_id=0, eos_token_id=0
    ))
    callback = MLDeckCallback(experiment="transformers-test")
    args = TrainingArguments(
        output_dir=callback.output_dir, num_train_epochs=cli.epochs, per_device_train_batch_size=4,
        per_device_eval_batch_size=8, learning_rate=1e-3, logging_steps=1, eval_strategy="epoch",
        save_strategy="epoch", report_to="none", use_cpu=True, disable_tqdm=True, seed=0,
    )
    checkpoint = callback.resume()
    pace = Pace(cli.step_s, cli.hold_at if checkpoint is None else -1, lambda: callback.run.stop_seen)
    trainer = Trainer(model=model, args=args, train_dataset=Tokens(0), eval_dataset=Tokens(1),
                      callbacks=[callback, pace])
    trainer.train(resume_from_checkpoint=checkpoint)


if __name__ == "__main__":
    main()
