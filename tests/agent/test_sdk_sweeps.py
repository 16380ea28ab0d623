"""The README's training script in a sweep: early stopping prunes the worse trials, `sweep register` takes
the best (its own file, so that the test workers run it beside the other README tests)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.agent.test_jobs import rpc, run_json
from tests.agent.test_sdk_readme import agent, train  # noqa: F401 (module fixtures, used by name)
from tests.conftest import AgentProc, wait_for


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize(("rule", "options", "sentence"), [
    ("asha", ["--min-steps", "1", "--reduction-factor", "2", "--max-steps", "10"], "ASHA: "),
    ("median", ["--warmup-steps", "1", "--min-trials", "1"], "median rule: "),
])
def test_a_sweep_of_readme_trials_prunes_the_worse_and_registers_the_best(
    agent: AgentProc, train: Path, rule: str, options: list[str], sentence: str  # noqa: F811
) -> None:
    """Two trials run one at a time, the second worse than the first: early stopping prunes the second
    (status pruned, the rule's sentence as reason) and `sweep register` takes the first."""
    created = agent.cli(
        "sweep", str(train), "--grid", "worse=0,1", "--metric", "val_loss", "--mode", "min",
        "--early-stop", rule, *options, "--name", f"sweep-{rule}", "--cwd", str(train.parent), "--json",
        "--", "--epochs", "10", "--epoch-s", "0.3", check=True,
    ).json()
    sweep_id, run_ids = created["sweep_id"], created["run_ids"]
    wait_for(lambda: rpc(agent, "sweeps.show", sweep_id=sweep_id)["status"] == "done",
             timeout=240, interval=0.2, what="the sweep to finish")
    trials = agent.cli("sweep", "show", sweep_id, "--json", check=True).json()["trials"]
    by_worse = {t["params"]["worse"]: t for t in trials}
    assert by_worse[0]["status"] == "succeeded" and trials[0]["run_id"] == by_worse[0]["run_id"]
    pruned = [t for t in trials if t["status"] == "pruned"]
    assert pruned == [by_worse[1]], [(t["params"], t["status"], t["status_reason"]) for t in trials]
    assert all(t["status_reason"].startswith(sentence) for t in pruned)
    assert all(t["last_step"] < 9 for t in pruned), "a pruned trial stops before its last epoch"
    shown = agent.cli("sweep", "show", sweep_id, check=True).out
    listed = agent.cli("runs", "ls", check=True).out
    assert "pruned" in shown and sentence.strip() in shown and "pruned" in listed
    assert {r["run_id"] for r in rpc(agent, "runs.list", status="pruned")} >= {t["run_id"] for t in pruned}
    assert run_json(agent, pruned[0]["run_id"])["status_reason"] == pruned[0]["status_reason"]

    printed = agent.cli("sweep", "register", sweep_id, "--name", f"digits-{rule}", check=True,
                        timeout=120).out
    assert f"best trial of {sweep_id}: {by_worse[0]['run_id']}" in printed
    assert f"registered digits-{rule} v1 from run {by_worse[0]['run_id']}" in printed
    (version,) = agent.cli("models", "versions", f"digits-{rule}", "--json", check=True).json()
    assert version["run_id"] == by_worse[0]["run_id"] and version["run_id"] in run_ids
