"""`mldeck predict NAME[@ALIAS|/VERSION] --input F --output F`: batch inference with the served model.

The model folder comes from the agent's registry (`models.get`); the model runs here, in this
process, through the same loader the server uses. Rows stream from the input file (Parquet through
pyarrow, CSV through DuckDB) in batches and stream back out, so a file far larger than memory works.
Each model input is read from a column named after it (one value, or a list of the row's values,
flat or nested, reshaped to the signature) or from one column per value: the input's feature names
(columns.json), `<input>[i]`, or for a model of one input the file's numeric columns when there are
exactly as many. Columns become arrays without a Python loop over rows (Arrow → numpy, zero-copy where
the types allow). The output holds the input columns, with their types (a Parquet output keeps
fixed-size lists), plus one column per output value (`name`, or `name_0`, `name_1`, ...).
"""

from __future__ import annotations

import argparse
import math
import os
import queue
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Mapping
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from mldeck.core.errors import Invalid, NotFound, UsageError
from mldeck.tui.cli.connect import call_agent, remote_host
from mldeck.tui.cli.output import show

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

    from mldeck.core.modelfile import LoadedModel
    from mldeck.core.signature import Signature, TensorSpec

FORMATS = (".parquet", ".csv")
READ_ROWS = 65_536
READ_BYTES = 64 << 20
"""Rows are read (and written, a Parquet row group each) this many at a time, or fewer as large as this:
big reads cost less per row, and the model still runs --batch-size rows at a time."""

AHEAD = 2
"""Batches a stage may run ahead of the next: reading, the model and writing overlap on their own threads."""

Read = Callable[["pa.RecordBatch"], "np.ndarray"]
T = TypeVar("T")


def parse_ref(ref: str) -> dict[str, Any]:
    """NAME@ALIAS, NAME/VERSION or NAME (its production alias) → models.get params."""
    if "@" in ref:
        name, alias = ref.split("@", 1)
        return {"name": name, "alias": alias}
    if "/" in ref:
        name, version = ref.split("/", 1)
        if not version.lstrip("v").isdigit():
            raise Invalid(f"{ref!r}: the version after '/' must be a number, like {name}/3")
        return {"name": name, "version": int(version.lstrip("v"))}
    return {"name": ref, "alias": "production"}


def _quote(path: Path) -> str:
    return "'" + str(path).replace("'", "''") + "'"


def _kind(path: Path, what: str) -> str:
    if path.suffix.lower() not in FORMATS:
        raise Invalid(f"{what} {path} must be .parquet or .csv")
    return path.suffix.lower()


def _is_list(t: pa.DataType) -> bool:
    import pyarrow as pa

    return pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)


def _is_number(t: pa.DataType) -> bool:
    import pyarrow as pa

    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)


class Feeder:
    """How file columns become model inputs, decided once from the file's schema."""

    def __init__(self, signature: Signature, schema: pa.Schema, named: Mapping[str, list[str]]) -> None:
        only = len(signature.inputs) == 1
        self.readers = [(s, _reader(s, schema, named.get(s.name) or [], only)) for s in signature.inputs]

    def inputs(self, batch: pa.RecordBatch) -> dict[str, np.ndarray]:
        """The batch's values of each input, as its datatype (a CSV's doubles for an FP32 input)."""
        from mldeck.core.signature import cast_input

        return {spec.name: cast_input(spec, read(batch)) for spec, read in self.readers}


