"""Why the model decided what it did: Integrated Gradients attributions for one logged request (Captum).

`python -m mldeck.core.explain` is the agent's explainer process (the agent never imports torch): it loads
torch once and answers one JSON request a line on stdin with one JSON line on stdout, keeping the last few
models it loaded. A request names the version's `folder` and asks for one row of a logged request
(`{"inputs": {name: rows}, "row": i}`), many logged requests, every row of each (`{"requests":
[{"request_id", "inputs"}], "max_rows": n}`: the sample of live traffic explained in the background), or
rows of the reference (`{"reference_rows": n}`: the mean |attribution| per feature). Integrated Gradients
(Sundararajan et al., 2017) integrates the gradient along the straight line from a baseline to the input,
so every input value gets an attribution and together they add up to F(input) − F(baseline) (up to
`delta`, the integral's numerical error). The baseline is the reference's mean: each input column's mean
over the version's reference sample (reference.parquet); an input the reference does not cover starts
from zeros, and the result says so. F is the first output's score of the predicted class (its argmax; an
output of one value per row is explained as it is). Only float inputs have gradients: an integer input is
refused with that reason.
"""

from __future__ import annotations

import math
import sys
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mldeck.core.lineserve import serve_stdio
from mldeck.core.monitor import mean_abs_attributions
from mldeck.core.signature import TensorSpec, column_names, numpy_dtype, tensor_columns

STEPS = 64
REFERENCE_FILE = "reference.parquet"
LOADED_MODELS = 4  # model folders the explainer process keeps loaded


def integrated_gradients(
    forward: Callable[..., Any],
    inputs: Mapping[str, np.ndarray],
    baselines: Mapping[str, np.ndarray],
    target: int | None,
    steps: int = STEPS,
) -> tuple[dict[str, np.ndarray], float]:
    """Attributions for one row per input (each shaped like its input) and the completeness error.

    forward takes the inputs' tensors in order and returns the scores (rows × classes, or one per row);
    target picks the class (None for one score per row).
    """
    import torch
    from captum.attr import IntegratedGradients

    names = list(inputs)
    x = tuple(torch.as_tensor(np.ascontiguousarray(inputs[n])) for n in names)
    start = tuple(torch.as_tensor(np.ascontiguousarray(baselines[n]), dtype=t.dtype)
                  for n, t in zip(names, x, strict=True))
    attributions, delta = IntegratedGradients(forward).attribute(
        x, start, target=target, n_steps=steps, return_convergence_delta=True)
    return ({n: a.detach().numpy() for n, a in zip(names, attributions, strict=True)},
            float(delta.abs().max()))


def feature_names(spec: TensorSpec, named: Mapping[str, list[str]]) -> list[str]:
    """What a person calls each value of one row of the input, in C order: its columns (columns.json or
    `x[i]`) for a table, the input's own name for one value, `pixels[c,h,w]` for N-D inputs."""
    shape = spec.shape[1:]
    if len(shape) <= 1:
        return tensor_columns([{"name": spec.name, "shape": spec.shape}], named)[spec.name]
    return [f"{spec.name}[{','.join(map(str, i))}]" for i in np.ndindex(*shape)]


def reference_columns(spec: TensorSpec, named: Mapping[str, list[str]]) -> list[str]:
    """The reference.parquet columns holding one row of the input, as the SDK writes them."""
    size = math.prod(spec.shape[1:])
    flat = {"name": spec.name, "shape": spec.shape if len(spec.shape) <= 2 else [-1, size]}
    return tensor_columns([flat], named if len(spec.shape) <= 2 else {})[spec.name]


def read_reference(folder: Path, specs: Sequence[TensorSpec]) -> dict[str, dict[str, np.ndarray]]:
    """Input → its reference columns (finite values only), for the inputs the reference sample covers."""
    import pyarrow.parquet as pq

    path = folder / REFERENCE_FILE
    if not path.is_file():
        return {}
    table = pq.read_table(path)
    named = column_names(folder)
    out: dict[str, dict[str, np.ndarray]] = {}
    for spec in specs:
        cols = reference_columns(spec, named)
        if all(c in table.column_names for c in cols):
            values = {c: np.asarray(table.column(c).to_numpy(zero_copy_only=False), dtype=np.float64)
                      for c in cols}
            out[spec.name] = {c: v[np.isfinite(v)] for c, v in values.items()}
    return out


