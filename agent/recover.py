"""The store at start: refuse one that is missing or damaged, and `recover` one from the home's files.

An agent that found no store used to make an empty one, and with it an empty registry: no versions,
aliases or audit log, and a model server with nothing to serve. Now it refuses to start when the home
holds model versions, and a store whose blocks fail their checksums is found at start, not by a query
hours later. `python -m mldeck.agent recover` (what `mldeck agent recover` runs) rebuilds what the files
hold: runs through the normal ingest of runs/*/metrics.jsonl and their run.json, model versions from
models/<name>/<version>/ tied back to the run each came from, aliases and the traffic split from
serving/manifest.json. What lived only in the store is named as lost.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import duckdb

from mldeck.agent.ingest import Ingest
from mldeck.core import archive, registry, serving
from mldeck.core.backups import backup_dir, list_backups, wal_of
from mldeck.core.errors import Conflict, Refused
from mldeck.core.paths import BadName, Layout, check_name, mldeck_home
from mldeck.core.runlog import TERMINAL, finish_line
from mldeck.core.store import RUN_FIELDS, Store

T = TypeVar("T")
ACTOR = "mldeck agent recover"
NOT_RECOVERED = (
    "the audit log before now (who registered, promoted, rolled back or archived what, and why)",
    "alias history (a rollback has no earlier version to go back to) and which versions were archived",
    "aliases of archived versions and of models no longer served (the manifest holds the served ones)",
    "sweeps, pipeline runs, alerts, drift reports and monitor windows",
    "the job queue: runs that were queued or running under the agent are ended as their files say "
    "(`mldeck runs resume RUN` queues one again)",
    "host metrics history and what runs cost",
)
PROFILE_FILES = {"reference.json", "reference.parquet"}
"""Written by the registry into its copy of a model folder: not part of what the run exported."""
HASHED_BYTES = 16 * 2**20
"""Files up to this size are compared by content when tying a version to its run; larger ones by size."""


# refusing to start -----------------------------------------------------------------------------


def model_versions_on_disk(layout: Layout) -> list[Path]:
    """models/<name>/<version>/ folders, oldest name first."""
    if not layout.models.is_dir():
        return []
    return sorted(p for p in layout.models.glob("*/*") if p.is_dir() and p.name.isdigit()
                  and not p.parent.name.startswith("."))


def check_not_lost(layout: Layout) -> None:
    """Refused when there is no store but the home holds model versions: an empty store would hide them."""
    if layout.db.exists():
        return
    versions = model_versions_on_disk(layout)
    if not versions:
        return
    names = ", ".join(f"{p.parent.name} v{p.name}" for p in versions[:3]) + (", …" if versions[3:] else "")
    raise Refused(
        f"there is no store ({layout.db}) but {layout.models} holds {len(versions)} model version(s) "
        f"({names}): starting would make an empty registry, with no versions, aliases or audit log, and "
        "serve nothing. Rebuild the store from the home's files with "
        f"`mldeck agent recover{_home_flag(layout)}`, or {_restore_hint(layout)}"
    )


def open_checked(layout: Layout, settings: dict[str, Any] | None = None) -> Store:
    """The store, opened (with DuckDB settings) and read back whole (every block's checksum); Refused
    names what is damaged."""
    try:
        store = Store(layout.db, settings)
    except duckdb.Error as exc:
        why = f"the store {layout.db} cannot be opened: {_line(exc)}"
        raise Refused(f"{why}. {_damaged_hint(layout)}") from None
    try:
        damaged = store.damaged_tables()
    except duckdb.Error as exc:
        store.close()
        why = f"the store {layout.db} cannot be read: {_line(exc)}"
        raise Refused(f"{why}. {_damaged_hint(layout)}") from None
    if damaged:
        store.close()
        (table, why), *others = damaged.items()
        more = f" (and table(s) {', '.join(t for t, _ in others)})" if others else ""
        raise Refused(f"the store {layout.db} is damaged: table {table} cannot be read back ({why}){more}. "
                      f"{_damaged_hint(layout)}")
    return store


def _damaged_hint(layout: Layout) -> str:
    return (f"The agent will not start on it. {_restore_hint(layout).capitalize()}; with no backup, "
            f"`mldeck agent recover{_home_flag(layout)}` sets it aside and rebuilds what the home's files "
            "hold")


def _restore_hint(layout: Layout) -> str:
    newest = list_backups(backup_dir(layout.home))[-1:]
    if newest:
        return f"restore the newest backup with `mldeck restore {newest[0]}{_home_flag(layout)}`"
    return (f"restore a backup with `mldeck restore FILE{_home_flag(layout)}` "
            f"(there is none in {backup_dir(layout.home)})")


def _home_flag(layout: Layout) -> str:
    return "" if layout.home == mldeck_home() else f" --home {layout.home}"


def _line(exc: Exception) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0][:500]


# recovering ------------------------------------------------------------------------------------


async def recover_store(
    layout: Layout, writer: concurrent.futures.Executor, settings: dict[str, Any]
) -> dict[str, Any]:
    """Rebuild the store from the home's files (the caller holds the home's lock); what was done and lost."""
    loop = asyncio.get_running_loop()

    async def db(fn: Callable[..., T], *args: Any) -> T:
        return await loop.run_in_executor(writer, functools.partial(fn, *args))

    set_aside = await db(_set_aside_unless_healthy, layout, settings)
    manifest = serving.read_manifest(layout.serving / serving.MANIFEST_FILE)
    store = await db(Store, layout.db, settings)
    requests: list[tuple[str, dict[str, Any]]] = []

    def publish(topic: str, data: Any) -> None:
        if topic == "run.event" and data.get("event") == "register_model":
            requests.append((data["run_id"], data.get("data") or {}))

    ingest = Ingest(store, layout.home, db, publish)
    try:
        await ingest.scan()
        runs = await db(_recover_runs, store, layout)
        runs["archived_runs"] = await db(archive.recover_archived, store, layout.home, time.time())
        runs["runs"] -= runs["archived_runs"]
        versions = await db(_recover_versions, store, layout, requests)
        aliases = await db(_recover_aliases, store, manifest, versions["recovered"])
    finally:
        await db(store.close)
    status = ingest.status()
    return {
        "home": str(layout.home), "store": str(layout.db), "set_aside": set_aside,
        "metric_lines": status["rows"], "bad_lines": status["bad_lines"],
        "ingest_errors": status["errors"]["count"], "last_ingest_error": status["errors"]["last"],
        **runs, "model_versions": len(versions["recovered"]), "versions_without_run": versions["orphans"],
        "unreadable_signatures": versions["unreadable"], **aliases, "not_recovered": list(NOT_RECOVERED),
    }


def _set_aside_unless_healthy(layout: Layout, settings: dict[str, Any]) -> str | None:
    """Conflict if the store opens and reads back whole; a damaged one, or a WAL left without its store
    (it cannot be replayed into a new one), is moved aside: its new path."""
    aside = layout.db.with_name(f"{layout.db.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
    if layout.db.exists():
        try:
            open_checked(layout, settings).close()
        except Refused:
            pass
        else:
            raise Conflict(f"the store {layout.db} opens and reads back whole: there is nothing to recover "
                           "(to rebuild it anyway, move it out of the home first)")
    moved = None
    for old, new in ((layout.db, aside), (wal_of(layout.db), wal_of(aside))):
        if old.exists():
            old.rename(new)
            moved = moved or str(new)
    return moved


def _recover_runs(store: Store, layout: Layout) -> dict[str, Any]:
    """Runs that logged nothing come from their run.json; runs the agent launched get their queue entry
    (so that `runs resume` works) and, when their record is not final, the outcome their files tell."""
    cur = store.cur()
    known = dict(cur.execute("SELECT run_id, status FROM runs").fetchall())
    added, settled = 0, 0
    with store.transaction():
        for run_id, spec in _run_specs(layout).items():
            run_dir = layout.runs / run_id
            managed = bool(spec.get("managed"))
            if run_id not in known:
                store.upsert_run({**{k: spec[k] for k in RUN_FIELDS if k in spec}, "run_id": run_id,
                                  "managed": managed})
                added += 1
            if managed:
                cur.execute(
                    "INSERT INTO jobs (run_id, state, spec, gpus_requested, enqueued_at, attempts) "
                    "VALUES (?, 'done', ?, ?, ?, 1) ON CONFLICT DO NOTHING",
                    [run_id, json.dumps(spec), spec.get("gpus_requested") or 0, spec.get("created_at")])
            if run_id not in known or (managed and known[run_id] not in TERMINAL):
                status, code, reason = _outcome(run_dir)
                cur.execute("UPDATE runs SET status = ?, exit_code = ?, status_reason = ?, "
                            "ended_at = coalesce(ended_at, ?) WHERE run_id = ?",
                            [status, code, reason, _last_change(run_dir), run_id])
                settled += 1
    total = cur.execute("SELECT count(*) FROM runs").fetchall()[0][0]
    return {"runs": total, "runs_from_run_json": added, "runs_ended_from_files": settled}


def _run_specs(layout: Layout) -> dict[str, dict[str, Any]]:
    """Each run folder's run.json (what the agent or the SDK wrote of it), by run id."""
    specs = {}
    for path in sorted(layout.runs.glob("*/run.json")):
        try:
            spec = json.loads(path.read_text())
            run_id = check_name(path.parent.name, "run id")
        except (OSError, ValueError, BadName):
            continue
        if isinstance(spec, dict):
            specs[run_id] = spec
    return specs


