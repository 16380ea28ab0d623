"""`mldeck drift report|history|check NAME`: each column's test against the reference, window by window."""

from __future__ import annotations

import argparse
from typing import Any

from mldeck.tui.cli.connect import call_agent
from mldeck.tui.cli.output import print_table, show, when


def _pct(value: Any) -> str:
    return "-" if value is None else f"{value:.0%}"


def _measure(col: dict[str, Any]) -> tuple[str, Any]:
    """p-value tests show their p; distances show the statistic itself."""
    return ("p", col["p_value"]) if col.get("p_value") is not None else ("distance", col["statistic"])


def print_report(rep: dict[str, Any]) -> None:
    verdict = "DRIFTED" if rep.get("dataset_drifted") else "no drift"
    print(f"{rep['name']} v{rep['version']}  window {when(rep['window_start'])} → {when(rep['window_end'])}"
          f"  ({rep.get('n_rows')} rows, {rep.get('source')})")
    print(f"{verdict}: {rep.get('n_drifted')} of {rep.get('n_columns')} input columns drifted "
          f"({_pct(rep.get('share_drifted'))}; the model drifts at {_pct(rep.get('drift_share'))})")
    if rep.get("accuracy") is not None:
        base = f" (validation {rep['baseline_metric']} {rep['baseline']:.4g})" if rep.get("baseline") else ""
        print(f"accuracy {rep['accuracy']:.4g} on {rep['n_labeled']} labels{base}, ECE {rep['ece']:.4g}")
    rows = []
    embeddings = [c for c in rep["columns"] if c.get("role") == "embedding"]
    for col in rep["columns"]:
        if col.get("role") == "embedding":
            continue
        kind, value = _measure(col)
        rows.append([col["column"], col.get("role"), _why(col["kind"], col.get("kind_reason")), col["method"],
                     col["statistic"], value if kind == "p" else None, value if kind == "distance" else None,
                     col["threshold"], "DRIFT" if col["drifted"] else "-", col.get("method_reason") or "-"])
    headers = ["column", "role", "type", "method", "statistic", "p-value", "distance", "threshold", "drifted",
               "why this test"]
    print_table(headers, rows)
    for col in embeddings:
        said = "drift" if col["drifted"] else "no drift"
        print(f"{col['column']} (domain classifier) AUC {col['statistic']:.2f} → {said}  "
              f"(p {col['p_value']:.3g}: {col['method_reason']})")


def _why(kind: str, reason: str | None) -> str:
    """The column's type and why it has it: "categorical: integer with 4 distinct values (≤ 10)"."""
    return f"{kind}: {reason}" if reason else kind


async def report(args: argparse.Namespace) -> int:
    params: dict[str, Any] = {"name": args.name}
    if args.window:
        params["window"] = args.window
    if args.version is not None:
        params["version"] = args.version
    return show(args, await call_agent(args, "drift.report", **params), print_report)


def _print_history(name: str, hist: dict[str, Any]) -> None:
    windows = hist["windows"]
    if not windows:
        print(f"no judged windows of {name} yet (window {hist['window']})")
        return
    print_table(
        ["version", "window start", "window end", "rows", "drifted", "share", "columns", "accuracy", "ece"],
        [[w["version"], when(w["window_start"]), when(w["window_end"]), w["n_rows"],
          "-" if not w["n_columns"] else ("DRIFT" if w["dataset_drifted"] else "no"),
          _pct(w.get("share_drifted")), ",".join(w.get("drifted_columns") or [])[:40] or "-",
          w.get("accuracy"), w.get("ece")] for w in windows],
    )


async def history(args: argparse.Namespace) -> int:
    hist = await call_agent(args, "drift.history", name=args.name, limit=args.limit)
    return show(args, hist, lambda h: _print_history(args.name, h))


def _print_judged(done: dict[str, Any]) -> None:
    print(f"{len(done['windows'])} window(s) judged")
    for w in done["windows"]:
        print(f"  {w['model']} v{w['version']} {when(w['window_start'])} → {when(w['window_end'])}: "
              f"{w['n_requests']} requests, {'DRIFT' if w.get('dataset_drifted') else 'no drift'}")


async def check(args: argparse.Namespace) -> int:
    return show(args, await call_agent(args, "drift.check", name=args.name), _print_judged)


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number from 1 up, got {text!r}")
    return int(text)


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    drift = sub.add_parser("drift", help="drift of served models against their reference data")
    cmds = drift.add_subparsers(dest="drift_command", metavar="COMMAND", required=True)
    p = cmds.add_parser("report", parents=[common], help="per column: method, statistic, p, drifted")
    p.add_argument("name", help="model name")
    p.add_argument("--window", help="test the latest 5m, 30s, 200rows now (default: last judged window)")
    p.add_argument("--version", type=_positive, help="a version other than production")
    p.set_defaults(func=report)
    p = cmds.add_parser("history", parents=[common], help="every judged window: drifted share, accuracy, ECE")
    p.add_argument("name", help="model name")
    p.add_argument("--limit", type=_positive, default=200, help="newest windows to show")
    p.set_defaults(func=history)
    p = cmds.add_parser("check", parents=[common], help="judge the windows that have closed, now")
    p.add_argument("name", nargs="?", help="one model (default: all served)")
    p.set_defaults(func=check)


