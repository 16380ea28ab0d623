"""The registry end to end: a real agent, real training runs (torch), the real CLI and socket clients."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import getpass
import io
import itertools
import json
import os
import pty
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mldeck.core.client import connect_unix
from mldeck.core.errors import MldeckError
from mldeck.tui.cli import main
from tests.conftest import REPO, AgentProc, CliResult, agent_env, start_agent, wait_for

pytestmark = pytest.mark.timeout(240)

GATES = """
[registry.gates.demo.production]
metrics = ["val_acc >= 0.92"]
no_worse_than_current = "val_acc"
require_alias_first = "staging"
no_open_drift_alert = true
"""
VERIFY_TIMEOUT_S = 240  # loading a torch.export model in a fresh process is slow on a busy 2-core host
TRAIN = str(Path(__file__).with_name("tiny_train.py"))


def rpc(agent: AgentProc, method: str, **params: Any) -> Any:
    async def go() -> Any:
        client = await connect_unix(agent.layout.socket)
        try:
            return await client.call(method, **params)
        finally:
            await client.close()

    return asyncio.run(go())


def train(agent: AgentProc, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, TRAIN, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=agent_env(agent.home), cwd=REPO,
    )


def cli(agent: AgentProc, *args: str) -> CliResult:
    """`mldeck ARGS` through the CLI's own main() in this process: no interpreter start per call."""
    out, err = io.StringIO(), io.StringIO()
    stdin, sys.stdin = sys.stdin, io.StringIO()  # not a terminal, like `< /dev/null`
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main([*args, "--home", str(agent.home)])
    finally:
        sys.stdin = stdin
    return CliResult(code, out.getvalue(), err.getvalue())


def run_ids(proc: subprocess.Popen[str]) -> list[str]:
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def reg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """An agent with gates for `demo`; demo v1-v3 registered by the SDK; exported-only and failed runs."""
    agent = start_agent(tmp_path_factory.mktemp("reg") / "home", config=GATES)
    try:
        made = run_ids(train(agent, "demo:0.93", "demo:0.95", "demo:0.85", "_:0.9", "!:0.5"))
        ids = {"sdk": made[:3], "exported": made[3:4], "failed": made[4:]}
        wait_for(lambda: _count_versions(agent, "demo") == 3, timeout=60, what="SDK registrations of demo")
        wait_for(lambda: _run_status(agent, ids["failed"][0]) == "failed", what="the failed run's status")
        wait_for(lambda: all(_run_status(agent, r) == "succeeded" for r in ids["exported"]), what="runs")
        yield {"agent": agent, **ids}
    finally:
        agent.stop()


def _count_versions(agent: AgentProc, name: str) -> int:
    try:
        return len(rpc(agent, "models.versions", name=name))
    except MldeckError:
        return 0


def _run_status(agent: AgentProc, run_id: str) -> str | None:
    try:
        return rpc(agent, "runs.get", run_id=run_id)["status"]
    except MldeckError:
        return None


def audit_count(agent: AgentProc) -> int:
    return len(rpc(agent, "models.audit"))


