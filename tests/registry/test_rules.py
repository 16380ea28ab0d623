"""Registry rules and queries on a real DuckDB store file: gates, numbering, rollback, lineage."""

from __future__ import annotations

import re
from pathlib import Path

import msgspec
import pyarrow as pa
import pytest

from mldeck.core import errors, registry
from mldeck.core.config import AgentConfig, ConfigError, GateSection, RegistrySection, load_config
from mldeck.core.store import Store

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(tmp_path / "mldeck.duckdb")
    yield s
    s.close()


def add_version(
    store: Store, tmp: Path, name: str, run_id: str, metrics: dict[str, float], **run: object
) -> int:
    store.upsert_run({"run_id": run_id, "status": "succeeded", "params": {"lr": 0.1}, **run})
    store.append("metrics", pa.table({"run_id": [run_id] * len(metrics), "key": list(metrics),
                                      "step": list(range(len(metrics))), "ts": [0.0] * len(metrics),
                                      "value": list(metrics.values())}))
    staged = tmp / f"staged-{run_id}"
    staged.mkdir()
    (staged / "signature.json").write_text("{}")
    row = registry.register_version(
        store, tmp / "models", name, store.get_run(run_id), staged, {"inputs": []}, "tester", {}
    )
    return row["version"]


def test_names_and_aliases_are_checked() -> None:
    for bad in ("../x", "a/b", ".hidden", "", "x" * 200):
        with pytest.raises(errors.Invalid, match="model name"):
            registry.check_model_name(bad)
    for bad in ("Prod", "prod!", "a b", "", "x" * 65, "../p"):
        with pytest.raises(errors.Invalid, match=r"a-z, 0-9"):
            registry.check_alias(bad)
    assert registry.check_alias("canary_2-eu") == "canary_2-eu"


