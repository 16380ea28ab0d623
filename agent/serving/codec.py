"""KServe v2 (Open Inference Protocol) bodies: JSON tensors and the binary tensor data extension."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import msgspec
import numpy as np

from mldeck.core.signature import InvalidInput, Signature, numpy_dtype

HEADER_LENGTH = "Inference-Header-Content-Length"
JSON_TYPE = "application/json"
BINARY_TYPE = "application/octet-stream"

_encode = msgspec.json.Encoder().encode


class BadRequest(ValueError):
    """A request the caller must fix; becomes a 4xx with its message as the error."""

    def __init__(self, message: str, status: int = 400, reason: str = "bad_input") -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


class InferRequest(msgspec.Struct, kw_only=True):
    """The parts of a decoded request the server acts on; inputs' data may be arrays from binary."""

    id: str | None
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]] | None
    binary_output: bool


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


def _params(obj: Mapping[str, Any], where: str) -> Mapping[str, Any]:
    params = obj.get("parameters") or {}
    if not isinstance(params, Mapping):
        raise BadRequest(f"{where}: parameters must be an object")
    return params


def parse_infer(body: bytes, header_length: str | None) -> InferRequest:
    """Split JSON from binary tensors and attach each binary input's bytes as an array."""
    length = _header_length(header_length, len(body))
    head = body if length is None else body[:length]
    try:
        obj = msgspec.json.decode(head)
    except msgspec.DecodeError as exc:
        raise BadRequest(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("inputs"), list) or not obj["inputs"]:
        raise BadRequest('an inference request is a JSON object with a non-empty "inputs" list')
    request_id = obj.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise BadRequest('"id" must be a string')
    outputs = obj.get("outputs")
    if outputs is not None and (
        not isinstance(outputs, list) or not all(isinstance(o, dict) and "name" in o for o in outputs)
    ):
        raise BadRequest('"outputs" must be a list of objects with a "name"')
    binary_output = bool(_params(obj, "request").get("binary_data_output", False))
    binary = memoryview(body)[length:] if length is not None else memoryview(b"")
    offset = 0
    for item in obj["inputs"]:
        if not isinstance(item, dict):
            raise BadRequest("each input must be an object with name, datatype, shape and data")
        size = _params(item, f"input {item.get('name')!r}").get("binary_data_size")
        if size is None:
            continue
        if not isinstance(size, int) or size < 0 or offset + size > len(binary):
            raise BadRequest(
                f"input {item.get('name')!r}: binary_data_size {size!r} runs past the "
                f"{len(binary)} bytes of binary data after the JSON header"
            )
        item["data"] = _from_bytes(item, binary[offset : offset + size])
        offset += size
    if offset != len(binary):
        raise BadRequest(f"{len(binary) - offset} bytes of binary data belong to no input")
    return InferRequest(id=request_id, inputs=obj["inputs"], outputs=outputs, binary_output=binary_output)


def _from_bytes(item: Mapping[str, Any], raw: memoryview) -> np.ndarray:
    name = item.get("name")
    datatype = item.get("datatype")
    if datatype == "BYTES":
        raise BadRequest(f"input {name!r}: BYTES tensors are not supported by torch models")
    try:
        dtype = numpy_dtype(str(datatype)).newbyteorder("<")
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
        binary = _params(out, f"output {out['name']!r}").get("binary_data", request.binary_output)
        chosen.append((out["name"], bool(binary)))
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
