"""The demo pipeline's data step: the served model's newest labelled traffic, for the retrain.

`python -m mldeck.agent.demo.labelled --model demo --last 2000` asks this host's agent
(`serving.labelled`) for the newest requests that got a label on the feedback route (in a
pipeline a drift alert started, only those since the drift began) and saves them, one row
per example with the feature columns and `label`, as the run's artifact `labelled.parquet`.
The train step of the same pipeline finds it through MLDECK_STEP_DATA_DIR and learns from
it: that is how a retrain sees the drifted inputs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from mldeck.core import track
from mldeck.core.client import connect_unix
from mldeck.core.errors import MldeckError
from mldeck.core.paths import Layout, mldeck_home

ARTIFACT = "labelled.parquet"


async def fetch(model: str, last: int, alert_id: str | None) -> dict[str, Any]:
    """The newest labelled requests of a model; since its drift began when a drift alert started us."""
    client = await connect_unix(Layout(mldeck_home()).socket)
    try:
        since = None
        if alert_id:
            alerts = (await client.call("alerts.list", name=model, all=True))["alerts"]
            alert = next((a for a in alerts if a["alert_id"] == alert_id), None)
            since = ((alert or {}).get("details") or {}).get("since")
        got = await client.call("serving.labelled", name=model, limit=last, since=since)
        return {**got, "since": since}
    finally:
        await client.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mldeck.agent.demo.labelled", description=__doc__)
    parser.add_argument("--model", required=True, help="the served model whose traffic to take")
    parser.add_argument("--last", type=int, default=2000, help="how many of the newest labelled requests")
    parser.add_argument("--min-rows", type=int, default=1, help="fail with fewer labelled rows than this")
    args = parser.parse_args(argv)
    try:
        got = asyncio.run(fetch(args.model, args.last, os.environ.get("MLDECK_PIPELINE_ALERT")))
    except (OSError, MldeckError) as exc:
        print(f"labelled traffic of {args.model}: {exc}", file=sys.stderr)
        return 1
    table = pa.table(got["columns"])
    if table.num_rows < args.min_rows:
        print(f"{args.model} has {table.num_rows} labelled rows, fewer than --min-rows {args.min_rows}: "
              "send feedback on /v2/models/<name>/feedback first", file=sys.stderr)
        return 1
    with track.init(params={"model": args.model, "last": args.last, "since": got["since"]}) as run:
        run.log({"labelled_rows": table.num_rows, "labelled_requests": got["n_requests"]}, step=0)
        with tempfile.TemporaryDirectory(dir=run.dir, prefix=".labelled-") as tmp:
            pq.write_table(table, Path(tmp) / ARTIFACT)
            artifact = run.log_artifact(Path(tmp) / ARTIFACT)
    print(json.dumps({"rows": table.num_rows, "requests": got["n_requests"], "artifact": str(artifact)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
