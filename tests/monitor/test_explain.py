"""Explanations per prediction: Integrated Gradients (Captum) is weight × (input − baseline) on linear models,
an exported model folder is explained against its reference mean with reference percentiles, and
`mldeck explain` on a logged request of the served demo model prints the top features and keeps them, every
explanation answered by the agent's one explainer process, started anew (and counted) when it dies."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
import torch
from torch import nn

from mldeck.agent.tasks import Tasks
from mldeck.agent.worker import ChildWorker
from mldeck.core.errors import Invalid, NotFound, wire_code
from mldeck.core.explain import Attributor, explain, integrated_gradients
from mldeck.core.modelfile import export_model
from tests.conftest import AgentProc, rpc, start_agent, wait_for
from tests.serving.conftest import free_port

pytestmark = pytest.mark.timeout(600)


class TwoInputs(nn.Module):
    """scores = a·Wa + c·Wc: linear in each of two inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.c = nn.Linear(3, 4, bias=True), nn.Linear(2, 4, bias=False)

    def forward(self, a: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return self.a(a) + self.c(c)


def test_integrated_gradients_of_linear_models_is_weight_times_input_minus_baseline() -> None:
    torch.manual_seed(0)
    linear = nn.Linear(5, 3)
    x, base = torch.randn(1, 5), torch.randn(1, 5)
    attributions, delta = integrated_gradients(linear, {"x": x.numpy()}, {"x": base.numpy()}, 2, steps=8)
    expected = (linear.weight[2] * (x - base)).detach().numpy()
    np.testing.assert_allclose(attributions["x"], expected, rtol=1e-5, atol=1e-6)
    assert delta < 1e-5
    two = TwoInputs()
    a, c = torch.randn(1, 3), torch.randn(1, 2)
    got, _ = integrated_gradients(two, {"a": a.numpy(), "c": c.numpy()},
                                  {"a": np.zeros((1, 3)), "c": np.ones((1, 2))}, target=1)
    np.testing.assert_allclose(got["a"], (two.a.weight[1] * a).detach().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["c"], (two.c.weight[1] * (c - 1)).detach().numpy(), rtol=1e-5, atol=1e-6)


def test_an_exported_model_is_explained_against_its_reference_mean(tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3)).eval()
    reference = np.random.default_rng(2).normal(size=(500, 1, 2, 2)).astype(np.float32)
    export_model(model, reference[:8], tmp_path / "m", ["pixels"], ["logits"], reference=reference)
    request = np.array([[[[2.0, -1.0], [0.5, 0.0]]], [[[0.0, 3.0], [0.0, 0.0]]]], dtype=np.float32)
    attributor = Attributor(tmp_path / "m")
    got = explain(attributor, {"pixels": request.tolist()}, row=1)
    weight = model[1].weight.detach().numpy()
    scores = model(torch.from_numpy(request[1:])).detach().numpy()[0]
    assert got["target"] == int(scores.argmax()) and got["score"] == pytest.approx(scores.max(), rel=1e-5)
    assert got["baseline"] == "reference mean" and got["row"] == 1
    mean = reference.reshape(500, -1).mean(axis=0)
    expected = weight[got["target"]] * (request[1].reshape(-1) - mean)
    by_name = {f["feature"]: f for f in got["features"]}
    assert list(by_name) == sorted(by_name, key=lambda n: -abs(by_name[n]["attribution"]))
    for i, name in enumerate(["pixels[0,0,0]", "pixels[0,0,1]", "pixels[0,1,0]", "pixels[0,1,1]"]):
        assert by_name[name]["attribution"] == pytest.approx(expected[i], rel=1e-4, abs=1e-5)
        assert by_name[name]["baseline"] == pytest.approx(mean[i], rel=1e-5)
        below = reference.reshape(500, -1)[:, i] <= request[1].reshape(-1)[i]
        assert by_name[name]["percentile"] == pytest.approx(100 * np.mean(below))
    total = sum(f["attribution"] for f in got["features"])
    assert total == pytest.approx(got["score"] - got["baseline_score"], abs=1e-4)
    with pytest.raises(ValueError, match="row 2 is not in the request, which has 2 row"):
        explain(attributor, {"pixels": request.tolist()}, row=2)


def test_the_explainer_worker_lives_on_until_idle_and_is_started_anew_when_it_died(tmp_path: Path) -> None:
    """The real worker process: a failed explanation is an answer and the worker lives on; idle, it exits
    and the next request starts another, uncounted; killed, or stuck past the timeout (then killed), it is
    counted and the next request starts another."""
    request = {"folder": str(tmp_path / "no-model"), "inputs": {}}

    async def counted(tasks: Tasks, n: int) -> str:
        while (failure := tasks.failures.get("explain-worker")) is None or failure.count < n:
            await asyncio.sleep(0.05)
        return failure.last

    async def scenario() -> None:
        tasks = Tasks()
        worker = ChildWorker(["mldeck.core.explain"], "the explainer process", "explain-worker", tasks,
                             timeout_s=120, idle_s=0.5)
        first = await worker.ask(request, "explaining")
        assert first["ok"] is False and "no-model" in first["message"]
        assert worker.proc is not None
        pid = worker.proc.pid
        assert await worker.ask(request, "explaining") == first and worker.proc.pid == pid
        assert await asyncio.wait_for(worker.proc.wait(), 30) == 0  # idle past idle_s: asked to exit
        worker.idle_s = 60
        await worker.ask(request, "explaining")
        assert worker.proc.pid != pid and tasks.failures == {}

        crashed = worker.proc
        crashed.kill()
        assert "the explainer process exited: exit code -9" in await asyncio.wait_for(counted(tasks, 1), 30)
        assert await worker.ask(request, "explaining") == first and worker.proc.pid != crashed.pid

        os.kill(worker.proc.pid, signal.SIGSTOP)  # a worker stuck in a request
        worker.timeout_s = 1
        with pytest.raises(Invalid, match=r"explaining took over 1s; stopped"):
            await worker.ask(request, "explaining")
        assert await asyncio.wait_for(worker.proc.wait(), 30) == -9
        assert "took over 1s" in await asyncio.wait_for(counted(tasks, 2), 30)
        await worker.stop()
        await tasks.stop()

    asyncio.run(scenario())


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProc]:
    proc = start_agent(tmp_path_factory.mktemp("explain") / "home",
                       config=f"[serving]\nport = {free_port()}\nmax_queue_delay_ms = 1\n")
    yield proc
    proc.stop()


