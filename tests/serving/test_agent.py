"""Serving through the agent: supervision, the manifest following the registry, logs reaching the store."""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import psutil
import pytest

from mldeck.core.modelfile import load_model
from tests.conftest import AgentProc, rpc, start_agent, wait_for
from tests.serving.conftest import free_port

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProc]:
    """An agent serving on a free port, with two registered versions of `tiny` (8 inputs, 2 logits)."""
    home = tmp_path_factory.mktemp("agent") / "home"
    config = (f"[serving]\nport = {free_port()}\nmax_queue_delay_ms = 2\n"
              "segment_bytes = 2048\nkeep_segments = 1\n")
    proc = start_agent(home, config=config)
    try:
        trained = proc.python("tests/registry/tiny_train.py", "tiny:0.9", "tiny:0.92")
        assert trained.returncode == 0, trained.stderr
        wait_for(lambda: len(rpc(home, "models.versions", {"name": "tiny"}).get("result") or []) == 2,
                 timeout=120, what="two registered versions")
    except BaseException:
        proc.stop()
        raise
    yield proc
    pid = (rpc(home, "serving.status").get("result") or {}).get("pid")
    proc.stop()
    if pid:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def status(agent: AgentProc) -> dict[str, Any]:
    return agent.cli("serve", "status", "--json", check=True).json()


