"""Bad input to drift.*, alerts.* and pipelines.* over the real socket and CLI: one clear message each,
nothing written, and the agent stays up."""

from __future__ import annotations

from pathlib import Path

import pytest

from core import protocol
from tests.conftest import AgentProc, rpc

pytestmark = pytest.mark.timeout(120)


def error(agent: AgentProc, method: str, params: dict[str, object]) -> dict[str, object]:
    reply = rpc(agent.home, method, params)
    assert "error" in reply, reply
    return reply["error"]


def test_bad_rpc_calls_get_one_clear_error(agent_home: AgentProc, tmp_path: Path) -> None:
    cases = [
        ("drift.report", {"name": "nosuch"}, protocol.NOT_FOUND, "no model 'nosuch'"),
        ("drift.report", {"name": "nosuch", "window": "5 parsecs"}, protocol.INVALID_PARAMS, "5 parsecs"),
        ("drift.history", {"name": "nosuch"}, protocol.NOT_FOUND, "no model 'nosuch'"),
        ("drift.distribution", {"name": "nosuch", "column": "x"}, protocol.NOT_FOUND,
         "this registry has no models yet"),
        ("drift.distribution", {"name": "nosuch"}, protocol.INVALID_PARAMS, "column"),
        ("drift.distribution", {"name": "nosuch", "column": "x", "bins": 0}, protocol.INVALID_PARAMS, "bins"),
        ("drift.history", {"name": "../x", "limit": 0}, protocol.INVALID_PARAMS, "limit"),
        ("drift.status", {"name": "nosuch"}, protocol.NOT_FOUND, "no model"),
        ("drift.status", {"nmae": "x"}, protocol.INVALID_PARAMS, "nmae"),
        ("alerts.resolve", {"alert_id": "drift-0"}, protocol.NOT_FOUND, "no alert 'drift-0'"),
        ("pipelines.run", {}, protocol.INVALID_PARAMS, "exactly one of file"),
        ("pipelines.run", {"file": str(tmp_path / "none.toml")}, protocol.INVALID_PARAMS, "cannot read"),
        ("pipelines.run", {"spec": 'name = "p"\n[steps.train]\ncommand = []\n'}, protocol.INVALID_PARAMS,
         "pipeline spec, line 3 (steps.train.command): command must be a non-empty list"),
        ("pipelines.run", {"spec": 'name = "p"\nmodel = "m"\n[steps.train]\ncommand = ["a.py"]\n[register]\n'
                                   'gate = "acc => 1"\n'}, protocol.INVALID_PARAMS, "line 6 (register.gate)"),
        ("pipelines.get", {"pipeline_id": "pl-none"}, protocol.NOT_FOUND, "no pipeline run 'pl-none'"),
    ]
    for method, params, code, needle in cases:
        err = error(agent_home, method, params)
        assert err["code"] == code and needle in str(err["message"]), (method, err)
    status = rpc(agent_home.home, "drift.status")["result"]
    assert status == {"rows": [], "models": []}
    assert rpc(agent_home.home, "pipelines.list")["result"] == []
    assert rpc(agent_home.home, "alerts.list")["result"] == {"alerts": []}


def test_cli_errors_are_one_line(agent_home: AgentProc, tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "p"\nmodel = "demo"\n\n[steps.train]\ncommand = ["python", "-m", "x"]\n\n'
                   '[register]\ngate = "val_acc >= 0.9"\npromote = "production"\n')
    for args, needle in [
        (("drift", "report", "nosuch"), "no model 'nosuch'"),
        (("drift", "report", "nosuch", "--window", "5 parsecs"), "5 parsecs"),
        (("drift", "history", "nosuch"), "no model 'nosuch'"),
        (("alerts", "resolve", "nope"), "no alert 'nope'"),
        (("pipeline", "run", str(tmp_path / "missing.toml")), "no pipeline file"),
        (("pipeline", "run", str(bad)), "bad.toml, line 9 (register.promote)"),
    ]:
        done = agent_home.cli(*args)
        assert done.code == 1, (args, done)
        assert done.err.startswith("mldeck: ") and needle in done.err and done.err.count("\n") == 1, done.err
    assert agent_home.cli("alerts", check=True).out.strip() == "no open alerts"
    assert rpc(agent_home.home, "hello").get("result")
