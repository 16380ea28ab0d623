"""Bad input to drift.*, alerts.* and pipelines.* over the real socket and CLI: one clear message each,
nothing written, and the agent stays up; a pipeline whose model cannot be registered ends with the
registry's own reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from mldeck.core.errors import Invalid, NotFound, wire_code
from mldeck.core.pipeline import MAX_FILE_BYTES
from tests.conftest import AgentHome, rpc, wait_for

pytestmark = pytest.mark.timeout(120)


def error(agent: AgentHome, method: str, params: dict[str, object]) -> dict[str, object]:
    reply = rpc(agent.home, method, params)
    assert "error" in reply, reply
    return reply["error"]


def test_bad_rpc_calls_get_one_clear_error(live_agent: AgentHome, tmp_path: Path) -> None:
    cases = [
        ("drift.report", {"name": "nosuch"}, wire_code(NotFound), "no model 'nosuch'"),
        ("drift.report", {"name": "nosuch", "window": "5 parsecs"}, wire_code(Invalid), "5 parsecs"),
        ("drift.history", {"name": "nosuch"}, wire_code(NotFound), "no model 'nosuch'"),
        ("drift.distribution", {"name": "nosuch", "column": "x"}, wire_code(NotFound),
         "this registry has no models yet"),
        ("drift.distribution", {"name": "nosuch"}, wire_code(Invalid), "column"),
        ("drift.distribution", {"name": "nosuch", "column": "x", "bins": 0}, wire_code(Invalid), "bins"),
        ("drift.history", {"name": "../x", "limit": 0}, wire_code(Invalid), "limit"),
        ("drift.status", {"name": "nosuch"}, wire_code(NotFound), "no model"),
        ("drift.status", {"nmae": "x"}, wire_code(Invalid), "nmae"),
        ("alerts.resolve", {"alert_id": "drift-0"}, wire_code(NotFound), "no alert 'drift-0'"),
        ("pipelines.run", {}, wire_code(Invalid), "exactly one of file"),
        ("pipelines.run", {"file": str(tmp_path / "none.toml")}, wire_code(Invalid), "cannot read"),
        ("pipelines.run", {"spec": 'name = "p"\n[steps.train]\ncommand = []\n'}, wire_code(Invalid),
         "pipeline spec, line 3 (steps.train.command): command must be a non-empty list"),
        ("pipelines.run", {"spec": 'name = "p"\nmodel = "m"\n[steps.train]\ncommand = ["a.py"]\n[register]\n'
                                   'gate = "acc => 1"\n'}, wire_code(Invalid), "line 6 (register.gate)"),
        ("pipelines.get", {"pipeline_id": "pl-none"}, wire_code(NotFound), "no pipeline run 'pl-none'"),
        ("pipelines.run", {"spec": "#" * (MAX_FILE_BYTES + 1)}, wire_code(Invalid), "$.spec"),
        ("pipelines.list", {"limit": 0}, wire_code(Invalid), "$.limit"),
        ("alerts.list", {"limit": 100_001}, wire_code(Invalid), "$.limit"),
    ]
    for method, params, code, needle in cases:
        err = error(live_agent, method, params)
        assert err["code"] == code and needle in str(err["message"]), (method, err)
    status = rpc(live_agent.home, "drift.status")["result"]
    assert status == {"rows": [], "models": []}
    assert rpc(live_agent.home, "pipelines.list")["result"] == []
    assert rpc(live_agent.home, "alerts.list")["result"] == {"alerts": []}


def test_cli_errors_are_one_line(live_agent: AgentHome, tmp_path: Path) -> None:
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
        done = live_agent.cli(*args)
        assert done.code == 1, (args, done)
        assert done.err.startswith("mldeck: ") and needle in done.err and done.err.count("\n") == 1, done.err
    assert live_agent.cli("alerts", check=True).out.strip() == "no open alerts"
    assert rpc(live_agent.home, "hello").get("result")


def test_a_pipeline_whose_model_cannot_be_registered_fails_with_the_registry_reason(
    live_agent: AgentHome, tmp_path: Path
) -> None:
    script = tmp_path / "no_export.py"
    script.write_text("print('trained, but exported nothing')\n")
    spec = (f'name = "p"\nmodel = "m"\n[steps.train]\ncommand = ["python", "{script}"]\n'
            '[register]\nstep = "train"\n')
    started = rpc(live_agent.home, "pipelines.run", {"spec": spec})["result"]

    def ended() -> dict[str, object] | None:
        row = rpc(live_agent.home, "pipelines.get", {"pipeline_id": started["pipeline_id"]})["result"]
        return row if row["status"] != "running" else None

    row = wait_for(ended, timeout=60, what="the pipeline to end")
    assert row["status"] == "failed" and row["registered_version"] is None, row
    assert str(row["message"]).startswith("registration failed: no model folder at "), row
    assert row["steps"][0]["status"] == "succeeded"
    assert rpc(live_agent.home, "models.list")["result"] == []
    assert rpc(live_agent.home, "models.audit")["result"] == []
