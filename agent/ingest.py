"""Exactly-once ingest: tail the JSON-lines files that jobs and the model server append to.

Each file's committed byte offset is stored in the same transaction as its rows, so a
kill -9 at any moment neither loses nor doubles a line; offsets are keyed by the file's
path relative to the home, so a moved or copied home is not read twice. A half-written
last line waits for its newline. The new lines of many files go into one transaction
(up to GROUP_BYTES), their points in one insert that also updates each run's summaries
(core.store Store.add_points), so a thousand small runs cost about what one large one does.

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
import itertools
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Iterator
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
from mldeck.core import archive
from mldeck.core.runlog import DROPPED, NONFINITE, TOTAL_STEPS, Line
from mldeck.core.store import Store

log = logging.getLogger("mldeck.ingest")

READ_CHUNK = 32 * 1024 * 1024
"""The most bytes read and committed at once; a longer line is skipped as bad."""
SEEK_BLOCK = 1024 * 1024
GROUP_BYTES = 16 * 1024 * 1024
"""Whole lines of many files committed in one transaction, up to about this many bytes."""
CALL_BYTES = 64 * 1024 * 1024
"""About this many bytes are committed per turn on the writer thread; then events go out and others write."""
PARSE_THREADS = 2
RESCAN_S = 1.0
"""How often the files that grew lately (or failed) are looked at again, behind the watcher (which also
looks into each new folder at once)."""
LIVE_S = 120.0
"""A file is looked at every RESCAN_S for this long after it last grew."""
FULL_SCAN_S = 30.0
"""How often every source file is looked at (a glob of the home: it costs what the number of runs does)."""
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

@dataclass
class Points:
    """Metric points (run_id, key, step, ts, value) to add: those of many files go in as one insert."""

    table: pa.Table


@dataclass
class RunInit:
    """A run as its init line describes it: the inits of many files go in as one statement."""

    fields: dict[str, Any]


@dataclass
class RunFinish:
    """A run's own finish (counted where the agent did not launch it): many go in as one statement."""

    run_id: str
    status: str
    at: float
    reason: Any


@dataclass
class MetricsTail:
    """A run.metrics event kept in Arrow until it is published: a backlog's events as Python lists would
    hold millions of numbers at once."""

    run_id: str
    points: pa.Table

    def payload(self) -> dict[str, Any]:
        """The event as subscribers get it, built through numpy (to_pylist is ten times slower)."""
        keys = self.points["key"].combine_chunks()
        names = np.array(keys.dictionary.to_pylist(), dtype=object)
        return {"run_id": self.run_id, "key": names[keys.indices.to_numpy(zero_copy_only=False)].tolist(),
                "step": self.points["step"].to_numpy().tolist(),
                "value": self.points["value"].to_numpy().tolist()}


Action = Callable[[Store], None] | Points | RunInit | RunFinish
BadLine = tuple[int, str]
"""A skipped line: its number in the file, and why."""


@dataclass
class Parsed:
    """What a chunk of lines turns into: ordered store actions, events to publish after commit, bad lines."""

    actions: list[Action] = field(default_factory=list)
    events: list[tuple[str, Any]] = field(default_factory=list)
    bad: list[BadLine] = field(default_factory=list)

    def extend(self, other: Parsed) -> Parsed:
        for action in other.actions:
            self.add(action)
        self.events += other.events
        self.bad += other.bad
        return self

    def add(self, action: Action) -> None:
        """Append an action; points right after points (only events without actions between) join them."""
        last = self.actions[-1] if self.actions else None
        if isinstance(action, Points) and isinstance(last, Points):
            last.table = pa.concat_tables([last.table, action.table])
        else:
            self.actions.append(action)


def apply_actions(store: Store, chunks: list[list[Action]]) -> None:
    """Each chunk's actions in its order, a chunk being one file's: the k-th actions of all the chunks
    go together, those of one kind in one statement (all the points in one insert). Files touch
    different runs and tables, so only the order within each chunk matters."""
    for actions in itertools.zip_longest(*chunks):
        present = [a for a in actions if a is not None]
        inits = [a.fields for a in present if isinstance(a, RunInit)]
        finishes = [(a.run_id, a.status, a.at, a.reason) for a in present if isinstance(a, RunFinish)]
        points = [a.table for a in present if isinstance(a, Points)]
        for action in present:
            if not isinstance(action, Points | RunInit | RunFinish):
                action(store)
        if inits:
            store.init_runs(inits)
        if finishes:
            store.finish_unmanaged_runs(finishes)
        if points:
            store.add_points(pa.concat_tables(points))


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


