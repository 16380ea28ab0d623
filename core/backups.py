"""Copies of the store that can be brought back: made while the agent runs, checked, kept, restored.

A backup is one DuckDB file, `backups/<kind>-<UTC time>.duckdb` in the home (or a folder given):
the agent copies its store on its writer thread, where no write can come in between, then opens the
copy elsewhere, reads every table back and folds any WAL into it before it gets its name. Daily
backups (`[store] backups = N`) are kept N deep; ones made by hand are never deleted.
"""

from __future__ import annotations

import calendar
import contextlib
import fcntl
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

import duckdb

from mldeck.core.atomic import fsync
from mldeck.core.errors import Conflict, Invalid, NotFound
from mldeck.core.paths import Layout
from mldeck.core.schema import SCHEMA_VERSION
from mldeck.core.store import SANDBOX, Store, damaged_tables, tables

BACKUP_DIR = "backups"
DAILY = "daily"
MANUAL = "backup"
SUFFIX = ".duckdb"
DAY_S = 86_400.0
_STAMP = "%Y%m%d-%H%M%S"


def backup_dir(home: Path) -> Path:
    return home / BACKUP_DIR


def wal_of(db: Path) -> Path:
    """DuckDB's write-ahead log beside a store file."""
    return db.with_name(db.name + ".wal")


def backup_name(kind: str, at: float) -> str:
    """`<kind>-YYYYmmdd-HHMMSS-mmm.duckdb` in UTC: names sort by time."""
    return f"{kind}-{time.strftime(_STAMP, time.gmtime(at))}-{int(at * 1000) % 1000:03d}{SUFFIX}"


def backup_time(path: Path, kind: str) -> float | None:
    """When a backup of this kind was made, from its name; None for any other file."""
    match = re.fullmatch(rf"{kind}-(\d{{8}}-\d{{6}})-(\d{{3}}){re.escape(SUFFIX)}", path.name)
    if match is None:
        return None
    try:
        return calendar.timegm(time.strptime(match[1], _STAMP)) + int(match[2]) / 1000
    except ValueError:
        return None


def list_backups(folder: Path, kind: str | None = None) -> list[Path]:
    """The backups in a folder, oldest first (of one kind, or of both)."""
    kinds = [kind] if kind else [DAILY, MANUAL]
    found = [p for p in folder.glob(f"*{SUFFIX}") if any(backup_time(p, k) is not None for k in kinds)]
    return sorted(found, key=lambda p: max(backup_time(p, k) or 0.0 for k in kinds))


def daily_due(folder: Path, now: float) -> bool:
    """Whether the newest daily backup is a day old (or there is none)."""
    newest = list_backups(folder, DAILY)[-1:]
    return not newest or now - (backup_time(newest[0], DAILY) or 0.0) >= DAY_S


def prune_daily(folder: Path, keep: int) -> list[Path]:
    """Delete the daily backups older than the newest `keep`; the ones deleted."""
    old = list_backups(folder, DAILY)[:-keep] if keep > 0 else []
    for path in old:
        path.unlink(missing_ok=True)
    return old


def snapshot(store: Store, staging: Path) -> None:
    """On the agent's writer thread, so that no commit lands in between: the store as of its last commit.

    A checkpoint folds the WAL into the file first; if one cannot run now, the WAL is copied with it."""
    with contextlib.suppress(duckdb.TransactionException):
        store.cur().execute("CHECKPOINT")
    shutil.copyfile(store.path, staging)
    wal = wal_of(store.path)
    if wal.exists() and wal.stat().st_size:
        shutil.copyfile(wal, wal_of(staging))


def seal(staging: Path, target: Path, settings: dict[str, Any]) -> dict[str, int]:
    """Open the copy on its own, read every table back, fold its WAL in, and only then name it target.

    settings: DuckDB's (memory_limit, threads), as the store itself is opened with."""
    try:
        counts = check_store_file(staging, writable=True, settings=settings)
    except BaseException:
        discard(staging)
        raise
    fsync(staging)
    os.replace(staging, target)
    fsync(target.parent)
    return counts


def discard(staging: Path) -> None:
    """Remove a copy that will not become a backup, with its WAL."""
    for path in (staging, wal_of(staging)):
        path.unlink(missing_ok=True)


def check_store_file(
    path: Path, writable: bool = False, settings: dict[str, Any] | None = None
) -> dict[str, int]:
    """The rows of each table of a store file that reads back whole; Invalid says what is wrong with it.

    writable: replay and fold its WAL into it (a fresh copy); otherwise it is only read."""
    try:
        con = duckdb.connect(str(path), read_only=not writable, config={**(settings or {}), **SANDBOX})
    except duckdb.Error as exc:
        why = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise Invalid(f"{path} cannot be opened as a store: {why}") from None
    try:
        if "schema_version" not in tables(con):
            raise Invalid(f"{path} is a DuckDB file but not an mldeck store (it has no schema_version)")
        version = con.execute("SELECT max(version) FROM schema_version").fetchall()[0][0] or 0
        if version > SCHEMA_VERSION:
            raise Invalid(f"{path} was written by a newer mldeck (schema {version}, this one knows "
                          f"{SCHEMA_VERSION}); upgrade mldeck first")
        damaged = damaged_tables(con)
        if damaged:
            table, why = next(iter(damaged.items()))
            raise Invalid(f"{path} is damaged: table {table} cannot be read back ({why})")
        counts = {t: con.execute(f'SELECT count(*) FROM "{t}"').fetchall()[0][0] for t in tables(con)}
        if writable:
            con.execute("CHECKPOINT")
        return counts
    finally:
        con.close()


def restore(layout: Layout, source: Path, now: float) -> dict[str, Any]:
    """Make a backup file the home's store, the agent stopped; the store it replaces is kept beside it.

    The home's lock is held throughout, so no agent can start while the files change."""
    if not source.is_file():
        have = [p.name for p in list_backups(backup_dir(layout.home))]
        raise NotFound(f"no backup file at {source}" + (
            f"; the backups in {backup_dir(layout.home)}: {', '.join(have[-5:])}" if have else ""))
    layout.home.mkdir(parents=True, exist_ok=True)
    lock = _hold_home(layout)
    try:
        counts = check_store_file(source)
        staged = layout.db.with_name(f".{layout.db.name}.restoring-{os.getpid()}")
        try:
            shutil.copyfile(source, staged)
            fsync(staged)
        except BaseException:
            staged.unlink(missing_ok=True)
            raise
        replaced = None
        if layout.db.exists() or wal_of(layout.db).exists():
            stamp = time.strftime(_STAMP, time.gmtime(now))
            replaced = layout.db.with_name(f"{layout.db.name}.replaced-{stamp}")
            for old, aside in ((layout.db, replaced), (wal_of(layout.db), wal_of(replaced))):
                if old.exists():
                    os.replace(old, aside)
        os.replace(staged, layout.db)
        fsync(layout.home)
    finally:
        os.close(lock)
    return {"restored": str(source), "store": str(layout.db), "replaced": replaced and str(replaced),
            "tables": counts}


def _hold_home(layout: Layout) -> int:
    """The home's lock, the one a running agent holds; Conflict while an agent runs."""
    fd = os.open(layout.lockfile, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise Conflict(f"an agent is running for {layout.home}; stop it first (`mldeck agent stop`), "
                       "then restore") from None
    return fd
