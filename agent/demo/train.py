"""The demo training job: an MLP on the breast cancer set, tracked, checkpointed and exported.

Run as `python -m mldeck.agent.demo.train --lr 0.01 --epochs 20 --hidden 64`; each
hyperparameter may instead come from the environment as MLDECK_PARAM_<NAME>
(e.g. MLDECK_PARAM_LR), and a flag beats the environment. Every epoch is logged
and checkpointed; a restart in the same run folder (MLDECK_RUN_DIR) continues at
the next epoch; SIGTERM ends the run as "preempted" with exit code 143, keeping
the last epoch's checkpoint. At the end the model is exported to
`<run dir>/artifacts/model/` with columns.json and reference.parquet for drift
monitoring, and one JSON line with the run id, val_acc and artifact is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import nn
from torch.nn import functional as F

from mldeck.agent.demo import data
from mldeck.core import modelfile, track

HYPERPARAMS: dict[str, tuple[type, Any]] = {
    "lr": (float, 0.01),
    "epochs": (int, 20),
    "hidden": (int, 64),
    "batch_size": (int, 64),
    "weight_decay": (float, 1e-4),
    "seed": (int, 0),
    "amp": (str, "off"),
}
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}
REFERENCE_ROWS = 10_000
PREEMPTED_EXIT = 128 + signal.SIGTERM


class Preempted(Exception):
    """SIGTERM arrived: stop now, the last epoch's checkpoint is where a restart resumes."""


class MLP(nn.Module):
    """Raw features in, class probabilities out: standardization lives inside the model,
    so the exported model needs no preprocessing code when served."""

    def __init__(self, mean: np.ndarray, std: np.ndarray, hidden: int, classes: int = 2) -> None:
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.as_tensor(np.where(std > 0, std, 1.0), dtype=torch.float32))
        self.net = nn.Sequential(
            nn.Linear(len(mean), hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, classes),
        )

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Unnormalized scores, what the loss wants."""
        return self.net((x - self.mean) / self.std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class probabilities, what a caller of the served model wants."""
        return torch.softmax(self.logits(x), dim=-1)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Flags, with hyperparameter defaults taken from MLDECK_PARAM_<NAME> when set."""
    parser = argparse.ArgumentParser(prog="python -m mldeck.agent.demo.train", description=__doc__)
    for name, (kind, default) in HYPERPARAMS.items():
        env = f"MLDECK_PARAM_{name.upper()}"
        parser.add_argument(
            f"--{name.replace('_', '-')}",
            type=kind,
            default=kind(os.environ.get(env, default)),
            choices=list(AMP_DTYPES) if name == "amp" else None,
            help=f"(env {env}, default {default})",
        )
    parser.add_argument("--name", default=None, help="run name (default: the launcher's, else demo-mlp)")
    parser.add_argument("--experiment", default=None, help="experiment (default: the launcher's, else demo)")
    parser.add_argument("--slow-ms", type=int, default=0, help="sleep this long every epoch")
    parser.add_argument("--fail-at-epoch", type=int, default=None, help="raise at this epoch")
    parser.add_argument("--labelled", type=Path, default=_data_step_file(),
                        help="labelled served traffic (parquet) to learn from too; default: the "
                             "pipeline's data step's labelled.parquet, when there is one")
    return parser.parse_args(argv)


def _data_step_file() -> Path | None:
    """In a pipeline, the data step's labelled traffic (agent.demo.labelled), if it wrote any."""
    folder = os.environ.get("MLDECK_STEP_DATA_DIR")
    path = Path(folder) / "artifacts" / "labelled.parquet" if folder else None
    return path if path and path.is_file() else None


def _on_sigterm(signum: int, frame: object) -> None:
    raise Preempted


def train_epoch(
    model: MLP,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    x: torch.Tensor,
    y: torch.Tensor,
    args: argparse.Namespace,
    epoch: int,
) -> float:
    """One pass over shuffled minibatches; the shuffle depends only on seed and epoch, so a
    resumed run sees the same batches it would have seen without the restart."""
    model.train()
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(args.seed * 100_003 + epoch))
    total = 0.0
    for batch in order.split(args.batch_size):
        xb, yb = x[batch], y[batch]
        with torch.autocast(x.device.type, dtype=AMP_DTYPES[args.amp], enabled=args.amp != "off"):
            loss = F.cross_entropy(model.logits(xb).float(), yb)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        total += loss.item() * len(batch)
    return total / len(x)


