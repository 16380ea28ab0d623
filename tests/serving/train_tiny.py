"""A real training job for the serving tests: one tracked run per seed, each registering its model.

`python tests/serving/train_tiny.py NAME SEED [SEED ...]` trains a small MLP (8 features → 2 logits)
with core.track and registers it as a new version of NAME through `run.register_model`.
"""

from __future__ import annotations

import sys

import torch
from torch import nn
from torch.nn import functional as F

from core import track


def train(name: str, seed: int) -> None:
    torch.manual_seed(seed)
    x = torch.randn(256, 8)
    y = (x[:, 0] + x[:, 1] > 0).long()
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    run = track.init(name=f"{name}-{seed}", experiment="serving-tests", params={"seed": seed})
    for step in range(10):
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        run.log({"train_loss": loss.item()}, step=step)
    model.eval()
    with torch.no_grad():
        run.log({"val_acc": (model(x).argmax(-1) == y).float().mean().item()}, step=10)
    run.register_model(model, x.numpy(), name, output_names=["logits"],
                       reference={f"f{i}": x[:, i].numpy() for i in range(8)})
    run.finish()


if __name__ == "__main__":
    for seed in sys.argv[2:]:
        train(sys.argv[1], int(seed))
