"""`mldeck explain MODEL REQUEST_ID`: which input values drove a served prediction (Integrated Gradients)."""

from __future__ import annotations

import argparse
from typing import Any

from mldeck.tui.cli.connect import call_agent
from mldeck.tui.cli.output import print_table, show


def _percentile(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}%"


def print_explanation(res: Any) -> None:
    what = f"class {res['target']} of {res['output']}" if res["target"] is not None else res["output"]
    print(f"{res['name']} v{res['version']} request {res['request_id']} row {res['row']}: {what} = "
          f"{res['score']:.4g} (at the baseline {res['baseline_score']:.4g})")
    print(f"Integrated Gradients, {res['steps']} steps from the {res['baseline']}: the attributions add up "
          f"to the difference, within {res['delta']:.2g}")
    print_table(["feature", "value", "attribution", "reference percentile", "baseline"],
                [[f["feature"], f["value"], f["attribution"], _percentile(f["percentile"]), f["baseline"]]
                 for f in res["features"]])
    if res["n_features"] > len(res["features"]):
        print(f"(the top {len(res['features'])} of {res['n_features']} values; --top N shows more)")


async def explain(args: argparse.Namespace) -> int:
    result = await call_agent(args, "explain.request", name=args.name, request_id=args.request_id,
                              row=args.row, top=args.top)
    return show(args, result, print_explanation)


def _count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}")
    return int(text)


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("explain", parents=[common],
                       help="which input values drove one served prediction (Integrated Gradients)")
    p.add_argument("name", help="model name")
    p.add_argument("request_id", help="the request's id, as logged")
    p.add_argument("--row", type=_count, default=0, help="which row of a batched request (default 0)")
    p.add_argument("--top", type=_count, default=10, help="how many values to show, largest first")
    p.set_defaults(func=explain)