def test_sdk_registration_records_the_version(reg: dict[str, Any]) -> None:
    agent: AgentProc = reg["agent"]
    versions = {v["version"]: v for v in rpc(agent, "models.versions", name="demo")}
    for number, run_id, acc in zip((1, 2, 3), reg["sdk"], (0.93, 0.95, 0.85), strict=True):
        v = versions[number]
        assert v["run_id"] == run_id and v["metrics"]["val_acc"] == acc and "train_loss" in v["metrics"]
        assert v["signature"]["inputs"] == [{"name": "input__0", "datatype": "FP32", "shape": [-1, 8]}]
        assert v["signature"]["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, 2]}]
        assert v["git_sha"] and len(v["git_sha"]) == 40 and isinstance(v["git_dirty"], bool)
        folder = Path(v["artifact"])
        assert folder == agent.layout.models / "demo" / str(number)
        for name in ("model.pt2", "signature.json", "sample.npz", "reference.parquet", "reference.json"):
            assert (folder / name).is_file(), name
        assert json.loads((folder / "reference.json").read_text())["n_rows"] == 256
    assert not list((agent.layout.models / "demo").glob(".incoming-*"))


def test_promotion_lifecycle_with_gates_force_rollback_and_audit(reg: dict[str, Any]) -> None:
    agent: AgentProc = reg["agent"]
    me = getpass.getuser()
    events = asyncio.run(_collect_models_events(agent, lambda: _lifecycle(agent)))
    rows = [r for r in rpc(agent, "models.audit", name="demo") if r["action"] != "register"]
    expected = [
        ("promote", "staging", 1, None, None, False),
        ("promote", "production", 1, None, "first release", False),
        ("promote", "staging", 2, 1, None, False),
        ("promote", "production", 2, 1, None, False),
        ("promote", "staging", 3, 2, None, False),
        ("promote", "production", 3, 2, "hotfix for incident 42", True),
        ("rollback", "production", 2, 3, "latency regression", None),
    ]
    got = [
        (r["action"], r["alias"], r["version"], r["from_version"], r["comment"], r["details"].get("forced"))
        for r in rows
    ]
    assert got == expected
    assert {r["actor"] for r in rows} == {me}
    assert rows[5]["details"]["failed_gates"] == [
        "val_acc 0.85 < 0.92", "val_acc 0.85 is worse than 0.95 of v2 (now production; higher is better)"
    ]
    assert [(e["action"], e["alias"], e["version"], e["from_version"]) for e in events] == [
        (a, alias, v, f) for a, alias, v, f, _, _ in expected
    ]
    assert rpc(agent, "models.get", name="demo", alias="production")["version"] == 2
    listed = cli(agent, "models", "versions", "demo").out
    assert "production" in listed and "VAL_ACC" in listed
    audit = cli(agent, "models", "audit", "demo").out
    assert "FORCED past: val_acc 0.85 < 0.92" in audit and "v3 -> v2" in audit
    lineage = cli(agent, "models", "lineage", "demo/2", "--json").json()
    assert lineage["run"]["run_id"] == reg["sdk"][1] and lineage["run"]["params"] == {"seed": 1, "lr": 0.5}
    assert [(r["alias"], r["replaced_version"]) for r in lineage["replaced"]] == [
        ("staging", 1), ("production", 1), ("production", 3)
    ]
    shown = cli(agent, "models", "show", "demo@production", "--json").json()
    assert shown["version"] == 2 and shown["aliases"] == ["production"]


def _lifecycle(agent: AgentProc) -> None:
    ok = cli(agent, "models", "promote", "demo", "1", "--to", "staging", "--yes")
    assert "demo v1 is now staging" in ok.out
    refused = cli(agent, "models", "promote", "demo", "2", "--to", "production", "--yes")
    assert refused.code == 1 and "v2 has not been in staging yet (promote it there first)" in refused.err
    first = cli(agent, "models", "promote", "demo", "1", "--to", "production", "--yes", "--reason",
                "first release")
    assert first.code == 0, first.err
    rpc(agent, "models.promote", name="demo", version=2, alias="staging", actor=getpass.getuser())
    passed = cli(agent, "models", "promote", "demo", "2", "--to", "production", "--yes")
    assert passed.code == 0, passed.err  # the gate passes: 0.95 >= 0.92, better than v1, was in staging
    rpc(agent, "models.promote", name="demo", version=3, alias="staging", actor=getpass.getuser())
    before = audit_count(agent)
    refused = agent.cli("models", "promote", "demo", "3", "--to", "production", "--yes")
    assert refused.code == 1
    assert refused.err.strip() == (
        "mldeck: promotion of demo v3 to production refused by its gates: val_acc 0.85 < 0.92; "
        "val_acc 0.85 is worse than 0.95 of v2 (now production; higher is better) "
        "(to override: --force --reason TEXT)"
    )
    no_reason = cli(agent, "models", "promote", "demo", "3", "--to", "production", "--yes", "--force")
    assert no_reason.code == 1 and "--force needs --reason" in no_reason.err
    assert audit_count(agent) == before
    assert rpc(agent, "models.get", name="demo", alias="production")["version"] == 2
    forced = agent.cli("models", "promote", "demo", "3", "--to", "production", "--yes", "--force",
                       "--reason", "hotfix for incident 42", check=True)
    assert "forced past failed gates: val_acc 0.85 < 0.92" in forced.out
    back = agent.cli("models", "rollback", "demo", "--alias", "production", "--reason", "latency regression",
                     check=True)
    assert "rolled back to v2 (was v3)" in back.out


async def _collect_models_events(agent: AgentProc, action: Any) -> list[dict[str, Any]]:
    client = await connect_unix(agent.layout.socket)
    sub = await client.subscribe("models")
    try:
        await asyncio.to_thread(action)
        await asyncio.sleep(0.3)
        events = []
        while not sub.queue.empty():
            events.append(sub.queue.get_nowait())
        return events
    finally:
        await client.close()


def test_cli_registration_verifies_and_refuses_a_mismatch(reg: dict[str, Any], tmp_path: Path) -> None:
    agent: AgentProc = reg["agent"]
    (run_id,) = reg["exported"]
    tampered = tmp_path / "tampered"  # the run's own folder, but another run's weights in model.pt2
    shutil.copytree(agent.layout.run_dir(run_id) / "artifacts" / "model", tampered)
    shutil.copy(agent.layout.run_dir(reg["sdk"][0]) / "artifacts" / "model" / "model.pt2", tampered)
    before = audit_count(agent)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:  # two verifications, side by side
        register = functools.partial(agent.cli, "models", "register", run_id, timeout=VERIFY_TIMEOUT_S)
        bad_job = pool.submit(register, "--name", "other", "--artifact", str(tampered))
        good_job = pool.submit(register, "--name", "mine", "--json")
        bad, good = bad_job.result(), good_job.result()
    assert bad.code == 1
    assert "refused: ModelMismatch: output 'logits': the saved model differs" in bad.err
    assert _count_versions(agent, "other") == 0 and list(agent.layout.models.glob("other/*")) == []
    assert good.code == 0, good.err
    done = good.json()
    assert done["name"] == "mine" and done["version"] == 1 and done["run_id"] == run_id
    assert done["reference"] is None
    assert done["notes"] == ["no reference.parquet next to the model: this version has no drift reference"]
    assert [r["action"] for r in rpc(agent, "models.audit")[before:]] == ["register"]
    again = cli(agent, "models", "register", run_id, "--name", "mine")
    assert again.code == 1 and f"run {run_id} is already version 1 of 'mine'" in again.err


def test_bad_input_gets_one_clear_message_and_changes_nothing(reg: dict[str, Any]) -> None:
    agent: AgentProc = reg["agent"]
    rpc(agent, "models.promote", name="demo", version=3, alias="hold")
    before = (rpc(agent, "models.list"), audit_count(agent))
    cases = [
        (("register", "no-such-run", "--name", "demo"), "no run 'no-such-run' on this host"),
        (("register", reg["failed"][0], "--name", "demo"),
         f"run {reg['failed'][0]} is failed: diverged (asked by the test); only a trained model can be"),
        (("register", reg["sdk"][0], "--name", "../escape"), "model name '../escape' is not allowed"),
        (("promote", "demo", "99", "--to", "staging", "--yes"), "model 'demo' has no version 99"),
        (("promote", "nope", "1", "--to", "staging", "--yes"), "no model 'nope' in this registry"),
        (("promote", "demo", "1", "--to", "Prod!", "--yes"), "alias 'Prod!' is not allowed"),
        (("promote", "../demo", "1", "--to", "staging", "--yes"), "model name '../demo' is not allowed"),
        (("promote", "demo", "x1", "--to", "staging", "--yes"), "version must be a number like 3 or v3"),
        (("promote", "demo", "1", "--to", "staging"), "pass --yes to confirm"),
        (("rollback", "demo", "--alias", "nosuch"), "model 'demo' has no alias 'nosuch'"),
        (("archive", "demo", "3"), "demo v3 holds hold"),
        (("show", "demo@@x"), "is not NAME@ALIAS or NAME/VERSION"),
        (("lineage", "demo/7"), "model 'demo' has no version 7"),
        (("versions", "../../etc"), "model name '../../etc' is not allowed"),
    ]
    for args, message in cases:
        result = cli(agent, "models", *args)
        assert result.code == 1, (args, result.out)
        lines = result.err.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], (args, result.err)
    assert (rpc(agent, "models.list"), audit_count(agent)) == before
    assert cli(agent, "models", "archive", "demo", "1", "--reason", "superseded").code == 0
    archived = cli(agent, "models", "promote", "demo", "1", "--to", "challenger", "--yes")
    assert archived.code == 1 and "demo v1 is archived and can hold no alias" in archived.err
    with pytest.raises(MldeckError, match="invalid params"):
        rpc(agent, "models.promote", name="demo", version="one", alias="x")
    with pytest.raises(MldeckError, match=r"invalid params: .* at `\$\.limit`"):
        rpc(agent, "models.audit", limit=0)
    assert rpc(agent, "agent.status")["pid"] == agent.proc.pid


