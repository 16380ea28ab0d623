"""A registered model on disk: export, verify, load and the request checks built on its signature.

A model folder holds `model.pt2` (torch.export) or `model.pt` (TorchScript, the
fallback), `signature.json` and `sample.npz` (inputs and the outputs the live
model gave for them), so a model can be served and re-verified without the code
that trained it. torch is imported only inside the functions that need it: the
Signature and the request checks work in processes that never load torch.
`python -m core.modelfile verify FOLDER` re-checks a folder in its own process
and prints one JSON line {ok, message, signature}.
"""

from __future__ import annotations

import argparse
import contextlib
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

import msgspec
import numpy as np

from core.atomic import write_atomic
from core.paths import check_name

if TYPE_CHECKING:
    import torch

SIGNATURE_FILE = "signature.json"
SAMPLE_FILE = "sample.npz"
EXPORT_FILE = "model.pt2"
SCRIPT_FILE = "model.pt"
FORMAT_EXPORT = "torch.export"
FORMAT_SCRIPT = "torchscript"
VERIFY_ROWS = 10_000
STORED_ROWS = 256
TRACE_ROWS = 8
ATOL = 1e-5
RTOL = 1e-4

# KServe v2 (Open Inference Protocol) tensor datatypes, by numpy dtype name.
_DATATYPES = {
    "bool": "BOOL",
    "uint8": "UINT8",
    "uint16": "UINT16",
    "uint32": "UINT32",
    "uint64": "UINT64",
    "int8": "INT8",
    "int16": "INT16",
    "int32": "INT32",
    "int64": "INT64",
    "float16": "FP16",
    "float32": "FP32",
    "float64": "FP64",
    "object": "BYTES",
    "bytes": "BYTES",
}
_NUMPY_DTYPES = {v: k for k, v in _DATATYPES.items() if k not in ("object", "bytes")}


class ModelMismatch(Exception):
    """The saved model does not reproduce the live model's outputs, so it must not be used."""


class InvalidInput(ValueError):
    """Inputs that do not fit the signature; the message is written for the caller to act on."""


class TensorSpec(msgspec.Struct, frozen=True):
    """One named tensor: KServe v2 datatype and shape, -1 for the batch dimension."""

    name: str
    datatype: str
    shape: list[int]

    def describe(self) -> str:
        """The spec as a person reads it, for error messages."""
        return f"{self.name} ({self.datatype} {self.shape})"


