"""A real (tiny) classifier with an embedding output, for the embedding-drift and explanation tests.

Six standard-normal features `f0` … `f5`; the class is whether f0 + 0.1·f1 > 0, so the model weighs f0
most. `python tests/monitor/embedding_train.py NAME` trains an MLP (features → 16-d tanh embedding →
2 logits) for a second on CPU and registers it through the SDK with outputs `logits` and `embedding`,
256 training rows as its sample (whose embeddings are the drift reference) and all of them as the input
reference; prints one JSON line with the run id. `rows()` is what the tests send as traffic.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

FEATURES = [f"f{i}" for i in range(6)]
TRAIN_ROWS = 2_000
SAMPLE_ROWS = 256


def rows(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n rows (n, 6) float32 and their classes."""
    x = np.random.default_rng(seed).normal(size=(n, len(FEATURES))).astype(np.float32)
    return x, (x[:, 0] + 0.1 * x[:, 1] > 0).astype(np.int64)


def main() -> None:
    import torch
    from torch import nn
    from torch.nn import functional as F

    from mldeck.core import track

    class Embedder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encode = nn.Sequential(nn.Linear(len(FEATURES), 16), nn.Tanh())
            self.head = nn.Linear(16, 2)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            embedding = self.encode(x)
            return self.head(embedding), embedding

    parser = argparse.ArgumentParser()
    parser.add_argument("name", help="model name to register")
    args = parser.parse_args()
    torch.manual_seed(0)
    x_np, y_np = rows(TRAIN_ROWS, seed=0)
    x, y = torch.from_numpy(x_np), torch.from_numpy(y_np)
    model = Embedder()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    run = track.init(name="tiny-embedder", experiment="monitor-tests")
    for _ in range(100):
        loss = F.cross_entropy(model(x)[0], y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        acc = (model(x)[0].argmax(dim=-1) == y).float().mean().item()
    run.log({"val_acc": acc}, step=100)
    run.register_model(model, x_np[:SAMPLE_ROWS], args.name, input_names=["features"],
                       output_names=["logits", "embedding"], reference=x_np, features=FEATURES)
    run.finish()
    print(json.dumps({"run_id": run.id, "acc": acc}), flush=True)


if __name__ == "__main__":
    main()
