"""Judging one window of a version's traffic against its reference: plain functions, no agent state.

A version's Reference is its input profile (reference.json/parquet, columns named by columns.json)
and the profile of the outputs stored in its sample.npz. judge_window tests every input column and
every output of a window's logged requests against it (core.drift) and scores the labelled ones;
column_distribution draws one column of a window beside its reference sample.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mldeck.core import monitor as mon
from mldeck.core.errors import Invalid
from mldeck.core.signature import SAMPLE_FILE, column_names, decode_tensors, tensor_columns

if TYPE_CHECKING:
    from mldeck.core import drift
    from mldeck.core.config import ModelPolicy

Rows = list[tuple[str | None, str | None, str | None]]  # (inputs, outputs, label) JSON of each request
Verdict = tuple[dict[str, Any], list[dict[str, Any]]]  # a window's summary, and its per-column results


@dataclass
class Reference:
    """What a version's windows are compared with: input and output profiles and the column layout."""

    inputs: drift.ReferenceProfile
    input_layout: dict[str, list[str]]
    outputs: drift.ReferenceProfile | None
    output_layout: dict[str, list[str]]
    metrics: dict[str, float]

    def roles(self) -> dict[str, str]:
        """Column → "input" or "output": every column drift.distribution can draw."""
        out = {c: "input" for cols in self.input_layout.values() for c in cols}
        for c in self.outputs.columns if self.outputs is not None else ():
            out.setdefault(c, "output")
        return out


def load_reference(row: dict[str, Any]) -> Reference | None:
    """The version's reference.json/parquet, columns.json and sample.npz outputs; None without a profile."""
    from mldeck.core import drift  # scipy loads only once a model is watched

    folder = Path(row["artifact"])
    if not (folder / drift.ReferenceProfile.JSON_NAME).is_file():
        return None
    profile = drift.ReferenceProfile.load(folder)
    signature = row.get("signature") or {}
    layout = {t: [c for c in cols if c in profile.columns]
              for t, cols in tensor_columns(signature.get("inputs") or [], column_names(folder)).items()}
    layout = {t: cols for t, cols in layout.items() if cols}
    if not layout:
        return None
    out_layout = tensor_columns(signature.get("outputs") or [])
    outputs = None
    if (folder / SAMPLE_FILE).is_file():
        with np.load(folder / SAMPLE_FILE, allow_pickle=False) as sample:
            frame: dict[str, np.ndarray] = {}
            for tensor, cols in out_layout.items():
                key = f"outputs/{tensor}"
                if key in sample:
                    arr = sample[key]
                    split = {cols[0]: arr} if arr.ndim == 1 else {c: arr[:, i] for i, c in enumerate(cols)}
                    frame.update(split)
        if frame:
            outputs = drift.ReferenceProfile.build(frame)
    return Reference(profile, layout, outputs, out_layout, row.get("metrics") or {})


def judge_window(ref: Reference, policy: ModelPolicy, rows: Rows) -> Verdict:
    """One window's verdict: the summary numbers and per-column results (inputs then outputs).

    Traffic the tests cannot use (a column with no usable values…) is Invalid, with the reason.
    """
    try:
        return _judge(ref, policy, rows)
    except ValueError as exc:
        raise Invalid(f"cannot test this window: {exc}") from None


def _judge(ref: Reference, policy: ModelPolicy, rows: Rows) -> Verdict:
    from mldeck.core import drift  # scipy loads only once a model is watched

    overrides = {c: drift.ColumnTest(o.method, o.threshold) for c, o in policy.columns.items()}
    current = decode_tensors([r[0] for r in rows], ref.input_layout)
    columns = [c for cols in ref.input_layout.values() for c in cols]
    n_rows = len(current[columns[0]])
    report = drift.drift_report(ref.inputs, current, columns=columns, overrides=overrides,
                                drift_share=policy.drift_share)
    results = [{**c.to_dict(), "role": "input", "n_rows": n_rows} for c in report.columns]
    output_drifted = None
    if policy.outputs and ref.outputs is not None:
        out = decode_tensors([r[1] for r in rows], ref.output_layout)
        out_cols = [c for c in ref.outputs.columns if len(out.get(c, ())) > 0]
        if out_cols:
            out_report = drift.drift_report(ref.outputs, out, columns=out_cols, overrides=overrides,
                                            drift_share=policy.drift_share)
            results += [{**c.to_dict(), "role": "output", "n_rows": n_rows} for c in out_report.columns]
            output_drifted = out_report.dataset_drifted
    accuracy = ece = None
    probs, labels = mon.labelled_outputs([(r[1], r[2]) for r in rows], next(iter(ref.output_layout), ""))
    if labels.size:
        accuracy = mon.label_accuracy(probs, labels)
        ece = drift.expected_calibration_error(probs, labels)
    baseline = ref.metrics.get(policy.metric)
    summary = {
        "n_rows": n_rows, "n_requests": len(rows), "n_columns": len(report.columns),
        "n_drifted": len(report.drifted_columns), "share_drifted": report.share_drifted,
        "drift_share": report.drift_share, "dataset_drifted": report.dataset_drifted,
        "drifted_columns": report.drifted_columns, "output_drifted": output_drifted,
        "n_labeled": int(labels.size), "accuracy": accuracy, "ece": ece,
        "baseline_metric": policy.metric if baseline is not None else None, "baseline": baseline,
    }
    return summary, results


def column_distribution(ref: Reference, column: str, rows: Rows, bins: int | None) -> dict[str, Any]:
    """One column of a window's requests beside its reference sample, as drift.distribution's fractions."""
    from mldeck.core import drift  # scipy loads only once a model is watched

    role = ref.roles()[column]
    profile, layout, at = (ref.inputs, ref.input_layout, 0) if role == "input" else (
        ref.outputs, ref.output_layout, 1)
    assert profile is not None
    tensor = {t: cols for t, cols in layout.items() if column in cols}
    current = decode_tensors([r[at] for r in rows], tensor)[column]
    shares = drift.distribution(profile.sample[column], current, kind=profile.kinds[column],
                                bins=bins or drift.DISTRIBUTION_BINS)
    return {"role": role, **shares}