def infer(url: str, rows: np.ndarray, request_id: str, route: str = "/v2/models/tiny/infer") -> Any:
    body = {"id": request_id, "inputs": [{"name": "input__0", "datatype": "FP32", "shape": list(rows.shape),
                                          "data": rows.ravel().tolist()}]}
    req = urllib.request.Request(url + route, data=json.dumps(body).encode(), method="POST")
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def feedback(agent: AgentProc, url: str, body: dict[str, Any]) -> int:
    """Feedback as a client sends it: with the token `mldeck serve token` prints."""
    token = agent.cli("serve", "token", check=True).out.strip()
    req = urllib.request.Request(url + "/v2/models/tiny/feedback", method="POST",
                                 data=json.dumps(body).encode(), headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.status


def count(agent: AgentProc, sql: str) -> int:
    (row,) = agent.cli("query", sql, "--json", check=True).json()
    return next(iter(row.values()))


def test_promotion_starts_serving_and_logs_reach_the_store(agent: AgentProc) -> None:
    assert status(agent)["manifest"]["models"] == {}
    agent.cli("models", "promote", "tiny", "1", "--to", "production", "--yes", check=True)
    wait_for(lambda: status(agent)["running"], timeout=30, what="autostart")
    started = agent.cli("serve", "start", "--json", timeout=180, check=True).json()
    assert started["running"]
    assert started["manifest"]["models"]["tiny"]["aliases"]["production"]["version"] == 1
    url = started["url"]
    rows = np.random.default_rng(0).normal(size=(1, 8)).astype(np.float32)
    for i in range(20):
        assert infer(url, rows, f"req-{i}")["model_version"] == "1"
    with pytest.raises(urllib.error.HTTPError) as refused:  # feedback without the token
        urllib.request.urlopen(urllib.request.Request(url + "/v2/models/tiny/feedback", method="POST",
                               data=json.dumps({"request_id": "req-3", "label": 1}).encode()), timeout=10)
    assert refused.value.code == 401
    assert feedback(agent, url, {"request_id": "req-3", "label": 1}) == 200
    wait_for(lambda: count(agent, "SELECT count(*) FROM predictions WHERE model = 'tiny'") >= 20,
             timeout=30, what="predictions in the store")
    wait_for(lambda: count(agent, "SELECT count(*) FROM feedback WHERE request_id = 'req-3'") == 1,
             timeout=30, what="feedback in the store")
    (row,) = agent.cli("query", "SELECT version, variant, inputs, outputs FROM predictions "
                       "WHERE request_id = 'req-0'", "--json", check=True).json()
    assert row["version"] == 1 and row["variant"] == "production"
    assert np.allclose(json.loads(row["inputs"])["input__0"], rows)
    assert len(json.loads(row["outputs"])["logits"][0]) == 2
    stats = rpc(agent.home, "serving.stats", {"window_s": 60})["result"]
    assert stats["models"]["tiny"]["variants"]["production"]["requests"] >= 20


def test_labelled_traffic_comes_back_one_row_per_example(agent: AgentProc) -> None:
    """serving.labelled: what a retraining job learns from; rows of a request share or split its label."""
    url = status(agent)["url"]
    pair = np.arange(16, dtype=np.float32).reshape(2, 8)
    infer(url, pair, "pair-1")
    assert feedback(agent, url, {"request_id": "pair-1", "label": [0, 1]}) == 200
    wait_for(lambda: count(agent, "SELECT count(*) FROM feedback WHERE request_id = 'pair-1'") == 1,
             timeout=30, what="feedback in the store")
    got = rpc(agent.home, "serving.labelled", {"name": "tiny"})["result"]
    cols = got["columns"]
    assert got["n_requests"] == 2 and got["n_rows"] == 3
    assert cols["request_id"] == ["req-3", "pair-1", "pair-1"] and cols["label"] == [1, 0, 1]
    assert [cols[f"input__0[{i}]"][1:] for i in (0, 7)] == [[0.0, 8.0], [7.0, 15.0]]
    only = rpc(agent.home, "serving.labelled", {"name": "tiny", "limit": 1})["result"]
    assert only["columns"]["request_id"] == ["pair-1", "pair-1"]
    def error(params: dict[str, Any]) -> dict[str, Any]:
        return rpc(agent.home, "serving.labelled", params)["error"]

    assert "no model 'nope'" in error({"name": "nope"})["message"]
    assert ">= 1 - at `$.limit`" in error({"name": "tiny", "limit": 0})["message"]
    assert "<= 100000 - at `$.limit`" in error({"name": "tiny", "limit": 100_001})["message"]
    assert error({"name": "tiny", "since": "x"})["code"] < 0


def test_ingested_log_segments_go_and_their_rows_stay(agent: AgentProc) -> None:
    """keep_segments = 1: only the newest 2 KiB segment stays on disk; the store has every row once."""
    url = status(agent)["url"]
    folder = agent.home / "serving" / "tiny"
    before = count(agent, "SELECT count(*) FROM predictions WHERE model = 'tiny'")
    rows = np.ones((1, 8), np.float32)
    for i in range(60):
        infer(url, rows, f"seg-{i}")
    wait_for(lambda: count(agent, "SELECT count(*) FROM predictions WHERE model = 'tiny'") == before + 60,
             timeout=30, what="60 more predictions in the store")
    wait_for(lambda: len(list(folder.glob("predictions-*.jsonl"))) == 1, timeout=30, what="old segments gone")
    newest = max(int(p.stem.split("-")[1]) for p in folder.glob("predictions-*.jsonl"))
    assert newest > 5  # 60 requests of ~300 bytes filled several segments
    assert count(agent, "SELECT count(*) FROM predictions WHERE request_id LIKE 'seg-%'") == 60
    assert count(agent, "SELECT count(*) FROM ingest_offsets WHERE path LIKE '%/tiny/predictions-%'") == 1


def test_the_servers_cost_is_shared_by_requests(agent: AgentProc) -> None:
    """cost.models: the model server's CPU time, priced, goes to the models by the requests they got."""
    wait_for(lambda: count(agent, "SELECT count(*) FROM serving_usage WHERE cpu_seconds > 0") >= 1,
             timeout=60, what="a usage tick of the model server")
    (tiny,) = rpc(agent.home, "cost.models", {"since_s": 3600})["result"]
    served = count(agent, "SELECT count(*) FROM predictions WHERE model = 'tiny'")
    assert tiny["model"] == "tiny" and tiny["share"] == 1 and 0 < tiny["requests"] <= served
    assert tiny["server_gpu_seconds"] == 0 and tiny["server_cpu_seconds"] > 0  # no GPU here: CPU time
    assert tiny["serving_usd"] == pytest.approx(tiny["server_cpu_seconds"] / 3600 * 0.04)
    assert "since_s" in rpc(agent.home, "cost.models", {"since_s": 0})["error"]["message"]


def test_alias_move_swaps_the_served_version(agent: AgentProc) -> None:
    url = status(agent)["url"]
    rows = np.ones((1, 8), np.float32)
    agent.cli("models", "promote", "tiny", "2", "--to", "production", "--yes", check=True)
    moved = time.monotonic()
    wait_for(lambda: infer(url, rows, "after")["model_version"] == "2", timeout=30, interval=0.05,
             what="version 2 answering")
    print(f"alias move to served: {time.monotonic() - moved:.2f}s")
    agent.cli("models", "promote", "tiny", "1", "--to", "challenger", "--yes", check=True)
    def challenger_answers() -> bool:
        try:
            return infer(url, rows, "c", "/v2/models/tiny@challenger/infer")["model_version"] == "1"
        except urllib.error.HTTPError as exc:
            assert exc.code == 404, exc  # the alias is not in the served manifest yet
            return False

    wait_for(challenger_answers, timeout=30, what="challenger served")


def test_traffic_settings_persist_and_bad_ones_are_refused(agent: AgentProc) -> None:
    split = agent.cli("serve", "traffic", "tiny", "--canary", "40", "--shadow", "on", "--json", check=True)
    split = split.json()
    assert split == {"name": "tiny", "shadow": True, "canary": 40.0, "challenger": 1}
    wait_for(lambda: status(agent)["manifest"]["models"]["tiny"]["canary"] == 40.0, what="manifest canary")
    bad = agent.cli("serve", "traffic", "tiny", "--canary", "150")
    assert bad.code != 0 and "0 to 100" in bad.err
    assert agent.cli("serve", "traffic", "tiny").code != 0
    reply = rpc(agent.home, "serving.traffic", {"name": "tiny", "canary": -1})
    assert ">= 0.0 - at `$.canary`" in reply["error"]["message"]
    reply = rpc(agent.home, "serving.traffic", {"name": "tiny", "canary": 150})
    assert "<= 100.0 - at `$.canary`" in reply["error"]["message"]
    reply = rpc(agent.home, "serving.traffic", {"name": "ghost", "shadow": True})
    assert "no model 'ghost'" in reply["error"]["message"]
    reply = rpc(agent.home, "serving.traffic", {"name": "tiny", "bogus": 1})
    assert "bogus" in reply["error"]["message"]
    off = agent.cli("serve", "traffic", "tiny", "--canary", "0", "--shadow", "off", "--json", check=True)
    off = off.json()
    assert off["canary"] == 0 and not off["shadow"]


def test_a_dead_server_is_restarted_and_a_broken_version_raises_an_alert(agent: AgentProc) -> None:
    before = status(agent)
    model_file = agent.home / "models" / "tiny" / "1" / "model.pt2"
    intact = model_file.read_bytes()
    model_file.write_bytes(b"corrupted on disk")  # the challenger (v1) will fail to load after the restart
    try:
        os.kill(before["pid"], signal.SIGKILL)
        after = wait_for(lambda: (s := status(agent))["running"] and s["pid"] != before["pid"] and s,
                         timeout=30, what="restart")
        assert after["restarts"] == before["restarts"] + 1 and "exit code" in after["last_exit"]["message"]
        agent.cli("serve", "start", timeout=180, check=True)
        assert infer(after["url"], np.ones((1, 8), np.float32), "back")["model_version"] == "2"
        sql = "SELECT model, version, kind, message, status FROM alerts"
        alert = wait_for(lambda: agent.cli("query", sql, "--json", check=True).json(), timeout=30,
                         what="alert in the store")
        assert alert[0]["model"] == "tiny" and alert[0]["version"] == 1 and alert[0]["status"] == "open"
        assert alert[0]["kind"] == "serving.load_failed" and "failed to load" in alert[0]["message"]
    finally:
        model_file.write_bytes(intact)


def test_batch_predict_matches_the_model(agent: AgentProc, tmp_path: Path) -> None:
    x = np.random.default_rng(3).normal(size=(1000, 8)).astype(np.float32)
    source, target = tmp_path / "in.parquet", tmp_path / "out.parquet"
    con = duckdb.connect()
    con.register("x", {f"f{i}": x[:, i] for i in range(8)})
    con.execute(f"COPY x TO '{source}' (FORMAT parquet)")
    done = agent.cli("predict", "tiny/2", "--input", str(source), "--output", str(target),
                     "--batch-size", "128", "--json", timeout=120)
    assert done.code == 0, done.err
    assert done.json()["rows"] == 1000 and done.out.count("\n") > 1 and done.err == ""
    out = con.execute(f"SELECT * FROM '{target}'").fetchnumpy()
    folder = agent.home / "models" / "tiny" / "2"
    want = load_model(folder).predict({"input__0": x})["logits"]
    got = np.column_stack([out["logits_0"], out["logits_1"]])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert np.allclose(out["f0"], x[:, 0])
    bad = agent.cli("predict", "tiny@nope", "--input", str(source), "--output", str(target))
    assert bad.code == 1 and "no alias 'nope'" in bad.err
    bad = agent.cli("predict", "tiny", "--input", str(tmp_path / "missing.csv"), "--output", str(target))
    assert bad.code == 1 and "no input file" in bad.err


def test_stop_and_status(agent: AgentProc) -> None:
    stopped = agent.cli("serve", "stop", "--json", check=True).json()
    assert not stopped["running"] and stopped["last_exit"]["message"] == "stopped on request"
    assert "not running" in agent.cli("serve", "status", check=True).out
    assert rpc(agent.home, "serving.stats")["result"] == {"running": False, "models": {}}
    too_short = rpc(agent.home, "serving.stats", {"window_s": 0.5})["error"]
    assert ">= 1.0 - at `$.window_s`" in too_short["message"]