def _outcome(run_dir: Path) -> tuple[str, int | None, str | None]:
    """How a run no agent saw end ended, as its files tell: the SDK's finish line, else the exit code."""
    finish = finish_line(run_dir)
    try:
        code: int | None = int((run_dir / "exit_code").read_text().strip())
    except (OSError, ValueError):
        code = None
    if finish is not None and finish.get("status") in TERMINAL:
        return str(finish["status"]), code, finish.get("reason")
    if finish is not None and finish.get("status") == "preempted":
        return "stopped", code, "preempted before the store was rebuilt; `mldeck runs resume` continues it"
    if code is not None:
        return ("succeeded", 0, None) if code == 0 else ("failed", code, f"exit code {code}")
    return "failed", None, ("rebuilt from its files, which do not say how it ended (no exit code, "
                            "no finish line): its process was killed, or it is still running unwatched")


def _last_change(run_dir: Path) -> float | None:
    times = [p.stat().st_mtime for p in (run_dir / "metrics.jsonl", run_dir / "exit_code",
                                          run_dir / "stdout.log") if p.exists()]
    return max(times, default=None)


def _recover_versions(
    store: Store, layout: Layout, requests: list[tuple[str, dict[str, Any]]]
) -> dict[str, Any]:
    """Every models/<name>/<version>/ as a version again, tied to the run whose export it is a copy of."""
    exported = _exported_folders(layout, requests)
    asked = {(str(d.get("name")), run_id) for run_id, d in requests}
    recovered: set[tuple[str, int]] = set()
    orphans, unreadable = [], []
    for folder in model_versions_on_disk(layout):
        name, version = folder.parent.name, int(folder.name)
        try:
            registry.check_model_name(name)
        except ValueError:
            continue
        try:
            signature = json.loads((folder / "signature.json").read_text())
        except (OSError, ValueError):
            signature = {}
            unreadable.append(f"{name} v{version}")
        fingerprint = _fingerprint(folder)
        runs = sorted(r for r, fp in exported if fp == fingerprint)
        runs = [r for r in runs if (name, r) in asked] or runs
        run_id = runs[0] if len(set(runs)) == 1 else None
        if run_id is None or registry.version_of_run(store, name, run_id) is not None:
            run_id = None
            orphans.append(f"{name} v{version}")
        run = (store.get_run(run_id) if run_id else None) or {}
        metrics = store.latest_metrics([run_id]).get(run_id, {}) if run_id else {}
        with store.transaction() as cur:
            cur.execute(
                "INSERT INTO model_versions (name, version, run_id, artifact, signature, metrics, data_hash, "
                "git_sha, git_dirty, archived, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [name, version, run_id, str(folder), json.dumps(signature), json.dumps(metrics),
                 run.get("data_hash"), run.get("git_sha"), run.get("git_dirty"), False,
                 folder.stat().st_mtime],
            )
            registry.append_audit(cur, ACTOR, "recover", name, version,
                                  comment=f"rebuilt from {folder}" + (f", exported by run {run_id}" if run_id
                                                                      else ", its run not found"))
        recovered.add((name, version))
    return {"recovered": recovered, "orphans": orphans, "unreadable": unreadable}


