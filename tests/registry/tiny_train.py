"""A real (tiny) training job for the registry tests: a 2-layer MLP trained on random data.

`python tests/registry/tiny_train.py demo:0.93 _:0.9 !:0.5` trains one run per item in one
process (one torch import): `NAME:VAL_ACC` registers through `run.register_model`, `_:VAL_ACC`
only exports into the run's artifacts/model (for `mldeck models register`), `!:VAL_ACC` ends
failed. A run's `val_acc` is the given value (the gates read it, so the tests choose it);
`acc` is the measured one.
Prints one JSON line: the run ids in order.
"""

from __future__ import annotations

import argparse
import json

import torch
from torch import nn
from torch.nn import functional as F

from mldeck.core import modelfile, track


def train(val_acc: float, seed: int, name: str | None, fail: bool) -> str:
    """One run: train and log, then register as name (or only export when name is None, or fail)."""
    torch.manual_seed(seed)
    x = torch.randn(256, 8)
    y = (x[:, 0] + x[:, 1] > 0).long()
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    run = track.init(name="tiny-mlp", experiment="registry-tests", params={"seed": seed, "lr": 0.5})
    for step in range(20):
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        run.log({"train_loss": loss.item()}, step=step)
    model.eval()
    with torch.no_grad():
        acc = (model(x).argmax(dim=-1) == y).float().mean().item()
    run.log({"acc": acc, "val_acc": val_acc}, step=20)
    if fail:
        run.finish("failed", reason="diverged (asked by the test)")
        return run.id
    if name:
        run.register_model(model, x.numpy(), name, output_names=["logits"], reference=x)
    else:
        modelfile.export_model(model, x.numpy(), run.dir / "artifacts" / "model", output_names=["logits"])
    run.finish()
    return run.id


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("plan", nargs="+", help="NAME:VAL_ACC, _:VAL_ACC or !:VAL_ACC per run")
    args = parser.parse_args()
    ids = []
    for seed, item in enumerate(args.plan):
        what, _, value = item.partition(":")
        ids.append(train(float(value), seed, None if what in "_!" else what, what == "!"))
    print(json.dumps(ids), flush=True)


if __name__ == "__main__":
    main()
