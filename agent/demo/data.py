"""The demo's data: scikit-learn's bundled breast cancer set, split reproducibly, and a drift maker.

Nothing is downloaded: the CSV ships inside scikit-learn, so the demo runs offline.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


@dataclass(frozen=True)
class Split:
    """Train and validation arrays (float32 features, int64 labels) and the feature column names."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    columns: list[str]


def column_name(feature: str) -> str:
    """A feature name as a column name: lower case, [a-z0-9_] only ("mean radius" → mean_radius)."""
    return re.sub(r"[^a-z0-9]+", "_", feature.lower()).strip("_")


def data_file() -> Path:
    """The CSV the data set is read from, so runs can fingerprint their data."""
    return Path(str(resources.files("sklearn.datasets") / "data" / "breast_cancer.csv"))


def load_split(val_fraction: float = 0.2, seed: int = 0) -> Split:
    """The data set split into train and validation sets, stratified and the same for a seed."""
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split

    bunch = load_breast_cancer()
    x_train, x_val, y_train, y_val = train_test_split(
        bunch.data.astype(np.float32),
        bunch.target.astype(np.int64),
        test_size=val_fraction,
        random_state=seed,
        stratify=bunch.target,
    )
    return Split(x_train, y_train, x_val, y_val, [column_name(f) for f in bunch.feature_names])


def labelled_rows(path: Path, columns: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Features and labels of labelled served traffic (the parquet agent.demo.labelled writes)."""
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    missing = [c for c in [*columns, "label"] if c not in table.column_names]
    if missing:
        raise ValueError(f"{path} lacks the columns {missing}")
    x = np.column_stack([table.column(c).to_numpy() for c in columns]).astype(np.float32)
    return x, table.column("label").to_numpy().astype(np.int64)


def add_rows(split: Split, x: np.ndarray, y: np.ndarray, val_fraction: float = 0.2, seed: int = 0) -> Split:
    """The split with rows added to both sides, so a retrain learns, and is judged on, the newer inputs."""
    order = np.random.default_rng(seed).permutation(len(x))
    n_val = round(len(x) * val_fraction)
    val, train = order[:n_val], order[n_val:]
    return Split(
        np.concatenate([split.x_train, x[train]]), np.concatenate([split.y_train, y[train]]),
        np.concatenate([split.x_val, x[val]]), np.concatenate([split.y_val, y[val]]), split.columns,
    )


def to_table(x: np.ndarray, columns: Sequence[str]) -> pa.Table:
    """A feature matrix as a table with one named column per feature (reference data, traffic)."""
    return pa.table({name: x[:, i] for i, name in enumerate(columns)})


def shift(frame: pa.Table, columns: Sequence[str], mean_shift_std: float = 1.0) -> pa.Table:
    """Move the named columns by mean_shift_std of their own standard deviation: drift to detect."""
    for name in columns:
        column = frame.column(name)
        delta = mean_shift_std * (pc.stddev(column).as_py() or 0.0)
        shifted = pc.add(column, pa.scalar(delta, column.type))
        frame = frame.set_column(frame.schema.get_field_index(name), name, shifted)
    return frame