def evaluate(model: MLP, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Validation loss and accuracy in full precision."""
    model.eval()
    with torch.inference_mode():
        logits = model.logits(x)
        loss = F.cross_entropy(logits, y).item()
        acc = (logits.argmax(dim=-1) == y).float().mean().item()
    return loss, acc


def export(model: MLP, split: data.Split, reference: np.ndarray, run: track.Run) -> Path:
    """Export the trained model with its column names and reference data into the run's artifacts."""
    sink = pa.BufferOutputStream()
    pq.write_table(data.to_table(reference, split.columns), sink)
    with tempfile.TemporaryDirectory(dir=run.dir, prefix=".export-") as tmp:
        folder = Path(tmp) / "model"
        modelfile.export_model(
            model.eval().cpu(),
            {"features": reference},
            folder,
            output_names=["probabilities"],
            extra_files={
                "columns.json": json.dumps({"features": split.columns}, indent=2).encode(),
                "reference.parquet": sink.getvalue().to_pybytes(),
            },
        )
        return run.log_artifact(folder)


def main(argv: Sequence[str] | None = None) -> int:
    """Train (or resume), export, and print a one-line JSON summary."""
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    split = data.load_split(seed=args.seed)
    params = {name: getattr(args, name) for name in HYPERPARAMS}
    reference = split.x_train[:REFERENCE_ROWS]
    if args.labelled:
        x_new, y_new = data.labelled_rows(args.labelled, split.columns)
        split = data.add_rows(split, x_new, y_new, seed=args.seed)
        reference = x_new[:REFERENCE_ROWS]  # what the retrained model will see: drift is judged against it
        params["labelled_rows"] = len(x_new)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu":  # a model this small loses far more to thread hand-offs than it gains
        torch.set_num_threads(1)
    with track.init(
        name=args.name or ("demo-mlp" if not os.environ.get(track.RUN_DIR_ENV) else None),
        experiment=args.experiment or ("demo" if not os.environ.get(track.RUN_DIR_ENV) else None),
        params=params, data_files=[data.data_file(), *([args.labelled] if args.labelled else [])],
        total_steps=args.epochs or None,  # --epochs 0: a model exported untrained
    ) as run:
        mean, std = split.x_train.mean(axis=0), split.x_train.std(axis=0)
        model = MLP(mean, std, args.hidden).to(device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
        scaler = torch.amp.GradScaler(device.type, enabled=args.amp == "fp16")
        start = 0
        resumed = run.resume()
        if resumed is not None:
            state, _ = resumed
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scaler.load_state_dict(state["scaler"])
            start = state["epoch"] + 1
        x_train, y_train, x_val, y_val = (
            torch.from_numpy(a).to(device) for a in (split.x_train, split.y_train, split.x_val, split.y_val)
        )
        signal.signal(signal.SIGTERM, _on_sigterm)
        try:
            for epoch in range(start, args.epochs):
                if epoch == args.fail_at_epoch:
                    raise RuntimeError(f"failing at epoch {epoch} as asked by --fail-at-epoch")
                train_loss = train_epoch(model, optimizer, scaler, x_train, y_train, args, epoch)
                time.sleep(args.slow_ms / 1000)
                val_loss, acc = evaluate(model, x_val, y_val)
                run.log({"train_loss": train_loss, "val_loss": val_loss, "val_acc": acc}, step=epoch)
                run.flush()
                run.checkpoint(
                    {
                        "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "scaler": scaler.state_dict(),
                        "epoch": epoch,
                    },
                    step=epoch,
                )
        except Preempted:
            run.finish("preempted", reason="SIGTERM")
            return PREEMPTED_EXIT
        finally:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
        val_acc = evaluate(model, x_val, y_val)[1]
        artifact = export(model, split, reference, run)
    print(json.dumps({"run_id": run.id, "val_acc": val_acc, "artifact": str(artifact)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
