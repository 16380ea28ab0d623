"""Exactly-once ingest: tail the JSON-lines files that jobs and the model server append to.

Each file's committed byte offset is stored in the same transaction as its rows, so a
kill -9 at any moment neither loses nor doubles a line. A half-written last line waits
for its newline; a bad line is skipped, counted and logged with its file and line number.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import io
import logging
import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json
import watchfiles

from mldeck.core.runlog import Line
from mldeck.core.store import Store

log = logging.getLogger("mldeck.ingest")

READ_CHUNK = 32 * 1024 * 1024
RESCAN_S = 3.0

Action = Callable[[Store], None]


@dataclass
class Parsed:
    """What a chunk of lines turns into: ordered store actions, and events to publish after commit."""

    actions: list[Action] = field(default_factory=list)
    events: list[tuple[str, Any]] = field(default_factory=list)
    bad: int = 0


Parser = Callable[[Path, bytes, int], Parsed]


@dataclass
class Source:
    """A family of files to tail (a glob under the home) and how to read their lines."""

    pattern: str
    parse: Parser


_line_decoder = msgspec.json.Decoder(Line)


def decode_lines(
    path: Path, chunk: bytes, first_line: int, decoder: msgspec.json.Decoder[Any], parsed: Parsed
) -> list[Any]:
    """Decode a chunk fast, falling back line by line to skip and report the bad ones."""
    try:
        return decoder.decode_lines(chunk)
    except (msgspec.DecodeError, msgspec.ValidationError):
        pass
    out = []
    for n, raw in enumerate(chunk.split(b"\n")[:-1], start=first_line):
        if not raw.strip():
            continue
        try:
            out.append(decoder.decode(raw))
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            parsed.bad += 1
            log.warning("%s:%d: skipped a bad line: %s", path, n, exc)
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
        rows = decode_lines(path, chunk, first_line, decoder, parsed)
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
            _points(run_id, path, chunk[pos : match.start()], line_no, parsed)
            line_no += chunk.count(b"\n", pos, match.start())
        _slow_lines(run_id, path, chunk[match.start() : match.end()], line_no, parsed)
        line_no += 1
        pos = match.end()
    if pos < len(chunk):
        _points(run_id, path, chunk[pos:], line_no, parsed)
    return parsed


def _points(run_id: str, path: Path, segment: bytes, first_line: int, parsed: Parsed) -> None:
    table = _arrow_points(segment)
    if table is None:
        _slow_lines(run_id, path, segment, first_line, parsed)
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
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return None
    schema = table.schema
    if set(schema.names) != {"t", "s", "m"} or not pa.types.is_struct(schema.field("m").type):
        return None
    if not pa.types.is_integer(schema.field("s").type) or table.column("s").null_count:
        return None
    if not any(check(schema.field("t").type) for check in _NUMERIC[:2]):
        return None
    if not all(any(check(f.type) for check in _NUMERIC) for f in schema.field("m").type):
        return None
    return table


def _slow_lines(run_id: str, path: Path, chunk: bytes, first_line: int, parsed: Parsed) -> None:
    """Line by line: events in order, points batched between them, bad lines skipped and named."""
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

    for line in decode_lines(path, chunk, first_line, _line_decoder, parsed):
        if line.m is not None:
            if line.s is None:
                parsed.bad += 1
                log.warning("%s: skipped a metrics line without a step", path)
                continue
            for key, value in line.m.items():
                if value is not None:
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


def _init_run(store: Store, fields: dict[str, Any]) -> None:
    existing = store.get_run(fields["run_id"])
    if existing and existing.get("managed"):
        for key in ("status", "started_at", "created_at", "command", "host"):
            fields.pop(key, None)
    store.upsert_run(fields)


def _read_and_parse(
    path: Path, parse: Parser, offset: int, lines: int
) -> tuple[Parsed, int, int, bool] | None:
    """The whole lines after offset (up to READ_CHUNK), parsed; with the offset and line count after them."""
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            data = fh.read(READ_CHUNK)
    except FileNotFoundError:
        return None
    end = data.rfind(b"\n")
    if end < 0:
        return None
    chunk = data[: end + 1]
    parsed = parse(path, chunk, lines + 1)
    return parsed, offset + len(chunk), lines + chunk.count(b"\n"), len(data) == READ_CHUNK


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
        self.rows_committed = 0
        self._stop = asyncio.Event()

    def add_source(self, source: Source) -> None:
        self.sources.append(source)

    def ingested(self, path: Path) -> bool:
        """Whether every byte of the file is committed to the store (so the file may go)."""
        try:
            return self.offsets.get(str(path), (0, 0))[0] >= path.stat().st_size
        except FileNotFoundError:
            return False

    async def run(self) -> None:
        self.offsets = await self.db(self.store.ingest_offsets)
        await self.scan()
        watch_dirs = [self.home / "runs", self.home / "serving"]
        watcher = asyncio.create_task(self._watch(watch_dirs))
        try:
            while not self._stop.is_set():
                try:
                    await asyncio.wait_for(self._stop.wait(), RESCAN_S)
                except TimeoutError:
                    await self.scan()
        finally:
            watcher.cancel()

    def stop(self) -> None:
        self._stop.set()

    async def _watch(self, dirs: list[Path]) -> None:
        for d in dirs:
            d.mkdir(parents=True, exist_ok=True)
        async for changes in watchfiles.awatch(
            *dirs, debounce=50, step=10, stop_event=self._stop, recursive=True
        ):
            paths = {Path(p) for change, p in changes if change != watchfiles.Change.deleted}
            for path in sorted(paths):
                parser = self._parser_for(path)
                if parser:
                    await self.ingest_file(path, parser)

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
        for source in self.sources:
            for path in sorted(self.home.glob(source.pattern)):
                try:
                    size = path.stat().st_size
                except FileNotFoundError:
                    continue
                if size > self.offsets.get(str(path), (0, 0))[0]:
                    await self.ingest_file(path, source.parse)

    async def ingest_file(self, path: Path, parse: Parser) -> None:
        events = await self.db(self._ingest_file_sync, path, parse)
        for topic, data in events:
            self.publish(topic, data)

    def _ingest_file_sync(self, path: Path, parse: Parser) -> list[tuple[str, Any]]:
        """Commit whole lines chunk by chunk; the next chunk is parsed while this one is inserted."""
        key = str(path)
        events: list[tuple[str, Any]] = []
        offset, lines = self.offsets.get(key, (0, 0))
        with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="ingest-parse") as parser:
            pending = parser.submit(_read_and_parse, path, parse, offset, lines)
            while (chunk := pending.result()) is not None:
                parsed, offset, lines, more = chunk
                if more:
                    pending = parser.submit(_read_and_parse, path, parse, offset, lines)
                before = self.offsets.get(key, (0, 0))[1]
                with self.store.transaction():
                    for action in parsed.actions:
                        action(self.store)
                    self.store.set_offset(key, offset, lines)
                self.offsets[key] = (offset, lines)
                self.bad_lines += parsed.bad
                self.rows_committed += lines - before
                events.extend(parsed.events)
                if not more:
                    break
        return events
