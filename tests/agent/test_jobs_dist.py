"""Two agents with separate homes run one model as a torchrun c10d rendezvous over gloo, on CPU."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.agent.test_jobs import CONFIG, run_json, wait_status
from tests.conftest import AgentProc, start_agent

# Each rank trains one step of the same linear model; gradients are all-reduced over gloo.
DIST_SCRIPT = """
import json, os, pathlib
import torch
import torch.distributed as dist
from mldeck.core import track

dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
run = track.init()
model = torch.nn.Linear(4, 1)
torch.manual_seed(0)
for p in model.parameters():
    torch.nn.init.constant_(p, 0.5)
x = torch.full((8, 4), float(rank + 1))
loss = model(x).pow(2).mean()
loss.backward()
for p in model.parameters():
    dist.all_reduce(p.grad)
total = torch.tensor([float(rank + 1)])
dist.all_reduce(total)
marker = pathlib.Path(os.environ["MARKER_DIR"]) / f"rank{rank}.json"
marker.write_text(json.dumps({"rank": rank, "world": world, "sum": total.item(),
                              "grad": model.bias.grad.item(), "host_home": os.environ["MLDECK_HOME"]}))
run.log({"rank": rank, "world_size": world, "reduced_sum": total.item()}, step=0)
run.finish()
dist.destroy_process_group()
"""


@pytest.fixture
def two_agents(tmp_path: Path) -> Iterator[tuple[AgentProc, AgentProc]]:
    a = start_agent(tmp_path / "a", config=CONFIG)
    try:
        b = start_agent(tmp_path / "b", config=CONFIG)
        try:
            yield a, b
        finally:
            b.stop()
    finally:
        a.stop()


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_two_agents_one_gloo_rendezvous(two_agents: tuple[AgentProc, AgentProc], tmp_path: Path) -> None:
    a, b = two_agents
    script = tmp_path / "dist_train.py"
    script.write_text(DIST_SCRIPT)
    markers = tmp_path / "markers"
    markers.mkdir()
    nodes = f"local:{a.home},local:{b.home}"
    launched = a.cli("run", str(script), "--nodes", nodes, "--env", f"MARKER_DIR={markers}", "--json",
                     check=True).json()
    assert [r["dist"]["node_rank"] for r in launched] == [0, 1]
    run_id = launched[0]["run_id"]
    assert launched[1]["run_id"] == run_id
    assert launched[0]["dist"]["endpoint"] == launched[1]["dist"]["endpoint"]
    assert "--rdzv-backend" in launched[0]["command"] and "c10d" in launched[0]["command"]
    ends = [wait_status(agent, run_id, "succeeded", "failed", timeout=120) for agent in (a, b)]
    assert [e["status"] for e in ends] == ["succeeded", "succeeded"], [
        (agent.layout.run_dir(run_id) / "stdout.log").read_text()[-2000:] for agent in (a, b)
    ]
    seen = {json.loads(p.read_text())["rank"]: json.loads(p.read_text()) for p in markers.glob("rank*.json")}
    assert sorted(seen) == [0, 1] and all(m["world"] == 2 and m["sum"] == 3.0 for m in seen.values())
    assert {m["host_home"] for m in seen.values()} == {str(a.home), str(b.home)}
    assert seen[0]["grad"] == seen[1]["grad"]
    metrics = {agent.home: run_json(agent, run_id)["metrics"] for agent in (a, b)}
    rank0 = next(h for h in metrics if metrics[h])
    assert metrics[rank0] == {"rank": 0.0, "world_size": 2.0, "reduced_sum": 3.0}
    other = b.home if rank0 == a.home else a.home
    assert metrics[other] == {}
    assert (Path(other) / "runs" / run_id / "metrics-rank1.jsonl").exists()
