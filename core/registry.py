"""The model registry's rules and queries: versions, aliases, gates, rollback and the audit log.

Everything that touches the store is a plain function taking a `Store`; the agent runs
the writing ones on its single writer thread, so an alias change and its audit row
commit together and two promotions of one alias land one after the other. The audit
log is append-only: this module only ever INSERTs into it and SELECTs from it.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import duckdb
import msgspec

from mldeck.core.errors import Conflict, GateRefused, Invalid, NotFound
from mldeck.core.paths import BadName, check_name
from mldeck.core.protocol import Params
from mldeck.core.rules import check_alias, parse_direction, parse_rule
from mldeck.core.runlog import nonfinite_name
from mldeck.core.store import Store, decode_json_fields, rows_as_dicts

if TYPE_CHECKING:
    from mldeck.core.config import GateSection, RegistrySection

ALIAS_ACTIONS = ("promote", "rollback")


# params of the models.* methods ------------------------------------------------


class RegisterParams(Params):
    run_id: str
    name: str
    artifact: str | None = None
    actor: str | None = None


class ModelsListParams(Params):
    include_archived: bool = True


class VersionsParams(Params):
    name: str


class GetParams(Params):
    name: str
    version: int | None = None
    alias: str | None = None


class PromoteParams(Params):
    name: str
    version: int
    alias: str
    reason: str | None = None
    force: bool = False
    actor: str | None = None
    dry_run: bool = False


class RollbackParams(Params):
    name: str
    alias: str
    reason: str | None = None
    actor: str | None = None
    dry_run: bool = False


class ArchiveParams(Params):
    name: str
    version: int
    reason: str | None = None
    actor: str | None = None


class AuditParams(Params):
    name: str | None = None
    limit: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 1000


class LineageParams(Params):
    name: str
    version: int


# rules ------------------------------------------------------------------------------


def check_model_name(name: str) -> str:
    """A model name becomes a folder under models/, so it must be a safe path component."""
    try:
        return check_name(name, "model name")
    except BadName as exc:
        raise Invalid(str(exc)) from None


def check_version(version: int) -> int:
    if not isinstance(version, int) or version < 1:
        raise Invalid(f"version must be a whole number from 1 up, got {version!r}")
    return version


def gate_for(config: RegistrySection, name: str, alias: str) -> GateSection | None:
    """The gate of a model's alias, falling back to the `*` model's gate for that alias."""
    for model in (name, "*"):
        gate = config.gates.get(model, {}).get(alias)
        if gate is not None:
            return gate
    return None


def _num(value: float) -> str:
    return f"{value:.4g}" if math.isfinite(value) else nonfinite_name(value)


def evaluate_gate(
    gate: GateSection | None,
    alias: str,
    candidate: dict[str, Any],
    current: dict[str, Any] | None,
    aliases_held: set[str],
    open_alerts: list[dict[str, Any]],
) -> list[str]:
    """Every failed gate as a sentence with its numbers; empty when the promotion may go ahead."""
    if gate is None:
        return []
    failed: list[str] = []
    metrics = candidate.get("metrics") or {}
    for text in gate.metrics:
        rule = parse_rule(text)
        value = metrics.get(rule.key)
        if value is None:
            failed.append(f"{rule.key} is missing (gate needs {rule})")
        elif not math.isfinite(value):
            failed.append(f"{rule.key} is {_num(value)}, not a number a gate can pass (gate needs {rule})")
        elif not rule.holds(value):
            failed.append(rule.broken_by(value))
    if gate.no_worse_than_current and current is not None and current["version"] != candidate["version"]:
        key, lower = parse_direction(gate.no_worse_than_current)
        mine, theirs = metrics.get(key), (current.get("metrics") or {}).get(key)
        if mine is None or not math.isfinite(mine):
            why = "missing" if mine is None else _num(mine)
            failed.append(f"{key} is {why}, so it cannot be compared with {alias}'s v{current['version']}")
        elif theirs is not None and math.isfinite(theirs) and (mine > theirs if lower else mine < theirs):
            failed.append(
                f"{key} {_num(mine)} is worse than {_num(theirs)} of v{current['version']} "
                f"(now {alias}; {'lower' if lower else 'higher'} is better)"
            )
    first = gate.require_alias_first
    if first and first not in aliases_held:
        failed.append(f"v{candidate['version']} has not been in {first} yet (promote it there first)")
    if gate.no_open_drift_alert and open_alerts:
        kinds = ", ".join(sorted({str(a.get("kind")) for a in open_alerts}))
        failed.append(f"{len(open_alerts)} open alert(s) on {candidate['name']} ({kinds})")
    return failed


# reading ---------------------------------------------------------------------------

_VERSION_JSON = ("signature", "metrics")


def _aliases_of(cur: duckdb.DuckDBPyConnection, name: str) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for alias, version in cur.execute(
        "SELECT alias, version FROM aliases WHERE name = ? ORDER BY alias", [name]
    ).fetchall():
        out.setdefault(version, []).append(alias)
    return out


def _version(cur: duckdb.DuckDBPyConnection, name: str, version: int) -> dict[str, Any] | None:
    rows = rows_as_dicts(cur.execute(
        "SELECT * FROM model_versions WHERE name = ? AND version = ?", [name, version]
    ))
    if not rows:
        return None
    row = decode_json_fields(rows[0], _VERSION_JSON)
    row["aliases"] = _aliases_of(cur, name).get(version, [])
    return row


def _model_exists(cur: duckdb.DuckDBPyConnection, name: str) -> bool:
    return cur.execute("SELECT 1 FROM model_versions WHERE name = ? LIMIT 1", [name]).fetchone() is not None


def _require_version(cur: duckdb.DuckDBPyConnection, name: str, version: int) -> dict[str, Any]:
    row = _version(cur, name, version)
    if row is None:
        if not _model_exists(cur, name):
            raise NotFound(f"no model {name!r} in this registry (`mldeck models ls` lists them)")
        raise NotFound(f"model {name!r} has no version {version} (`mldeck models versions {name}`)")
    return row


def alias_version(cur: duckdb.DuckDBPyConnection, name: str, alias: str) -> int | None:
    row = cur.execute("SELECT version FROM aliases WHERE name = ? AND alias = ?", [name, alias]).fetchone()
    return row[0] if row else None


def list_models(store: Store) -> list[dict[str, Any]]:
    """One row per model: how many versions, the newest, and where each alias points."""
    cur = store.cur()
    rows = rows_as_dicts(cur.execute(
        "SELECT name, count(*) AS versions, max(version) AS latest, "
        "count(*) FILTER (WHERE archived) AS archived, max(created_at) AS updated_at "
        "FROM model_versions GROUP BY name ORDER BY name"
    ))
    for row in rows:
        row["aliases"] = dict(cur.execute(
            "SELECT alias, version FROM aliases WHERE name = ? ORDER BY alias", [row["name"]]
        ).fetchall())
    return rows


def list_versions(store: Store, name: str) -> list[dict[str, Any]]:
    """A model's versions, newest first, each with its metrics and the aliases it holds."""
    check_model_name(name)
    cur = store.cur()
    rows = [decode_json_fields(r, _VERSION_JSON) for r in rows_as_dicts(cur.execute(
        "SELECT * FROM model_versions WHERE name = ? ORDER BY version DESC", [name]
    ))]
    if not rows:
        raise NotFound(f"no model {name!r} in this registry (`mldeck models ls` lists them)")
    held = _aliases_of(cur, name)
    for row in rows:
        row["aliases"] = held.get(row["version"], [])
    return rows