def baselines(
    specs: Sequence[TensorSpec], shapes: Mapping[str, tuple[int, ...]], reference: Mapping[str, Any],
    named: Mapping[str, list[str]],
) -> tuple[dict[str, np.ndarray], list[str]]:
    """Each input's reference mean, shaped like one row of it; zeros (and its name) where there is none."""
    out, uncovered = {}, []
    for spec in specs:
        columns = reference.get(spec.name)
        if columns is None:
            out[spec.name] = np.zeros(shapes[spec.name])
            uncovered.append(spec.name)
            continue
        values = [columns[c] for c in reference_columns(spec, named)]
        means = [float(v.mean()) if v.size else 0.0 for v in values]
        out[spec.name] = np.asarray(means).reshape(shapes[spec.name])
    return out, uncovered


def features(
    specs: Sequence[TensorSpec], one: Mapping[str, np.ndarray], base: Mapping[str, np.ndarray],
    attributions: Mapping[str, np.ndarray], reference: Mapping[str, Any], named: Mapping[str, list[str]],
) -> list[dict[str, Any]]:
    """Each value of the row with its baseline, attribution and percentile in the reference, largest first."""
    out = []
    for spec in specs:
        columns = reference_columns(spec, named)
        flat = zip(feature_names(spec, named), columns, one[spec.name].reshape(-1),
                   base[spec.name].reshape(-1), attributions[spec.name].reshape(-1), strict=True)
        for name, column, value, baseline, attribution in flat:
            sample = reference.get(spec.name, {}).get(column)
            known = sample is not None and sample.size > 0
            percentile = float(np.mean(sample <= value) * 100) if known else None
            out.append({"input": spec.name, "feature": name, "value": float(value),
                        "baseline": float(baseline), "attribution": float(attribution),
                        "percentile": percentile})
    return sorted(out, key=lambda f: -abs(f["attribution"]))