def _reader(spec: TensorSpec, schema: pa.Schema, named: list[str], only: bool) -> Read:
    """Where one input's values are in the file: its own column, or one column per value."""
    dims = spec.shape[1:]
    size = math.prod(dims) if all(d > 0 for d in dims) else None
    have = set(schema.names)
    if spec.name in have:
        return partial(_from_column, spec, size)
    indexed = [f"{spec.name}[{i}]" for i in range(size or 0)] if dims else []
    for columns in (named if len(named) == size else [], indexed):
        if columns and have.issuperset(columns):
            return partial(_from_columns, _numeric(columns, schema), dims)
    numeric = [f.name for f in schema if _is_number(f.type)]
    if only and not named and numeric and (size is None or len(numeric) == size):
        return partial(_from_columns, numeric, dims)
    per_row = "one value" if size == 1 else f"a list of {size or 'its'} values, flat or nested,"
    ways = [f"a column {spec.name!r} ({per_row} per row)"]
    if named:
        ways.append(f"the feature columns {', '.join(named)}")
    if indexed:
        ways.append(f"the columns {indexed[0]} … {indexed[-1]}")
    message = f"the file has no values for the model's input {spec.describe()}: give {' or '.join(ways)}"
    missing = [c for c in named if c not in have]
    if named and len(missing) < len(named):
        message += f"; it lacks the feature columns {missing}"
    elif only and numeric:
        listed = ", ".join(numeric[:10]) + (" …" if len(numeric) > 10 else "")
        message += f"; its numeric columns ({len(numeric)}): {listed}"
    raise Invalid(message)


def _numeric(columns: list[str], schema: pa.Schema) -> list[str]:
    bad = [f"{c} ({schema.field(c).type})" for c in columns if not _is_number(schema.field(c).type)]
    if bad:
        raise Invalid(f"columns that feed the model must hold numbers: {', '.join(bad[:5])}")
    return columns


def _from_column(spec: TensorSpec, size: int | None, batch: pa.RecordBatch) -> np.ndarray:
    """The input from its own column: one value per row, or lists (any nesting) of the row's values."""
    import pyarrow as pa
    import pyarrow.compute as pc

    values: Any = batch.column(spec.name)
    rows = len(values)
    while _is_list(values.type):
        if values.null_count:
            raise Invalid(f"column {spec.name!r} has {values.null_count} empty value(s)")
        lengths = {"min": 0, "max": 0} if pa.types.is_fixed_size_list(values.type) else (
            pc.min_max(pc.list_value_length(values)).as_py())
        if lengths["min"] != lengths["max"]:
            raise Invalid(f"column {spec.name!r} holds lists of {lengths['min']} to {lengths['max']} values; "
                          f"the input {spec.describe()} takes the same number in every row")
        values = values.flatten()
    if not _is_number(values.type):
        raise Invalid(f"column {spec.name!r} holds {values.type}: give numbers, a list of numbers per row, "
                      f"or one column per value ({spec.name}[0], {spec.name}[1], …)")
    if values.null_count:
        raise Invalid(f"column {spec.name!r} has {values.null_count} empty value(s)")
    if rows and size is not None and len(values) != rows * size:
        raise Invalid(f"column {spec.name!r} holds {len(values) / rows:g} values per row; "
                      f"the input {spec.describe()} takes {size}")
    return values.to_numpy(zero_copy_only=False).reshape(rows, *spec.shape[1:])


def _from_columns(columns: list[str], dims: list[int], batch: pa.RecordBatch) -> np.ndarray:
    """The input from one column per value, in C order."""
    import numpy as np

    arrays = [batch.column(c) for c in columns]
    empty = [c for c, a in zip(columns, arrays, strict=True) if a.null_count]
    if empty:
        raise Invalid(f"columns {', '.join(empty[:5])} have empty values")
    matrix = np.column_stack([a.to_numpy(zero_copy_only=False) for a in arrays])
    return matrix.reshape(len(matrix), *dims)


def _output_columns(outputs: Mapping[str, np.ndarray]) -> tuple[list[str], list[pa.Array]]:
    """One column per output value: `name` for one value per row, else `name_0`, `name_1`, ..."""
    import numpy as np
    import pyarrow as pa

    names, arrays = [], []
    for name, values in outputs.items():
        by_value = np.ascontiguousarray(values.reshape(len(values), -1).T)
        if len(by_value) == 1:
            names.append(name)
            arrays.append(pa.array(by_value[0]))
            continue
        names += [f"{name}_{i}" for i in range(len(by_value))]
        arrays += [pa.array(v) for v in by_value]
    return names, arrays


