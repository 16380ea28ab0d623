"""Judging one window of a version's traffic against its reference: plain functions, no agent state.

A version's Reference is its input profile (reference.json/parquet, columns named by columns.json;
N-D inputs as their summary features, see core.summaries) and the profile of the outputs stored in
its sample.npz. judge_window tests every input column and every output of a window's logged
requests against it (core.drift; an output named `embedding`, one vector per row, as a whole with the
domain classifier, against the vectors the model gave for its sample) and scores the labelled ones
(accuracy and ECE of the first output, whatever the inputs); column_distribution draws one column of a
window beside its reference sample.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import numpy as np

from mldeck.core import monitor as mon
from mldeck.core.errors import Invalid
from mldeck.core.signature import SAMPLE_FILE, column_names, decode_tensors, tensor_columns
from mldeck.core.summaries import TensorSummary, summarize

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from mldeck.core import drift
    from mldeck.core.config import ModelPolicy

Rows = list[tuple[str | None, str | None, str | None]]  # (inputs, outputs, label) JSON of each request
Verdict = tuple[dict[str, Any], list[dict[str, Any]]]  # a window's summary, and its per-column results
EMBEDDING = "embedding"  # the output name that marks a model's embedding (export_model's output_names)


@dataclass
class Reference:
    """What a version's windows are compared with: input and output profiles and the column layout."""

    inputs: drift.ReferenceProfile
    input_layout: dict[str, list[str]]
    outputs: drift.ReferenceProfile | None
    output_layout: dict[str, list[str]]
    metrics: dict[str, float]
    embeddings: dict[str, np.ndarray] = field(default_factory=dict)  # output → its sample's vectors

    def roles(self) -> dict[str, str]:
        """Column → "input" or "output": every column drift.distribution can draw."""
        out = {c: "input" for cols in self.input_layout.values() for c in cols}
        for c in self.outputs.columns if self.outputs is not None else ():
            out.setdefault(c, "output")
        return out

    def decode_inputs(
        self, texts: Sequence[str | None], tensors: Mapping[str, list[str]]
    ) -> dict[str, np.ndarray]:
        """The input columns of logged requests: plain tensors split into columns, N-D ones summed up."""
        summed = {t: cols for t, cols in tensors.items() if t in self.inputs.tensors}
        plain = {t: cols for t, cols in tensors.items() if t not in summed}
        return {**decode_tensors(texts, plain), **decode_summaries(texts, summed, self.inputs.tensors)}


def decode_summaries(texts: Sequence[str | None], layout: Mapping[str, list[str]],
                     rules: Mapping[str, TensorSummary]) -> dict[str, np.ndarray]:
    """Logged N-D tensors of many requests → their summary features, by the reference's rule.

    A request whose tensor does not fit the reference's (another rank, ragged rows) is left out, as
    decode_tensors leaves out rows that do not fit."""
    out: dict[str, list[np.ndarray]] = {c: [] for cols in layout.values() for c in cols}
    for text in texts:
        obj = msgspec.json.decode(text) if text else None
        if not isinstance(obj, dict):
            continue
        for tensor, cols in layout.items():
            summary = rules[tensor]
            try:
                batch = np.asarray(obj.get(tensor), dtype=np.float64)
                if summary.shape and batch.ndim != len(summary.shape) + 1:
                    continue
                features = summarize(tensor, summary.rule, batch)
            except (TypeError, ValueError):
                continue
            if list(features) == cols:
                for c in cols:
                    out[c].append(features[c])
    return {c: np.concatenate(parts) if parts else np.empty(0) for c, parts in out.items()}


def load_reference(row: dict[str, Any]) -> Reference | None:
    """The version's reference.json/parquet, columns.json and sample.npz outputs; None without a profile."""
    from mldeck.core import drift  # scipy loads only once a model is watched

    folder = Path(row["artifact"])
    if not (folder / drift.ReferenceProfile.JSON_NAME).is_file():
        return None
    signature = row.get("signature") or {}
    inputs = signature.get("inputs") or []
    profile = regroup_inputs(drift.ReferenceProfile.load(folder), inputs)
    plain = tensor_columns(inputs, column_names(folder))
    layout = {}
    for spec in inputs:
        t = spec["name"]
        summed = profile.tensors.get(t)
        cols = summed.columns if summed is not None else plain.get(t, [])
        layout[t] = [c for c in cols if c in profile.columns]
    layout = {t: cols for t, cols in layout.items() if cols}
    if not layout:
        return None
    out_specs = signature.get("outputs") or []
    embedded = [s["name"] for s in out_specs if s["name"] == EMBEDDING and len(s.get("shape") or []) == 2]
    out_layout = tensor_columns([s for s in out_specs if s["name"] not in embedded])
    outputs = None
    embeddings: dict[str, np.ndarray] = {}
    if (folder / SAMPLE_FILE).is_file():
        with np.load(folder / SAMPLE_FILE, allow_pickle=False) as sample:
            embeddings = {e: sample[f"outputs/{e}"] for e in embedded if f"outputs/{e}" in sample}
            frame: dict[str, np.ndarray] = {}
            for tensor, cols in out_layout.items():
                key = f"outputs/{tensor}"
                if key in sample:
                    arr = sample[key]
                    split = {cols[0]: arr} if arr.ndim == 1 else {c: arr[:, i] for i, c in enumerate(cols)}
                    frame.update(split)
        if frame:
            outputs = drift.ReferenceProfile.build(frame)
    return Reference(profile, layout, outputs, out_layout, row.get("metrics") or {}, embeddings)


