"""A registered model on disk: export, verify, load and the request checks built on its signature.

A model folder holds `model.pt2` (torch.export) or `model.pt` (TorchScript, the
fallback), `signature.json` and `sample.npz` (inputs and the outputs the live
model gave for them), so a model can be served and re-verified without the code
that trained it. The signature and the request checks live in core.signature, which
never loads torch; here torch is imported only inside the functions that need it.
`python -m mldeck.core.modelfile verify FOLDER` re-checks a folder in its own process
and prints one JSON line {ok, message, signature}; `python -m mldeck.core.modelfile serve`
is the agent's model verifier process, answering one {"folder", "sample"?} line after
another with that same line (torch imported once, not once per registration).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import json
import logging
import math
import os
import shutil
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mldeck.core.atomic import write_atomic
from mldeck.core.lineserve import serve_stdio
from mldeck.core.paths import check_name
from mldeck.core.signature import (
    COLUMNS_FILE,
    REFERENCE_FILE,
    SAMPLE_FILE,
    SIGNATURE_FILE,
    InvalidInput,
    Signature,
    TensorSpec,
    check_features,
    check_inputs,
    datatype_of,
    datatype_of_input,
    spec_names,
    tensor_columns,
)

if TYPE_CHECKING:
    import torch

VERIFY_ROWS = 10_000
STORED_ROWS = 256
TRACE_ROWS = 8
ATOL = 1e-5
RTOL = 1e-4
EXPORT_FILE = "model.pt2"
SCRIPT_FILE = "model.pt"
FORMAT_EXPORT = "torch.export"
FORMAT_SCRIPT = "torchscript"
Features = Sequence[str] | Mapping[str, Sequence[str]]
"""Names of a table input's columns: a list for a single input, or a dict with a list per input."""


class ModelMismatch(Exception):
    """The saved model does not reproduce the live model's outputs, so it must not be used."""


# torch side -----------------------------------------------------------------


