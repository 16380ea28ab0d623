"""Exactly-once ingest: tail the JSON-lines files that jobs and the model server append to.

Each file's committed byte offset is stored in the same transaction as its rows, so a
kill -9 at any moment neither loses nor doubles a line; offsets are keyed by the file's
path relative to the home, so a moved or copied home is not read twice. A half-written
last line waits for its newline.

Nothing ends ingest. A line no parser or the store accepts (nested too deep, longer than
READ_CHUNK, not UTF-8, a value of the wrong type) is skipped, counted and logged with its
file and line, and the lines after it go on. A store that cannot commit (a full disk)
pauses ingest, which retries with backoff and resumes by itself; any other failure is
logged once, counted, shown in `agent status` and retried with backoff for that file only.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import io
import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json
import watchfiles

from mldeck.agent.tasks import Failure
from mldeck.core.runlog import DROPPED, NONFINITE, Line
from mldeck.core.store import Store

log = logging.getLogger("mldeck.ingest")

READ_CHUNK = 32 * 1024 * 1024
"""The most bytes read and committed at once; a longer line is skipped as bad."""
SEEK_BLOCK = 1024 * 1024
RESCAN_S = 3.0
BACKOFF_S = 0.5
BACKOFF_MAX_S = 10.0
LOGGED_BAD_LINES = 10
"""Bad lines of one commit logged one by one; the rest are logged as a count."""
STORE_ERRORS = (
    duckdb.IOException, duckdb.FatalException, duckdb.OutOfMemoryException, duckdb.ConnectionException,
)
"""Failures of the store itself, not of the lines being stored: ingest pauses and retries (as on a full
disk). Any other failure to commit is taken for a line's: the chunk is halved until that line is found,
and it is skipped only if the store then commits the offset past it."""
POISON = (msgspec.DecodeError, msgspec.ValidationError, RecursionError)
"""What decoding a line raises when the line is bad (RecursionError: nested too deep)."""

Action = Callable[[Store], None]
BadLine = tuple[int, str]
"""A skipped line: its number in the file, and why."""


@dataclass
class Parsed:
    """What a chunk of lines turns into: ordered store actions, events to publish after commit, bad lines."""

    actions: list[Action] = field(default_factory=list)
    events: list[tuple[str, Any]] = field(default_factory=list)
    bad: list[BadLine] = field(default_factory=list)

    def extend(self, other: Parsed) -> Parsed:
        self.actions += other.actions
        self.events += other.events
        self.bad += other.bad
        return self


Parser = Callable[[Path, bytes, int], Parsed]


@dataclass
class Source:
    """A family of files to tail (a glob under the home) and how to read their lines."""

    pattern: str
    parse: Parser


@dataclass
class Chunk:
    """Whole lines of a file from `offset` (the first numbered `line`), up to `end` and `lines` lines."""

    data: bytes
    offset: int
    line: int
    end: int
    lines: int
    parsed: Parsed
    more: bool = False


@dataclass
class Progress:
    """What one pass over a file did: events to publish, and the failure that stopped it at a line."""

    events: list[tuple[str, Any]] = field(default_factory=list)
    line: int = 0
    error: Exception | None = None


_line_decoder = msgspec.json.Decoder(Line)


def decode_lines(
    chunk: bytes, first_line: int, decoder: msgspec.json.Decoder[Any], parsed: Parsed
) -> list[tuple[int, Any]]:
    """Decode a chunk fast, with line numbers, falling back line by line to skip and note the bad ones."""
    try:
        values = decoder.decode_lines(chunk)
    except POISON:
        pass
    else:
        if len(values) == chunk.count(b"\n"):
            return list(enumerate(values, start=first_line))
    out = []
    for n, raw in enumerate(chunk.split(b"\n")[:-1], start=first_line):
        if not raw.strip():
            continue
        try:
            out.append((n, decoder.decode(raw)))
        except POISON as exc:
            parsed.bad.append((n, str(exc)))
    return out


def _cell(value: Any) -> Any:
    """A decoded field as a table cell: raw JSON stays text, nested values become JSON text."""
    if isinstance(value, msgspec.Raw):
        return bytes(value).decode()
    if isinstance(value, dict | list):
        return msgspec.json.encode(value).decode()
    return value


def rows_parser(
    kind: type[msgspec.Struct],
    table: str,
    columns: dict[str, pa.DataType],
    events: Callable[[list[Any]], list[tuple[str, Any]]] | None = None,
) -> Parser:
    """A parser for files whose lines are rows of one table, decoded as one struct type."""
    decoder = msgspec.json.Decoder(kind)

    def parse(path: Path, chunk: bytes, first_line: int) -> Parsed:
        parsed = Parsed()
        rows = [row for _, row in decode_lines(chunk, first_line, decoder, parsed)]
        if rows:
            batch = pa.table({
                col: pa.array([_cell(getattr(r, col)) for r in rows], kind_) for col, kind_ in columns.items()
            })
            parsed.actions.append(lambda store: store.append(table, batch))
            parsed.events.extend(events(rows) if events else [])
        return parsed

    return parse


# An event line as the SDK writes it: {"t":...,"e":...}; everything else is a metrics point.
_EVENT_LINE = re.compile(rb'^\{"t":[^,\n]*,"e":[^\n]*\n', re.MULTILINE)
_NUMERIC = (pa.types.is_integer, pa.types.is_floating, pa.types.is_null)
_NONFINITE_NAMES = pa.array(list(NONFINITE))
EVENT_TAIL_ROWS = 500


def parse_run_metrics(path: Path, chunk: bytes, first_line: int) -> Parsed:
    """metrics.jsonl → metrics rows, run upserts on init, superseded steps dropped on resume.

    Runs of point lines go through Arrow's JSON reader (millions of points a second);
    event lines, and any run of lines the fast reader rejects, are decoded line by line.
    """
    run_id = path.parent.name
    parsed = Parsed()
    pos, line_no = 0, first_line
    for match in _EVENT_LINE.finditer(chunk):
        if match.start() > pos:
            _points(run_id, chunk[pos : match.start()], line_no, parsed)
            line_no += chunk.count(b"\n", pos, match.start())
        _slow_lines(run_id, chunk[match.start() : match.end()], line_no, parsed)
        line_no += 1
        pos = match.end()
    if pos < len(chunk):
        _points(run_id, chunk[pos:], line_no, parsed)
    return parsed


def _points(run_id: str, segment: bytes, first_line: int, parsed: Parsed) -> None:
    table = _arrow_points(segment)
    if table is None:
        _slow_lines(run_id, segment, first_line, parsed)
        return
    points = long_points(run_id, table)
    if points.num_rows == 0:
        return
    parsed.actions.append(lambda store: store.append("metrics", points))
    tail = table.slice(max(0, table.num_rows - EVENT_TAIL_ROWS)).to_pylist()
    event: dict[str, Any] = {"run_id": run_id, "key": [], "step": [], "value": []}
    for row in tail:
        for key, value in row["m"].items():
            if value is not None:
                event["key"].append(key)
                event["step"].append(row["s"])
                event["value"].append(float(value))
    parsed.events.append(("run.metrics", event))


def long_points(run_id: str, table: pa.Table) -> pa.Table:
    """Wide (t, s, m{key: value}) rows as metrics rows, one per present value, built column-wise."""
    m = table.column("m").combine_chunks()
    keys = [f.name for f in m.type]
    n, k = len(m), len(keys)
    if not k:
        return pa.table({"run_id": [], "key": [], "step": [], "ts": [], "value": []})
    values = pa.concat_arrays([pc.cast(m.field(i), pa.float64()) for i in range(k)])
    step = table.column("s").combine_chunks()
    ts = pc.cast(table.column("t").combine_chunks(), pa.float64())
    points = pa.table({
        "run_id": pa.DictionaryArray.from_arrays(pa.array(np.zeros(n * k, np.int32)), pa.array([run_id])),
        "key": pa.DictionaryArray.from_arrays(pa.array(np.repeat(np.arange(k, dtype=np.int32), n)),
                                              pa.array(keys)),
        "step": pa.concat_arrays([step] * k),
        "ts": pa.concat_arrays([ts] * k),
        "value": values,
    })
    return points.filter(pc.is_valid(values))


def _arrow_points(segment: bytes) -> pa.Table | None:
    """The segment as an Arrow table of (t, s, m{key: number}), or None if it is not exactly that."""
    try:
        table = pa_json.read_json(io.BytesIO(segment))
    except pa.ArrowException:
        return None
    schema = table.schema
    if set(schema.names) != {"t", "s", "m"} or not pa.types.is_struct(schema.field("m").type):
        return None
    if not pa.types.is_integer(schema.field("s").type) or table.column("s").null_count:
        return None
    if not any(check(schema.field("t").type) for check in _NUMERIC[:2]):
        return None
    m = table.column("m").combine_chunks()
    if not all(_numbers(m.field(i)) for i in range(m.type.num_fields)):
        return None
    return table


def _numbers(values: pa.Array) -> bool:
    """Whether a column holds only numbers, nulls and the names NaN and the infinities are written as."""
    if any(check(values.type) for check in _NUMERIC):
        return True
    if not pa.types.is_string(values.type):
        return False
    named = pc.sum(pc.is_in(values, value_set=_NONFINITE_NAMES)).as_py() or 0
    return bool(named == len(values) - values.null_count)


def _point_values(m: dict[str, float | str | None]) -> dict[str, float] | None:
    """A point's present values as floats (NaN and the infinities by name), or None if one is not a number."""
    out = {}
    for key, value in m.items():
        if isinstance(value, str):
            if value not in NONFINITE:
                return None
            out[key] = NONFINITE[value]
        elif value is not None:
            out[key] = value
    return out