def get_version(
    store: Store, name: str, version: int | None = None, alias: str | None = None
) -> dict[str, Any]:
    """One version by number or by alias (the newest when neither is given)."""
    check_model_name(name)
    cur = store.cur()
    if version is not None and alias is not None:
        raise Invalid("give a version or an alias, not both")
    if alias is not None:
        check_alias(alias)
        version = alias_version(cur, name, alias)
        if version is None:
            if not _model_exists(cur, name):
                raise NotFound(f"no model {name!r} in this registry (`mldeck models ls` lists them)")
            raise NotFound(f"model {name!r} has no alias {alias!r}")
    elif version is None:
        row = cur.execute("SELECT max(version) FROM model_versions WHERE name = ?", [name]).fetchone()
        version = row[0] if row else None
        if version is None:
            raise NotFound(f"no model {name!r} in this registry (`mldeck models ls` lists them)")
    return _require_version(cur, name, check_version(version))


def audit_rows(store: Store, name: str | None = None, limit: int = 1000) -> list[dict[str, Any]]:
    """The audit log in the order it was written, oldest first (the last `limit` rows)."""
    if name is not None:
        check_model_name(name)
    where, args = ("WHERE name = ?", [name]) if name is not None else ("", [])
    rows = rows_as_dicts(store.cur().execute(
        f"SELECT * FROM (SELECT seq, ts, actor, action, name, version, from_version, alias, comment, "
        f"details FROM audit_log {where} ORDER BY seq DESC NULLS LAST, ts DESC LIMIT ?) "
        "ORDER BY seq NULLS FIRST, ts",
        [*args, limit],
    ))
    return [decode_json_fields(r, ("details",)) for r in rows]