def _exported_folders(layout: Layout, requests: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, str]]:
    """(run id, fingerprint) of every model folder a run exported: artifacts/model, and what it asked to
    register (a folder under the run's, or anywhere)."""
    folders = {(p.parent.parent.name, p) for p in layout.runs.glob("*/artifacts/model") if p.is_dir()}
    for run_id, data in requests:
        artifact = Path(str(data.get("artifact") or "artifacts/model"))
        folders.add((run_id, artifact if artifact.is_absolute() else layout.runs / run_id / artifact))
    return [(run_id, fp) for run_id, folder in sorted(folders) if folder.is_dir()
            and (fp := _fingerprint(folder)) is not None]


def _fingerprint(folder: Path) -> str | None:
    """What a model folder holds, the registry's drift profile aside: each file's name and size, and the
    bytes of the small ones (signature.json, sample.npz: the sample's outputs differ between trainings)."""
    digest = hashlib.sha256()
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name not in PROFILE_FILES)
    if not files:
        return None
    for path in files:
        size = path.stat().st_size
        digest.update(f"{path.relative_to(folder).as_posix()}\0{size}\0".encode())
        if size <= HASHED_BYTES:
            digest.update(path.read_bytes())
    return digest.hexdigest()


def _recover_aliases(
    store: Store, manifest: serving.Manifest, versions: set[tuple[str, int]]
) -> dict[str, Any]:
    """Aliases and traffic splits as serving/manifest.json last served them (it holds the served ones)."""
    aliases, missing = 0, []
    with store.transaction() as cur:
        for name, model in manifest.models.items():
            for alias, served in model.aliases.items():
                if (name, served.version) not in versions:
                    missing.append(f"{name}@{alias} (v{served.version}: no folder in models/)")
                    continue
                cur.execute("INSERT INTO aliases VALUES (?, ?, ?)", [name, alias, served.version])
                registry.append_audit(cur, ACTOR, "recover", name, served.version, alias=alias,
                                      comment="alias as serving/manifest.json last served it")
                aliases += 1
    for name, model in manifest.models.items():
        if any(n == name for n, _ in versions):
            serving.set_traffic(store, name, model.shadow, model.canary)
    return {"aliases": aliases, "aliases_missing": missing,
            "aliases_from": "serving/manifest.json" if manifest.models else None}


