"""`runs.table` and `runs.compare`: the Runs and Compare screens' reads of a real agent's store, and their bad
input."""

from __future__ import annotations

import pyarrow as pa
import pytest

from mldeck.tui.screens.runs import columns_table, with_duration
from tests.conftest import rpc
from tests.tui.conftest import Deck

pytestmark = pytest.mark.timeout(60)


def test_pages_match_runs_list_with_latest_metrics_pivoted(deck: Deck) -> None:
    runs = deck.rpc("runs.list")
    page = deck.rpc("runs.table")
    cols = page["columns"]
    assert page["total"] == len(runs) and page["offset"] == 0
    assert cols["run_id"] == [r["run_id"] for r in runs]  # newest first, like runs.list
    assert set(page["metrics"]) == {k for r in runs for k in r["metrics"]}
    for i, r in enumerate(runs):
        for key in page["metrics"]:
            assert cols[f"m:{key}"][i] == r["metrics"].get(key)
        assert (cols["status"][i], cols["name"][i]) == (r["status"], r["name"])

    first = deck.rpc("runs.table", offset=0, limit=2, metrics=["loss"])
    rest = deck.rpc("runs.table", offset=2, limit=1000, metrics=["loss"])
    assert first["columns"]["run_id"] + rest["columns"]["run_id"] == cols["run_id"]
    assert list(first["columns"]) == list(rest["columns"]) and "m:val_acc" not in first["columns"]

    done = deck.rpc("runs.table", status="succeeded", columns=["name", "status"], metrics=[])
    assert set(done["columns"]) == {"run_id", "name", "status"}
    assert done["total"] == sum(r["status"] == "succeeded" for r in runs)

    table = columns_table("local", page)
    assert table.num_rows == len(runs) and table["host"].to_pylist() == ["local"] * len(runs)
    assert table["created"].to_pylist() == [r["created_at"] for r in runs]


def test_progress_and_eta_only_for_runs_that_said_their_total() -> None:
    table = pa.table({"status": ["running", "running", "succeeded"], "started_at": [100.0, 100.0, 50.0],
                      "ended_at": [None, None, 90.0], "total_steps": [None, 100.0, 10.0],
                      "last_step": [5.0, 24.0, 9.0]})
    shown = with_duration(table, now=200.0)
    assert shown["progress"].to_pylist() == [None, 0.25, 1.0]
    assert shown["eta"].to_pylist() == [None, 300.0, None]  # 100 s for a quarter: 300 s to go


@pytest.mark.parametrize(("params", "says"), [
    ({"limit": 0}, ">= 1 - at `$.limit`"),
    ({"limit": 10**6}, "<= 25000 - at `$.limit`"),
    ({"offset": -1}, ">= 0 - at `$.offset`"),
    ({"offset": 10**20}, "at `$.offset`"),
    ({"offset": 1e20}, "got `float` - at `$.offset`"),
    ({"columns": ["name; drop table runs"]}, "unknown run column"),
    ({"metrics": [f"k{i}" for i in range(40)]}, "of length <= 32 - at `$.metrics`"),
    ({"limit": "ten"}, "limit"),
])
def test_bad_input_gets_one_clear_message(deck: Deck, params: dict, says: str) -> None:
    reply = rpc(deck.home, "runs.table", params)
    assert says in reply["error"]["message"]
    assert rpc(deck.home, "hello")["result"]


def test_compare_reads_several_runs_in_one_call_as_each_would_alone(deck: Deck) -> None:
    run_ids = [r["run_id"] for r in deck.rpc("runs.list")][:3]
    got = deck.rpc("runs.compare", run_ids=[*run_ids, run_ids[0]], max_points=50)
    assert [r["run_id"] for r in got["runs"]] == run_ids  # each once, in the order asked
    for run in got["runs"]:
        alone = deck.rpc("runs.get", run_id=run["run_id"])
        assert {k: run[k] for k in ("status", "params", "metrics", "last_step")} == \
            {k: alone[k] for k in ("status", "params", "metrics", "last_step")}
        assert got["series"][run["run_id"]] == deck.rpc("runs.metrics", run_id=run["run_id"],
                                                        max_points=50)["series"]


@pytest.mark.parametrize(("params", "says"), [
    ({"run_ids": []}, "length >= 1 - at `$.run_ids`"),
    ({"run_ids": [f"r{i}" for i in range(65)]}, "length <= 64 - at `$.run_ids`"),
    ({"run_ids": ["no-such-run"]}, "no-such-run"),
    ({"run_ids": "run-a"}, "at `$.run_ids`"),
])
def test_compare_bad_input_gets_one_clear_message(deck: Deck, params: dict, says: str) -> None:
    reply = rpc(deck.home, "runs.compare", params)
    assert says in reply["error"]["message"], reply
    assert rpc(deck.home, "hello")["result"]
