"""What a finished `mldeck demo` must have left in the store, checked through the CLI's --json."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from mldeck.tui.demo import MODEL, SHIFTED

Cli = Callable[..., Any]


def check_story(cli: Cli, figures: dict[str, Any]) -> None:
    """cli(*args) returns the decoded --json output of `mldeck ARGS --json` against the demo's agent."""
    (sweep,) = cli("sweep", "ls")
    shown = cli("sweep", "show", sweep["sweep_id"])
    trials = shown["trials"]
    assert len(trials) == 4
    pruned = [t for t in trials if t["status"] == "pruned"]
    assert pruned, f"early stopping pruned no trial: {[(t['status'], t.get('best')) for t in trials]}"
    assert all("median" in (t.get("status_reason") or "") for t in pruned)
    assert trials[0]["run_id"] == figures["sweep"]["best_run"]

    versions = {v["version"]: v for v in cli("models", "versions", MODEL)}
    assert set(versions) == {1, 2}
    assert versions[1]["run_id"] == figures["sweep"]["best_run"]
    assert sorted(versions[2]["aliases"]) == ["challenger", "production"]
    assert versions[1]["aliases"] == ["staging"]

    audit = [(a["actor"], a["action"], a.get("alias"), a["version"]) for a in cli("models", "audit", MODEL)]
    closer = audit[-1][0] if audit else None
    assert closer in ("mldeck-demo", "mldeck-monitor"), audit  # the monitor may close the alert first
    assert audit == [
        ("mldeck-demo", "register", None, 1),
        ("mldeck-demo", "promote", "staging", 1),
        ("mldeck-demo", "promote", "production", 1),
        ("mldeck-monitor", "alert", None, 1),
        ("mldeck-monitor", "retrain", None, 1),
        ("mldeck-monitor", "register", None, 2),
        ("mldeck-monitor", "promote", "challenger", 2),
        ("mldeck-demo", "promote", "production", 2),
        (closer, "resolve_alert", None, 1),
    ]

    counts = cli("query", "SELECT variant, count(*) AS n FROM predictions GROUP BY variant")
    by_variant = {r["variant"]: r["n"] for r in counts}
    assert by_variant.get("production", 0) > 500 and by_variant.get("shadow", 0) > 0, by_variant

    windows = cli("drift", "history", MODEL)["windows"]
    drifted = [w for w in windows if w["version"] == 1 and w["dataset_drifted"]]
    assert len(drifted) >= 2
    for w in drifted:
        assert sorted(w["drifted_columns"]) == sorted(SHIFTED)
    assert not [w for w in windows if w["version"] == 1 and not w["dataset_drifted"]
                and w["drifted_columns"]], "a clean window flagged a column"

    alert_id = figures["drift"]["alert_id"]
    lineage = cli("models", "lineage", f"{MODEL}/2")
    assert lineage["run"]["parent_run_id"] == figures["drift"]["pipeline_id"]
    (row,) = cli("query", f"SELECT tags FROM runs WHERE run_id = '{lineage['run']['run_id']}'")
    tags = json.loads(row["tags"]) if isinstance(row["tags"], str) else row["tags"]
    assert tags["alert_id"] == alert_id and tags["pipeline"] == figures["drift"]["pipeline_id"]
    learned = cli("runs", "show", lineage["run"]["run_id"])["params"]["labelled_rows"]
    assert learned >= 50, "the retrain learned from the labelled traffic since the drift"
    assert cli("alerts") == [], "the drift alert was resolved at the end"