class Signature(msgspec.Struct, kw_only=True):
    """What a model folder takes and returns, and how its file was made."""

    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    format: str
    file: str
    allow_nan: bool = False
    torch_version: str | None = None
    fallback_reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data, for signature.json and the registry."""
        return msgspec.to_builtins(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Signature:
        """Parse and type-check a stored signature."""
        try:
            return msgspec.convert(dict(data), cls)
        except msgspec.ValidationError as exc:
            raise ValueError(f"invalid model signature: {exc}") from None

    @classmethod
    def read(cls, folder: Path) -> Signature:
        """The signature.json of a model folder."""
        path = Path(folder) / SIGNATURE_FILE
        if not path.is_file():
            raise FileNotFoundError(
                f"{folder} is not a model folder: {SIGNATURE_FILE} is missing "
                "(make one with core.modelfile.export_model)"
            )
        return cls.from_dict(json.loads(path.read_text()))

    def input(self, name: str) -> TensorSpec:
        """The input called name, or an error listing the inputs there are."""
        for spec in self.inputs:
            if spec.name == name:
                return spec
        raise InvalidInput(f"unknown input {name!r}; this model takes {_list(self.inputs)}")


def _list(specs: Sequence[TensorSpec]) -> str:
    return ", ".join(s.describe() for s in specs)


def datatype_of(dtype: np.dtype[Any] | str) -> str:
    """The KServe v2 datatype name of a numpy (or torch, by name) dtype."""
    name = str(dtype).removeprefix("torch.")
    if name not in _DATATYPES:
        raise ValueError(f"dtype {name} has no KServe v2 datatype")
    return _DATATYPES[name]


def numpy_dtype(datatype: str) -> np.dtype[Any]:
    """The numpy dtype for a KServe v2 datatype, so callers can cast before predicting."""
    if datatype not in _NUMPY_DTYPES:
        raise InvalidInput(f"datatype {datatype!r} is not supported by torch models")
    return np.dtype(_NUMPY_DTYPES[datatype])


def check_input(
    signature: Signature, name: str, datatype: str, shape: Sequence[int], data: Any
) -> np.ndarray:
    """One request input checked against the signature and returned as an array of its shape."""
    spec = signature.input(name)
    if datatype != spec.datatype:
        raise InvalidInput(f"input {name!r} must be {spec.datatype}, got {datatype}")
    shape = list(shape)
    if len(shape) != len(spec.shape) or any(
        want != -1 and got != want for got, want in zip(shape, spec.shape, strict=False)
    ):
        raise InvalidInput(f"input {name!r} must have shape {spec.shape}, got {shape}")
    if any(not isinstance(d, int) or d < 0 for d in shape):
        raise InvalidInput(f"input {name!r} has an invalid shape {shape}")
    array = _as_array(name, datatype, data)
    if array.size != math.prod(shape):
        raise InvalidInput(f"input {name!r}: shape {shape} needs {math.prod(shape)} values, got {array.size}")
    array = array.reshape(shape)
    if not signature.allow_nan and array.dtype.kind == "f" and not np.isfinite(array).all():
        raise InvalidInput(f"input {name!r} contains NaN or infinity, which this model refuses")
    return array


_KINDS = {"b": "b", "u": "bu", "i": "bui", "f": "buif"}  # value kinds each target accepts


def _as_array(name: str, datatype: str, data: Any) -> np.ndarray:
    """The data as the datatype's dtype, refusing lossy casts (1.5 for INT64, "1" for FP32)."""
    target = numpy_dtype(datatype)
    try:
        raw = np.asarray(data)
    except ValueError:
        raise InvalidInput(f"input {name!r}: data is ragged, not a tensor") from None
    if raw.size and raw.dtype.kind not in _KINDS[target.kind]:
        raise InvalidInput(f"input {name!r}: data is not all {datatype} values")
    if raw.size and target.kind in "iu" and raw.dtype.kind in "iu":
        info = np.iinfo(target)
        if raw.min() < info.min or raw.max() > info.max:
            raise InvalidInput(f"input {name!r}: values out of range for {datatype}")
    return raw.astype(target, copy=False)


