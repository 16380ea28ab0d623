"""What stock clients and dashboards expect: tritonclient's config, statistics and repository index,
the spec's `id` and `versions`, and Triton's metric families (GPU ones from the simulated device)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.serving.conftest import FEATURES, ServerProc, infer_body, start_server

pytestmark = pytest.mark.timeout(180)

TRITON_INFERENCE = ("nv_inference_request_success", "nv_inference_request_failure", "nv_inference_count",
                    "nv_inference_exec_count", "nv_inference_request_duration_us",
                    "nv_inference_queue_duration_us", "nv_inference_compute_input_duration_us",
                    "nv_inference_compute_infer_duration_us", "nv_inference_compute_output_duration_us",
                    "nv_inference_pending_request_count")
TRITON_GPU = ("nv_gpu_utilization", "nv_gpu_memory_total_bytes", "nv_gpu_memory_used_bytes",
              "nv_gpu_power_usage", "nv_energy_consumption")
TRITON_CPU = ("nv_cpu_utilization", "nv_cpu_memory_total_bytes", "nv_cpu_memory_used_bytes")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, model_dirs: dict[str, Path]) -> Iterator[ServerProc]:
    """Versions 10 (production) and 2 (challenger): 10 sorts after 2 only as a number."""
    proc = start_server(tmp_path_factory.mktemp("triton-home"), "--max-batch-size", "32")
    proc.manifest({"mlp": {"aliases": {"production": (10, model_dirs["v1"]),
                                       "challenger": (2, model_dirs["v2"])}}})
    proc.wait_serving("mlp", {"production": 10, "challenger": 2})
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def client(server: ServerProc) -> Iterator[Any]:
    import tritonclient.http as httpclient

    c = httpclient.InferenceServerClient(f"127.0.0.1:{server.port}")
    yield c
    c.close()


def infer(client: Any, rows: np.ndarray, version: str = "", **kw: Any) -> Any:
    import tritonclient.http as httpclient

    tensor = httpclient.InferInput("input__0", list(rows.shape), "FP32")
    tensor.set_data_from_numpy(rows)
    return client.infer("mlp", [tensor], model_version=version, **kw)


def test_get_model_config(client: Any) -> None:
    config = client.get_model_config("mlp")
    assert config["name"] == "mlp" and config["max_batch_size"] == 32
    assert config["input"] == [{"name": "input__0", "data_type": "TYPE_FP32", "dims": [FEATURES]}]
    assert config["output"] == [{"name": "scores", "data_type": "TYPE_FP32", "dims": [3]}]
    assert config["version_policy"] == {"specific": {"versions": [2, 10]}}
    assert config["dynamic_batching"]["max_queue_delay_microseconds"] == 1000
    assert client.get_model_config("mlp", "2")["name"] == "mlp"
    from tritonclient.utils import InferenceServerException

    with pytest.raises(InferenceServerException, match="no served version 7"):
        client.get_model_config("mlp", "7")


def test_get_inference_statistics(client: Any) -> None:
    rows = np.random.default_rng(0).normal(size=(3, FEATURES)).astype(np.float32)
    before = client.get_inference_statistics("mlp", "10")["model_stats"][0]
    for _ in range(4):
        infer(client, rows)
    infer(client, rows, "2")
    stats = client.get_inference_statistics("mlp")["model_stats"]
    assert [(s["name"], s["version"]) for s in stats] == [("mlp", "2"), ("mlp", "10")]
    ten = stats[1]
    assert ten["inference_stats"]["success"]["count"] == before["inference_stats"]["success"]["count"] + 4
    assert ten["inference_count"] == before["inference_count"] + 12
    assert ten["execution_count"] >= before["execution_count"] + 1 and ten["last_inference"] > 0
    for phase in ("queue", "compute_input", "compute_infer", "compute_output"):
        assert ten["inference_stats"][phase]["count"] >= 4 and ten["inference_stats"][phase]["ns"] > 0, phase
    assert {b["batch_size"] for b in ten["batch_stats"]} >= {3}
    assert stats[0]["inference_stats"]["success"]["count"] >= 1
    everything = client.get_inference_statistics()["model_stats"]
    assert [(s["name"], s["version"]) for s in everything] == [("mlp", "2"), ("mlp", "10")]


def test_get_model_repository_index(client: Any) -> None:
    assert client.get_model_repository_index() == [
        {"name": "mlp", "version": "2", "state": "READY"},
        {"name": "mlp", "version": "10", "state": "READY"},
    ]


def test_metadata_lists_every_served_version_and_ids_are_echoed_only_when_given(
    server: ServerProc, client: Any
) -> None:
    assert client.get_model_metadata("mlp")["versions"] == ["2", "10"]
    rows = np.ones((1, FEATURES), np.float32)
    body = json.dumps(infer_body(rows)).encode()
    with urllib.request.urlopen(urllib.request.Request(server.url + "/v2/models/mlp/infer", data=body),
                                timeout=10) as resp:
        reply = json.loads(resp.read())
        generated = resp.headers["X-Request-ID"]
    assert "id" not in reply and generated  # the spec echoes an id only when the request had one
    assert infer(client, rows).get_response().get("id") is None
    gzipped = infer(client, rows, request_id="gz-1", request_compression_algorithm="gzip")
    assert gzipped.get_response()["id"] == "gz-1" and gzipped.as_numpy("scores").shape == (1, 3)


def test_metrics_are_triton_families_with_triton_labels(server: ServerProc) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    rows = np.ones((1, FEATURES), np.float32)
    req = urllib.request.Request(server.url + "/v2/models/mlp/versions/7/infer",
                                 data=json.dumps(infer_body(rows)).encode())
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(req, timeout=10)
    assert missing.value.code == 404
    with urllib.request.urlopen(server.url + "/metrics", timeout=10) as resp:
        assert resp.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
        text = resp.read().decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name in (*TRITON_INFERENCE, *TRITON_GPU, *TRITON_CPU):
        assert name in families, name
    for name in TRITON_GPU:
        samples = families[name].samples
        assert len(samples) == 2 and all(set(s.labels) == {"gpu_uuid"} for s in samples), samples
    total = families["nv_gpu_memory_total_bytes"].samples[0].value
    assert total == 40 * 1024**3  # the simulated A100
    assert 0 <= families["nv_cpu_utilization"].samples[0].value <= 1
    for name in TRITON_INFERENCE:
        want = {"model", "version"} | ({"reason"} if name == "nv_inference_request_failure" else set())
        for sample in families[name].samples:
            assert set(sample.labels) == want, (name, sample)
    failures = {(s.labels["version"], s.labels["reason"]): s.value
                for s in families["nv_inference_request_failure"].samples}
    assert failures[("7", "OTHER")] == 1
    durations = [s for s in families["mldeck_request_duration_seconds"].samples if s.name.endswith("_count")]
    assert {s.labels["variant"] for s in durations} >= {"production", "version"}
