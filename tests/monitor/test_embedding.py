"""A model's embedding output drifts as a whole: a real agent serves a small MLP whose outputs are `logits`
and a 16-d `embedding`; clean rows then shifted rows go through the model server, and the drift report's
one embedding row (a domain classifier on the vectors against those the model gave for its sample) says
drift for the shifted window and not for the clean one. With `[serving] explain_sample = 0` nothing is
explained in the background."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from tests.conftest import AgentProc, start_agent, wait_for
from tests.monitor.embedding_train import rows
from tests.monitor.serve import serve_in_production, train_and_register
from tests.monitor.watch import judged_windows, stored
from tests.serving.conftest import free_port

pytestmark = pytest.mark.timeout(300)

MODEL = "embedder"
BATCH = 10
WINDOW = 300
LOGGED = f"SELECT count(*) FROM predictions WHERE model = '{MODEL}'"


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProc]:
    config = (f"[serving]\nport = {free_port()}\nmax_queue_delay_ms = 1\nexplain_sample = 0.0\n\n"
              f'[monitor]\nwindow = "{WINDOW}rows"\ninterval_s = 0.5\n\n'
              f"[monitor.models.{MODEL}]\ndrift_windows = 0\n")
    proc = start_agent(tmp_path_factory.mktemp("embedding") / "home", config=config)
    yield proc
    proc.stop()


def send(url: str, x: np.ndarray, phase: str) -> None:
    for i in range(0, len(x), BATCH):
        batch = x[i:i + BATCH]
        tensor = {"name": "features", "datatype": "FP32", "shape": list(batch.shape),
                  "data": batch.ravel().tolist()}
        body = {"id": f"{phase}-{i // BATCH}", "inputs": [tensor]}
        req = urllib.request.Request(f"{url}/v2/models/{MODEL}/infer", data=json.dumps(body).encode(),
                                     method="POST", headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            assert len(json.loads(resp.read())["outputs"]) == 2


def embedding_row(report: dict[str, Any]) -> dict[str, Any]:
    (row,) = [c for c in report["columns"] if c["role"] == "embedding"]
    return row


@pytest.mark.slow
def test_embedding_drift_is_a_domain_classifier_on_the_vectors(agent: AgentProc) -> None:
    train_and_register(agent, "tests/monitor/embedding_train.py", MODEL)
    url = serve_in_production(agent, MODEL)

    clean, _ = rows(WINDOW, seed=5)  # seeded: at p < 0.05 one clean window in 20 drifts by chance
    moved, _ = rows(WINDOW, seed=2)
    moved[:, 2:] += 1.0  # features the label ignores: the embedding still moves
    sent = 0
    for phase, x, drifted in [("clean", clean, False), ("shifted", moved, True)]:
        send(url, x, phase)
        sent += WINDOW // BATCH
        wait_for(lambda n=sent: stored(agent, LOGGED) == n, timeout=60, interval=0.5,
                 what=f"the {phase} requests in the store")
        got = agent.cli("drift", "report", MODEL, "--window", f"{WINDOW}rows", "--json", check=True).json()
        row = embedding_row(got)
        assert (row["column"], row["kind"], row["method"], row["n_rows"]) == (
            "embedding", "embedding", "domain_classifier", WINDOW)
        assert row["drifted"] is drifted, (phase, row)
        assert (row["statistic"] > 0.7) if drifted else (row["statistic"] < 0.6), (phase, row)
        assert "16-dimensional output 'embedding'" in row["kind_reason"]
        assert "256 reference and 300 current vectors" in row["method_reason"]
        assert not any(c["column"].startswith("embedding[") for c in got["columns"])  # tested as a whole
        assert got["output_drifted"] is drifted or (drifted is False and got["output_drifted"] is None)
        text = agent.cli("drift", "report", MODEL, "--window", f"{WINDOW}rows", check=True).out
        verdict = "drift" if drifted else "no drift"
        assert f"embedding (domain classifier) AUC {row['statistic']:.2f} → {verdict}" in text

    # the monitor's own tumbling windows keep the row too
    hist = judged_windows(agent, MODEL, 2)
    kept = [agent.cli("query", "SELECT drifted FROM drift_reports WHERE role = 'embedding' AND "
                      f"window_end = {w['window_end']}", "--json", check=True).json()
            for w in hist["windows"]]
    assert kept == [[{"drifted": False}], [{"drifted": True}]]
    assert stored(agent, "SELECT count(*) FROM explanations") == 0  # explain_sample = 0: none explained
