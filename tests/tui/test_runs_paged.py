"""The Runs screen across a fleet asks each host for pages under its sort and filter, never whole tables:
each agent filters and sorts all its runs exactly as the screen does the rows it holds, and the merge of
the hosts' first pages is the fleet's first rows. A host of a few runs is held whole: a filter or sort
shows its runs exactly at the key, without asking it."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mldeck.core.client import METRIC_RESULTS
from mldeck.core.errors import Invalid
from mldeck.core.paths import Layout
from mldeck.core.store import Store
from mldeck.tui.app import MldeckApp
from mldeck.tui.screens.runs import FIRST_WINDOW, RunsScreen, columns_table, host_query, with_duration
from mldeck.tui.widgets import table_query
from tests.conftest import AgentProc, rpc, start_agent
from tests.tui.conftest import until
from tests.tui.fleet_homes import ManyHomes, fill_store

pytestmark = pytest.mark.timeout(240)

HOST = "gpu-7"
ODD = [math.nan, math.inf, -math.inf, 1.0, 2.0, 2.0]
"""The last `gn` of a few runs: NaN and infinities sort and compare as Arrow has them."""


def odd_metrics(home: Path) -> None:
    """A `gn` metric for six runs only, with NaN and infinities among its values."""
    store = Store(Layout(home).db)
    n = len(ODD)
    store.append("metrics", pa.table({
        "run_id": [f"r1-{i:06d}" for i in range(n)], "key": ["gn"] * n, "step": [9] * n,
        "ts": [time.time()] * n, "value": ODD}))
    store.close()


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProc]:
    home = tmp_path_factory.mktemp("paged") / "home"
    fill_store(home, 300, seed=1)
    odd_metrics(home)
    proc = start_agent(home)
    try:
        yield proc
    finally:
        proc.stop()


def table(home: Path, **params: Any) -> dict[str, Any]:
    reply = rpc(home, "runs.table", params)
    if "error" in reply:
        raise Invalid(reply["error"]["message"])
    return METRIC_RESULTS["runs.table"](reply["result"])  # NaN and infinities read back, as the TUI has them


WORDS = ["mlp-1", "exp-3", "succeeded", "fail", "r1-00001", "zzz", "gpu", "status:succ", "status:STOP",
         "exp:exp-1", "name:mlp-19", "run:r1-0000", "sweep:x", "host:gpu", "host:cpu", "loss<0.5",
         "val_acc>=0.3", "loss!=0.25", "gn>1", "gn<=2", "gn!=2", "gn=2", "cost>0.5", "duration<3000",
         "created>{recent}", "started_at<={recent}", "total_steps>1", "last_step=2", "progress<1", "name>3",
         "nothing>1", "loss:0.", "exp:"]
SORTS = [None, "created", "name", "status", "m:loss", "m:val_acc", "m:gn", "cost", "duration", "started_at",
         "progress", "eta", "run_id", "experiment", "host"]


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(words=st.lists(st.sampled_from(WORDS), max_size=3), sort=st.sampled_from(SORTS),
       descending=st.booleans())
def test_the_agent_filters_and_sorts_all_its_runs_as_the_screen_does_those_it_holds(
        agent: AgentProc, words: list[str], sort: str | None, descending: bool) -> None:
    recent = time.time() - 120
    query = " ".join(words).replace("{recent}", f"{recent:.0f}")
    held = with_duration(columns_table(HOST, table(agent.home, limit=1000)), time.time())
    assert held.num_rows == 300
    try:
        expected = table_query.apply(held, query)
    except Invalid as exc:  # what the screen refuses on the rows it holds
        sent = host_query(query, HOST)
        if sent is None:
            return
        if "no column" in str(exc):  # a metric none of this host's runs has: none match
            assert table(agent.home, query=sent)["total"] == 0
            return
        with pytest.raises(Invalid, match="not a number"):  # the agent refuses it too
            table(agent.home, query=sent, sort=sort, descending=descending)
        return
    if sort in expected.column_names and expected.num_rows:
        expected = expected.sort_by([(sort, "descending" if descending else "ascending")])
    sent = host_query(query, HOST)
    if sent is None:  # `host:` rules the host out: the screen does not ask it
        assert expected.num_rows == 0
        return
    sort_arg = {} if sort in (None, "host") else {"sort": sort, "descending": descending}
    page = table(agent.home, query=sent, limit=1000, **sort_arg)
    assert page["total"] == expected.num_rows
    assert page["columns"]["run_id"] == expected["run_id"].to_pylist()
    if expected.num_rows > 4:  # pages cut from the same order join up
        cut = expected.num_rows // 3
        first = table(agent.home, query=sent, limit=cut, **sort_arg)["columns"]["run_id"]
        rest = table(agent.home, query=sent, offset=cut, limit=1000, **sort_arg)["columns"]["run_id"]
        assert first + rest == page["columns"]["run_id"]


def test_status_and_experiment_narrow_a_page_sorted_by_a_metric(agent: AgentProc) -> None:
    """`runs.table`'s status and experiment go with any sort and filter (the metric's join included)."""
    sort = {"sort": "m:loss", "descending": False}
    got = table(agent.home, status="failed", experiment="exp-3", limit=1000, **sort)
    wanted = table(agent.home, query="status:failed exp:exp-3", limit=1000, **sort)
    assert got["total"] > 0 and got["columns"]["run_id"] == [
        r for r, e in zip(wanted["columns"]["run_id"], wanted["columns"]["experiment"], strict=True)
        if e == "exp-3"]
    assert table(agent.home, status="failed", query="val_acc>0.5", limit=1)["total"] > 0


def test_a_sort_the_agent_cannot_make_is_one_clear_error(agent: AgentProc) -> None:
    with pytest.raises(Invalid, match="cannot sort runs by 'params'"):
        table(agent.home, sort="params")
    with pytest.raises(Invalid, match="name is not a number"):
        table(agent.home, query="name>3")
    assert table(agent.home, limit=1)["total"] == 300  # still up


@contextlib.contextmanager
def agents(root: Path, hosts: int, runs: int) -> Iterator[dict[str, Path]]:
    """Agents gpu-0, gpu-1, ... with `runs` runs each (other values on each), by host name."""
    started: list[AgentProc] = []
    try:
        for i in range(hosts):
            fill_store(root / f"h{i}", runs, seed=i + 1)
            started.append(start_agent(root / f"h{i}"))
        yield {f"gpu-{i}": a.home for i, a in enumerate(started)}
    finally:
        for a in started:
            a.stop()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    with agents(tmp_path_factory.mktemp("fleet"), 3, 400) as homes:
        yield homes


def fleet_first(homes: dict[str, Path], n: int, sort: str, descending: bool, query: str = "") -> list[str]:
    """The fleet's first n runs under a sort and filter, from every run of every host."""
    every = []
    for host, home in homes.items():
        sent = host_query(query, host)
        if sent is not None:
            every.append(with_duration(columns_table(host, table(home, query=sent, limit=1000)), time.time()))
    merged = pa.concat_tables(every, promote_options="default")
    return merged.sort_by([(sort, "descending" if descending else "ascending")])["run_id"].to_pylist()[:n]