def test_concurrent_promotions_from_two_clients_are_all_audited(reg: dict[str, Any]) -> None:
    agent: AgentProc = reg["agent"]
    results = asyncio.run(_race(agent))
    changed = [r for r in results if r["changed"]]
    rows = [r for r in rpc(agent, "models.audit", name="demo") if r["alias"] == "race"]
    assert len(rows) == len(changed) >= 2
    for prev, row in itertools.pairwise(rows):
        assert row["from_version"] == prev["version"] and row["seq"] > prev["seq"]
    assert {r["actor"] for r in rows} <= {"alice", "bob"} and len({r["actor"] for r in rows}) == 2
    assert rpc(agent, "models.get", name="demo", alias="race")["version"] == rows[-1]["version"]


async def _race(agent: AgentProc) -> list[dict[str, Any]]:
    """Two connections promote v2 and v3 of demo to one alias in opposite orders, as fast as they can."""
    alice = await connect_unix(agent.layout.socket)
    bob = await connect_unix(agent.layout.socket)

    async def promote(client: Any, who: str, order: tuple[int, int]) -> list[dict[str, Any]]:
        return [
            await client.call("models.promote", name="demo", version=order[i % 2], alias="race", actor=who)
            for i in range(10)
        ]

    try:
        a, b = await asyncio.gather(promote(alice, "alice", (2, 3)), promote(bob, "bob", (3, 2)))
    finally:
        await alice.close()
        await bob.close()
    return a + b


def _promote_on_a_terminal(agent: AgentProc, answer: bytes, version: str) -> tuple[int, str]:
    """Run `mldeck models promote` with a pseudo-terminal as stdin and type the answer."""
    primary, secondary = pty.openpty()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mldeck.tui.cli", "models", "promote", "demo", version, "--to", "tty"],
            stdin=secondary, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=agent_env(agent.home),
            cwd=REPO,
        )
        os.write(primary, answer)
        out, _ = proc.communicate(timeout=60)
    finally:
        os.close(primary)
        os.close(secondary)
    return proc.returncode, out.decode()


def test_promote_asks_on_a_terminal(reg: dict[str, Any]) -> None:
    agent: AgentProc = reg["agent"]
    code, out = _promote_on_a_terminal(agent, b"n\n", "2")
    assert code == 1 and "promote demo v2 (" in out and "to tty, a new alias? [y/N]" in out
    assert "not promoted" in out
    with pytest.raises(MldeckError, match="no alias 'tty'"):
        rpc(agent, "models.get", name="demo", alias="tty")
    code, out = _promote_on_a_terminal(agent, b"y\n", "2")
    assert code == 0 and "demo v2 is now tty" in out
    assert rpc(agent, "models.get", name="demo", alias="tty")["version"] == 2