def _slow_lines(run_id: str, chunk: bytes, first_line: int, parsed: Parsed) -> None:
    """Line by line: events in order, points batched between them, bad lines skipped and noted."""
    keys: list[str] = []
    steps: list[int] = []
    stamps: list[float] = []
    values: list[float] = []

    def close_segment() -> None:
        if not keys:
            return
        batch = pa.table({
            "run_id": pa.array([run_id] * len(keys), pa.string()),
            "key": pa.array(keys, pa.string()),
            "step": pa.array(steps, pa.int64()),
            "ts": pa.array(stamps, pa.float64()),
            "value": pa.array(values, pa.float64()),
        })
        parsed.actions.append(lambda store: store.append("metrics", batch))
        parsed.events.append(("run.metrics", {
            "run_id": run_id, "key": list(keys), "step": list(steps), "value": list(values),
        }))
        keys.clear()
        steps.clear()
        stamps.clear()
        values.clear()

    for n, line in decode_lines(chunk, first_line, _line_decoder, parsed):
        if line.m is not None:
            point = _point_values(line.m)
            if line.s is None or point is None:
                parsed.bad.append((n, "a metrics line without a step" if point is not None
                                   else "a metric value is neither a number nor NaN, Infinity or -Infinity"))
                continue
            for key, value in point.items():
                keys.append(key)
                steps.append(line.s)
                stamps.append(line.t)
                values.append(value)
        elif line.e is not None:
            close_segment()
            _apply_event(run_id, line, parsed)
    close_segment()