@dataclass
class _File:
    """A file in a turn of ingest: where its next read starts, and what its commits did."""

    path: Path
    key: str
    parse: Parser
    offset: int
    lines: int
    progress: Progress = field(default_factory=Progress)
    expect: int = 0
    """The bytes its read in flight is expected to take (what reading ahead may hold)."""


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
            parsed.add(lambda store: store.append(table, batch))
            parsed.events.extend(events(rows) if events else [])
        return parsed

    return parse


EVENT_MARK = b',"e":'
_NO_THREADS = pa_json.ReadOptions(use_threads=False)
"""Each parse thread reads its own segment: Arrow's thread pool under it would only add hand-offs."""
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
    for start, end in event_lines(chunk):
        if start > pos:
            _points(run_id, chunk[pos:start], line_no, parsed)
            line_no += chunk.count(b"\n", pos, start)
        _slow_lines(run_id, chunk[start:end], line_no, parsed)
        line_no += 1
        pos = end
    if pos < len(chunk):
        _points(run_id, chunk[pos:], line_no, parsed)
    return parsed


def event_lines(chunk: bytes) -> Iterator[tuple[int, int]]:
    """Where the event lines of whole lines are, as the SDK writes them: `{"t":...,"e":...}` (e right
    after t); everything else is a metrics point. bytes.find, not a regular expression: a regex tried
    at every line start took a third of the parse."""
    at = chunk.find(EVENT_MARK)
    while at != -1:
        start = chunk.rfind(b"\n", 0, at) + 1
        end = chunk.find(b"\n", at) + 1 or len(chunk)
        if chunk.startswith(b'{"t":', start) and chunk.find(b",", start, at) == -1:
            yield start, end
        at = chunk.find(EVENT_MARK, end)


def _points(run_id: str, segment: bytes, first_line: int, parsed: Parsed) -> None:
    table = _arrow_points(segment)
    if table is None:
        _slow_lines(run_id, segment, first_line, parsed)
        return
    points = long_points(run_id, table)
    if points.num_rows == 0:
        return
    parsed.add(Points(points))
    tail = table.slice(max(0, table.num_rows - EVENT_TAIL_ROWS))
    parsed.events.append(("run.metrics", MetricsTail(run_id, long_points(run_id, tail))))


def points_table(
    run_id: str, keys: pa.DictionaryArray, step: pa.Array, ts: pa.Array, value: pa.Array
) -> pa.Table:
    """Metric points of one run in the one shape every batch has, so that many files' concatenate."""
    return pa.table({
        "run_id": pa.DictionaryArray.from_arrays(pa.array(np.zeros(len(keys), np.int32)),
                                                 pa.array([run_id], pa.string())),
        "key": keys,
        "step": pc.cast(step, pa.int64()),
        "ts": pc.cast(ts, pa.float64()),
        "value": pc.cast(value, pa.float64()),
    })


def long_points(run_id: str, table: pa.Table) -> pa.Table:
    """Wide (t, s, m{key: value}) rows as metrics rows, one per present value, built column-wise
    (key by key: each key's points in a run of rows, in the file's order)."""
    m = table.column("m").combine_chunks()
    keys = pa.array([f.name for f in m.type], pa.string())
    n, k = len(m), len(keys)
    if not k:
        return points_table(run_id, pc.dictionary_encode(keys), pa.array([], pa.int64()),
                            pa.array([], pa.float64()), pa.array([], pa.float64()))
    values = pa.concat_arrays([pc.cast(m.field(i), pa.float64()) for i in range(k)])
    points = points_table(
        run_id,
        pa.DictionaryArray.from_arrays(pa.array(np.repeat(np.arange(k, dtype=np.int32), n)), keys),
        pa.concat_arrays([table.column("s").combine_chunks()] * k),
        pa.concat_arrays([pc.cast(table.column("t").combine_chunks(), pa.float64())] * k),
        values,
    )
    return points.filter(pc.is_valid(values))