def describe(report: dict[str, Any]) -> str:
    """The report as a person reads it."""
    lines = [f"rebuilt the store {report['store']}"]
    if report["set_aside"]:
        lines.append(f"  the damaged store was kept at {report['set_aside']}")
    lines.append(f"  runs: {report['runs']} ({report['metric_lines']:,} lines ingested, "
                 f"{report['bad_lines']} bad; {report['runs_from_run_json']} from run.json alone, "
                 f"{report['runs_ended_from_files']} ended as their files say)")
    if report["archived_runs"]:
        lines.append(f"  archived runs: {report['archived_runs']} (from the files in archive/)")
    if report["ingest_errors"]:
        lines.append(f"  ingest failed {report['ingest_errors']} time(s), last: "
                     f"{report['last_ingest_error']}; the agent retries those files when it starts")
    lines.append(f"  model versions: {report['model_versions']}"
                 + (f"; not tied to a run: {', '.join(report['versions_without_run'])}"
                    if report["versions_without_run"] else ""))
    if report["unreadable_signatures"]:
        lines.append(f"  no readable signature.json: {', '.join(report['unreadable_signatures'])}")
    source = report["aliases_from"]
    lines.append(f"  aliases: {report['aliases']}"
                 + (f" (from {source})" if source else " (no serving/manifest.json records any)"))
    if report["aliases_missing"]:
        lines.append(f"  aliases not restored: {', '.join(report['aliases_missing'])}")
    lines.append("not recovered (it was only in the store):")
    lines += [f"  - {item}" for item in report["not_recovered"]]
    lines.append("start the agent with `mldeck agent start`")
    return "\n".join(lines)
