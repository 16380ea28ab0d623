"""`[serving] explain_sample`: the agent explains that share of the logged live requests in the background
(never on the request path) and keeps the attributions next to the predictions; `explain.summary` ranks the
features that drive a window's predictions, beside what drives them on the reference rows. A real agent
explains every request at 1.0 (at 0 it explains none: tests/monitor/test_embedding.py)."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from mldeck.core.config import ConfigError, load_config
from mldeck.core.errors import NotFound, wire_code
from tests.agent.test_jobs import sql
from tests.conftest import AgentProc, rpc, start_agent, wait_for
from tests.monitor.embedding_train import FEATURES, rows
from tests.monitor.serve import serve_in_production, train_and_register
from tests.serving.conftest import free_port

pytestmark = pytest.mark.timeout(300)

MODEL = "weighs"
REQUESTS = 20
BATCH = 3


def test_explain_sample_is_a_share(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    for bad in ("1.5", "-0.1"):
        path.write_text(f"[serving]\nexplain_sample = {bad}\n")
        with pytest.raises(ConfigError, match="explain_sample"):
            load_config(path)
    path.write_text("[serving]\nexplain_sample = 0.01\n")
    config = load_config(path)
    assert config.serving.explain_sample == 0.01 and "explain_sample" not in config.serving.for_server()


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProc]:
    config = (f"[serving]\nport = {free_port()}\nmax_queue_delay_ms = 1\nexplain_sample = 1.0\n\n"
              f'[monitor]\nwindow = "{REQUESTS * BATCH}rows"\ninterval_s = 0.5\n')
    proc = start_agent(tmp_path_factory.mktemp("explain-sample") / "home", config=config)
    yield proc
    proc.stop()


def count(agent: AgentProc, query: str) -> int:
    """One number from the agent's store, over the socket: a CLI process per poll would pace the wait."""
    (row,) = sql(agent, query)
    return int(next(iter(row.values())))


@pytest.mark.slow
def test_sampled_requests_are_explained_in_the_background(agent: AgentProc) -> None:
    train_and_register(agent, "tests/monitor/embedding_train.py", MODEL)
    empty = rpc(agent.home, "explain.request", {"name": MODEL})["error"]
    assert empty["code"] == wire_code(NotFound) and "has no logged request yet" in empty["message"]
    url = serve_in_production(agent, MODEL)

    x, _ = rows(REQUESTS * BATCH, seed=3)
    for i in range(REQUESTS):
        batch = x[i * BATCH:(i + 1) * BATCH]
        tensor = {"name": "features", "datatype": "FP32", "shape": list(batch.shape),
                  "data": batch.ravel().tolist()}
        body = {"id": f"s-{i}", "inputs": [tensor]}
        req = urllib.request.Request(f"{url}/v2/models/{MODEL}/infer", data=json.dumps(body).encode(),
                                     method="POST", headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            assert resp.status == 200
    wait_for(lambda: count(agent, "SELECT count(*) FROM explanations") == REQUESTS * BATCH, timeout=120,
             interval=0.5, what="every row of every logged request explained")
    kept = agent.cli("query", "SELECT request_id, list(\"row\" ORDER BY \"row\") AS rows_, "
                     "count(DISTINCT version) AS versions FROM explanations GROUP BY request_id",
                     "--json", check=True).json()
    assert sorted(k["request_id"] for k in kept) == sorted(f"s-{i}" for i in range(REQUESTS))
    assert all(k["rows_"] == list(range(BATCH)) and k["versions"] == 1 for k in kept)

    got = rpc(agent.home, "explain.summary", {"name": MODEL, "window": f"{REQUESTS * BATCH}rows"},
              timeout=180)["result"]
    assert (got["version"], got["n_explained"], got["sample"]) == (1, REQUESTS * BATCH, 1.0)
    assert got["n_reference"] == 64
    ranked = got["features"]
    assert sorted(f["feature"] for f in ranked) == FEATURES and got["n_features"] == len(FEATURES)
    assert ranked[0]["feature"] == "f0"  # the label is f0 + 0.1·f1 > 0: the model weighs f0 most
    assert [f["current"] for f in ranked] == sorted((f["current"] for f in ranked), reverse=True)
    assert max(ranked, key=lambda f: f["reference"])["feature"] == "f0"
    judged = rpc(agent.home, "explain.summary", {"name": MODEL}, timeout=60)["result"]  # the judged window
    assert judged["n_explained"] == REQUESTS * BATCH and judged["features"][0]["feature"] == "f0"
