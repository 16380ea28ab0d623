"""A run that writes again after `runs archive` (late lines of its script, a resumed run) is a live run again:
ingest brings it back from its archive file before its new lines go in, so no point is lost, none is
doubled, none is left without its run, and the run is no longer listed as archived."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from tests.agent.test_archive import ARCHIVED, DAY, call, ingested, live_ids, write_run
from tests.agent.test_summaries import all_ingested, assert_summaries_true, query
from tests.conftest import start_agent, wait_for

ORPHANS = ("SELECT (SELECT count(*) FROM metrics WHERE run_id NOT IN (SELECT run_id FROM runs)) + "
           "(SELECT count(*) FROM metric_summary WHERE run_id NOT IN (SELECT run_id FROM runs))")
POINTS = "SELECT step, key, value FROM metrics WHERE run_id = '{run}' ORDER BY rowid"


def append(home: Path, run_id: str, lines: list[dict[str, Any]]) -> None:
    with open(home / "runs" / run_id / "metrics.jsonl", "a") as fh:
        fh.write("".join(json.dumps(line) + "\n" for line in lines))


def test_lines_after_the_archive_bring_the_run_back_whole(tmp_path: Path) -> None:
    home = tmp_path / "home"
    old = time.time() - 100 * DAY
    write_run(home, "late", old)
    write_run(home, "resumed", old)
    write_run(home, "quiet", old)
    agent = start_agent(home)
    try:
        ingested(home, 3)
        before = {run: query(home, POINTS.format(run=run)) for run in ("late", "resumed")}
        got = call(home, "runs.archive", {"before_s": 90 * DAY})
        assert sorted(got["runs"]) == ["late", "quiet", "resumed"]
        files = {run: Path(r["archived"]["path"]) for run in ("late", "resumed", "quiet")
                 for r in call(home, "runs.archived") if r["run_id"] == run}

        now = time.time()
        append(home, "late", [{"t": now, "s": s, "m": {"loss": v}} for s, v in ((50, 0.01), (51, 0.02))])
        append(home, "resumed", [
            {"t": now, "e": "init", "d": {"name": "resumed", "experiment": "exp", "params": {"lr": 0.1},
                                          "created_at": old - 3600}},
            {"t": now, "e": "resume", "d": {"step": 40}},
            *({"t": now, "s": s, "m": {"loss": 0.5}} for s in range(41, 45)),
            {"t": now + 1, "e": "finish", "d": {"status": "succeeded"}},
        ])
        wait_for(lambda: all_ingested(home), timeout=60, what="the new lines committed")

        assert query(home, ORPHANS) == [[0]], "no point or summary without its run"
        assert live_ids(home) == {"late", "resumed"}
        assert [r["run_id"] for r in call(home, "runs.archived")] == ["quiet"]
        assert not files["late"].exists() and not files["resumed"].exists() and files["quiet"].exists()
        assert [r[0] for r in query(home, ARCHIVED)] == ["quiet"], "the archive's view has the quiet run only"

        assert query(home, POINTS.format(run="late")) == [
            *before["late"], [50, "loss", 0.01], [51, "loss", 0.02]], "every point once, the late ones last"
        kept = [p for p in before["resumed"] if p[0] <= 40]
        resumed = [*kept, *([s, "loss", 0.5] for s in range(41, 45))]
        assert query(home, POINTS.format(run="resumed")) == resumed
        late = call(home, "runs.get", {"run_id": "late"})
        assert "archived" not in late, "live, not archived"
        assert late["status"] == "succeeded" and late["params"] == {"lr": 0.1}, late
        assert call(home, "runs.get", {"run_id": "resumed"})["status"] == "succeeded"
        assert_summaries_true(home)
        log = (home / "agent.log").read_text()
        assert "run late was archived; new lines in its metrics.jsonl brought it back" in log, log[-2000:]
    finally:
        agent.stop()
