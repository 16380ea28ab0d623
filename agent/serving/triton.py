"""Bodies in the shapes Triton's extensions give them, so stock clients read them unchanged.

`GET /v2/models/{m}/config` (tritonclient get_model_config), the model repository index
(`POST /v2/repository/index`) and the platform name shared with the v2 model metadata. The
statistics extension's entries come from metrics.VersionStats.
"""

from __future__ import annotations

from typing import Any

import msgspec

from mldeck.core.signature import Signature, TensorSpec


class IndexRequest(msgspec.Struct, forbid_unknown_fields=True):
    """The optional body of POST /v2/repository/index."""

    ready: bool = False


def platform(sig: Signature) -> str:
    return "pytorch_torchscript" if sig.format == "torchscript" else "pytorch_torch_export"


def _data_type(datatype: str) -> str:
    return "TYPE_STRING" if datatype == "BYTES" else f"TYPE_{datatype}"


def model_config(name: str, sig: Signature, versions: list[int], max_batch_size: int,
                 max_queue_delay_ms: float, device: str) -> dict[str, Any]:
    """The model configuration Triton would report: with batching, dims leave out the batch dimension."""
    batched = all(s.shape[:1] == [-1] for s in [*sig.inputs, *sig.outputs])

    def tensor(spec: TensorSpec) -> dict[str, Any]:
        return {"name": spec.name, "data_type": _data_type(spec.datatype),
                "dims": spec.shape[1:] if batched else spec.shape}

    config: dict[str, Any] = {
        "name": name,
        "platform": platform(sig),
        "backend": "pytorch",
        "version_policy": {"specific": {"versions": versions}},
        "max_batch_size": max_batch_size if batched else 0,
        "input": [tensor(s) for s in sig.inputs],
        "output": [tensor(s) for s in sig.outputs],
        "instance_group": [{"name": name, "count": 1,
                            "kind": "KIND_GPU" if device.startswith("cuda") else "KIND_CPU"}],
        "parameters": {"allow_nan": {"string_value": str(sig.allow_nan).lower()}},
    }
    if batched:
        config["dynamic_batching"] = {"max_queue_delay_microseconds": int(max_queue_delay_ms * 1000)}
    return config


def index_entry(name: str, version: int, reason: str | None = None) -> dict[str, str]:
    """One row of the repository index: READY, or UNAVAILABLE with why."""
    if reason is None:
        return {"name": name, "version": str(version), "state": "READY"}
    return {"name": name, "version": str(version), "state": "UNAVAILABLE", "reason": reason}
