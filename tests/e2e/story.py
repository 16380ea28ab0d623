"""What a finished `mldeck demo` must have left in the store, checked through the CLI's --json."""

from __future__ import annotations

import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from mldeck.tui.demo import MODEL, SHIFTED

Cli = Callable[..., Any]


def ask_all(cli: Cli, *commands: tuple[str, ...]) -> list[Any]:
    """Each command's output, the commands run at once: each is a CLI process of its own and only reads."""
    with ThreadPoolExecutor(len(commands)) as pool:
        return list(pool.map(lambda args: cli(*args), commands))


def check_story(cli: Cli, figures: dict[str, Any]) -> None:
    """cli(*args) returns the decoded --json output of `mldeck ARGS --json` against the demo's agent."""
    swept, listed, audited, counts, history, lineage, alerts = ask_all(
        cli, ("sweep", "ls"), ("models", "versions", MODEL), ("models", "audit", MODEL),
        ("query", "SELECT variant, count(*) AS n FROM predictions GROUP BY variant"),
        ("drift", "history", MODEL), ("models", "lineage", f"{MODEL}/2"), ("alerts",))
    (sweep,) = swept
    retrained = lineage["run"]["run_id"]
    shown, retrain_run, (row,) = ask_all(
        cli, ("sweep", "show", sweep["sweep_id"]), ("runs", "show", retrained),
        ("query", f"SELECT tags FROM runs WHERE run_id = '{retrained}'"))
    trials = shown["trials"]
    assert len(trials) == 4
    pruned = [t for t in trials if t["status"] == "pruned"]
    assert pruned, f"early stopping pruned no trial: {[(t['status'], t.get('best')) for t in trials]}"
    assert all("median" in (t.get("status_reason") or "") for t in pruned)
    assert trials[0]["run_id"] == figures["sweep"]["best_run"]

    versions = {v["version"]: v for v in listed}
    assert set(versions) == {1, 2}
    assert versions[1]["run_id"] == figures["sweep"]["best_run"]
    assert sorted(versions[2]["aliases"]) == ["challenger", "production"]
    assert versions[1]["aliases"] == ["staging"]

    audit = [(a["actor"], a["action"], a.get("alias"), a["version"]) for a in audited]
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

    by_variant = {r["variant"]: r["n"] for r in counts}
    assert by_variant.get("production", 0) > 500 and by_variant.get("shadow", 0) > 0, by_variant

    windows = history["windows"]
    drifted = [w for w in windows if w["version"] == 1 and w["dataset_drifted"]]
    assert len(drifted) >= 2
    for w in drifted:
        assert sorted(w["drifted_columns"]) == sorted(SHIFTED)
    assert not [w for w in windows if w["version"] == 1 and not w["dataset_drifted"]
                and w["drifted_columns"]], "a clean window flagged a column"

    alert_id = figures["drift"]["alert_id"]
    assert lineage["run"]["parent_run_id"] == figures["drift"]["pipeline_id"]
    tags = json.loads(row["tags"]) if isinstance(row["tags"], str) else row["tags"]
    assert tags["alert_id"] == alert_id and tags["pipeline"] == figures["drift"]["pipeline_id"]
    learned = retrain_run["params"]["labelled_rows"]
    assert learned >= 50, "the retrain learned from the labelled traffic since the drift"
    assert alerts == [], "the drift alert was resolved at the end"
