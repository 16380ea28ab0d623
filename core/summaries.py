"""Per-example summary features of N-D inputs (images, sequences): what drift is tested on for them.

An input whose rows are not a flat list of features (an image, a sequence) cannot be tested value
by value, so each example is summed up in a few numbers a person can read, and drift runs on those:

* **image** — examples of rank ≥ 2 with a fixed shape. Rank 3 and more are channels first
  (`[C, H, W]`, `[C, D, H, W]`); rank 2 is one channel (`[H, W]`, or `[T, D]` steps × features).
  Per channel: `mean`, `std`, `min`, `max` (`pixels.channel0.mean`; one `all` group when there are
  more than 16 channels). The channels' mean pooled over a fixed grid that cuts every spatial axis
  in two: `pixels.grid0_1.mean` is the top-right quarter of a 2-D image, 2^k cells for k spatial axes.
* **sequence** — examples of rank 1 (`[L]`), or of varying length (a list column): `length` (size of
  the first axis), and the `mean`, `std` and L2 `norm` of all of the example's values
  (`tokens.length`, `tokens.mean` …).

The rule is chosen once, from the reference data, and recorded in the profile; windows are summed
up with the recorded rule, so reference and live features always have the same names.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any, Literal

import msgspec
import numpy as np

Rule = Literal["image", "sequence"]
GRID = 2
MAX_CHANNELS = 16
CHANNEL_STATS = ("mean", "std", "min", "max")
BLOCK_VALUES = 1 << 22  # values summed up at a time (32 MiB as float64)


class TensorSummary(msgspec.Struct, frozen=True):
    """How an N-D input is summed up: its rule, the reference's example shape ([] if ragged), its features."""

    rule: str
    shape: list[int]
    columns: list[str]


def rule_for(values: Any) -> Rule | None:
    """The rule for a reference column's values, or None for a plain column of scalars."""
    arr = np.asarray(values)
    if arr.dtype.kind in "biuf" and arr.ndim >= 3:
        return "image"
    if arr.dtype.kind in "biuf" and arr.ndim == 2:
        return "sequence"
    if arr.dtype.kind == "O" and arr.ndim == 1:
        first = next((v for v in arr.tolist() if v is not None), None)
        if isinstance(first, np.ndarray | list | tuple):
            return "sequence"
    return None


def _cell(size: int, k: int) -> slice:
    """The k-th of GRID parts of an axis; an axis shorter than GRID repeats its last value."""
    start = min(k * size // GRID, max(size - 1, 0))
    return slice(start, max((k + 1) * size // GRID, start + 1))


def _image(tensor: str, batch: np.ndarray) -> dict[str, np.ndarray]:
    """Per-channel statistics and grid-pooled means of a batch of fixed-shape examples."""
    x = batch.astype(np.float64, copy=False)
    if x.ndim == 3:
        x = x[:, None]
    n, channels = x.shape[:2]
    spatial = x.shape[2:]
    flat = x.reshape(n, channels, -1)
    groups = [f"channel{c}" for c in range(channels)]
    if channels > MAX_CHANNELS:
        flat, groups = flat.reshape(n, 1, -1), ["all"]
    out: dict[str, np.ndarray] = {}
    with np.errstate(invalid="ignore", divide="ignore"):
        empty = flat.shape[-1] == 0
        stats = {
            "mean": flat.mean(axis=-1), "std": flat.std(axis=-1),
            "min": np.full(flat.shape[:2], np.nan) if empty else flat.min(axis=-1),
            "max": np.full(flat.shape[:2], np.nan) if empty else flat.max(axis=-1),
        }
        for g, group in enumerate(groups):
            for stat in CHANNEL_STATS:
                out[f"{tensor}.{group}.{stat}"] = stats[stat][:, g]
        every = tuple(range(1, x.ndim))
        for cell in itertools.product(range(GRID), repeat=len(spatial)):
            part = x[(slice(None), slice(None), *(_cell(s, k) for s, k in zip(spatial, cell, strict=True)))]
            name = "_".join(str(k) for k in cell)
            out[f"{tensor}.grid{name}.mean"] = part.mean(axis=every)
    return out


def _sequence(tensor: str, batch: np.ndarray) -> dict[str, np.ndarray]:
    """Length, mean, std and L2 norm of each example of a batch whose examples share one shape."""
    x = batch.astype(np.float64, copy=False)
    n = x.shape[0]
    flat = x.reshape(n, -1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return {
            f"{tensor}.length": np.full(n, x.shape[1], dtype=np.int64),
            f"{tensor}.mean": flat.mean(axis=1) if flat.shape[1] else np.full(n, np.nan),
            f"{tensor}.std": flat.std(axis=1) if flat.shape[1] else np.full(n, np.nan),
            f"{tensor}.norm": np.sqrt(np.square(flat).sum(axis=1)),
        }


def summarize(tensor: str, rule: str, batch: np.ndarray) -> dict[str, np.ndarray]:
    """Features of a batch of examples of one shape ((n, *shape) array) under the rule.

    Computed in float64 a block of rows at a time, so a large batch never needs a float64 copy of itself."""
    if rule not in ("image", "sequence"):
        raise ValueError(f"{tensor}: unknown summary rule {rule!r}")
    if rule == "image" and batch.ndim < 3:
        raise ValueError(f"{tensor}: an image needs examples of rank 2 or more, got {batch.shape[1:]}")
    if batch.ndim < 2:
        raise ValueError(f"{tensor}: a sequence needs examples of rank 1 or more, got scalars")
    features = _image if rule == "image" else _sequence
    step = max(1, BLOCK_VALUES // max(1, math.prod(batch.shape[1:])))
    if len(batch) <= step:
        return features(tensor, batch)
    blocks = [features(tensor, batch[i:i + step]) for i in range(0, len(batch), step)]
    return {name: np.concatenate([b[name] for b in blocks]) for name in blocks[0]}


def summarize_examples(tensor: str, rule: str, examples: Sequence[Any]) -> dict[str, np.ndarray]:
    """Features of examples that may differ in shape (a list column): equal shapes are summed up together;
    a missing example (None) has missing features."""
    by_shape: dict[tuple[int, ...], list[int]] = {}
    arrays: dict[int, np.ndarray] = {}
    for i, e in enumerate(examples):
        if e is not None:
            arrays[i] = np.asarray(e, dtype=np.float64)
            by_shape.setdefault(arrays[i].shape, []).append(i)
    out: dict[str, np.ndarray] = {}
    kinds: dict[str, np.dtype[Any]] = {}
    for rows in by_shape.values():
        for name, values in summarize(tensor, rule, np.stack([arrays[i] for i in rows])).items():
            out.setdefault(name, np.full(len(examples), np.nan))[rows] = values
            kinds[name] = values.dtype
    complete = len(arrays) == len(examples)
    return {n: v.astype(kinds[n]) if complete and kinds[n].kind in "iu" else v for n, v in out.items()}


def summarize_column(tensor: str, values: Any) -> tuple[TensorSummary, dict[str, np.ndarray]] | None:
    """A reference column's rule, shape and features; None when it is a plain column."""
    rule = rule_for(values)
    if rule is None:
        return None
    arr = np.asarray(values)
    if arr.dtype.kind == "O":
        features = summarize_examples(tensor, rule, arr.tolist())
        shape: list[int] = []
    else:
        features = summarize(tensor, rule, arr)
        shape = list(arr.shape[1:])
    return TensorSummary(rule, shape, list(features)), features