def test_gate_config_is_validated_at_load(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text(
        '[registry.gates.demo.production]\nmetrics = ["val_acc >= 0.92", "val_loss < 0.3"]\n'
        'no_worse_than_current = "val_acc"\nrequire_alias_first = "staging"\nno_open_drift_alert = true\n'
    )
    gate = load_config(good).registry.gates["demo"]["production"]
    assert gate.require_alias_first == "staging" and gate.no_open_drift_alert
    for body, why in (
        ('metrics = ["val_acc => 0.92"]', "METRIC OP NUMBER"),
        ('no_worse_than_current = "best:val_acc"', "min:METRIC"),
        ('require_alias_first = "Staging!"', "not allowed"),
        ("no_such_gate = 1", "no_such_gate"),
    ):
        bad = tmp_path / "bad.toml"
        bad.write_text(f"[registry.gates.demo.production]\n{body}\n")
        with pytest.raises(ConfigError, match=re.escape(why)):
            load_config(bad)


def test_gate_evaluation_names_every_failure_with_numbers() -> None:
    gate = GateSection(
        metrics=["val_acc >= 0.92", "val_loss <= 0.5", "f1 > 0"],
        no_worse_than_current="val_acc",
        require_alias_first="staging",
        no_open_drift_alert=True,
    )
    candidate = {"name": "demo", "version": 3, "metrics": {"val_acc": 0.81, "val_loss": 0.4}}
    current = {"version": 2, "metrics": {"val_acc": 0.95}}
    failed = registry.evaluate_gate(gate, "production", candidate, current, set(), [{"kind": "drift"}])
    assert failed == [
        "val_acc 0.81 < 0.92",
        "f1 is missing (gate needs f1 > 0)",
        "val_acc 0.81 is worse than 0.95 of v2 (now production; higher is better)",
        "v3 has not been in staging yet (promote it there first)",
        "1 open alert(s) on demo (drift)",
    ]
    good = {"name": "demo", "version": 3, "metrics": {"val_acc": 0.96, "val_loss": 0.1, "f1": 0.9}}
    assert registry.evaluate_gate(gate, "production", good, current, {"staging"}, []) == []
    loss_gate = GateSection(no_worse_than_current="val_loss")
    worse = {"name": "demo", "version": 4, "metrics": {"val_loss": 0.5}}
    current = {"version": 1, "metrics": {"val_loss": 0.2}}
    assert registry.evaluate_gate(loss_gate, "p", worse, current, set(), []) == [
        "val_loss 0.5 is worse than 0.2 of v1 (now p; lower is better)"
    ]
    assert registry.evaluate_gate(None, "p", worse, None, set(), []) == []


def test_gate_lookup_falls_back_to_star() -> None:
    config = msgspec.convert(
        {"gates": {"*": {"production": {"metrics": ["acc > 0.5"]}}, "demo": {"production": {}}}},
        RegistrySection,
    )
    assert registry.gate_for(config, "demo", "production").metrics == []
    assert registry.gate_for(config, "other", "production").metrics == ["acc > 0.5"]
    assert registry.gate_for(config, "other", "staging") is None
    assert AgentConfig().registry.gates == {}


def test_versions_number_per_name_and_duplicates_are_refused(store: Store, tmp_path: Path) -> None:
    assert add_version(store, tmp_path, "a", "r1", {"val_acc": 0.9}) == 1
    assert add_version(store, tmp_path, "a", "r2", {"val_acc": 0.8}) == 2
    assert add_version(store, tmp_path, "b", "r3", {"val_acc": 0.7}) == 1
    assert (tmp_path / "models" / "a" / "2" / "signature.json").is_file()
    staged = tmp_path / "again"
    staged.mkdir()
    with pytest.raises(errors.Conflict, match="already version 1 of 'a'"):
        registry.register_version(store, tmp_path / "models", "a", store.get_run("r1"), staged, {}, "t", {})
    assert staged.is_dir() and not (tmp_path / "models" / "a" / "3").exists()
    v = registry.get_version(store, "a")
    assert (v["version"], v["metrics"], v["run_id"]) == (2, {"val_acc": 0.8}, "r2")


def test_rollback_walks_back_and_skips_archived(store: Store, tmp_path: Path) -> None:
    for i in range(1, 5):
        add_version(store, tmp_path, "m", f"r{i}", {"val_acc": 0.5 + i / 10})
    for v in (1, 2, 3, 4):
        registry.promote(store, "m", v, "prod", "tester", None)
    registry.promote(store, "m", 2, "canary", "tester", None)
    registry.promote(store, "m", 4, "canary", "tester", None)
    registry.promote(store, "m", 3, "canary", "tester", None)  # canary: 2, 4, 3 → 3 now
    assert registry.rollback(store, "m", "prod", "tester")["version"] == 3
    registry.promote(store, "m", 1, "canary", "tester", None)
    with pytest.raises(errors.Conflict, match="holds prod"):
        registry.archive(store, "m", 3, "tester")
    registry.archive(store, "m", 2, "tester")
    with pytest.raises(errors.Conflict, match="already archived"):
        registry.archive(store, "m", 2, "tester")
    assert registry.rollback(store, "m", "prod", "tester")["version"] == 1  # v2 archived: skipped
    with pytest.raises(errors.Conflict, match="no earlier version"):
        registry.rollback(store, "m", "prod", "tester")
    with pytest.raises(errors.Conflict, match="archived and can hold no alias"):
        registry.promote(store, "m", 2, "prod", "tester", None)
    assert registry.promote(store, "m", 1, "prod", "tester", None)["changed"] is False
    rows = registry.audit_rows(store, "m")
    actions = [(r["action"], r["alias"], r["version"], r["from_version"]) for r in rows]
    assert actions[-4:] == [
        ("rollback", "prod", 3, 4), ("promote", "canary", 1, 3), ("archive", None, 2, None),
        ("rollback", "prod", 1, 3),
    ]
    assert [r["seq"] for r in rows] == list(range(1, len(rows) + 1))


def test_forced_promotion_needs_a_reason_and_drift_alerts_gate(store: Store, tmp_path: Path) -> None:
    add_version(store, tmp_path, "d", "r1", {"val_acc": 0.95})
    store.cur().execute(
        "INSERT INTO alerts (alert_id, ts, model, version, kind, message, status) "
        "VALUES ('a1', 0, 'd', 1, 'drift', 'f3 drifted', 'open'), ('a2', 0, 'x', 1, 'drift', '', 'open')"
    )
    gate = GateSection(no_open_drift_alert=True)
    with pytest.raises(errors.GateRefused, match=r"1 open alert\(s\) on d \(drift\)") as refused:
        registry.promote(store, "d", 1, "production", "tester", gate)
    assert refused.value.failed == ["1 open alert(s) on d (drift)"]
    assert registry.alias_version(store.cur(), "d", "production") is None
    with pytest.raises(errors.Invalid, match="needs a --reason"):
        registry.promote(store, "d", 1, "production", "tester", gate, force=True)
    why = "alert is a false alarm"
    done = registry.promote(store, "d", 1, "production", "oncall", gate, reason=why, force=True)
    assert done["forced"] and done["failed_gates"] == ["1 open alert(s) on d (drift)"]
    last = registry.audit_rows(store, "d")[-1]
    assert (last["actor"], last["comment"], last["details"]["forced"]) == ("oncall", why, True)
    store.cur().execute("UPDATE alerts SET status = 'resolved' WHERE alert_id = 'a1'")
    add_version(store, tmp_path, "d", "r2", {"val_acc": 0.96})
    assert registry.promote(store, "d", 2, "production", "tester", gate)["forced"] is False


def test_lineage_follows_parent_runs_and_alias_history(store: Store, tmp_path: Path) -> None:
    store.upsert_run({"run_id": "p0", "status": "succeeded", "params": {"lr": 1}})
    store.upsert_run({"run_id": "p1", "status": "preempted", "parent_run_id": "p0"})
    add_version(store, tmp_path, "l", "r1", {"val_acc": 0.9})
    add_version(store, tmp_path, "l", "r2", {"val_acc": 0.9}, parent_run_id="p1", git_sha="abc",
                git_dirty=False, data_hash="d1")
    registry.promote(store, "l", 1, "production", "tester", None)
    registry.promote(store, "l", 2, "production", "tester", None, reason="better")
    info = registry.lineage(store, "l", 2)
    assert info["run"]["git_sha"] == "abc" and info["run"]["data_hash"] == "d1"
    assert info["run"]["params"] == {"lr": 0.1}
    assert [p["run_id"] for p in info["parents"]] == ["p1", "p0"]
    assert [(r["alias"], r["replaced_version"], r["comment"]) for r in info["replaced"]] == [
        ("production", 1, "better")
    ]
    assert [(r["alias"], r["by_version"]) for r in registry.lineage(store, "l", 1)["replaced_by"]] == [
        ("production", 2)
    ]
    with pytest.raises(errors.NotFound, match="has no version 9"):
        registry.lineage(store, "l", 9)


def test_audit_log_is_append_only_in_code() -> None:
    """No code path may change or remove audit rows: only INSERT (in one place) and SELECT."""
    writes = re.compile(r"(UPDATE|DELETE\s+FROM|TRUNCATE|DROP\s+TABLE|ALTER\s+TABLE)\s+\"?audit_log", re.I)
    inserts = re.compile(r"INSERT\s+INTO\s+\"?audit_log", re.I)
    offenders, inserters = [], []
    for package in ("core", "agent", "tui"):
        for path in (REPO / package).rglob("*.py"):
            text = path.read_text()
            if path.name == "schema.py":  # migrations create and extend the table, once
                continue
            offenders += [f"{path}: {m.group(0)}" for m in writes.finditer(text)]
            if inserts.search(text):
                inserters.append(path.relative_to(REPO).as_posix())
    assert offenders == []
    assert inserters == ["core/registry.py"]
