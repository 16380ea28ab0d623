"""The model server over real HTTP: every route, every bad input, batching, swaps, shadow and canary."""

from __future__ import annotations

import asyncio
import json
import math
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import numpy as np
import pytest

from mldeck.core.modelfile import load_model
from tests.serving.conftest import FEATURES, ServerProc, infer_body, metric, post

pytestmark = pytest.mark.timeout(120)


def get(server: ServerProc, path: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(server.url + path, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def metrics_text(server: ServerProc) -> str:
    with urllib.request.urlopen(server.url + "/metrics", timeout=10) as resp:
        return resp.read().decode()


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def post_one(server: ServerProc, path: str, body: Any, **kw: Any) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session:
        return await post(session, server.url + path, body, **kw)


def test_health_metadata_and_ready_routes(server: ServerProc) -> None:
    assert get(server, "/v2/health/live") == (200, {"live": True})
    assert get(server, "/v2/health/ready") == (200, {"ready": True})
    status, meta = get(server, "/v2")
    assert status == 200 and "binary_tensor_data" in meta["extensions"]
    for path, version in (("/v2/models/mlp", 1), ("/v2/models/mlp/versions/2", 2),
                          ("/v2/models/mlp/aliases/challenger", 2), ("/v2/models/mlp@challenger", 2)):
        status, meta = get(server, path)
        assert status == 200, meta
        assert meta["parameters"]["version"] == version
        assert meta["inputs"] == [{"name": "input__0", "datatype": "FP32", "shape": [-1, FEATURES]}]
        assert meta["outputs"] == [{"name": "scores", "datatype": "FP32", "shape": [-1, 3]}]
        assert get(server, path + "/ready")[0] == 200
    for path, word in (("/v2/models/nope", "not served"), ("/v2/models/mlp/versions/7", "version 7"),
                       ("/v2/models/mlp/aliases/staging", "alias staging"), ("/v2/nothing", "no route")):
        status, body = get(server, path)
        assert status == 404 and word in body["error"], body


def test_infer_json_matches_the_model_and_echoes_id(server: ServerProc, model_dirs: dict[str, Path]) -> None:
    rows = np.random.default_rng(0).normal(size=(5, FEATURES)).astype(np.float32)
    want = {v: load_model(model_dirs[f"v{v}"]).predict({"input__0": rows})["scores"] for v in (1, 2)}
    routes = (("/v2/models/mlp/infer", 1), ("/v2/models/mlp/versions/2/infer", 2),
              ("/v2/models/mlp@challenger/infer", 2), ("/v2/models/mlp/aliases/production/infer", 1))
    for path, version in routes:
        status, reply = run(post_one(server, path, infer_body(rows, "abc-1")))
        assert status == 200, reply
        assert reply["id"] == "abc-1" and reply["model_version"] == str(version)
        (out,) = reply["outputs"]
        assert out["name"] == "scores" and out["shape"] == [5, 3] and out["datatype"] == "FP32"
        np.testing.assert_allclose(np.array(out["data"]).reshape(5, 3), want[version], rtol=1e-5, atol=1e-6)


def test_binary_tensor_extension_by_hand(server: ServerProc, model_dirs: dict[str, Path]) -> None:
    rows = np.random.default_rng(1).normal(size=(3, FEATURES)).astype(np.float32)
    head = msgspec.json.encode({
        "inputs": [{"name": "input__0", "datatype": "FP32", "shape": [3, FEATURES],
                    "parameters": {"binary_data_size": rows.nbytes}}],
        "outputs": [{"name": "scores", "parameters": {"binary_data": True}}],
    })

    async def go() -> tuple[int, dict[str, str], bytes]:
        async with aiohttp.ClientSession() as s, s.post(
            server.url + "/v2/models/mlp/infer", data=head + rows.tobytes(),
            headers={"Inference-Header-Content-Length": str(len(head))},
        ) as resp:
            return resp.status, dict(resp.headers), await resp.read()

    status, headers, body = run(go())
    assert status == 200
    n = int(headers["Inference-Header-Content-Length"])
    reply = json.loads(body[:n])
    size = reply["outputs"][0]["parameters"]["binary_data_size"]
    got = np.frombuffer(body[n:n + size], dtype="<f4").reshape(3, 3)
    want = load_model(model_dirs["v1"]).predict({"input__0": rows})["scores"]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_tritonclient_with_default_settings(server: ServerProc, model_dirs: dict[str, Path]) -> None:
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(f"127.0.0.1:{server.port}")
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("mlp")
    assert client.get_model_metadata("mlp")["name"] == "mlp"
    rows = np.random.default_rng(2).normal(size=(4, FEATURES)).astype(np.float32)
    tensor = httpclient.InferInput("input__0", list(rows.shape), "FP32")
    tensor.set_data_from_numpy(rows)  # binary by default
    result = client.infer("mlp", [tensor], request_id="triton-1")
    assert result.get_response()["id"] == "triton-1"
    want = load_model(model_dirs["v1"]).predict({"input__0": rows})["scores"]
    np.testing.assert_allclose(result.as_numpy("scores"), want, rtol=1e-5, atol=1e-6)
    result = client.infer("mlp", [tensor], model_version="2")
    assert result.get_response()["model_version"] == "2"
    client.close()


def _bad_cases() -> list[tuple[str, Any, dict[str, str], int, str]]:
    ok = infer_body(np.zeros((1, FEATURES), np.float32))
    nan_rows = np.zeros((1, FEATURES), np.float32)
    nan_rows[0, 3] = np.nan  # JSON has no NaN: it comes as a binary tensor
    nan_head = msgspec.json.encode({"inputs": [{
        "name": "input__0", "datatype": "FP32", "shape": [1, FEATURES],
        "parameters": {"binary_data_size": nan_rows.nbytes},
    }]})
    inf = json.loads(json.dumps(ok))
    inf["inputs"][0]["data"] = [1e39] * FEATURES  # overflows FP32 to infinity
    shape = json.loads(json.dumps(ok))
    shape["inputs"][0]["shape"] = [1, FEATURES + 1]
    dtype = json.loads(json.dumps(ok))
    dtype["inputs"][0]["datatype"] = "INT64"
    count = json.loads(json.dumps(ok))
    count["inputs"][0]["data"] = [0.0] * 5
    return [
        ("malformed JSON", b'{"inputs": [', {}, 400, "not valid JSON"),
        ("no inputs", {"outputs": []}, {}, 400, '"inputs"'),
        ("wrong input name", infer_body(np.zeros((1, FEATURES), np.float32), name="x"), {}, 400,
         "unknown input 'x'"),
        ("wrong shape", shape, {}, 400, "must have shape"),
        ("wrong datatype", dtype, {}, 400, "must be FP32"),
        ("wrong value count", count, {}, 400, "needs 16 values"),
        ("NaN", nan_head + nan_rows.tobytes(), {"Inference-Header-Content-Length": str(len(nan_head))},
         400, "NaN"),
        ("null", {"inputs": [{**ok["inputs"][0], "data": [None] * FEATURES}]}, {}, 400, "not all FP32"),
        ("infinity", inf, {}, 400, "infinity"),
        ("unknown output", {**ok, "outputs": [{"name": "nope"}]}, {}, 400, "unknown output 'nope'"),
        ("batch over max_batch_size", infer_body(np.zeros((33, FEATURES), np.float32)), {}, 400,
         "over max_batch_size 32"),
        ("body over the limit", infer_body(np.zeros((80, 1000), np.float32)), {}, 413, "limit"),
        ("bad binary header", ok, {"Inference-Header-Content-Length": "999999"}, 400, "Inference-Header"),
    ]


@pytest.mark.parametrize("case", _bad_cases(), ids=lambda c: c[0])
def test_bad_input_is_a_4xx_naming_the_problem(server: ServerProc, case: tuple[Any, ...]) -> None:
    _, body, headers, want_status, words = case
    before = metric(metrics_text(server), "nv_inference_request_failure")
    status, reply = run(post_one(server, "/v2/models/mlp/infer", body, headers=headers))
    assert status == want_status, reply
    assert words in reply["error"], reply
    assert metric(metrics_text(server), "nv_inference_request_failure") == before + 1
    status, _ = run(post_one(server, "/v2/models/mlp/infer", infer_body(np.ones((1, FEATURES), np.float32))))
    assert status == 200  # the server stays up and other requests are unaffected


def test_dynamic_batching_forms_batches(server: ServerProc) -> None:
    text = metrics_text(server)
    labels = {"model": "mlp", "version": "1"}
    execs0 = metric(text, "nv_inference_exec_count", **labels)
    multi0 = metric(text, "mldeck_batch_size_count", **labels) - metric(
        text, "mldeck_batch_size_bucket", le="1.0", **labels)
    rows = np.ones((1, FEATURES), np.float32)

    async def burst() -> list[int]:
        async with aiohttp.ClientSession() as s:
            replies = await asyncio.gather(*(post(s, server.url + "/v2/models/mlp/infer", infer_body(rows))
                                             for _ in range(96)))
        return [status for status, _ in replies]

    assert run(burst()) == [200] * 96
    text = metrics_text(server)
    execs = metric(text, "nv_inference_exec_count", **labels) - execs0
    multi = metric(text, "mldeck_batch_size_count", **labels) - metric(
        text, "mldeck_batch_size_bucket", le="1.0", **labels) - multi0
    assert execs < 96 and multi >= 1, text  # fewer forward passes than requests: batches formed
    assert "mldeck_batch_size_bucket" in text and 'nv_inference_request_success{model="mlp"' in text


def test_feedback_endpoint(server: ServerProc) -> None:
    rows = np.ones((1, FEATURES), np.float32)
    assert run(post_one(server, "/v2/models/mlp/infer", infer_body(rows, "abc-1")))[0] == 200
    auth = server.auth()
    status, reply = run(post_one(server, "/v2/models/mlp/feedback", {"request_id": "abc-1", "label": 2},
                                 headers=auth))
    assert status == 200 and reply["accepted"]
    cases = ((b"{nope", "not valid JSON"), ({"request_id": "x"}, "request_id"),
             ({"request_id": 5, "label": 1}, "request_id"), ({"label": 1, "extra": 1}, "nothing else"),
             ({"request_id": "abc-1", "label": None}, "not null"))
    for body, words in cases:
        status, reply = run(post_one(server, "/v2/models/mlp/feedback", body, headers=auth))
        assert status == 400 and words in reply["error"], reply
    unknown = run(post_one(server, "/v2/models/zzz/feedback", {"request_id": "a", "label": 1}, headers=auth))
    assert unknown[0] == 404
    path = server.home / "serving" / "mlp" / "feedback-1.jsonl"
    deadline = time.monotonic() + 10
    while not (path.exists() and path.read_text()):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    line = json.loads(path.read_text().splitlines()[0])
    assert line["request_id"] == "abc-1" and line["label"] == 2 and line["model"] == "mlp"


def test_prediction_log_lines(server: ServerProc) -> None:
    rows = np.full((2, FEATURES), 0.5, np.float32)
    status, _ = run(post_one(server, "/v2/models/mlp/infer", infer_body(rows, "log-me")))
    assert status == 200
    path = server.home / "serving" / "mlp" / "predictions-1.jsonl"
    deadline = time.monotonic() + 10
    while True:
        lines = [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []
        mine = [x for x in lines if x["request_id"] == "log-me"]
        if mine:
            break
        assert time.monotonic() < deadline, "prediction not logged"
        time.sleep(0.05)
    (line,) = mine
    assert line["model"] == "mlp" and line["version"] == 1 and line["variant"] == "production"
    assert line["inputs"] == {"input__0": rows.tolist()}
    assert np.array(line["outputs"]["scores"]).shape == (2, 3) and line["latency_ms"] > 0


def test_metrics_and_stats(server: ServerProc) -> None:
    text = metrics_text(server)
    for name in ("nv_inference_request_success", "nv_inference_request_failure", "nv_inference_count",
                 "nv_inference_exec_count", "nv_inference_request_duration_us",
                 "nv_inference_queue_duration_us", "nv_inference_compute_infer_duration_us"):
        assert f"# TYPE {name} counter" in text
    assert metric(text, "nv_inference_request_success", model="mlp", version="1") > 0
    assert metric(text, "mldeck_request_duration_seconds_count", model="mlp", variant="production") > 0
    stats = server.stats()
    prod = stats["models"]["mlp"]["variants"]["production"]
    assert prod["rps"] > 0 and 0 < prod["p50_ms"] <= prod["p95_ms"] <= prod["p99_ms"]
    assert 0 <= prod["error_rate"] < 1 and stats["models"]["mlp"]["batch_sizes"]["1"]


def test_canary_split_is_stable_and_within_tolerance(server: ServerProc, model_dirs: dict[str, Path]) -> None:
    aliases = {"production": (1, model_dirs["v1"]), "challenger": (2, model_dirs["v2"])}
    server.manifest({"mlp": {"aliases": aliases, "canary": 25.0}})
    server.wait_serving("mlp", {"production": 1, "challenger": 2}, canary=25.0)
    rows = np.ones((1, FEATURES), np.float32)

    async def send(ids: list[str]) -> list[str]:
        async with aiohttp.ClientSession() as s:
            sem = asyncio.Semaphore(16)

            async def one(rid: str) -> str:
                async with sem:
                    status, reply = await post(s, server.url + "/v2/models/mlp/infer", infer_body(rows, rid))
                assert status == 200, reply
                return reply["model_version"]

            return await asyncio.gather(*(one(rid) for rid in ids))

    ids = [f"user-{i}" for i in range(600)]
    first = run(send(ids))
    share = first.count("2") / len(ids)
    assert abs(share - 0.25) < 0.06, share
    assert run(send(ids[:100])) == first[:100]  # the same id always lands on the same side
    server.manifest({"mlp": {"aliases": aliases}})
    server.wait_serving("mlp", {"production": 1, "challenger": 2})


def test_shadow_mirrors_every_request_and_logs_only(server: ServerProc, model_dirs: dict[str, Path]) -> None:
    aliases = {"production": (1, model_dirs["v1"]), "challenger": (2, model_dirs["v2"])}
    server.manifest({"mlp": {"aliases": aliases, "shadow": True}})
    server.wait_serving("mlp", {"production": 1, "challenger": 2}, shadow=True)
    rows = np.ones((1, FEATURES), np.float32)

    async def send() -> list[str]:
        async with aiohttp.ClientSession() as s:
            replies = await asyncio.gather(*(post(s, server.url + "/v2/models/mlp/infer",
                                                  infer_body(rows, f"shadow-{i}")) for i in range(50)))
        return [r["model_version"] for _, r in replies]

    assert run(send()) == ["1"] * 50  # answers come from production only
    path = server.home / "serving" / "mlp" / "predictions-1.jsonl"
    deadline = time.monotonic() + 15
    while True:
        lines = [json.loads(x) for x in path.read_text().splitlines()]
        shadow = {x["request_id"] for x in lines if x["variant"] == "shadow" and x["version"] == 2}
        if {f"shadow-{i}" for i in range(50)} <= shadow:
            break
        assert time.monotonic() < deadline, f"{len(shadow)} of 50 shadow lines"
        time.sleep(0.1)
    server.manifest({"mlp": {"aliases": aliases}})
    server.wait_serving("mlp", {"production": 1, "challenger": 2})


def test_hot_swap_under_load_fails_nothing(server: ServerProc, model_dirs: dict[str, Path]) -> None:
    rows = np.ones((1, FEATURES), np.float32)
    seen: list[tuple[float, int, str]] = []
    stop = False

    async def client(s: aiohttp.ClientSession) -> None:
        while not stop:
            status, reply = await post(s, server.url + "/v2/models/mlp/infer", infer_body(rows))
            seen.append((time.monotonic(), status, reply.get("model_version", reply.get("error"))))

    async def load() -> None:
        nonlocal stop
        async with aiohttp.ClientSession() as s:
            tasks = [asyncio.create_task(client(s)) for _ in range(16)]
            for production, challenger in ((2, 1), (1, 2), (2, 1)):
                await asyncio.sleep(0.5)
                server.manifest({"mlp": {"aliases": {
                    "production": (production, model_dirs[f"v{production}"]),
                    "challenger": (challenger, model_dirs[f"v{challenger}"]),
                }}})
                await asyncio.to_thread(server.wait_serving, "mlp",
                                        {"production": production, "challenger": challenger})
            await asyncio.sleep(0.5)
            stop = True
            await asyncio.gather(*tasks)

    run(load())
    assert len(seen) > 100
    assert [x for x in seen if x[1] != 200] == []
    versions = [v for _, _, v in seen]
    assert versions[-1] == "2" and "1" in versions  # answered by both, ending on the swapped-in one
    assert server.stats()["swaps"] >= 3


def test_failed_load_keeps_the_old_version_and_alerts(
    server: ServerProc, model_dirs: dict[str, Path]
) -> None:
    server.manifest({"mlp": {"aliases": {"production": (3, model_dirs["broken"]),
                                         "challenger": (2, model_dirs["v2"])}}})
    deadline = time.monotonic() + 30
    while not server.stats()["load_failures"]:
        assert time.monotonic() < deadline, "the broken version was not reported"
        time.sleep(0.1)
    rows = np.ones((1, FEATURES), np.float32)
    status, reply = run(post_one(server, "/v2/models/mlp/infer", infer_body(rows)))
    assert status == 200 and reply["model_version"] == "2"  # production stays on the previous version
    alerts = [json.loads(x) for x in (server.home / "serving" / "alerts.jsonl").read_text().splitlines()]
    assert alerts and alerts[-1]["kind"] == "serving.load_failed" and alerts[-1]["version"] == 3
    assert "failed to load" in alerts[-1]["message"] and not math.isnan(alerts[-1]["ts"])