def _apply_event(run_id: str, line: Line, parsed: Parsed) -> None:
    data = line.d or {}
    parsed.events.append(("run.event", {"run_id": run_id, "event": line.e, "data": data, "t": line.t}))
    if line.e == "init":
        fields = {k: v for k, v in data.items() if k not in ("user", "pid")}
        fields.update(run_id=run_id, started_at=line.t, status="running")
        parsed.actions.append(lambda store: _init_run(store, fields))
        parsed.events.append(("runs", {"run_id": run_id, "status": "running"}))
    elif line.e == "resume":
        step = int(data.get("step", -1))
        parsed.actions.append(lambda store: store.delete_metrics_after(run_id, step))
    elif line.e == "finish":
        status = str(data.get("status") or "succeeded")
        reason = data.get("reason")
        parsed.actions.append(
            lambda store: store.finish_unmanaged_run(run_id, status, line.t, reason)
        )
        parsed.events.append(("runs", {"run_id": run_id, "status": status}))
    elif line.e == DROPPED:
        points = int(data.get("points", 0))
        parsed.actions.append(lambda store: store.add_dropped_points(run_id, points))


def _init_run(store: Store, fields: dict[str, Any]) -> None:
    existing = store.get_run(fields["run_id"])
    if existing and existing.get("managed"):
        for key in ("status", "started_at", "created_at", "command", "host"):
            fields.pop(key, None)
    store.upsert_run(fields)