def test_the_runs_screen_merges_each_hosts_first_page_and_pages_on(fleet: dict[str, Path]) -> None:
    async def go() -> None:
        app = MldeckApp(lambda: ManyHomes(fleet))
        async with app.run_test(size=(140, 40)) as pilot:
            await pilot.press("2")
            runs: RunsScreen = app.screen  # type: ignore[assignment]
            settled = runs.answered
            await until(pilot, lambda: settled() and runs.data.num_rows == FIRST_WINDOW,
                        what="the first page")
            await pilot.pause(0.5)
            assert all(t.num_rows <= FIRST_WINDOW for t in runs.tables.values())  # pages, not whole tables
            assert runs.total() == 1200 and "200 of 1,200 runs" in runs.said
            assert runs.view["run_id"].to_pylist() == fleet_first(fleet, FIRST_WINDOW, "created", True)

            runs.table.sort_by("m:loss", False)
            await until(pilot, lambda: settled() and runs.asked[0] == "m:loss", what="sorted by loss")
            # the cursor stays on its run, wherever the sort put it: near the end, the next runs come too
            assert runs.view["run_id"].to_pylist() == fleet_first(fleet, runs.data.num_rows, "m:loss", False)

            await pilot.press("slash", *"name:mlp-19", "enter")  # 33 runs, many past their host's first page
            await until(pilot, lambda: settled() and runs.asked[2] == "name:mlp-19", what="the filtered runs")
            wanted = fleet_first(fleet, 1000, "m:loss", False, "name:mlp-19")
            assert 3 < len(wanted) < FIRST_WINDOW
            assert runs.view["run_id"].to_pylist() == wanted

            await pilot.press("slash", "ctrl+u", *"host:gpu-1 exp:exp-1", "enter")
            await until(pilot, lambda: settled() and runs.asked[2].startswith("host:"),
                        what="one host's runs")
            assert set(runs.view["host"].to_pylist()) == {"gpu-1"}
            assert runs.view["run_id"].to_pylist() == fleet_first(fleet, 1000, "m:loss", False,
                                                                  "host:gpu-1 exp:exp-1")

            await pilot.press("slash", "ctrl+u", "enter", "end")
            await until(pilot, lambda: settled() and runs.data.num_rows >= 2 * FIRST_WINDOW,
                        what="the next runs, scrolled to")
            n = runs.data.num_rows
            assert runs.view["run_id"].to_pylist() == fleet_first(fleet, n, "m:loss", False)

    asyncio.run(go())


@pytest.fixture(scope="module")
def small_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    with agents(tmp_path_factory.mktemp("small"), 2, SMALL) as homes:
        yield homes


SMALL = 120
"""Each host's runs: under FIRST_WINDOW, so held whole; together over it."""


def test_a_small_fleets_runs_are_filtered_and_sorted_at_each_key(small_fleet: dict[str, Path]) -> None:
    """Typed, widened and sorted, the view is the fleet's answer at once, and no host is asked for it."""
    async def go() -> None:
        homes = ManyHomes(small_fleet)
        app = MldeckApp(lambda: homes)
        async with app.run_test(size=(140, 40)) as pilot:
            await pilot.press("2")
            runs: RunsScreen = app.screen  # type: ignore[assignment]
            await until(pilot, lambda: runs.whole == set(small_fleet) and runs.answered(), what="both hosts")
            assert runs.data.num_rows == 2 * SMALL and runs.total() == 2 * SMALL
            asked = len(homes.calls)
            await pilot.press("slash")
            typed = ""
            for key in [*"name:mlp-1", "backspace", "backspace", *" status:failed", *["backspace"] * 14]:
                await pilot.press(key)
                typed = typed[:-1] if key == "backspace" else typed + key
                wanted = fleet_first(small_fleet, 1000, "created", True, typed.strip())
                assert runs.view["run_id"].to_pylist() == wanted, typed
                assert runs.total() == len(wanted), typed
            assert typed == "name:mlp"
            await pilot.press("enter")
            runs.table.sort_by("m:loss", False)
            wanted = fleet_first(small_fleet, 1000, "m:loss", False, "name:mlp")
            assert runs.view["run_id"].to_pylist() == wanted
            since = homes.calls[asked:]
            assert not [c for c in since if "query" in c[2] or c[2].get("sort") != "created"], since

    asyncio.run(go())
