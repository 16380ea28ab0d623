"""A real (tiny) image classifier for the monitor tests: a CNN on synthetic 8×8 one-channel images.

Class k (0–3) is the image whose k-th quarter (top-left, top-right, bottom-left, bottom-right) is bright,
on noise. `python tests/monitor/image_train.py NAME` trains it for a second on CPU and registers it
through the SDK with 4,000 images as the drift reference, the first 1,000 of which it trained on (input
`pixels`, shape [-1, 1, 8, 8], output `logits`); prints one JSON line with the run id. `images()` is what
the test sends as traffic.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

SIDE = 8
CLASSES = 4
REFERENCE_ROWS = 4_000
TRAIN_ROWS = 1_000
"""The task is easy: more rows would only make each of the training steps slower."""


def images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n images (n, 1, 8, 8) float32 and their classes: one bright quarter each, Gaussian noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, CLASSES, n)
    x = rng.normal(0.0, 0.1, size=(n, 1, SIDE, SIDE))
    half = SIDE // 2
    for k in range(CLASSES):
        rows, cols = divmod(k, 2)
        x[labels == k, 0, rows * half:(rows + 1) * half, cols * half:(cols + 1) * half] += 1.0
    return x.astype(np.float32), labels


def main() -> None:
    import torch
    from torch import nn
    from torch.nn import functional as F

    from mldeck.core import track

    parser = argparse.ArgumentParser()
    parser.add_argument("name", help="model name to register")
    args = parser.parse_args()
    torch.manual_seed(0)
    x_np, y_np = images(REFERENCE_ROWS, seed=0)
    x, y = torch.from_numpy(x_np[:TRAIN_ROWS]), torch.from_numpy(y_np[:TRAIN_ROWS])
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                          nn.Linear(32, CLASSES))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    run = track.init(name="tiny-cnn", experiment="monitor-tests")
    for step in range(60):
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        run.log({"train_loss": loss.item()}, step=step)
    model.eval()
    with torch.no_grad():
        acc = (model(x).argmax(dim=-1) == y).float().mean().item()
    run.log({"val_acc": acc}, step=60)
    run.register_model(model, x_np[:64], args.name, input_names=["pixels"], output_names=["logits"],
                       reference=x_np)
    run.finish()
    print(json.dumps({"run_id": run.id, "acc": acc}), flush=True)


if __name__ == "__main__":
    main()
