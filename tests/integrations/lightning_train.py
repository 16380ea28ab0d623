"""A tiny Lightning job for the integration test: a linear model on random data, one step per batch logged.

`python lightning_train.py --epochs 4 --step-s 0.05 [--hold-at STEP]` prints the global step it starts at
(0, or the resumed checkpoint's) and trains through MLDeckLogger, resuming from the run's checkpoint if there
is one.
"""

from __future__ import annotations

import argparse
import time

import lightning as L
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from mldeck.integrations.lightning import MLDeckLogger


class Tiny(L.LightningModule):
    def __init__(self, hidden: int = 16, lr: float = 0.05, step_s: float = 0.0, hold_at: int = -1) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(8, hidden), nn.ReLU(), nn.Linear(hidden, 2))
        self.example_input_array = torch.randn(4, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        time.sleep(self.hparams.step_s)
        deadline = time.monotonic() + 120
        while self.global_step == self.hparams.hold_at and not self.trainer.received_sigterm \
                and time.monotonic() < deadline:
            time.sleep(0.05)  # holds this step until the stop arrives, so the test stops it mid-epoch
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        self.log("val_acc", (self(x).argmax(-1) == y).float().mean())

    def on_train_start(self) -> None:
        print("starting at", self.global_step, flush=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


def loader(seed: int) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(128, 8, generator=g)
    return DataLoader(TensorDataset(x, (x[:, 0] > 0).long()), batch_size=16)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--step-s", type=float, default=0.0)
    parser.add_argument("--hold-at", type=int, default=-1, help="wait at this global step for SIGTERM")
    args = parser.parse_args()
    torch.manual_seed(0)
    logger = MLDeckLogger(experiment="lightning-test")
    trainer = L.Trainer(max_epochs=args.epochs, logger=logger, log_every_n_steps=1, accelerator="cpu",
                        enable_progress_bar=False, enable_model_summary=False)
    checkpoint = logger.resume()
    hold_at = args.hold_at if checkpoint is None else -1
    trainer.fit(Tiny(step_s=args.step_s, hold_at=hold_at), loader(0), loader(1), ckpt_path=checkpoint)


if __name__ == "__main__":
    main()