def check_request(signature: Signature, inputs: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
    """A v2 inference request's `inputs` list checked whole: every input once, one batch size."""
    arrays: dict[str, np.ndarray] = {}
    for item in inputs:
        missing = [k for k in ("name", "datatype", "shape", "data") if k not in item]
        if missing:
            raise InvalidInput(f"each input needs name, datatype, shape and data; missing {missing}")
        name = item["name"]
        if name in arrays:
            raise InvalidInput(f"input {name!r} is given twice")
        arrays[name] = check_input(signature, name, item["datatype"], item["shape"], item["data"])
    _check_complete(signature, arrays)
    return arrays


def check_inputs(signature: Signature, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Arrays (from predict or batch inference) checked against the signature like a request."""
    arrays = {}
    for name, value in inputs.items():
        a = np.asarray(value)
        arrays[name] = check_input(signature, name, _datatype_or_invalid(name, a), a.shape, a)
    _check_complete(signature, arrays)
    return arrays


def _datatype_or_invalid(name: str, array: np.ndarray) -> str:
    try:
        return datatype_of(np.asarray(array).dtype)
    except ValueError as exc:
        raise InvalidInput(f"input {name!r}: {exc}") from None


def _check_complete(signature: Signature, arrays: Mapping[str, np.ndarray]) -> None:
    missing = [s for s in signature.inputs if s.name not in arrays]
    if missing:
        raise InvalidInput(f"missing input {_list(missing)}")
    batch = {len(a) for a in arrays.values()}
    if len(batch) > 1:
        raise InvalidInput(f"all inputs must have the same batch size, got {sorted(batch)}")


# torch side -----------------------------------------------------------------


def export_model(
    model: torch.nn.Module,
    sample: Mapping[str, np.ndarray] | np.ndarray,
    folder: Path,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    *,
    allow_nan: bool = False,
    extra_files: Mapping[str, bytes] | None = None,
) -> Signature:
    """Save a torch model so it serves without its training code, and prove it gives the same answers.

    The model is called with the inputs as positional arguments in input_names order
    (the sample dict's order by default; "input__0" for a single array). It is
    exported as it is: call model.eval() first. extra_files (e.g. reference.parquet)
    are written into the folder before it appears, so readers never see it half made.
    """
    import torch

    folder = Path(folder)
    if folder.exists():
        raise FileExistsError(f"{folder} already exists; a model folder is written once")
    arrays = _name_inputs(sample, input_names)
    rows = min(len(next(iter(arrays.values()))), VERIFY_ROWS)
    arrays = {k: np.ascontiguousarray(v[:rows]) for k, v in arrays.items()}
    inputs = [
        TensorSpec(name, _datatype_or_invalid(name, a), [-1, *a.shape[1:]]) for name, a in arrays.items()
    ]
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
        for name, data in (extra_files or {}).items():
            write_atomic(tmp / check_name(name, "extra file name"), data)
        os.rename(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return signature


def _name_inputs(
    sample: Mapping[str, np.ndarray] | np.ndarray, input_names: Sequence[str] | None
) -> dict[str, np.ndarray]:
    if isinstance(sample, Mapping):
        names = list(input_names or sample)
        if sorted(names) != sorted(sample):
            raise ValueError(f"input_names {names} must name the sample's keys {list(sample)}")
        arrays = {n: np.asarray(sample[n]) for n in names}
    else:
        names = list(input_names or ["input__0"])
        if len(names) != 1:
            raise ValueError(f"a single sample array takes one input name, got {names}")
        arrays = {names[0]: np.asarray(sample)}
    if not arrays or any(a.ndim == 0 or len(a) == 0 for a in arrays.values()):
        raise ValueError("the sample needs at least one input with a batch dimension and rows")
    return arrays


def _to_torch(arrays: Mapping[str, np.ndarray], device: Any) -> list[Any]:
    import torch

    return [torch.from_numpy(np.ascontiguousarray(a)).to(device or "cpu") for a in arrays.values()]


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
            out = self._module(*args)
        if isinstance(out, Mapping):
            tensors = [out[s.name] for s in self.signature.outputs]
        else:
            tensors = [out] if isinstance(out, torch.Tensor) else list(out)
        return {
            s.name: t.detach().cpu().numpy() for s, t in zip(self.signature.outputs, tensors, strict=True)
        }


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
            f"{_list(model.signature.outputs)}"
        )
    _compare(expected, got)
    return model.signature


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m core.modelfile verify FOLDER`: one JSON line, exit 0 when the folder verifies."""
    parser = argparse.ArgumentParser(prog="python -m core.modelfile")
    sub = parser.add_subparsers(dest="command", required=True)
    verify = sub.add_parser("verify", help="re-run a model folder's stored sample")
    verify.add_argument("folder", type=Path)
    verify.add_argument("--sample", type=Path, help="an .npz sample instead of the folder's own")
    args = parser.parse_args(argv)
    try:
        signature = verify_folder(args.folder, args.sample)
    except Exception as exc:  # the caller is another process: every failure becomes a message
        result = {"ok": False, "message": f"{type(exc).__name__}: {exc}", "signature": None}
    else:
        result = {
            "ok": True,
            "message": f"{args.folder} reproduces its stored outputs",
            "signature": signature.to_dict(),
        }
    print(json.dumps(result), flush=True)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