def _alias_history(cur: duckdb.DuckDBPyConnection, name: str, alias: str) -> list[int]:
    """The alias's stack of versions: a promotion pushes, a rollback pops back to its target."""
    stack: list[int] = []
    for action, version in cur.execute(
        "SELECT action, version FROM audit_log WHERE name = ? AND alias = ? AND action IN (?, ?) "
        "ORDER BY seq, ts",
        [name, alias, *ALIAS_ACTIONS],
    ).fetchall():
        if action == "promote":
            stack.append(version)
        else:
            while stack and stack[-1] != version:
                stack.pop()
    return stack


def _aliases_ever_held(cur: duckdb.DuckDBPyConnection, name: str, version: int) -> set[str]:
    return {r[0] for r in cur.execute(
        "SELECT DISTINCT alias FROM audit_log WHERE name = ? AND version = ? AND action IN (?, ?)",
        [name, version, *ALIAS_ACTIONS],
    ).fetchall()}


def open_alerts(store: Store, name: str) -> list[dict[str, Any]]:
    """A model's open alerts, of every version and kind, oldest first (a gate may refuse on them)."""
    return rows_as_dicts(store.cur().execute(
        "SELECT alert_id, kind, version, message FROM alerts WHERE model = ? AND status = 'open' "
        "ORDER BY ts", [name]
    ))


def lineage(store: Store, name: str, version: int) -> dict[str, Any]:
    """Where a version came from (run, params, code, data, parent runs) and what it replaced."""
    check_model_name(name)
    cur = store.cur()
    row = _require_version(cur, name, check_version(version))
    run = store.get_run(row["run_id"]) if row.get("run_id") else None
    parents: list[dict[str, Any]] = []
    seen = {row.get("run_id")}
    parent_id = run.get("parent_run_id") if run else None
    while parent_id and parent_id not in seen:
        seen.add(parent_id)
        parent = store.get_run(parent_id)
        if parent is None:
            parents.append({"run_id": parent_id, "missing": True})
            break
        parents.append({k: parent.get(k) for k in (
            "run_id", "name", "status", "params", "git_sha", "git_dirty", "data_hash", "created_at"
        )})
        parent_id = parent.get("parent_run_id")
    replaced = rows_as_dicts(cur.execute(
        "SELECT ts, actor, action, alias, from_version AS replaced_version, comment FROM audit_log "
        "WHERE name = ? AND version = ? AND action IN (?, ?) AND from_version IS NOT NULL "
        "ORDER BY seq, ts",
        [name, version, *ALIAS_ACTIONS],
    ))
    replaced_by = rows_as_dicts(cur.execute(
        "SELECT ts, actor, action, alias, version AS by_version FROM audit_log "
        "WHERE name = ? AND from_version = ? AND action IN (?, ?) ORDER BY seq, ts",
        [name, version, *ALIAS_ACTIONS],
    ))
    run_part = None
    if run is not None:
        run_part = {k: run.get(k) for k in (
            "run_id", "name", "experiment", "status", "params", "command", "git_sha", "git_dirty",
            "data_hash", "host", "created_at", "ended_at", "resumed_count", "parent_run_id",
        )}
    return {"version": row, "run": run_part, "parents": parents, "replaced": replaced,
            "replaced_by": replaced_by}


# writing (each one transaction, on the agent's writer thread) --------------------------