def halves(data: bytes) -> tuple[bytes, bytes]:
    """Whole lines (at least two) split into two runs of whole lines near the middle."""
    cut = data.find(b"\n", len(data) // 2) + 1
    if cut >= len(data):
        cut = data.rfind(b"\n", 0, len(data) - 1) + 1
    return data[:cut], data[cut:]


def parse_isolated(path: Path, parse: Parser, data: bytes, first_line: int) -> Parsed:
    """Parse whole lines; a line the parser itself fails on is found by halving, and skipped."""
    try:
        return parse(path, data, first_line)
    except Exception as exc:
        if data.count(b"\n") <= 1:
            return Parsed(bad=[(first_line, f"{type(exc).__name__}: {exc}")])
        left, right = halves(data)
        return parse_isolated(path, parse, left, first_line).extend(
            parse_isolated(path, parse, right, first_line + left.count(b"\n")))


def lines_chunk(
    path: Path, parse: Parser, data: bytes, offset: int, first_line: int, more: bool = False
) -> Chunk:
    """Whole lines read at offset, parsed."""
    parsed = parse_isolated(path, parse, data, first_line)
    return Chunk(data, offset, first_line, offset + len(data), first_line - 1 + data.count(b"\n"), parsed,
                 more)


def read_chunk(path: Path, parse: Parser, offset: int, lines: int) -> Chunk | None:
    """The whole lines after offset (up to READ_CHUNK), parsed; None until a whole line is there."""
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            data = fh.read(READ_CHUNK)
            cut = data.rfind(b"\n") + 1
            if not cut and len(data) == READ_CHUNK:
                return _past_long_line(fh, offset, lines + 1)
    except FileNotFoundError:
        return None
    if not cut:
        return None
    return lines_chunk(path, parse, data[:cut], offset, lines + 1, more=len(data) == READ_CHUNK)


def _past_long_line(fh: io.BufferedReader, offset: int, line: int) -> Chunk | None:
    """A line longer than READ_CHUNK (fh is past its first READ_CHUNK bytes): skipped once it is whole."""
    while block := fh.read(SEEK_BLOCK):
        at = block.find(b"\n")
        if at >= 0:
            end = fh.tell() - len(block) + at + 1
            why = f"a line of {end - offset:,} bytes, longer than the {READ_CHUNK:,}-byte read chunk"
            return Chunk(b"", offset, line, end, line, Parsed(bad=[(line, why)]), more=True)
    return None


def disk_full(exc: BaseException) -> bool:
    """Whether a failure is the disk's (or quota's) being full, which only freed space mends."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return any(text in str(exc) for text in ("No space left on device", "Disk quota exceeded"))


class Ingest:
    """Watches the home's sources and commits new lines; all store work goes through `db`."""

    def __init__(
        self,
        store: Store,
        home: Path,
        db: Callable[..., Awaitable[Any]],
        publish: Callable[[str, Any], None],
        sources: Iterable[Source] = (),
    ) -> None:
        self.store = store
        self.home = home
        self.db = db
        self.publish = publish
        self.sources = [Source("runs/*/metrics.jsonl", parse_run_metrics), *sources]
        self.offsets: dict[str, tuple[int, int]] = {}
        self.bad_lines = 0
        self.last_bad_line: dict[str, Any] | None = None
        self.rows_committed = 0
        self.errors: Failure | None = None
        self.paused: str | None = None
        """Why no file is ingested now (the store cannot commit: "disk full"); None while ingest runs."""
        self._retry: dict[str, tuple[float, float]] = {}
        """When (monotonic) a file may be tried again, and the backoff that led there; "" is the store."""
        self._logged: set[str] = set()
        self._store_failures = 0
        self._reload = True
        self._reopen = False
        self._stop = asyncio.Event()

    def add_source(self, source: Source) -> None:
        self.sources.append(source)

    def key(self, path: Path) -> str:
        """A file's offset key: its path relative to the home, so a moved or copied home is not read twice."""
        return path.relative_to(self.home).as_posix()

    def ingested(self, path: Path) -> bool:
        """Whether every byte of the file is committed to the store (so the file may go)."""
        try:
            return self.offsets.get(self.key(path), (0, 0))[0] >= path.stat().st_size
        except FileNotFoundError:
            return False

    async def forget(self, paths: list[Path]) -> None:
        """Drop the offsets of files deleted after they were ingested."""
        keys = [self.key(p) for p in paths]
        await self.db(self.store.forget_offsets, keys)
        for key in keys:
            self.offsets.pop(key, None)

    def status(self) -> dict[str, Any]:
        """What `agent status` shows: lines committed, bad lines, failures, and why ingest is paused."""
        errors = self.errors
        return {
            "rows": self.rows_committed,
            "bad_lines": self.bad_lines,
            "last_bad_line": self.last_bad_line,
            "errors": {"count": errors.count, "last": errors.last, "last_at": errors.last_at} if errors
            else {"count": 0, "last": None, "last_at": None},
            "paused": self.paused,
        }

    async def run(self) -> None:
        """Scan now and every RESCAN_S, following the watcher in between; no failure ends it."""
        watcher = asyncio.create_task(self._watch([self.home / "runs", self.home / "serving"]))
        try:
            while not self._stop.is_set():
                try:
                    await self.scan()
                except Exception as exc:
                    self._failed("scan", exc, None)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), RESCAN_S)
        finally:
            watcher.cancel()

    def stop(self) -> None:
        self._stop.set()

    async def _watch(self, dirs: list[Path]) -> None:
        """Ingest files as they change; a watcher that fails is restarted with backoff (scans go on)."""
        delay = BACKOFF_S
        while not self._stop.is_set():
            try:
                for d in dirs:
                    d.mkdir(parents=True, exist_ok=True)
                async for changes in watchfiles.awatch(
                    *dirs, debounce=50, step=10, stop_event=self._stop, recursive=True
                ):
                    delay = BACKOFF_S
                    paths = {Path(p) for change, p in changes if change != watchfiles.Change.deleted}
                    for path in sorted(paths):
                        parser = self._parser_for(path)
                        if parser:
                            await self.ingest_file(path, parser)
            except Exception as exc:
                self._failed("watcher", exc, None)
                await asyncio.sleep(delay)
                delay = min(BACKOFF_MAX_S, delay * 2)

    def _parser_for(self, path: Path) -> Parser | None:
        try:
            rel = path.relative_to(self.home)
        except ValueError:
            return None
        for source in self.sources:
            if rel.match(source.pattern):
                return source.parse
        return None

    async def scan(self) -> None:
        """Catch up every file: at start, and as a safety net behind the watcher."""
        if not await self._ready():
            return
        store_failures = self._store_failures
        for source in self.sources:
            for path in sorted(self.home.glob(source.pattern)):
                try:
                    size = path.stat().st_size
                except FileNotFoundError:
                    continue
                if size > self.offsets.get(self.key(path), (0, 0))[0]:
                    await self.ingest_file(path, source.parse)
        if self._store_failures == store_failures:
            self._resume()

    async def _ready(self) -> bool:
        """Whether the store may be tried now, reopened and the offsets re-read first where a failure asks."""
        if self._retry.get("", (0.0, 0.0))[0] > time.monotonic():
            return False
        if self._reopen or self._reload:
            try:
                await self.db(self._prepare)
            except Exception as exc:
                self._failed("store", exc, "")
                return False
        return True

    def _prepare(self) -> None:
        """On the writer thread: reopen a store DuckDB gave up on; re-read offsets a failure left in doubt."""
        if self._reopen:
            self.store.reopen()
            self._reopen = False
        if self._reload:
            self.offsets = self.store.ingest_offsets()
            self._reload = False

    async def ingest_file(self, path: Path, parse: Parser) -> bool:
        """Commit the file's new whole lines; False if a failure stops it now or its backoff still runs."""
        key = self.key(path)
        if self._retry.get(key, (0.0, 0.0))[0] > time.monotonic() or not await self._ready():
            return False
        progress = await self.db(self._ingest_file_sync, path, key, parse)
        for topic, data in progress.events:
            self.publish(topic, data)
        if progress.error is not None:
            self._failed(f"{path}:{progress.line}", progress.error, key)
            return False
        self._retry.pop(key, None)
        self._resume()
        return True

    def _failed(self, where: str, exc: Exception, key: str | None) -> None:
        """Count a failure, log it once, and back off: the store's failures pause every file, others
        only the file `key` (None: a loop that keeps its own pace)."""
        store_failed = disk_full(exc) or isinstance(exc, STORE_ERRORS)
        if store_failed:
            key = ""
            self._store_failures += 1
            self.paused = "disk full" if disk_full(exc) else f"store error: {str(exc).splitlines()[0]}"
            self._reload = True
            self._reopen = self._reopen or isinstance(exc, duckdb.FatalException)
        if key is not None:
            delay = min(BACKOFF_MAX_S, self._retry[key][1] * 2) if key in self._retry else BACKOFF_S
            self._retry[key] = (time.monotonic() + delay, delay)
        text = f"{where}: {type(exc).__name__}: {exc}"
        self.errors = Failure((self.errors.count if self.errors else 0) + 1, text, time.time())
        if text not in self._logged:
            self._logged.add(text)
            log.error("ingest failed at %s (retrying with backoff; shown in `agent status`)", text,
                      exc_info=None if store_failed else exc)

    def _resume(self) -> None:
        """The store took a commit, or a scan found it readable and no commit failing on it."""
        if self._retry.pop("", None) is not None or self.paused:
            log.info("ingest resumed%s", f" (it was paused: {self.paused})" if self.paused else "")
            self.paused = None
            self._logged.clear()

    def _ingest_file_sync(self, path: Path, key: str, parse: Parser) -> Progress:
        """Commit whole lines chunk by chunk; the next chunk is read and parsed while this one is inserted."""
        progress = Progress()
        offset, lines = self.offsets.get(key, (0, 0))
        progress.line = lines + 1
        try:
            with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="ingest-parse") as reader:
                pending = reader.submit(read_chunk, path, parse, offset, lines)
                while (chunk := pending.result()) is not None:
                    if chunk.more:
                        pending = reader.submit(read_chunk, path, parse, chunk.end, chunk.lines)
                    progress.line = chunk.line
                    self._commit(path, key, parse, chunk, progress)
                    if not chunk.more:
                        break
        except Exception as exc:
            progress.error = exc
        return progress

    def _commit(self, path: Path, key: str, parse: Parser, chunk: Chunk, progress: Progress) -> None:
        """Store a chunk; if the store refuses a line of it, halve it until that line is found and skipped."""
        try:
            self._store(path, key, chunk, progress)
        except STORE_ERRORS:
            raise
        except Exception as exc:
            if disk_full(exc) or not chunk.data:
                raise
            if chunk.data.count(b"\n") == 1:
                refused = Parsed(bad=[(chunk.line, f"the store refused it: {type(exc).__name__}: {exc}")])
                self._store(path, key, Chunk(b"", chunk.offset, chunk.line, chunk.end, chunk.lines, refused),
                            progress)
                return
            left, right = halves(chunk.data)
            self._commit(path, key, parse, lines_chunk(path, parse, left, chunk.offset, chunk.line), progress)
            self._commit(path, key, parse, lines_chunk(path, parse, right, chunk.offset + len(left),
                                                       chunk.line + left.count(b"\n")), progress)

    def _store(self, path: Path, key: str, chunk: Chunk, progress: Progress) -> None:
        """One transaction: the chunk's rows and the offset after it; then count, note, queue its events."""
        with self.store.transaction():
            for action in chunk.parsed.actions:
                action(self.store)
            self.store.set_offset(key, chunk.end, chunk.lines)
        self.offsets[key] = (chunk.end, chunk.lines)
        self.rows_committed += chunk.lines - chunk.line + 1
        progress.events.extend(chunk.parsed.events)
        bad = chunk.parsed.bad
        if not bad:
            return
        self.bad_lines += len(bad)
        line, why = bad[-1]
        self.last_bad_line = {"file": key, "line": line, "error": why, "at": time.time()}
        for line, why in bad[:LOGGED_BAD_LINES]:
            log.warning("%s:%d: skipped a bad line: %s", path, line, why)
        if len(bad) > LOGGED_BAD_LINES:
            log.warning("%s: skipped %d more bad lines (up to line %d)", path, len(bad) - LOGGED_BAD_LINES,
                        bad[-1][0])
