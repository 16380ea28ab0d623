"""`mldeck predict NAME[@ALIAS|/VERSION] --input F --output F`: batch inference with the served model.

The model folder comes from the agent's registry (`models.get`); the model runs
here, in this process, through the same loader the server uses. Rows stream
from the input file through DuckDB in batches and stream back out, so a file far
larger than memory works; the output holds the input columns plus one column per
output value (`name`, or `name_0`, `name_1`, ... for vector outputs).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mldeck.core.errors import Invalid, NotFound, UsageError
from mldeck.tui.cli.connect import call_agent, remote_host
from mldeck.tui.cli.output import show

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

READERS = {".parquet": "read_parquet", ".csv": "read_csv_auto"}
WRITERS = {".parquet": "(FORMAT parquet)", ".csv": "(FORMAT csv, HEADER true)"}


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


def _kind(path: Path, table: dict[str, str], what: str) -> str:
    if path.suffix.lower() not in table:
        raise Invalid(f"{what} {path} must be .parquet or .csv")
    return table[path.suffix.lower()]


class Feeder:
    """How file columns become model inputs: by input name, or all feature columns as one matrix."""

    def __init__(self, signature: Any, schema: pa.Schema, folder: Path) -> None:
        import pyarrow as pa

        from mldeck.core.signature import column_names, numpy_dtype

        self.specs = signature.inputs
        self.dtypes = {s.name: numpy_dtype(s.datatype) for s in self.specs}
        names = set(schema.names)
        self.by_name = all(s.name in names for s in self.specs)
        self.features: list[str] = []
        if self.by_name:
            return
        if len(self.specs) != 1 or len(self.specs[0].shape) != 2:
            raise Invalid(
                f"the model takes inputs {', '.join(s.describe() for s in self.specs)}: give the file a "
                "column named after each input"
            )
        width = self.specs[0].shape[1]
        listed = column_names(folder).get(self.specs[0].name)
        if listed:
            self.features = listed
        else:
            numeric = (pa.types.is_integer, pa.types.is_floating)
            self.features = [f.name for f in schema if any(test(f.type) for test in numeric)]
        missing = [c for c in self.features if c not in names]
        if missing:
            raise Invalid(f"the input file lacks the model's feature columns {missing}")
        if width != -1 and len(self.features) != width:
            raise Invalid(
                f"the model's input {self.specs[0].name!r} takes {width} features; the file has "
                f"{len(self.features)} numeric columns ({', '.join(self.features)}): keep only the features"
            )

    def inputs(self, batch: pa.RecordBatch) -> dict[str, np.ndarray]:
        import numpy as np
        import pyarrow as pa

        if self.by_name:
            out = {}
            for spec in self.specs:
                column = batch.column(spec.name)
                if pa.types.is_list(column.type) or pa.types.is_fixed_size_list(column.type):
                    values = np.stack([np.asarray(v) for v in column.to_pylist()])
                else:
                    values = column.to_numpy(zero_copy_only=False)
                out[spec.name] = values.astype(self.dtypes[spec.name], copy=False)
            return out
        spec = self.specs[0]
        matrix = np.column_stack([batch.column(c).to_numpy(zero_copy_only=False) for c in self.features])
        return {spec.name: matrix.astype(self.dtypes[spec.name], copy=False)}


def _with_outputs(batch: pa.RecordBatch, outputs: dict[str, np.ndarray]) -> pa.RecordBatch:
    import pyarrow as pa

    arrays, names = list(batch.columns), list(batch.schema.names)
    for name, values in outputs.items():
        flat = values.reshape(len(values), -1)
        if values.ndim == 1 or flat.shape[1] == 1:
            names.append(name)
            arrays.append(pa.array(flat[:, 0]))
            continue
        for i in range(flat.shape[1]):
            names.append(f"{name}_{i}")
            arrays.append(pa.array(flat[:, i]))
    return pa.RecordBatch.from_arrays(arrays, names=names)


async def predict(args: argparse.Namespace) -> int:
    import duckdb
    import pyarrow as pa

    from mldeck.core.modelfile import load_model
    from mldeck.core.signature import InvalidInput

    if args.batch_size < 1:
        raise UsageError("--batch-size must be at least 1")
    source, target = Path(args.input), Path(args.output)
    reader = _kind(source, READERS, "--input")
    writer = _kind(target, WRITERS, "--output")
    if not source.is_file():
        raise NotFound(f"no input file {source}")
    if remote_host(args)[1] is not None:
        raise UsageError("predict runs the model on this machine: run it on the host that has the model")
    version = await call_agent(args, "models.get", **parse_ref(args.model))
    folder = Path(version["artifact"])
    model = load_model(folder, device=args.device)
    con = duckdb.connect()
    total = con.sql(f"SELECT count(*) FROM {reader}({_quote(source)})").fetchall()[0][0]
    stream = con.sql(f"SELECT * FROM {reader}({_quote(source)})").to_arrow_reader(args.batch_size)
    feeder = Feeder(model.signature, stream.schema, folder)
    started = time.perf_counter()
    done = 0
    failures: list[str] = []
    progress = _progress(total, args)

    def batches() -> Iterator[pa.RecordBatch]:
        nonlocal done
        for batch in stream:
            if batch.num_rows == 0:
                continue
            try:
                outputs = model.predict(feeder.inputs(batch))
            except InvalidInput as exc:
                failures.append(f"rows {done + 1}-{done + batch.num_rows}: {exc}")
                raise Invalid(failures[-1]) from None
            done += batch.num_rows
            if progress:
                progress.update(progress.task_ids[0], completed=done)
            yield _with_outputs(batch, outputs)

    first = batches()
    try:
        head = next(first)
    except StopIteration:
        raise Invalid(f"{source} has no rows") from None

    def chain() -> Iterator[pa.RecordBatch]:
        yield head
        yield from first

    out = duckdb.connect()
    out.register("predictions", pa.RecordBatchReader.from_batches(head.schema, chain()))
    try:
        if progress:
            progress.start()
        out.execute(f"COPY (SELECT * FROM predictions) TO {_quote(target)} {writer}")
    except duckdb.Error as exc:
        target.unlink(missing_ok=True)  # nothing half-written
        raise Invalid(failures[-1] if failures else f"writing {target} failed: {exc}") from None
    finally:
        if progress:
            progress.stop()
    elapsed = time.perf_counter() - started
    result = {
        "model": version["name"], "version": version["version"], "rows": done, "output": str(target),
        "seconds": elapsed, "rows_per_s": done / elapsed if elapsed else math.inf,
    }
    return show(args, result, lambda r: print(
        f"{done} rows → {target} with {version['name']} v{version['version']} in {elapsed:.2f}s "
        f"({r['rows_per_s']:,.0f} rows/s)"
    ))


def _progress(total: int, args: argparse.Namespace) -> Any:
    """A progress bar on a terminal; nothing when piped or asked for JSON."""
    if args.json or not sys.stderr.isatty():
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    bar = Progress("predict", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), transient=True)
    bar.add_task("rows", total=total)
    return bar


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("predict", parents=[common], help="batch inference over a Parquet or CSV file")
    p.add_argument("model", help="NAME (its production alias), NAME@ALIAS or NAME/VERSION")
    p.add_argument("--input", required=True, help="rows to predict: .parquet or .csv")
    p.add_argument("--output", required=True, help="where predictions go: .parquet or .csv")
    p.add_argument("--batch-size", type=int, default=4096, help="rows per forward pass")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.set_defaults(func=predict)