class Attributor:
    """One model folder, loaded once with its reference and feature names, explaining rows one at a time."""

    def __init__(self, folder: Path, steps: int = STEPS) -> None:
        from mldeck.core.modelfile import load_model

        self.model = load_model(folder)
        self.sig = self.model.signature
        self.steps = steps
        for spec in self.sig.inputs:
            if numpy_dtype(spec.datatype).kind != "f":
                raise ValueError(f"input {spec.name!r} is {spec.datatype}: Integrated Gradients needs floats")
        self.named = column_names(folder)
        self.reference = read_reference(folder, self.sig.inputs)
        self.folder = folder

    def arrays(self, logged: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """A logged request's inputs, checked against the signature."""
        from mldeck.core.signature import check_inputs

        missing = [s.name for s in self.sig.inputs if s.name not in logged]
        if missing:
            raise ValueError(f"the logged request lacks inputs {missing} "
                             "(inputs too large are logged as null)")
        return check_inputs(self.sig, {s.name: np.asarray(logged[s.name], dtype=numpy_dtype(s.datatype))
                                       for s in self.sig.inputs})

    def row(self, arrays: Mapping[str, np.ndarray], row: int) -> dict[str, Any]:
        """Every input value's attribution for one row of the arrays, most important first."""
        import torch

        n = len(next(iter(arrays.values())))
        if not 0 <= row < n:
            raise ValueError(f"row {row} is not in the request, which has {n} row(s)")
        sig, model = self.sig, self.model
        one = {name: a[row:row + 1] for name, a in arrays.items()}
        shapes = {k: v.shape for k, v in one.items()}
        base, uncovered = baselines(sig.inputs, shapes, self.reference, self.named)
        scores = np.asarray(model.predict(one)[sig.outputs[0].name], dtype=np.float64)[0]
        target = int(scores.argmax()) if scores.ndim == 1 and scores.size > 1 else None

        def forward(*args: Any) -> Any:
            out = model.forward(*args)[0]
            return out.reshape(len(out), -1)[:, 0] if target is None else out

        with torch.enable_grad():
            attributions, delta = integrated_gradients(forward, one, base, target, self.steps)
        with torch.no_grad():
            start = [torch.as_tensor(base[s.name], dtype=torch.from_numpy(one[s.name]).dtype)
                     for s in sig.inputs]
            baseline_score = forward(*start)[0]
        note = f" (zeros for {', '.join(uncovered)}: not in the reference)" if uncovered else ""
        return {"method": "integrated_gradients", "steps": self.steps, "baseline": "reference mean" + note,
                "row": row, "output": sig.outputs[0].name, "target": target,
                "score": float(scores[target] if target is not None else scores.reshape(-1)[0]),
                "baseline_score": float(baseline_score if target is None else baseline_score[target]),
                "delta": delta,
                "features": features(sig.inputs, one, base, attributions, self.reference, self.named)}

    def reference_rows(self, limit: int) -> dict[str, np.ndarray]:
        """Up to `limit` complete rows of the reference sample (a seeded choice), shaped as the inputs."""
        import pyarrow.parquet as pq

        path = self.folder / REFERENCE_FILE
        if not path.is_file():
            raise ValueError(f"there is no {REFERENCE_FILE} to explain the reference with")
        table = pq.read_table(path)
        out = {}
        for spec in self.sig.inputs:
            columns = reference_columns(spec, self.named)
            if not all(c in table.column_names for c in columns):
                raise ValueError(f"the reference does not hold input {spec.name!r}")
            values = np.stack([np.asarray(table.column(c).to_numpy(zero_copy_only=False), dtype=np.float64)
                               for c in columns], axis=1)
            out[spec.name] = values.reshape(len(values), *spec.shape[1:]).astype(numpy_dtype(spec.datatype))
        complete = np.all([np.isfinite(v.reshape(len(v), -1)).all(axis=1) for v in out.values()], axis=0)
        rows = np.flatnonzero(complete)
        if rows.size > limit:
            rows = np.sort(np.random.default_rng(0).choice(rows, limit, replace=False))
        return {name: v[rows] for name, v in out.items()}


def explain(attributor: Attributor, logged: Mapping[str, Any], row: int) -> dict[str, Any]:
    """Every input value's attribution for one row of a logged request, most important first."""
    return attributor.row(attributor.arrays(logged), row)


def explain_requests(
    attributor: Attributor, requests: Sequence[Mapping[str, Any]], max_rows: int
) -> list[dict[str, Any]]:
    """Every row (the first max_rows) of many logged requests: each row's result, or its request's error."""
    out: list[dict[str, Any]] = []
    for request in requests:
        try:
            arrays = attributor.arrays(request["inputs"])
            n = min(len(next(iter(arrays.values()))), max_rows)
            out += [{"request_id": request["request_id"], **attributor.row(arrays, i)} for i in range(n)]
        except ValueError as exc:
            out.append({"request_id": request["request_id"], "error": str(exc)})
    return out


def explain_reference(attributor: Attributor, rows: int) -> dict[str, Any]:
    """Mean |attribution| per feature over reference rows: what drives the model on its training data."""
    arrays = attributor.reference_rows(rows)
    n = len(next(iter(arrays.values())))
    if n == 0:
        raise ValueError("the reference has no complete row to explain")
    return {"n": n, "features": mean_abs_attributions([attributor.row(arrays, i) for i in range(n)])}


class Attributors:
    """The models the explainer process has loaded, the most recently used last; a folder whose files
    changed since (a version deleted and registered again) is loaded anew."""

    def __init__(self, keep: int = LOADED_MODELS) -> None:
        self.keep = keep
        self.loaded: OrderedDict[tuple[str, int, int], Attributor] = OrderedDict()

    def get(self, folder: Path) -> Attributor:
        """The folder's model, loaded once: torch and the model's load are most of an explanation's time."""
        stat = folder.stat()
        key = (str(folder.resolve()), stat.st_ino, stat.st_mtime_ns)
        if key in self.loaded:
            self.loaded.move_to_end(key)
        else:
            self.loaded[key] = Attributor(folder)
            while len(self.loaded) > self.keep:
                self.loaded.popitem(last=False)
        return self.loaded[key]


def answer(attributors: Attributors, request: Mapping[str, Any]) -> dict[str, Any]:
    """One request of the agent: a row of a logged request, many logged requests, or the reference."""
    attributor = attributors.get(Path(request["folder"]))
    if "requests" in request:
        return {"results": explain_requests(attributor, request["requests"], int(request["max_rows"]))}
    if "reference_rows" in request:
        return explain_reference(attributor, int(request["reference_rows"]))
    return explain(attributor, request["inputs"], int(request.get("row", 0)))


def main() -> int:
    """Serve the agent on stdin/stdout, keeping the last few models loaded between requests."""
    attributors = Attributors()
    return serve_stdio(lambda request: {"ok": True, **answer(attributors, request)})


if __name__ == "__main__":
    sys.exit(main())