def append_audit(
    cur: duckdb.DuckDBPyConnection,
    actor: str,
    action: str,
    name: str,
    version: int | None,
    from_version: int | None = None,
    alias: str | None = None,
    comment: str | None = None,
    details: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Append one audit row; the only statement in mldeck that writes audit_log."""
    seq = cur.execute("SELECT coalesce(max(seq), 0) + 1 FROM audit_log").fetchone()[0]  # type: ignore[index]
    row = {
        "seq": seq, "ts": time.time(), "actor": actor, "action": action, "name": name,
        "version": version, "from_version": from_version, "alias": alias, "comment": comment,
        "details": details or {},
    }
    cur.execute(
        "INSERT INTO audit_log (seq, ts, actor, action, name, version, from_version, alias, comment, "
        "details) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [*list(row.values())[:-1], json.dumps(row["details"])],
    )
    return row


def version_of_run(store: Store, name: str, run_id: str) -> int | None:
    row = store.cur().execute(
        "SELECT version FROM model_versions WHERE name = ? AND run_id = ?", [name, run_id]
    ).fetchone()
    return row[0] if row else None


def register_version(
    store: Store,
    models_dir: Path,
    name: str,
    run: dict[str, Any],
    staged: Path,
    signature: dict[str, Any],
    actor: str,
    details: dict[str, Any],
) -> dict[str, Any]:
    """Number the next version, move the staged folder to models/<name>/<version>, record both.

    The rename happens inside the transaction: if the insert fails the folder is moved
    away again, so the store and the models folder never disagree.
    """
    check_model_name(name)
    run_id = run["run_id"]
    metrics = store.latest_metrics([run_id]).get(run_id, {})
    with store.transaction() as cur:
        existing = version_of_run(store, name, run_id)
        if existing is not None:
            raise Conflict(f"run {run_id} is already version {existing} of {name!r}")
        version = cur.execute(
            "SELECT coalesce(max(version), 0) + 1 FROM model_versions WHERE name = ?", [name]
        ).fetchone()[0]  # type: ignore[index]
        target = models_dir / name / str(version)
        if target.exists():  # left by a crash between rename and commit: the store is the truth
            shutil.rmtree(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.rename(staged, target)
        try:
            now = time.time()
            cur.execute(
                "INSERT INTO model_versions (name, version, run_id, artifact, signature, metrics, "
                "data_hash, git_sha, git_dirty, archived, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [name, version, run_id, str(target), json.dumps(signature), json.dumps(metrics),
                 run.get("data_hash"), run.get("git_sha"), run.get("git_dirty"), False, now],
            )
            append_audit(cur, actor, "register", name, version, comment=f"from run {run_id}", details=details)
        except BaseException:
            os.rename(target, staged)
            raise
    return _require_version(store.cur(), name, version)


def _judge(
    store: Store, name: str, version: int, alias: str, gate: GateSection | None
) -> tuple[dict[str, Any], int | None, dict[str, Any] | None, list[str]]:
    """The candidate, the version the alias holds, that version, and every gate that fails."""
    cur = store.cur()
    candidate = _require_version(cur, name, version)
    if candidate["archived"]:
        raise Conflict(f"{name} v{version} is archived and can hold no alias; register a new version")
    holder = alias_version(cur, name, alias)
    current = _version(cur, name, holder) if holder is not None else None
    if holder == version:
        return candidate, holder, current, []
    failed = evaluate_gate(
        gate, alias, candidate, current, _aliases_ever_held(cur, name, version), open_alerts(store, name)
    )
    return candidate, holder, current, failed


def preview_promotion(store: Store, name: str, version: int, alias: str,
                      gate: GateSection | None) -> dict[str, Any]:
    """What `promote` would do, changing nothing and auditing nothing: the TUI shows it before Enter."""
    check_model_name(name)
    check_alias(alias)
    check_version(version)
    candidate, holder, current, failed = _judge(store, name, version, alias, gate)
    mine, theirs = candidate.get("metrics") or {}, (current or {}).get("metrics") or {}
    deltas = {
        k: {"candidate": mine.get(k), "current": theirs.get(k),
            "delta": mine[k] - theirs[k] if isinstance(mine.get(k), (int, float))
            and isinstance(theirs.get(k), (int, float)) else None}
        for k in sorted(set(mine) | set(theirs))
    }
    return {"name": name, "alias": alias, "version": version, "from_version": holder, "action": "promote",
            "dry_run": True, "changed": False, "would_change": holder != version and not failed,
            "failed_gates": failed, "gated": gate is not None, "deltas": deltas,
            "open_alerts": len(open_alerts(store, name))}


def promote(
    store: Store,
    name: str,
    version: int,
    alias: str,
    actor: str,
    gate: GateSection | None,
    reason: str | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Point alias at version if its gates pass (or force with a reason), with its audit row."""
    check_model_name(name)
    check_alias(alias)
    check_version(version)
    if force and not (reason and reason.strip()):
        raise Invalid("--force needs a --reason that says why the gates are overridden")
    with store.transaction() as cur:
        _, holder, _, failed = _judge(store, name, version, alias, gate)
        if holder == version:
            return {"name": name, "alias": alias, "version": version, "from_version": holder,
                    "action": "promote", "changed": False, "forced": False, "failed_gates": []}
        if failed and not force:
            raise GateRefused(
                f"promotion of {name} v{version} to {alias} refused by its gates: " + "; ".join(failed)
                + " (to override: --force --reason TEXT)",
                failed,
            )
        cur.execute(
            "INSERT INTO aliases VALUES (?, ?, ?) "
            "ON CONFLICT (name, alias) DO UPDATE SET version = excluded.version",
            [name, alias, version],
        )
        details = {"forced": bool(force and failed), "failed_gates": failed, "gated": gate is not None}
        append_audit(cur, actor, "promote", name, version, holder, alias, reason, details)
    return {"name": name, "alias": alias, "version": version, "from_version": holder,
            "action": "promote", "changed": True, "forced": details["forced"], "failed_gates": failed}


def _rollback_target(cur: duckdb.DuckDBPyConnection, name: str, alias: str) -> tuple[int, int]:
    """(the version the alias holds, the one a rollback moves it to): the version it held before,
    skipping archived ones."""
    check_model_name(name)
    check_alias(alias)
    holder = alias_version(cur, name, alias)
    if holder is None:
        if not _model_exists(cur, name):
            raise NotFound(f"no model {name!r} in this registry (`mldeck models ls` lists them)")
        raise NotFound(f"model {name!r} has no alias {alias!r} to roll back")
    stack = _alias_history(cur, name, alias)
    while stack and stack[-1] == holder:
        stack.pop()
    while stack:
        row = _version(cur, name, stack[-1])
        if row is not None and not row["archived"]:
            return holder, stack[-1]
        stack.pop()
    raise Conflict(f"{alias} of {name} has no earlier version to roll back to (it holds v{holder})")


def preview_rollback(store: Store, name: str, alias: str) -> dict[str, Any]:
    """Where `rollback` would move the alias, changing nothing: the TUI names it before Enter."""
    holder, target = _rollback_target(store.cur(), name, alias)
    return {"name": name, "alias": alias, "version": target, "from_version": holder,
            "action": "rollback", "dry_run": True, "changed": False}


def rollback(store: Store, name: str, alias: str, actor: str, reason: str | None = None) -> dict[str, Any]:
    """Move alias back to the version it held before (skipping archived ones), audited."""
    with store.transaction() as cur:
        holder, target = _rollback_target(cur, name, alias)
        cur.execute("UPDATE aliases SET version = ? WHERE name = ? AND alias = ?", [target, name, alias])
        append_audit(cur, actor, "rollback", name, target, holder, alias, reason, {})
    return {"name": name, "alias": alias, "version": target, "from_version": holder,
            "action": "rollback", "changed": True}


def archive(store: Store, name: str, version: int, actor: str, reason: str | None = None) -> dict[str, Any]:
    """Retire a version; one that still holds an alias must be moved off it first."""
    check_model_name(name)
    check_version(version)
    with store.transaction() as cur:
        row = _require_version(cur, name, version)
        if row["archived"]:
            raise Conflict(f"{name} v{version} is already archived")
        if row["aliases"]:
            held = ", ".join(row["aliases"])
            raise Conflict(
                f"{name} v{version} holds {held}; promote another version there "
                "(or roll back) before archiving it"
            )
        cur.execute(
            "UPDATE model_versions SET archived = true WHERE name = ? AND version = ?", [name, version]
        )
        append_audit(cur, actor, "archive", name, version, comment=reason)
    return {"name": name, "alias": None, "version": version, "from_version": None, "action": "archive",
            "changed": True}
