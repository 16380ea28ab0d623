"""A problem in the background reaches `agent status` and `hosts status`, in the same words (and the
Fleet screen: tests/tui/test_fleet_health.py)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import AgentProc, wait_for


def poison(home: Path) -> None:
    """A run whose second line is nested too deep to parse: ingest skips it and says so."""
    run_dir = home / "runs" / "poisoned"
    run_dir.mkdir(parents=True)
    deep = '{"t": 1.0, "e": "note", "d": {"x": ' + "[" * 5000 + "]" * 5000 + "}}\n"
    point = json.dumps({"t": 1.0, "s": 0, "m": {"loss": 1.0}}) + "\n"
    (run_dir / "metrics.jsonl").write_text(point + deep)


def test_a_skipped_line_shows_in_agent_and_hosts_status(agent_home: AgentProc) -> None:
    poison(agent_home.home)

    def said() -> str | None:
        out = agent_home.cli("agent", "status").out
        wanted = "problem: ingest: 1 bad lines skipped, last runs/poisoned/metrics.jsonl:2"
        return out if wanted in out else None

    wait_for(said, timeout=30, what="the bad line in agent status")
    hosts = agent_home.cli("hosts", "status", "--json")
    (local,) = hosts.json()
    assert any("runs/poisoned/metrics.jsonl:2" in p for p in local["problems"]), local
    assert "runs/poisoned/metrics.jsonl:2" in agent_home.cli("hosts", "status").out