class Predictions:
    """The file's batches with the model's outputs appended, the model run batch_size rows at a time."""

    def __init__(self, model: LoadedModel, feeder: Feeder, batch_size: int, progress: Any) -> None:
        self.model, self.feeder, self.batch_size, self.progress = model, feeder, batch_size, progress
        self.rows = 0
        self.failure: Invalid | None = None
        """Why a batch failed, kept because DuckDB hands it on wrapped in its own error."""

    def over(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            if batch.num_rows:
                yield self.one(batch)

    def one(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        """The batch with its outputs; rows that do not fit raise Invalid saying which rows."""
        import numpy as np

        from mldeck.core.signature import InvalidInput

        parts = []
        for start in range(0, batch.num_rows, self.batch_size):
            rows = batch.slice(start, self.batch_size)
            try:
                parts.append(self.model.predict(self.feeder.inputs(rows)))
            except (Invalid, InvalidInput) as exc:
                self.failure = Invalid(f"rows {self.rows + 1}-{self.rows + rows.num_rows}: {exc}")
                raise self.failure from None
            self.rows += rows.num_rows
            if self.progress:
                self.progress.update(self.progress.task_ids[0], completed=self.rows)
        try:
            return _with_outputs(batch, {k: np.concatenate([p[k] for p in parts]) for k in parts[0]})
        except Invalid as exc:
            self.failure = exc
            raise


def read_rows(signature: Signature, batch_size: int) -> int:
    """Rows per read: READ_ROWS, fewer for inputs so large that they would take more than READ_BYTES."""
    from mldeck.core.signature import numpy_dtype

    row = sum(math.prod(max(d, 1) for d in s.shape[1:]) * numpy_dtype(s.datatype).itemsize
              for s in signature.inputs)
    return max(batch_size, min(READ_ROWS, READ_BYTES // max(row, 1)))


def _with_outputs(batch: pa.RecordBatch, outputs: Mapping[str, np.ndarray]) -> pa.RecordBatch:
    import pyarrow as pa

    names, arrays = _output_columns(outputs)
    clash = sorted(set(names) & set(batch.schema.names))
    if clash:
        raise Invalid(f"the input file already has the output columns {clash}: rename them")
    return pa.RecordBatch.from_arrays([*batch.columns, *arrays], names=[*batch.schema.names, *names])


class Source:
    """The input file as a schema, batches of rows and (where it is free to know) its row count."""

    def __init__(self, path: Path, rows: int) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.total: int | None = None
        if _kind(path, "--input") == ".parquet":
            try:
                parquet = pq.ParquetFile(path)
            except (OSError, pa.ArrowException) as exc:
                raise Invalid(f"cannot read {path} as Parquet: {exc}") from None
            self.schema = parquet.schema_arrow
            self.total = parquet.metadata.num_rows
            self.batches: Iterator[pa.RecordBatch] = parquet.iter_batches(rows)
            return
        import duckdb

        self._con = duckdb.connect()
        self._sql = f"SELECT * FROM read_csv_auto({_quote(path)})"
        try:
            reader = self._con.sql(self._sql).to_arrow_reader(rows)
        except duckdb.Error as exc:
            raise Invalid(f"cannot read {path} as CSV: {exc}") from None
        self.schema, self.batches = reader.schema, iter(reader)

    def count(self) -> int:
        """Rows in the file: the Parquet footer says; a CSV file is counted."""
        if self.total is None:
            self.total = self._con.sql(f"SELECT count(*) FROM ({self._sql})").fetchall()[0][0]
        return self.total


def _write_parquet(path: Path, schema: pa.Schema, batches: Iterator[pa.RecordBatch]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    # dictionary pages pay for repeated values (text, ids), not for floats, which only slow writing down
    repeated = [f.name for f in schema if not pa.types.is_floating(f.type) and not _is_list(f.type)]
    with pq.ParquetWriter(path, schema, use_dictionary=repeated) as writer:
        for batch in batches:
            writer.write_batch(batch)


def _write_csv(path: Path, schema: pa.Schema, batches: Iterator[pa.RecordBatch]) -> None:
    """CSV through DuckDB, which writes list columns as text where pyarrow refuses them."""
    import duckdb
    import pyarrow as pa

    con = duckdb.connect()
    con.register("predictions", pa.RecordBatchReader.from_batches(schema, batches))
    con.execute(f"COPY (SELECT * FROM predictions) TO {_quote(path)} (FORMAT csv, HEADER true)")


async def predict(args: argparse.Namespace) -> int:
    import duckdb
    import pyarrow as pa

    from mldeck.core.modelfile import load_model
    from mldeck.core.signature import column_names

    if args.batch_size < 1:
        raise UsageError("--batch-size must be at least 1")
    source, target = Path(args.input), Path(args.output)
    _kind(source, "--input")
    write = _write_parquet if _kind(target, "--output") == ".parquet" else _write_csv
    if not source.is_file():
        raise NotFound(f"no input file {source}")
    if remote_host(args)[1] is not None:
        raise UsageError("predict runs the model on this machine: run it on the host that has the model")
    version = await call_agent(args, "models.get", **parse_ref(args.model))
    folder = Path(version["artifact"])
    model = load_model(folder, device=args.device)
    rows = Source(source, read_rows(model.signature, args.batch_size))
    feeder = Feeder(model.signature, rows.schema, column_names(folder))
    progress = _progress(rows, args)
    started = time.perf_counter()
    predictions = Predictions(model, feeder, args.batch_size, progress)
    stream = ahead(predictions.over(ahead(rows.batches)))
    head = next(stream, None)
    if head is None:
        raise Invalid(f"{source} has no rows")
    partial_file = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        if progress:
            progress.start()
        write(partial_file, head.schema, _chain(head, stream))
        os.replace(partial_file, target)
    except (OSError, pa.ArrowException, duckdb.Error) as exc:  # a failed batch reaches here wrapped
        raise (predictions.failure or Invalid(f"predicting {source} into {target} failed: {exc}")) from None
    finally:
        stream.close()
        partial_file.unlink(missing_ok=True)  # nothing half-written
        if progress:
            progress.stop()
    elapsed = time.perf_counter() - started
    done = predictions.rows
    result = {
        "model": version["name"], "version": version["version"], "rows": done, "output": str(target),
        "seconds": elapsed, "rows_per_s": done / elapsed if elapsed else math.inf,
    }
    return show(args, result, lambda r: print(
        f"{done} rows → {target} with {version['name']} v{version['version']} in {elapsed:.2f}s "
        f"({r['rows_per_s']:,.0f} rows/s)"
    ))


def _chain(head: pa.RecordBatch, rest: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    yield head
    yield from rest


def ahead(items: Iterator[T], depth: int = AHEAD) -> Iterator[T]:
    """The items, made on a thread of their own up to depth ahead of the caller, so that stages overlap
    (pyarrow and torch release the GIL while they work). The maker's error is raised here; a caller
    that stops early stops the maker."""
    made: queue.Queue[tuple[bool, Any]] = queue.Queue(depth)
    stop = threading.Event()

    def put(item: tuple[bool, Any]) -> bool:
        while not stop.is_set():
            try:
                made.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def make() -> None:
        try:
            for item in items:
                if not put((False, item)):
                    return
        except BaseException as exc:  # handed to the caller, who raises it
            traceback.clear_frames(exc.__traceback__)  # what the failed stages held (their readers) goes now
            put((True, exc))
        else:
            put((True, None))
        finally:
            if hasattr(items, "close"):  # a generator: its own stages stop too
                items.close()

    thread = threading.Thread(target=make, name="predict-ahead", daemon=True)
    thread.start()
    try:
        while True:
            last, item = made.get()
            if last:
                if item is not None:
                    raise item
                return
            yield item
    finally:
        stop.set()
        thread.join()


def _progress(rows: Source, args: argparse.Namespace) -> Any:
    """A progress bar on a terminal; nothing when piped or asked for JSON."""
    if args.json or not sys.stderr.isatty():
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    bar = Progress("predict", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), transient=True)
    bar.add_task("rows", total=rows.count())
    return bar


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("predict", parents=[common], help="batch inference over a Parquet or CSV file")
    p.add_argument("model", help="NAME (its production alias), NAME@ALIAS or NAME/VERSION")
    p.add_argument("--input", required=True, help="rows to predict: .parquet or .csv")
    p.add_argument("--output", required=True, help="where predictions go: .parquet or .csv")
    p.add_argument("--batch-size", type=int, default=4096, help="rows per forward pass")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.set_defaults(func=predict)
