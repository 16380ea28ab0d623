"""A model's signature, the request checks built on it, and logged tensors as columns: no torch here.

The registry, the model server's codec, the monitor, serving and batch inference share these:
the files of a model folder, the KServe v2 datatypes, checks that turn a bad request into one
clear message, and the layout that turns logged JSON tensors into named columns.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

SIGNATURE_FILE = "signature.json"
SAMPLE_FILE = "sample.npz"
COLUMNS_FILE = "columns.json"
REFERENCE_FILE = "reference.parquet"
"""A model folder's drift reference: training rows as columns (see core.modelfile.reference_parquet)."""

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
        raise InvalidInput(f"unknown input {name!r}; this model takes {spec_names(self.inputs)}")


def spec_names(specs: Sequence[TensorSpec]) -> str:
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


_KINDS = {"b": "b", "u": "ui", "i": "ui", "f": "uif"}  # value kinds each target accepts: no bools as numbers


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


def cast_input(spec: TensorSpec, data: Any) -> np.ndarray:
    """Values for an input (columns of a file, say) as its datatype, refusing lossy casts like _as_array."""
    return _as_array(spec.name, spec.datatype, data)


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
        arrays[name] = check_input(signature, name, datatype_of_input(name, a), a.shape, a)
    _check_complete(signature, arrays)
    return arrays


def datatype_of_input(name: str, array: np.ndarray) -> str:
    try:
        return datatype_of(np.asarray(array).dtype)
    except ValueError as exc:
        raise InvalidInput(f"input {name!r}: {exc}") from None


def _check_complete(signature: Signature, arrays: Mapping[str, np.ndarray]) -> None:
    missing = [s for s in signature.inputs if s.name not in arrays]
    if missing:
        raise InvalidInput(f"missing input {spec_names(missing)}")
    batch = {len(a) for a in arrays.values()}
    if len(batch) > 1:
        raise InvalidInput(f"all inputs must have the same batch size, got {sorted(batch)}")


def column_names(folder: Path) -> dict[str, list[str]]:
    """Tensor → the names of its columns, from the columns.json an export wrote (none: {})."""
    try:
        names = json.loads((Path(folder) / COLUMNS_FILE).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(names, dict):
        return {}
    return {k: [str(c) for c in v] for k, v in names.items() if isinstance(v, list)}


def check_features(
    inputs: Sequence[TensorSpec], features: Mapping[str, Sequence[str]]
) -> dict[str, list[str]]:
    """Names given to inputs' columns, checked: each names every column of a table input ([-1, n]) once."""
    specs = {s.name: s for s in inputs}
    out: dict[str, list[str]] = {}
    for name, given in features.items():
        if name not in specs:
            raise ValueError(f"features name input {name!r}; this model takes {spec_names(inputs)}")
        spec, names = specs[name], list(given)
        if len(spec.shape) != 2:
            kind = "one column named after it" if len(spec.shape) < 2 else f"N-D, its columns {name}[i]"
            raise ValueError(
                f"features name the columns of a table input ([-1, n]); {spec.describe()} is {kind}"
            )
        if not all(isinstance(n, str) and n for n in names):
            raise ValueError(f"input {name!r}: feature names must be non-empty strings, got {names}")
        if len(names) != spec.shape[1]:
            raise ValueError(f"input {name!r} has {spec.shape[1]} columns but {len(names)} feature names")
        out[name] = names
    layout = tensor_columns([msgspec.to_builtins(s) for s in inputs], out)
    twice = sorted(c for c, n in Counter(c for cols in layout.values() for c in cols).items() if n > 1)
    if twice:
        raise ValueError(f"column names must be unique across the inputs; given twice: {twice}")
    return out


def tensor_columns(
    tensors: Sequence[Mapping[str, Any]], names: Mapping[str, list[str]] | None = None
) -> dict[str, list[str]]:
    """Tensor name → the column names its last dimension holds.

    A 1-D tensor is one column named after it; a 2-D tensor's columns come from
    columns.json when it names them, else `<tensor>[i]`.
    """
    out: dict[str, list[str]] = {}
    for spec in tensors:
        name, shape = spec["name"], list(spec.get("shape") or [-1])
        if len(shape) <= 1:
            out[name] = [name]
        elif len(shape) == 2 and shape[1] > 0:
            given = (names or {}).get(name)
            out[name] = list(given) if given and len(given) == shape[1] else [
                f"{name}[{i}]" for i in range(shape[1])
            ]
    return out


def decode_tensors(rows: Sequence[str | None], layout: Mapping[str, list[str]]) -> dict[str, np.ndarray]:
    """Logged JSON tensors ({tensor: rows}) of many requests → one array per column."""
    out: dict[str, list[np.ndarray]] = {c: [] for cols in layout.values() for c in cols}
    for text in rows:
        if not text:
            continue
        obj = msgspec.json.decode(text)
        if not isinstance(obj, dict):
            continue
        for tensor, cols in layout.items():
            data = obj.get(tensor)
            if data is None:
                continue
            arr = np.asarray(data)
            if arr.ndim == 1 and len(cols) == 1:
                out[cols[0]].append(arr)
            elif arr.ndim == 2 and arr.shape[1] == len(cols):
                for i, c in enumerate(cols):
                    out[c].append(arr[:, i])
    return {c: np.concatenate(parts) if parts else np.empty(0) for c, parts in out.items()}
