"""The drift simulator: KServe v2 requests drawn from a model's reference data, then shifted.

    python -m mldeck.agent.demo.traffic --url http://127.0.0.1:8700 --model demo --rps 50 \\
        --duration 30 --shift-at 10 --shift-columns mean_radius,mean_texture --shift-std 1.5

Rows come from the demo data set's training split (with its labels), or from a parquet file
(`--reference`, e.g. a registered version's reference.parquet; labels only with
`--label-column`). They are dealt without replacement, one shuffled pass after another, so
unshifted traffic has the reference's distribution and a drift test sees none. From
`--shift-at` seconds on, each column in `--shift-columns` moves by `--shift-std` of its
standard deviation and is scaled around its mean by `--shift-scale`; a text column gets a
category the reference never had. A share of requests (`--feedback-share`) is followed by its
true label on the feedback route, with the home's serving token. Bounded in rate, time and
count; loopback URLs only. Prints one JSON line of what was sent.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import numpy as np

from mldeck.core.paths import mldeck_home
from mldeck.core.servingtoken import bearer, serving_token

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
MAX_RPS = 2000.0
MAX_DURATION_S = 3600.0
CONCURRENCY = 32
NEW_CATEGORY = "__unseen__"


class TrafficError(Exception):
    """A run that cannot start; the message says what to change."""


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m mldeck.agent.demo.traffic", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default="http://127.0.0.1:8700", help="the model server (loopback only)")
    p.add_argument("--model", required=True, help="served model name")
    p.add_argument("--rps", type=float, default=50.0, help="requests per second")
    p.add_argument("--duration", type=float, default=30.0, help="seconds to send for")
    p.add_argument("--max-requests", type=int, default=None, help="stop after this many requests")
    p.add_argument("--shift-at", type=float, default=None, help="seconds from the start when drift begins")
    p.add_argument("--shift-columns", default="", help="comma-separated columns to shift")
    p.add_argument("--shift-std", type=float, default=1.0, help="mean shift, in the column's std")
    p.add_argument("--shift-scale", type=float, default=1.0, help="scale around the mean after the shift")
    p.add_argument("--feedback-share", type=float, default=0.5, help="share of requests given a label")
    p.add_argument("--reference", default=None, help="parquet of rows to draw from (default: demo data)")
    p.add_argument("--label-column", default=None, help="label column of --reference")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--id-prefix", default="sim", help="request ids are PREFIX-N")
    p.add_argument("--home", help="the agent's home, for the serving token (default $MLDECK_HOME)")
    return p.parse_args(argv)


def check_args(args: argparse.Namespace) -> None:
    host = urlsplit(args.url).hostname
    if urlsplit(args.url).scheme != "http" or host not in LOOPBACK:
        hosts = ", ".join(sorted(LOOPBACK))
        raise TrafficError(f"--url must be http:// on this machine ({hosts}), not {args.url}")
    if not 0 < args.rps <= MAX_RPS:
        raise TrafficError(f"--rps must be in (0, {MAX_RPS:g}]")
    if not 0 < args.duration <= MAX_DURATION_S:
        raise TrafficError(f"--duration must be in (0, {MAX_DURATION_S:g}] seconds")
    if not 0 <= args.feedback_share <= 1:
        raise TrafficError("--feedback-share is a share between 0 and 1")
    if args.max_requests is not None and args.max_requests < 1:
        raise TrafficError("--max-requests must be 1 or more")


def load_rows(
    reference: str | None, label_column: str | None
) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """Column → values, and the labels when known."""
    if reference is None:
        from mldeck.agent.demo import data

        split = data.load_split()
        return {c: split.x_train[:, i] for i, c in enumerate(split.columns)}, split.y_train
    import pyarrow.parquet as pq

    table = pq.read_table(reference)
    frame = {n: table.column(n).to_numpy(zero_copy_only=False) for n in table.column_names}
    if label_column and label_column not in frame:
        raise TrafficError(f"{reference} has no column {label_column!r}")
    return frame, frame.pop(label_column) if label_column else None


def shift_rows(frame: dict[str, np.ndarray], columns: Sequence[str], std: float, scale: float,
               stats: dict[str, tuple[float, float]]) -> dict[str, np.ndarray]:
    """Move numeric columns by std·σ and scale them around their mean; give text columns a new category."""
    out = dict(frame)
    for name in columns:
        values = frame[name]
        if values.dtype.kind in "iuf":
            mean, sd = stats[name]
            out[name] = ((values - mean) * scale + mean + std * sd).astype(values.dtype)
        else:
            out[name] = np.full(values.shape, NEW_CATEGORY, dtype=object)
    return out


class Dealer:
    """Rows without replacement: a shuffled pass through the data, then another."""

    def __init__(self, n: int, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.n = n
        self.order = self.rng.permutation(n)
        self.pos = 0

    def next(self) -> int:
        if self.pos == self.n:
            self.order, self.pos = self.rng.permutation(self.n), 0
        self.pos += 1
        return int(self.order[self.pos - 1])


async def model_inputs(session: aiohttp.ClientSession, url: str, model: str) -> list[dict[str, Any]]:
    async with session.get(f"{url}/v2/models/{model}") as resp:
        body = await resp.json(content_type=None)
        if resp.status != 200:
            raise TrafficError(f"{url} does not serve {model!r}: {body.get('error', resp.status)}")
    return body["inputs"]


def request_body(inputs: list[dict[str, Any]], row: dict[str, Any], columns: dict[str, list[str]],
                 request_id: str) -> dict[str, Any]:
    """One row as a KServe v2 request: a 2-D tensor takes its columns in order, a 1-D one its own column."""
    tensors = []
    for spec in inputs:
        names = columns[spec["name"]]
        values = [row[c].item() if hasattr(row[c], "item") else row[c] for c in names]
        shape = [1, len(names)] if len(spec["shape"]) == 2 else [1]
        tensors.append({"name": spec["name"], "datatype": spec["datatype"], "shape": shape, "data": values})
    return {"id": request_id, "inputs": tensors}


def layout(inputs: list[dict[str, Any]], frame: dict[str, np.ndarray]) -> dict[str, list[str]]:
    """Which data columns fill which input tensor (all of them, in order, for the one 2-D input)."""
    out: dict[str, list[str]] = {}
    for spec in inputs:
        if len(spec["shape"]) == 2:
            width = spec["shape"][1]
            if width != -1 and width != len(frame):
                raise TrafficError(f"input {spec['name']} takes {width} columns, the data has {len(frame)}")
            out[spec["name"]] = list(frame)
        elif spec["name"] in frame:
            out[spec["name"]] = [spec["name"]]
        else:
            raise TrafficError(f"the data has no column for input {spec['name']!r}")
    return out


async def run(args: argparse.Namespace) -> dict[str, Any]:
    check_args(args)
    frame, labels = load_rows(args.reference, args.label_column)
    shift_cols = [c for c in args.shift_columns.split(",") if c]
    unknown = [c for c in shift_cols if c not in frame]
    if unknown:
        raise TrafficError(f"no columns {unknown} in the data; it has {', '.join(list(frame)[:8])}, ...")
    stats = {c: (float(np.mean(v)), float(np.std(v))) for c, v in frame.items() if v.dtype.kind in "iuf"}
    shifted = shift_rows(frame, shift_cols, args.shift_std, args.shift_scale, stats) if shift_cols else frame
    rng = np.random.default_rng(args.seed + 1)
    dealer = Dealer(len(next(iter(frame.values()))), args.seed)
    url = args.url.rstrip("/")
    counts = {"sent": 0, "ok": 0, "errors": 0, "feedback": 0, "shifted": 0}
    limit = args.max_requests or int(args.rps * args.duration) + 1
    gate = asyncio.Semaphore(CONCURRENCY)
    auth = bearer(serving_token(mldeck_home(args.home)))
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30), headers=auth) as session:
        inputs = await model_inputs(session, url, args.model)
        columns = layout(inputs, frame)

        async def one(i: int, is_shifted: bool) -> None:
            async with gate:
                idx = dealer.next()
                source = shifted if is_shifted else frame
                rid = f"{args.id_prefix}-{i}"
                body = request_body(inputs, {c: v[idx] for c, v in source.items()}, columns, rid)
                try:
                    async with session.post(f"{url}/v2/models/{args.model}/infer", json=body) as resp:
                        await resp.read()
                        ok = resp.status == 200
                    counts["ok" if ok else "errors"] += 1
                    if ok and labels is not None and rng.random() < args.feedback_share:
                        fb = {"request_id": rid, "label": labels[idx].item()}
                        async with session.post(f"{url}/v2/models/{args.model}/feedback", json=fb) as resp:
                            await resp.read()
                            counts["feedback" if resp.status == 200 else "errors"] += 1
                except (aiohttp.ClientError, TimeoutError):
                    counts["errors"] += 1

        start = time.monotonic()
        tasks = []
        for i in range(limit):
            due = start + i / args.rps
            now = time.monotonic()
            if due - start >= args.duration:
                break
            if due > now:
                await asyncio.sleep(due - now)
            is_shifted = bool(shift_cols) and args.shift_at is not None and due - start >= args.shift_at
            counts["sent"] += 1
            counts["shifted"] += is_shifted
            tasks.append(asyncio.create_task(one(i, is_shifted)))
        await asyncio.gather(*tasks)
    return {**counts, "model": args.model, "seconds": round(time.monotonic() - start, 3),
            "shift_columns": shift_cols, "shift_at": args.shift_at, "shift_std": args.shift_std}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        result = asyncio.run(run(args))
    except TrafficError as exc:
        print(f"traffic: {exc}", file=sys.stderr)
        return 2
    except (aiohttp.ClientError, OSError) as exc:
        print(f"traffic: cannot reach {args.url}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result), flush=True)
    return 0 if result["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