def regroup_inputs(
    profile: drift.ReferenceProfile, inputs: Sequence[Mapping[str, Any]]
) -> drift.ReferenceProfile:
    """The profile with each input of more than one feature dimension, stored flattened (`pixels[0]` …,
    as the SDK writes a reference), put back into its shape and profiled as its summary features."""
    from mldeck.core import drift

    frame: dict[str, np.ndarray] = {}
    flattened: set[str] = set()
    for spec in inputs:
        name, shape = spec["name"], list(spec.get("shape") or [])[1:]
        if len(shape) < 2 or min(shape) < 1 or name in profile.tensors:
            continue
        names = tensor_columns([{"name": name, "shape": [-1, math.prod(shape)]}])[name]
        if all(n in profile.sample for n in names):
            frame[name] = np.stack([profile.sample[n] for n in names], axis=1).reshape(-1, *shape)
            flattened.update(names)
    if not frame:
        return profile
    summed = drift.ReferenceProfile.build(frame)
    keep = [n for n in profile.columns if n not in flattened]
    return drift.ReferenceProfile(
        {**{n: profile.columns[n] for n in keep}, **summed.columns}, profile.n_rows,
        {**{n: profile.sample[n] for n in keep}, **summed.sample}, {**profile.tensors, **summed.tensors},
    )


def judge_window(ref: Reference, policy: ModelPolicy, rows: Rows,
                 kinds: Mapping[str, drift.Kind] | None = None) -> Verdict:
    """One window's verdict: the summary numbers and per-column results (inputs then outputs).

    kinds overrides columns' types (config `[monitor] column_types`). Traffic the tests cannot use
    (a column with no usable values…) is Invalid, with the reason.
    """
    try:
        return _judge(ref, policy, rows, kinds or {})
    except ValueError as exc:
        raise Invalid(f"cannot test this window: {exc}") from None


def _judge(ref: Reference, policy: ModelPolicy, rows: Rows, kinds: Mapping[str, drift.Kind]) -> Verdict:
    from mldeck.core import drift  # scipy loads only once a model is watched

    overrides = {c: drift.ColumnTest(o.method, o.threshold) for c, o in policy.columns.items()}
    current = ref.decode_inputs([r[0] for r in rows], ref.input_layout)
    columns = [c for cols in ref.input_layout.values() for c in cols]
    n_rows = len(current[columns[0]])
    report = drift.drift_report(ref.inputs, current, columns=columns, overrides=overrides,
                                kinds={c: k for c, k in kinds.items() if c in ref.inputs.columns},
                                drift_share=policy.drift_share)
    results = [{**c.to_dict(), "role": "input", "n_rows": n_rows} for c in report.columns]
    output_drifted = None
    if policy.outputs and ref.outputs is not None:
        out = decode_tensors([r[1] for r in rows], ref.output_layout)
        out_cols = [c for c in ref.outputs.columns if len(out.get(c, ())) > 0]
        if out_cols:
            out_report = drift.drift_report(ref.outputs, out, columns=out_cols, overrides=overrides,
                                            kinds={c: k for c, k in kinds.items() if c in out_cols},
                                            drift_share=policy.drift_share)
            results += [{**c.to_dict(), "role": "output", "n_rows": n_rows} for c in out_report.columns]
            output_drifted = out_report.dataset_drifted
    for name, vectors in ref.embeddings.items() if policy.outputs else ():
        current_vectors = decode_vectors([r[1] for r in rows], name, vectors.shape[1])
        if len(current_vectors) >= 2:
            found = drift.embedding_drift(name, vectors, current_vectors)
            results.append({**found.to_dict(), "role": "embedding", "n_rows": len(current_vectors)})
            output_drifted = bool(output_drifted) or found.drifted
    accuracy = ece = None
    probs, labels = mon.labelled_outputs([(r[1], r[2]) for r in rows], next(iter(ref.output_layout), ""))
    if labels.size:
        probs = mon.class_probabilities(probs)
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


def decode_vectors(texts: Sequence[str | None], name: str, width: int) -> np.ndarray:
    """One logged output of many requests as rows of `width` values (requests that do not fit left out)."""
    parts = []
    for text in texts:
        obj = msgspec.json.decode(text) if text else None
        if isinstance(obj, dict) and obj.get(name) is not None:
            arr = np.asarray(obj[name], dtype=np.float64)
            if arr.ndim == 2 and arr.shape[1] == width:
                parts.append(arr)
    return np.concatenate(parts) if parts else np.empty((0, width))


def column_distribution(ref: Reference, column: str, rows: Rows, bins: int | None,
                        kinds: Mapping[str, drift.Kind] | None = None) -> dict[str, Any]:
    """One column of a window's requests beside its reference sample, as drift.distribution's fractions."""
    from mldeck.core import drift  # scipy loads only once a model is watched

    role = ref.roles()[column]
    if role == "input":
        tensor = {t: cols for t, cols in ref.input_layout.items() if column in cols}
        profile: drift.ReferenceProfile | None = ref.inputs
        current = ref.decode_inputs([r[0] for r in rows], tensor)[column]
    else:
        tensor = {t: cols for t, cols in ref.output_layout.items() if column in cols}
        profile = ref.outputs
        current = decode_tensors([r[1] for r in rows], tensor)[column]
    assert profile is not None
    kind = (kinds or {}).get(column) or profile.kinds[column]
    shares = drift.distribution(profile.sample[column], current, kind=kind,
                                bins=bins or drift.DISTRIBUTION_BINS)
    return {"role": role, **shares}