def _arrow_points(segment: bytes) -> pa.Table | None:
    """The segment as an Arrow table of (t, s, m{key: number}), or None if it is not exactly that. A
    points line holds no list and two objects: anything else goes line by line, for Arrow's reader
    spends seconds on one deeply nested line that the line decoder refuses at once."""
    if b"[" in segment or segment.count(b"{") > 2 * segment.count(b"\n") + 2:
        return None
    try:
        table = pa_json.read_json(io.BytesIO(segment), read_options=_NO_THREADS)
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
        batch = points_table(run_id, pc.dictionary_encode(pa.array(keys, pa.string())),
                             pa.array(steps, pa.int64()), pa.array(stamps, pa.float64()),
                             pa.array(values, pa.float64()))
        parsed.add(Points(batch))
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
        parsed.add(RunInit(fields))
        parsed.events.append(("runs", {"run_id": run_id, "status": "running"}))
    elif line.e == "resume":
        step = int(data.get("step", -1))
        parsed.add(lambda store: store.delete_metrics_after(run_id, step))
    elif line.e == "finish":
        status = str(data.get("status") or "succeeded")
        parsed.add(RunFinish(run_id, status, line.t, data.get("reason")))
        parsed.events.append(("runs", {"run_id": run_id, "status": status}))
    elif line.e == TOTAL_STEPS:
        fields = {"run_id": run_id, "total_steps": int(data["total_steps"])}
        parsed.add(lambda store: store.upsert_run(fields))
    elif line.e == DROPPED:
        points = int(data.get("points", 0))
        parsed.add(lambda store: store.add_dropped_points(run_id, points))


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
        self._live: dict[Path, tuple[Parser, float]] = {}
        """The files that grew (or failed) lately, and when: looked at again every RESCAN_S."""

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
        """Follow the watcher; behind it, look at the lately grown files every RESCAN_S and at every file
        now, then after 1, 2, 4... seconds up to every FULL_SCAN_S (what was written while the watcher
        started is found at once). No failure ends it."""
        watcher = asyncio.create_task(self._watch([self.home / "runs", self.home / "serving"]))
        full_at, every = 0.0, RESCAN_S
        try:
            while not self._stop.is_set():
                try:
                    full = time.monotonic() >= full_at
                    if full:
                        full_at, every = time.monotonic() + every, min(FULL_SCAN_S, every * 2)
                    await self.scan(full)
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
                    files = await asyncio.to_thread(self._sources_in, paths)
                    if files:
                        await self.ingest_files(files)
            except Exception as exc:
                self._failed("watcher", exc, None)
                await asyncio.sleep(delay)
                delay = min(BACKOFF_MAX_S, delay * 2)

    def _sources_in(self, paths: Iterable[Path]) -> list[tuple[Path, Parser]]:
        """The source files among changed paths, and in changed folders: a run folder and its file can
        appear before the watcher watches the folder, and must not wait for a scan."""
        found = set()
        for path in paths:
            found.add(path)
            if path.is_dir():
                found.update(path.rglob("*"))
        return [(path, parser) for path in sorted(found) if (parser := self._parser_for(path))]

    def _parser_for(self, path: Path) -> Parser | None:
        try:
            rel = path.relative_to(self.home)
        except ValueError:
            return None
        for source in self.sources:
            if rel.match(source.pattern):
                return source.parse
        return None

    async def scan(self, full: bool = True) -> None:
        """Catch up every file (full), or the files that grew lately: a safety net behind the watcher."""
        if not await self._ready():
            return
        store_failures = self._store_failures
        if full:
            files = await asyncio.to_thread(self._all_sources)
        else:
            now = time.monotonic()
            self._live = {p: (parse, at) for p, (parse, at) in self._live.items() if now - at < LIVE_S}
            files = [(path, parse) for path, (parse, _) in self._live.items()]
        await self.ingest_files(files)
        if self._store_failures == store_failures:
            self._resume()

    def _all_sources(self) -> list[tuple[Path, Parser]]:
        return [(path, source.parse) for source in self.sources
                for path in sorted(self.home.glob(source.pattern))]

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

    def follow(self, path: Path, parse: Parser) -> None:
        """Look at a file every RESCAN_S from now (for LIVE_S), though no watcher sees it change."""
        self._live[path] = (parse, time.monotonic())

    async def ingest_file(self, path: Path, parse: Parser) -> bool:
        """Commit the file's new whole lines; False if a failure stops it now or its backoff still runs."""
        return path not in await self.ingest_files([(path, parse)])

    async def ingest_files(self, files: list[tuple[Path, Parser]]) -> set[Path]:
        """Commit the new whole lines of files that grew, many files a transaction; the files a failure
        (or the backoff after one) stopped."""
        now = time.monotonic()
        stopped = {path for path, _ in files if self._retry.get(self.key(path), (0.0, 0.0))[0] > now}
        pending = await asyncio.to_thread(self._grown, [f for f in files if f[0] not in stopped])
        self._live.update((path, (parse, now)) for path, parse in pending)
        while pending:
            if not await self._ready():
                return stopped | {path for path, _ in pending}
            done, pending = await self.db(self._ingest_files_sync, pending)
            pa.default_memory_pool().release_unused()  # what parsing took goes back: memory stays bounded
            store_failed = False
            for f in done:
                for topic, data in f.progress.events:
                    self.publish(topic, data.payload() if isinstance(data, MetricsTail) else data)
                await asyncio.sleep(0)  # a backlog's events interleave with the socket's requests
                error = f.progress.error
                if error is None:
                    self._retry.pop(f.key, None)
                    continue
                stopped.add(f.path)
                store_failed = store_failed or disk_full(error) or isinstance(error, STORE_ERRORS)
                self._failed(f"{f.path}:{f.progress.line}", error, f.key)
            if store_failed:
                return stopped | {path for path, _ in pending}
            self._resume()
        return stopped

    def _grown(self, files: list[tuple[Path, Parser]]) -> list[tuple[Path, Parser]]:
        """The files with bytes past their committed offset (each once)."""
        return [(path, parse) for path, parse in dict(files).items()
                if _size(path) > self.offsets.get(self.key(path), (0, 0))[0]]

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

    def _ingest_files_sync(
        self, files: list[tuple[Path, Parser]]
    ) -> tuple[list[_File], list[tuple[Path, Parser]]]:
        """On the writer thread, one turn of about CALL_BYTES: files are read and parsed ahead on
        PARSE_THREADS while the lines already read are committed, many files a transaction (at most one
        chunk of each). Returns the files worked on (their events, and the failure that stopped one) and
        those with lines left for the next turn. A failure of the store ends the turn."""
        todo = deque(_File(path, self.key(path), parse, *self.offsets.get(self.key(path), (0, 0)))
                     for path, parse in files)
        worked = list(todo)
        reading: deque[tuple[_File, concurrent.futures.Future[Chunk | None]]] = deque()
        ahead = committed = 0
        with concurrent.futures.ThreadPoolExecutor(PARSE_THREADS, thread_name_prefix="ingest-parse") as pool:

            def read(f: _File) -> None:
                nonlocal ahead
                f.expect = min(READ_CHUNK, max(0, _size(f.path) - f.offset))
                f.progress.line = f.lines + 1
                ahead += f.expect
                reading.append((f, pool.submit(read_chunk, f.path, f.parse, f.offset, f.lines)))

            def fill() -> None:
                while todo and committed < CALL_BYTES and (not reading or ahead < 2 * GROUP_BYTES):
                    read(todo.popleft())

            fill()
            while reading:
                group: list[tuple[_File, Chunk]] = []
                keys: set[str] = set()
                size = 0
                while reading and size < GROUP_BYTES and reading[0][0].key not in keys:
                    f, future = reading.popleft()
                    ahead -= f.expect
                    if f.progress.error is not None:
                        continue
                    try:
                        chunk = future.result()
                    except Exception as exc:
                        f.progress.error = exc
                        continue
                    if chunk is None:
                        continue
                    f.progress.line = chunk.line
                    group.append((f, chunk))
                    keys.add(f.key)
                    size += chunk.end - chunk.offset
                    if chunk.more:
                        f.offset, f.lines = chunk.end, chunk.lines
                        if committed + size < CALL_BYTES:
                            read(f)
                        else:
                            todo.append(f)
                    fill()
                if group:
                    try:
                        self._commit_group(group)
                    except Exception as exc:
                        group[0][0].progress.error = exc
                        return worked, []
                    committed += size
                    fill()
        return worked, [(f.path, f.parse) for f in todo if f.progress.error is None]

    def _commit_group(self, group: list[tuple[_File, Chunk]]) -> None:
        """One transaction for the group's chunks. If a line fails it (not the store), each file's chunk is
        committed on its own, halved until that line is found and skipped; a file that fails even so
        stops (its failure noted). The store's failures go up."""
        group = self._unarchived(group)
        if len(group) > 1:
            try:
                self._store(group)
                return
            except STORE_ERRORS:
                raise
            except Exception as exc:
                if disk_full(exc):
                    raise
        for f, chunk in group:
            try:
                self._commit(f, chunk)
            except STORE_ERRORS:
                raise
            except Exception as exc:
                if disk_full(exc):
                    raise
                f.progress.error = exc

    def _unarchived(self, group: list[tuple[_File, Chunk]]) -> list[tuple[_File, Chunk]]:
        """The group, with each run archived since its file was last read brought back first (a run that
        writes is live: its new lines would be points of no run); a file whose run cannot come back stops."""
        runs = {f.path.parent.name: f for f, chunk in group
                if f.parse is parse_run_metrics and chunk.parsed.actions}
        for run_id in archive.archived_among(self.store, list(runs)):
            try:
                path, _ = archive.bring_back(self.store, self.home, run_id)
            except Exception as exc:
                if isinstance(exc, STORE_ERRORS) or disk_full(exc):
                    raise
                runs[run_id].progress.error = exc
                continue
            log.info("run %s was archived; new lines in its metrics.jsonl brought it back from %s",
                     run_id, path)
        return [(f, chunk) for f, chunk in group if f.progress.error is None]

    def _commit(self, f: _File, chunk: Chunk) -> None:
        """Store a chunk; if the store refuses a line of it, halve it until that line is found and skipped."""
        try:
            self._store([(f, chunk)])
        except STORE_ERRORS:
            raise
        except Exception as exc:
            if disk_full(exc) or not chunk.data:
                raise
            if chunk.data.count(b"\n") == 1:
                refused = Parsed(bad=[(chunk.line, f"the store refused it: {type(exc).__name__}: {exc}")])
                self._store([(f, Chunk(b"", chunk.offset, chunk.line, chunk.end, chunk.lines, refused))])
                return
            left, right = halves(chunk.data)
            self._commit(f, lines_chunk(f.path, f.parse, left, chunk.offset, chunk.line))
            self._commit(f, lines_chunk(f.path, f.parse, right, chunk.offset + len(left),
                                        chunk.line + left.count(b"\n")))

    def _store(self, items: list[tuple[_File, Chunk]]) -> None:
        """One transaction: the chunks' rows and each file's offset after its chunk; then count, note
        bad lines, queue events."""
        with self.store.transaction():
            apply_actions(self.store, [chunk.parsed.actions for _, chunk in items])
            self.store.set_offsets([(f.key, chunk.end, chunk.lines) for f, chunk in items])
        for f, chunk in items:
            self.offsets[f.key] = (chunk.end, chunk.lines)
            self.rows_committed += chunk.lines - chunk.line + 1
            f.progress.events.extend(chunk.parsed.events)
            self._note_bad(f, chunk.parsed.bad)

    def _note_bad(self, f: _File, bad: list[BadLine]) -> None:
        """Count skipped lines, show the last in `agent status`, log the first LOGGED_BAD_LINES by line."""
        if not bad:
            return
        self.bad_lines += len(bad)
        line, why = bad[-1]
        self.last_bad_line = {"file": f.key, "line": line, "error": why, "at": time.time()}
        for line, why in bad[:LOGGED_BAD_LINES]:
            log.warning("%s:%d: skipped a bad line: %s", f.path, line, why)
        if len(bad) > LOGGED_BAD_LINES:
            log.warning("%s: skipped %d more bad lines (up to line %d)", f.path, len(bad) - LOGGED_BAD_LINES,
                        bad[-1][0])


def _size(path: Path) -> int:
    """The file's size now (-1 when it cannot be looked at: reading it will say why)."""
    try:
        return path.stat().st_size
    except OSError:
        return -1
