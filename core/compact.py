"""`mldeck store compact`: the store copied into a fresh file, which then takes its place.

DuckDB reuses the blocks that deletes and archives free, but never gives them back to the file system.
On the agent's writer thread (no write can land meanwhile), the store is checkpointed and copied as it is
into a folder beside it; the copy is rewritten table by table into a new file (COPY FROM DATABASE, on a
connection of its own: the store's own cannot touch other files); every table's row count is checked
against the store's; then the new file replaces the store (Store.swap) and is opened again. A crash
before the swap leaves the store as it was, one after leaves the new file, whole and fsynced; the folder
of a crash is removed by the next compaction.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from pathlib import Path
from typing import Any

import duckdb

from mldeck.core.atomic import fsync
from mldeck.core.errors import Internal, Unavailable
from mldeck.core.store import Store, tables

STAGING = ".compact"
CHECKPOINT_TRIES = 20
CHECKPOINT_WAIT_S = 0.05


def staging_dir(db: Path) -> Path:
    """Where a compaction of this store works: a folder beside it, removed after."""
    return db.with_name(f"{STAGING}-{db.stem}")


def store_bytes(db: Path) -> int:
    """The store's file and its write-ahead log, in bytes."""
    return sum(p.stat().st_size for p in (db, db.with_name(db.name + ".wal")) if p.exists())


def compact(store: Store) -> dict[str, Any]:
    """On the writer thread: rewrite the store into a fresh file and put it in the store's place. Its
    sizes before and after, and each table's rows (the same in both, or nothing is swapped)."""
    began = time.monotonic()
    before = store_bytes(store.path)
    _checkpoint(store)
    counts = _counts(store.cur())
    staging = staging_dir(store.path)
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        old, new = staging / "old.duckdb", staging / "new.duckdb"
        shutil.copyfile(store.path, old)
        copied = _rewrite(old, new, store.settings, staging / "tmp")
        if copied != counts:
            wrong = sorted(t for t in counts.keys() | copied.keys() if counts.get(t) != copied.get(t))
            raise Internal(f"the compacted copy's rows differ from the store's in {', '.join(wrong)}; "
                           "the store was left as it was")
        fsync(new)
        store.swap(new)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {"bytes_before": before, "bytes_after": store_bytes(store.path), "tables": counts,
            "took_s": time.monotonic() - began}


def _checkpoint(store: Store) -> None:
    """Fold the WAL into the file, so the file alone is the store; a reader's open transaction can hold
    a checkpoint off for a moment, so it is tried a few times."""
    for _ in range(CHECKPOINT_TRIES):
        with contextlib.suppress(duckdb.TransactionException):
            store.cur().execute("CHECKPOINT")
            if store_bytes(store.path) == store.path.stat().st_size:
                return
        time.sleep(CHECKPOINT_WAIT_S)
    raise Unavailable("the store could not be checkpointed (queries kept it busy); try again")


def _counts(con: duckdb.DuckDBPyConnection, database: str | None = None) -> dict[str, int]:
    prefix = f'"{database}".' if database else ""
    names = tables(con) if database is None else [r[0] for r in con.execute(
        "SELECT table_name FROM duckdb_tables() WHERE database_name = ? ORDER BY table_name",
        [database]).fetchall()]
    return {t: con.execute(f'SELECT count(*) FROM {prefix}"{t}"').fetchall()[0][0] for t in names}


def _rewrite(old: Path, new: Path, settings: dict[str, Any], spill: Path) -> dict[str, int]:
    """Copy every table of old into the fresh file new, in their order; each table's rows in new."""
    con = duckdb.connect(config={**settings, "temp_directory": str(spill)})
    try:
        con.execute("ATTACH ? AS old (READ_ONLY)", [str(old)])
        con.execute("ATTACH ? AS new", [str(new)])
        con.execute("COPY FROM DATABASE old TO new")
        con.execute("CHECKPOINT new")
        return _counts(con, "new")
    finally:
        con.close()
