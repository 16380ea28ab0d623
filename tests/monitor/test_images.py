"""A model with N-D inputs is monitored: a small CNN on 8×8 images, trained and registered through the SDK
with its training images as the reference, served by a real agent and fed clean, brighter and higher-contrast
images in requests of 8. Drift runs on the images' summary features and flags exactly the ones each shift
moves; accuracy and ECE come from integer labels; row windows hold rows, not requests."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from mldeck.core import drift
from mldeck.core.servingtoken import bearer, serving_token
from tests.conftest import AgentProc, start_agent, wait_for
from tests.monitor.image_train import images
from tests.monitor.serve import serve_in_production, train_and_register
from tests.monitor.watch import judged_windows, stored
from tests.serving.conftest import free_port

pytestmark = pytest.mark.timeout(600)

MODEL = "digits"
BATCH = 8
WINDOW = 1_600
FEATURES = ["pixels.channel0.mean", "pixels.channel0.std", "pixels.channel0.min", "pixels.channel0.max",
            "pixels.grid0_0.mean", "pixels.grid0_1.mean", "pixels.grid1_0.mean", "pixels.grid1_1.mean"]
GRID = [f for f in FEATURES if ".grid" in f]
# brightness (+0.5) leaves each image's spread alone; contrast (×1.6 about the image's mean) its mean
MOVED = {
    "clean": set(),
    "brightness": {"pixels.channel0.mean", "pixels.channel0.min", "pixels.channel0.max", *GRID},
    "contrast": {"pixels.channel0.std", "pixels.channel0.min", "pixels.channel0.max", *GRID},
}


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProc]:
    home = tmp_path_factory.mktemp("images") / "home"
    config = (f"[serving]\nport = {free_port()}\nmax_queue_delay_ms = 1\n\n"
              f'[monitor]\nwindow = "{WINDOW}rows"\ninterval_s = 0.5\n\n'
              f"[monitor.models.{MODEL}]\ndrift_windows = 0\n")
    proc = start_agent(home, config=config)
    yield proc
    proc.stop()


def post(url: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> Any:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json", **(headers or {})})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def shifted(x: np.ndarray, shift: str) -> np.ndarray:
    if shift == "brightness":
        return x + np.float32(0.5)
    if shift == "contrast":
        mean = x.mean(axis=(1, 2, 3), keepdims=True)
        return (mean + np.float32(1.6) * (x - mean)).astype(np.float32)
    return x


def send(agent: AgentProc, url: str, phase: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """WINDOW images in requests of BATCH, each followed by its integer labels; the model's logits back."""
    x, labels = images(WINDOW, seed)
    x = shifted(x, phase)
    token = bearer(serving_token(agent.home))
    logits = []
    for i in range(0, WINDOW, BATCH):
        rid = f"{phase}-{i // BATCH}"
        batch = x[i:i + BATCH]
        body = {"id": rid, "inputs": [{"name": "pixels", "datatype": "FP32", "shape": list(batch.shape),
                                       "data": batch.ravel().tolist()}]}
        out = post(f"{url}/v2/models/{MODEL}/infer", body)
        logits.append(np.asarray(out["outputs"][0]["data"], dtype=np.float64).reshape(len(batch), -1))
        post(f"{url}/v2/models/{MODEL}/feedback",
             {"request_id": rid, "label": labels[i:i + BATCH].tolist()}, token)
    return np.concatenate(logits), labels


def ingested(agent: AgentProc) -> tuple[int, int]:
    """Requests and labelled requests of the model in the store."""
    return (stored(agent, f"SELECT count(*) FROM predictions WHERE model = '{MODEL}'"),
            stored(agent, "SELECT count(DISTINCT request_id) FROM feedback"))


def report(agent: AgentProc, window: str) -> dict[str, Any]:
    return agent.cli("drift", "report", MODEL, "--window", window, "--json", check=True).json()


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.mark.slow
def test_an_image_model_is_monitored_on_summary_features(agent: AgentProc) -> None:
    train_and_register(agent, "tests/monitor/image_train.py", MODEL)
    url = serve_in_production(agent, MODEL)

    sent = 0
    for seed, phase in enumerate(["clean", "brightness", "contrast"], start=1):
        logits, labels = send(agent, url, phase, seed)
        sent += WINDOW // BATCH
        wait_for(lambda n=sent: ingested(agent) == (n, n), timeout=60, interval=0.5,
                 what=f"the {phase} requests and labels in the store")
        got = report(agent, f"{WINDOW}rows")
        assert (got["n_rows"], got["n_requests"]) == (WINDOW, WINDOW // BATCH)
        inputs = [c for c in got["columns"] if c["role"] == "input"]
        assert [c["column"] for c in inputs] == FEATURES
        assert {c["column"] for c in inputs if c["drifted"]} == MOVED[phase], (phase, inputs)
        assert {(c["kind"], c["kind_reason"], c["method"]) for c in inputs} == {
            ("numeric", "float", "wasserstein")}
        # accuracy and ECE of the served logits against the integer labels, as the monitor computes them
        probs = softmax(logits)
        assert got["n_labeled"] == WINDOW
        assert got["accuracy"] == pytest.approx(float(np.mean(probs.argmax(axis=1) == labels)))
        assert got["ece"] == pytest.approx(drift.expected_calibration_error(probs, labels))
        if phase == "clean":
            assert got["accuracy"] > 0.95

            # a row window is that many rows: the newest request is cut to 5, two requests give 12
            five, twelve = report(agent, "5rows"), report(agent, "12rows")
            assert (five["n_rows"], five["n_requests"], five["n_labeled"]) == (5, 1, 5)
            assert (twelve["n_rows"], twelve["n_requests"], twelve["n_labeled"]) == (12, 2, 12)
            last = probs[-12:]
            assert twelve["accuracy"] == pytest.approx(float(np.mean(last.argmax(axis=1) == labels[-12:])))

    # the monitor's own tumbling windows: one per phase, each WINDOW rows of WINDOW / BATCH requests
    windows = judged_windows(agent, MODEL, 3)["windows"]
    assert [(w["n_rows"], w["n_requests"]) for w in windows] == [(WINDOW, WINDOW // BATCH)] * 3
    assert [sorted(w["drifted_columns"]) for w in windows] == [sorted(MOVED[p]) for p in MOVED]
    assert all(w["n_labeled"] == WINDOW and 0 <= w["ece"] <= 1 for w in windows)

    text = agent.cli("drift", "report", MODEL, check=True).out
    assert "pixels.channel0.std" in text and "numeric: float" in text and "why this test" in text.lower()
    assert "numeric with more than 5 values, 4,000 reference rows (> 1,000)" in text