def infer(url: str, rows: np.ndarray, request_id: str) -> Any:
    body = {"id": request_id, "inputs": [{"name": "features", "datatype": "FP32", "shape": list(rows.shape),
                                          "data": rows.ravel().tolist()}]}
    req = urllib.request.Request(f"{url}/v2/models/demo/infer", data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


@pytest.mark.slow
def test_mldeck_explain_prints_the_top_features_of_a_logged_request(agent: AgentProc) -> None:
    from mldeck.agent.demo import data

    trained = agent.python("-m", "mldeck.agent.demo.train", "--epochs", "3", "--hidden", "16", timeout=300)
    assert trained.returncode == 0, trained.stderr
    run_id = json.loads(trained.stdout.strip().splitlines()[-1])["run_id"]
    wait_for(lambda: agent.cli("runs", "show", run_id).code == 0, timeout=30, what="the demo run")
    agent.cli("models", "register", run_id, "--name", "demo", check=True, timeout=120)
    agent.cli("models", "promote", "demo", "1", "--to", "production", "--yes", check=True)
    url = agent.cli("serve", "start", "--json", check=True, timeout=240).json()["url"]
    split = data.load_split()
    served = infer(url, split.x_val[:2], "why-1")
    logged = "SELECT count(*) AS n FROM predictions WHERE request_id = 'why-1'"
    wait_for(lambda: agent.cli("query", logged, "--json", check=True).json()[0]["n"] == 1, timeout=30,
             what="the logged request")

    text = agent.cli("explain", "demo", "why-1", "--row", "1", "--top", "5", timeout=180, check=True).out
    lines = text.splitlines()
    assert "demo v1 request why-1 row 1: class" in lines[0] and "Integrated Gradients" in lines[1]
    assert lines[2].split()[:3] == ["FEATURE", "VALUE", "ATTRIBUTION"] and len(lines) == 3 + 5 + 1
    assert any(line.split()[0] in split.columns for line in lines[3:8]) and "%" in lines[3]
    assert "top 5 of 30 values" in lines[-1]

    got = agent.cli("explain", "demo", "why-1", "--row", "1", "--top", "30", "--json", check=True,
                    timeout=180).json()
    probabilities = np.asarray(served["outputs"][0]["data"]).reshape(2, -1)[1]
    assert got["target"] == int(probabilities.argmax()) and got["score"] == pytest.approx(probabilities.max())
    assert got["baseline"] == "reference mean" and got["n_features"] == 30
    assert sorted(f["feature"] for f in got["features"]) == sorted(split.columns)
    total = sum(f["attribution"] for f in got["features"])
    assert total == pytest.approx(got["score"] - got["baseline_score"], abs=max(1e-3, 2 * got["delta"]))
    assert all(0 <= f["percentile"] <= 100 for f in got["features"])
    (kept,) = agent.cli("query", "SELECT version, \"row\", target, features FROM explanations "
                        "WHERE request_id = 'why-1'", "--json", check=True).json()
    features = kept["features"] if isinstance(kept["features"], list) else json.loads(kept["features"])
    assert (kept["version"], kept["row"], kept["target"], len(features)) == (1, 1, got["target"], 30)

    missing = rpc(agent.home, "explain.request", {"name": "demo", "request_id": "nope"})["error"]
    assert missing["code"] == wire_code(NotFound) and "no logged request 'nope'" in missing["message"]
    far = rpc(agent.home, "explain.request", {"name": "demo", "request_id": "why-1", "row": 5}, timeout=180)
    assert far["error"]["code"] == wire_code(Invalid)
    assert "row 5 is not in the request" in far["error"]["message"]
    assert "$.top" in rpc(agent.home, "explain.request",
                          {"name": "demo", "request_id": "why-1", "top": 0})["error"]["message"]

    # one long-lived worker answered all of it, the failed row too; when it dies, `agent status` counts it
    (worker,) = explainers(agent)
    worker.kill()
    crashed = wait_for(lambda: worker_failures(agent), timeout=30, what="the dead worker counted")
    assert crashed["count"] == 1 and "the explainer process exited: exit code -9" in crashed["last"], crashed


def worker_failures(agent: AgentProc) -> Any:
    """What `agent status` counts of the explainer process's deaths."""
    return rpc(agent.home, "agent.status")["result"]["task_failures"].get("explain-worker")


def explainers(agent: AgentProc) -> list[psutil.Process]:
    """The agent's explainer processes."""
    return [c for c in psutil.Process(agent.proc.pid).children()
            if "mldeck.core.explain" in c.cmdline()]
