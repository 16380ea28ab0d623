"""KServe v2 (Open Inference Protocol) bodies: JSON tensors and the binary tensor data extension."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Annotated, Any, TypeVar

import msgspec
import numpy as np

from mldeck.core.signature import InvalidInput, Signature, numpy_dtype

HEADER_LENGTH = "Inference-Header-Content-Length"
JSON_TYPE = "application/json"
BINARY_TYPE = "application/octet-stream"

_encode = msgspec.json.Encoder().encode
T = TypeVar("T")


class BadRequest(ValueError):
    """A request the caller must fix; becomes a 4xx with its message as the error."""

    def __init__(self, message: str, status: int = 400, reason: str = "bad_input") -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


MAX_DIM = 2**40
REQUEST_SHAPE = ('an inference request is a JSON object with a non-empty "inputs" list of '
                 '{"name", "datatype", "shape", "data"}')


class InferRequest(msgspec.Struct, kw_only=True):
    """The parts of a decoded request the server acts on; inputs' data may be arrays from binary."""

    id: str | None
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]] | None
    binary_output: bool


class _Input(msgspec.Struct):
    name: str
    datatype: str
    shape: list[Annotated[int, msgspec.Meta(ge=0, le=MAX_DIM)]]
    data: Any = msgspec.UNSET
    parameters: dict[str, Any] = {}


class _Output(msgspec.Struct):
    name: str
    parameters: dict[str, Any] = {}


class _Request(msgspec.Struct):
    inputs: Annotated[list[_Input], msgspec.Meta(min_length=1)]
    id: str | None = None
    outputs: list[_Output] | None = None
    parameters: dict[str, Any] = {}


_decode_request = msgspec.json.Decoder(_Request).decode


def decode_json(data: bytes | memoryview, what: str, decode: Callable[[Any], T], shape: str) -> T:
    """JSON decoded, or a BadRequest that says why: malformed, mistyped (`shape` says what fits) or
    nested too deeply."""
    try:
        return decode(data)
    except msgspec.ValidationError as exc:
        raise BadRequest(f"{what}: {exc}; {shape}") from None
    except msgspec.DecodeError as exc:
        raise BadRequest(f"{what} is not valid JSON: {exc}") from None
    except RecursionError:
        raise BadRequest(f"{what} is nested too deeply") from None


def _header_length(value: str | None, size: int) -> int | None:
    if value is None:
        return None
    try:
        length = int(value)
    except ValueError:
        raise BadRequest(f"{HEADER_LENGTH} must be a whole number, got {value!r}") from None
    if not 0 < length <= size:
        raise BadRequest(f"{HEADER_LENGTH} {length} does not fit a body of {size} bytes")
    return length


def _flag(params: Mapping[str, Any], key: str, default: bool, where: str) -> bool:
    value = params.get(key, default)
    if not isinstance(value, bool):
        raise BadRequest(f"{where}: parameter {key} must be true or false, got {_kind(value)}")
    return value


def parse_infer(body: bytes, header_length: str | None, max_id_chars: int) -> InferRequest:
    """Split JSON from binary tensors and attach each binary input's bytes as an array."""
    length = _header_length(header_length, len(body))
    head = body if length is None else memoryview(body)[:length]
    req = decode_json(head, "the request body", _decode_request, REQUEST_SHAPE)
    if req.id is not None and len(req.id) > max_id_chars:
        raise BadRequest(f'"id" is {len(req.id)} characters; the limit is {max_id_chars}')
    binary_output = _flag(req.parameters, "binary_data_output", False, "the request")
    binary = memoryview(body)[length:] if length is not None else memoryview(b"")
    offset = 0
    inputs = []
    for item in req.inputs:
        size = item.parameters.get("binary_data_size")
        if size is not None:
            if type(size) is not int:
                raise BadRequest(f"input {item.name!r}: binary_data_size must be a whole number, "
                                 f"got {_kind(size)}")
            if size < 0 or offset + size > len(binary):
                raise BadRequest(
                    f"input {item.name!r}: binary_data_size {size} runs past the "
                    f"{len(binary)} bytes of binary data after the JSON header"
                )
            item.data = _from_bytes(item.name, item.datatype, binary[offset : offset + size])
            offset += size
        tensor = {"name": item.name, "datatype": item.datatype, "shape": item.shape}
        if item.data is not msgspec.UNSET:
            tensor["data"] = item.data
        inputs.append(tensor)
    if offset != len(binary):
        raise BadRequest(f"{len(binary) - offset} bytes of binary data belong to no input")
    outputs = None
    if req.outputs is not None:
        outputs = [{"name": o.name, "binary": _flag(o.parameters, "binary_data", binary_output,
                                                       f"output {o.name!r}")} for o in req.outputs]
    return InferRequest(id=req.id, inputs=inputs, outputs=outputs, binary_output=binary_output)


def _kind(value: Any) -> str:
    """What a value is, for an error message that must not echo (or recurse into) what was sent."""
    return "null" if value is None else f"a {type(value).__name__}"


def _from_bytes(name: str, datatype: str, raw: memoryview) -> np.ndarray:
    if datatype == "BYTES":
        raise BadRequest(f"input {name!r}: BYTES tensors are not supported by torch models")
    try:
        dtype = numpy_dtype(datatype).newbyteorder("<")
    except InvalidInput as exc:
        raise BadRequest(str(exc)) from None
    if len(raw) % dtype.itemsize:
        raise BadRequest(
            f"input {name!r}: {len(raw)} bytes is not a whole number of {datatype} values"
        )
    return np.frombuffer(raw, dtype=dtype)


def check_outputs(signature: Signature, request: InferRequest) -> list[tuple[str, bool]]:
    """The outputs to send, each with whether it goes binary; unknown names are the caller's error."""
    known = [s.name for s in signature.outputs]
    if request.outputs is None:
        return [(name, request.binary_output) for name in known]
    chosen = []
    for out in request.outputs:
        if out["name"] not in known:
            raise BadRequest(f"unknown output {out['name']!r}; this model gives {', '.join(known)}")
        chosen.append((out["name"], out["binary"]))
    return chosen


def encode_response(
    model: str,
    version: int,
    request_id: str | None,
    signature: Signature,
    outputs: Mapping[str, np.ndarray],
    chosen: Sequence[tuple[str, bool]],
) -> tuple[bytes, dict[str, str]]:
    """The v2 response body and its headers: all JSON, or JSON then binary tensors in output order."""
    types = {s.name: s.datatype for s in signature.outputs}
    entries = []
    blobs = []
    for name, binary in chosen:
        array = outputs[name]
        entry: dict[str, Any] = {"name": name, "datatype": types[name], "shape": list(array.shape)}
        if binary:
            blob = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = array.ravel().tolist()
        entries.append(entry)
    reply: dict[str, Any] = {"model_name": model, "model_version": str(version), "outputs": entries}
    if request_id is not None:
        reply["id"] = request_id
    head = _encode(reply)
    if not blobs:
        return head, {"Content-Type": JSON_TYPE}
    return b"".join([head, *blobs]), {"Content-Type": BINARY_TYPE, HEADER_LENGTH: str(len(head))}