def export_model(
    model: torch.nn.Module,
    sample: Any,
    folder: Path,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    *,
    allow_nan: bool = False,
    reference: Any = None,
    features: Features | None = None,
    extra_files: Mapping[str, bytes] | None = None,
) -> Signature:
    """Save a torch model so it serves without its training code, and prove it gives the same answers.

    The sample is a numpy array, a torch tensor, a pandas or polars DataFrame, a pyarrow
    Table, or a dict of them (one per input). The model is called with the inputs as
    positional arguments in input_names order (the sample dict's order by default;
    "input__0" for a single array). It is exported as it is: call model.eval() first.
    reference (training data, in any form the sample takes, or a Parquet file's path)
    becomes reference.parquet, the drift reference. features names the columns of table inputs
    ([-1, n]); by default a DataFrame's or Table's column names (the sample's, else the reference's)
    name them, and a DataFrame's columns are taken in the features' order. The names go into
    columns.json, for drift reports and `mldeck predict`; columns left unnamed are `<input>[i]`.
    All of these are written into the folder before it appears, so readers never see it half made.
    """
    import torch

    folder = Path(folder)
    if folder.exists():
        raise FileExistsError(f"{folder} already exists; a model folder is written once")
    entries = _entries(sample, input_names, "sample")
    named = _feature_names(entries, features, reference)
    arrays = _arrays(entries, named, "sample")
    rows = min(len(next(iter(arrays.values()))), VERIFY_ROWS)
    arrays = {k: np.ascontiguousarray(v[:rows]) for k, v in arrays.items()}
    inputs = [
        TensorSpec(name, datatype_of_input(name, a), [-1, *a.shape[1:]]) for name, a in arrays.items()
    ]
    named = check_features(inputs, named)
    extra = dict(extra_files or {})
    if named:
        if COLUMNS_FILE in extra:
            raise ValueError(f"features named twice: by features= or a DataFrame, and by {COLUMNS_FILE}")
        extra[COLUMNS_FILE] = json.dumps(named, indent=2).encode()
    if reference is not None:
        extra[REFERENCE_FILE] = reference_parquet(reference, inputs, named)
    device = next((p.device for p in [*model.parameters(), *model.buffers()]), None)
    args = _to_torch(arrays, device)
    with torch.no_grad():
        expected = _named_outputs(model(*args), output_names)
    outputs = [TensorSpec(n, datatype_of(t.dtype), [-1, *t.shape[1:]]) for n, t in expected.items()]
    signature = Signature(
        inputs=inputs,
        outputs=outputs,
        format=FORMAT_EXPORT,
        file=EXPORT_FILE,
        allow_nan=allow_nan,
        torch_version=str(torch.__version__),
    )
    check_inputs(signature, arrays)

    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        trace_args = tuple(_trace_rows(a) for a in args)
        try:
            with _quiet_export():
                program = torch.export.export(
                    model,
                    trace_args,
                    dynamic_shapes=tuple({0: torch.export.Dim("batch")} for _ in args),
                )
            torch.export.save(program, tmp / EXPORT_FILE)
        except Exception as exc:  # any export failure means: try TorchScript
            (tmp / EXPORT_FILE).unlink(missing_ok=True)
            first_line = (str(exc).strip().splitlines() or [""])[0]
            signature.format = FORMAT_SCRIPT
            signature.file = SCRIPT_FILE
            signature.fallback_reason = f"{type(exc).__name__}: {first_line}"[:500]
            traced = torch.jit.trace(model, trace_args, check_trace=False, strict=False)
            torch.jit.save(traced, str(tmp / SCRIPT_FILE))
        write_atomic(tmp / SIGNATURE_FILE, json.dumps(signature.to_dict(), indent=2).encode())
        got = load_model(tmp, device=str(device or "cpu")).predict(arrays)
        hint = " (the model is in training mode: call model.eval() first)" if model.training else ""
        _compare(expected, got, hint)
        stored = {f"inputs/{k}": v[:STORED_ROWS] for k, v in arrays.items()}
        stored |= {f"outputs/{k}": v[:STORED_ROWS].cpu().numpy() for k, v in expected.items()}
        with open(tmp / SAMPLE_FILE, "wb") as fh:
            np.savez(fh, **stored)
        for name, data in extra.items():
            write_atomic(tmp / check_name(name, "extra file name"), data)
        os.rename(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return signature


def _as_array(value: Any) -> np.ndarray:
    """A numpy array from an array, a torch tensor (any device, with grad or not), a DataFrame or a Table."""
    if hasattr(value, "detach"):  # a torch tensor, told apart without importing torch
        value = value.detach().cpu()
    return np.asarray(value)


def _entries(value: Any, input_names: Sequence[str] | None, what: str) -> dict[str, Any]:
    """The inputs by name, as given: a dict (one entry per input) or one array-like for a single input."""
    if isinstance(value, Mapping):
        names = list(input_names or value)
        if sorted(names) != sorted(value):
            raise ValueError(f"the {what}'s keys {list(value)} must be the model's inputs {names}")
        return {n: value[n] for n in names}
    names = list(input_names or ["input__0"])
    if len(names) != 1:
        raise ValueError(f"the model takes inputs {names}: give the {what} as a dict with one entry each")
    return {names[0]: value}


def _arrays(entries: Mapping[str, Any], named: Mapping[str, list[str]], what: str) -> dict[str, np.ndarray]:
    """Each input as a numpy array, a DataFrame's columns taken in its features' order."""
    arrays = {n: _as_array(_select(v, named.get(n), f"the {what}'s input {n!r}")) for n, v in entries.items()}
    if not arrays or any(a.ndim == 0 or len(a) == 0 for a in arrays.values()):
        raise ValueError(f"the {what} needs at least one input with a batch dimension and rows")
    return arrays


def _frame_columns(value: Any) -> list[str] | None:
    """A DataFrame's (pandas, polars) or pyarrow Table's column names; None for arrays and unnamed columns."""
    columns = getattr(value, "column_names", None)  # pyarrow
    if columns is None:
        columns = getattr(value, "columns", None)  # pandas, polars
    names = list(columns) if columns is not None else []
    return names if names and all(isinstance(n, str) for n in names) else None


def _select(value: Any, names: list[str] | None, what: str) -> Any:
    """A DataFrame's or Table's columns called names, in that order; anything else as it is."""
    columns = _frame_columns(value)
    if names is None or columns is None or columns == names:
        return value
    missing = [n for n in names if n not in columns]
    if missing:
        raise ValueError(f"{what} lacks the feature columns {missing}; it has {columns}")
    return value.select(names) if hasattr(value, "column_names") else value[names]


def _feature_names(
    entries: Mapping[str, Any], features: Features | None, reference: Any
) -> dict[str, list[str]]:
    """Each input's column names: as features gives them, else the sample's or reference's DataFrame's."""
    if features is None:
        named: dict[str, list[str]] = {}
    elif isinstance(features, Mapping):
        named = {k: list(v) for k, v in features.items()}
    elif isinstance(features, str) or len(entries) != 1:
        raise ValueError(
            f"features is a list of names for a model of one input, or a dict with a list per input; "
            f"this model takes {list(entries)}"
        )
    else:
        named = {next(iter(entries)): list(features)}
    given = {} if reference is None or isinstance(reference, str | os.PathLike) else (
        _entries(reference, list(entries), "reference"))
    for name, value in entries.items():
        found = _frame_columns(value) or _frame_columns(given.get(name))
        if found and name not in named:
            named[name] = found
    return named


def reference_parquet(
    reference: Any, inputs: Sequence[TensorSpec], named: Mapping[str, list[str]] | None = None
) -> bytes:
    """Training data (in any form a sample takes, or a Parquet file's path) as reference.parquet's bytes.

    Columns are named as the monitor names a logged tensor's: a 1-D input is one column named
    after it, a table input's columns by its feature names (named), any other one column
    `<input>[i]` per element of a row (flattened in C order).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    if isinstance(reference, str | os.PathLike):
        return Path(reference).read_bytes()
    specs = {s.name: s for s in inputs}
    named = named or {}
    columns: dict[str, np.ndarray] = {}
    for name, array in _arrays(_entries(reference, list(specs), "reference"), named, "reference").items():
        want = specs[name].shape[1:]
        if list(array.shape[1:]) != want:
            raise ValueError(
                f"reference input {name!r} has rows of shape {list(array.shape[1:])}; the model takes {want}"
            )
        flat = array.reshape(len(array), -1) if array.ndim > 1 else array[:, None]
        shape = [-1, flat.shape[1]] if array.ndim > 1 else [-1]
        names = tensor_columns([{"name": name, "shape": shape}], named)[name]
        columns.update(zip(names, np.ascontiguousarray(flat.T), strict=True))
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table(columns), sink)
    return sink.getvalue().to_pybytes()


def _to_torch(arrays: Mapping[str, np.ndarray], device: Any) -> list[Any]:
    """Tensors sharing the arrays' memory; a read-only array (a zero-copy Arrow view) is copied first."""
    import torch

    writable = (np.require(a, requirements=["C", "W"]) for a in arrays.values())
    return [torch.from_numpy(a).to(device or "cpu") for a in writable]


def _trace_rows(tensor: Any) -> Any:
    """A few rows to trace with; at least two, since torch.export treats a batch of 1 as fixed."""
    rows = tensor[:TRACE_ROWS]
    return rows.repeat(2, *[1] * (rows.dim() - 1)) if len(rows) == 1 else rows


def _named_outputs(out: Any, output_names: Sequence[str] | None) -> dict[str, Any]:
    import torch

    if isinstance(out, Mapping):
        named = dict(out)
    else:
        tensors = [out] if isinstance(out, torch.Tensor) else list(out)
        names = list(output_names or [f"output__{i}" for i in range(len(tensors))])
        if len(names) != len(tensors):
            raise ValueError(f"the model returns {len(tensors)} tensors but got names {names}")
        named = dict(zip(names, tensors, strict=True))
    if not all(isinstance(t, torch.Tensor) for t in named.values()):
        raise ValueError("the model must return a tensor, a tuple of tensors or a dict of tensors")
    return {k: v.detach() for k, v in named.items()}


@contextlib.contextmanager
def _quiet_export() -> Iterator[None]:
    """torch.export prints whole graphs when it fails; the fallback makes that noise, not news."""
    logger = logging.getLogger("torch")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        logger.setLevel(level)


def _compare(expected: Mapping[str, Any], got: Mapping[str, np.ndarray], hint: str = "") -> None:
    """Raise ModelMismatch unless got reproduces expected within tolerance."""
    import torch

    for name, want in expected.items():
        have = torch.from_numpy(got[name])
        want = torch.as_tensor(want).cpu()
        if have.shape != want.shape or have.dtype != want.dtype:
            raise ModelMismatch(
                f"output {name!r}: the saved model gives {have.dtype} {list(have.shape)}, "
                f"the live model {want.dtype} {list(want.shape)}{hint}"
            )
        same = (
            torch.allclose(have, want, atol=ATOL, rtol=RTOL, equal_nan=True)
            if want.is_floating_point()
            else torch.equal(have, want)
        )
        if not same:
            worst = (have.double() - want.double()).abs().nan_to_num(math.inf).max().item()
            raise ModelMismatch(
                f"output {name!r}: the saved model differs from the live model by up to "
                f"{worst:.3g} (allowed atol {ATOL}, rtol {RTOL}){hint}"
            )


class LoadedModel:
    """A model folder loaded for inference: checked inputs in, named numpy outputs out."""

    def __init__(self, folder: Path, device: str = "cpu") -> None:
        import torch

        self.folder = Path(folder)
        self.signature = Signature.read(self.folder)
        self.device = torch.device(device)
        path = self.folder / self.signature.file
        if self.signature.format == FORMAT_EXPORT:
            program = torch.export.load(path)
            if self.device.type != "cpu":
                from torch.export.passes import move_to_device_pass

                program = move_to_device_pass(program, self.device)
            self._module = program.module()
        elif self.signature.format == FORMAT_SCRIPT:
            self._module = torch.jit.load(str(path), map_location=self.device).eval()
        else:
            raise ValueError(f"unknown model format {self.signature.format!r} in {path.parent}")

    def predict(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run a checked batch through the model; raises InvalidInput for inputs that don't fit."""
        import torch

        arrays = check_inputs(self.signature, inputs)
        args = _to_torch({s.name: arrays[s.name] for s in self.signature.inputs}, self.device)
        with torch.inference_mode():
            tensors = self.forward(*args)
        return {
            s.name: t.detach().cpu().numpy() for s, t in zip(self.signature.outputs, tensors, strict=True)
        }

    def forward(self, *args: Any) -> list[Any]:
        """The output tensors, in the signature's order, of input tensors in its order (gradients flow)."""
        import torch

        out = self._module(*args)
        if isinstance(out, Mapping):
            return [out[s.name] for s in self.signature.outputs]
        return [out] if isinstance(out, torch.Tensor) else list(out)


def load_model(folder: Path, device: str = "cpu") -> LoadedModel:
    """Load a model folder for serving or batch inference, without the code that trained it."""
    return LoadedModel(folder, device)


def verify_folder(folder: Path, sample: Path | None = None) -> Signature:
    """Re-run a stored sample (default the folder's sample.npz) and require the stored outputs.

    Used before registering a folder given by path: raises ModelMismatch (or
    FileNotFoundError/ValueError for a folder that is not a model) when it fails.
    """
    folder = Path(folder)
    model = load_model(folder)
    sample_path = Path(sample) if sample else folder / SAMPLE_FILE
    if not sample_path.is_file():
        raise FileNotFoundError(f"no sample to verify with: {sample_path} is missing")
    with np.load(sample_path, allow_pickle=False) as stored:
        inputs = {k.removeprefix("inputs/"): stored[k] for k in stored if k.startswith("inputs/")}
        expected = {k.removeprefix("outputs/"): stored[k] for k in stored if k.startswith("outputs/")}
    try:
        got = model.predict(inputs)
    except InvalidInput as exc:
        raise ModelMismatch(f"the stored sample does not fit the signature: {exc}") from None
    if sorted(expected) != sorted(s.name for s in model.signature.outputs):
        raise ModelMismatch(
            f"the sample holds outputs {sorted(expected)} but the signature declares "
            f"{spec_names(model.signature.outputs)}"
        )
    _compare(expected, got)
    return model.signature


def verify_answer(folder: Path, sample: Path | None = None) -> dict[str, Any]:
    """verify_folder as one answer {ok, message, signature}: the caller is another process, so every
    failure becomes its message."""
    try:
        signature = verify_folder(folder, sample)
    except Exception as exc:
        return {"ok": False, "message": f"{type(exc).__name__}: {exc}", "signature": None}
    message = f"{folder} reproduces its stored outputs"
    return {"ok": True, "message": message, "signature": signature.to_dict()}


def verify_request(request: Mapping[str, Any]) -> dict[str, Any]:
    """One request of the agent's verifier process; the model it loaded is gone before the next one."""
    sample = request.get("sample")
    try:
        return verify_answer(Path(request["folder"]), Path(sample) if sample else None)
    finally:
        gc.collect()  # a loaded program holds reference cycles: free this user's model now, not later
        gc.freeze()  # what survives is the process's own (torch's modules): later collections skip it


def main(argv: Sequence[str] | None = None) -> int:
    """`verify FOLDER`: one JSON line, exit 0 when the folder verifies; `serve`: the agent's verifier."""
    parser = argparse.ArgumentParser(prog="python -m mldeck.core.modelfile")
    sub = parser.add_subparsers(dest="command", required=True)
    verify = sub.add_parser("verify", help="re-run a model folder's stored sample")
    verify.add_argument("folder", type=Path)
    verify.add_argument("--sample", type=Path, help="an .npz sample instead of the folder's own")
    sub.add_parser("serve", help="verify one JSON request line after another, until stdin closes")
    args = parser.parse_args(argv)
    if args.command == "serve":
        return serve_stdio(verify_request)
    result = verify_answer(args.folder, args.sample)
    print(json.dumps(result), flush=True)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
