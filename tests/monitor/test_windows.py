"""Windows, the consecutive-window rule, logged tensors → columns, judging a window, accuracy and ECE,
pipeline files."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import numpy as np
import pytest

from mldeck.core import drift
from mldeck.core import monitor as mon
from mldeck.core.config import ConfigError, ModelPolicy, load_config
from mldeck.core.errors import Invalid
from mldeck.core.judge import Reference, judge_window
from mldeck.core.pipeline import (
    PipelineError,
    check_gate,
    launch_target,
    parse_gate,
    parse_pipeline,
    read_pipeline,
)
from mldeck.core.signature import decode_tensors, tensor_columns
from mldeck.core.store import Store

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("text", "kind", "size"), [
    ("30s", "time", 30), ("5m", "time", 300), ("1h", "time", 3600), ("2.5 min", "time", 150),
    ("500rows", "rows", 500), ("1 row", "rows", 1), ("200 requests", "rows", 200),
])
def test_window_specs(text: str, kind: str, size: float) -> None:
    spec = mon.parse_window(text)
    assert (spec.kind, spec.size) == (kind, size)


@pytest.mark.parametrize("text", ["", "5", "5 parsecs", "0.5s", "0rows", "1.5rows", "-3m", "5m;drop"])
def test_bad_window_specs_say_the_forms(text: str) -> None:
    with pytest.raises(ValueError, match=r"window|row|second"):
        mon.parse_window(text)


def test_time_windows_are_aligned_tumbling_and_wait_for_grace() -> None:
    # first request at 125 s, 60 s windows: [120, 180) is the first; it closes at 180 + grace
    assert mon.time_windows(125.0, None, 181.0, 60, 2) == []
    assert mon.time_windows(125.0, None, 182.0, 60, 2) == [(120.0, 180.0)]
    assert mon.time_windows(125.0, None, 305.0, 60, 2) == [(120.0, 180.0), (180.0, 240.0), (240.0, 300.0)]
    # after a judged window, the next starts exactly at its end: no gap, no overlap
    assert mon.time_windows(125.0, 240.0, 305.0, 60, 2) == [(240.0, 300.0)]
    assert mon.time_windows(125.0, 300.0, 305.0, 60, 2) == []


def test_row_windows_count_rows_tumble_and_keep_ties_together() -> None:
    ts = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]
    ones = [1] * 7
    assert mon.row_windows(ts, ones, 3) == [(1.0, 3.0, 3), (4.0, 6.0, 3)]  # 7.0 waits for a full window
    assert mon.row_windows(ts, ones, 8) == []
    tied = [1.0, 2.0, 2.0, 2.0, 3.0, 4.0]
    assert mon.row_windows(tied, [1] * 6, 2) == [(1.0, 2.0, 4), (3.0, 4.0, 2)]  # a timestamp is never split
    # requests of 8 rows: a 5-row window closes at the first request, 16 rows at the second
    eights = [8] * 7
    assert mon.row_windows(ts, eights, 5) == [(t, t, 8) for t in ts]
    assert mon.row_windows(ts, eights, 16) == [(1.0, 2.0, 16), (3.0, 4.0, 16), (5.0, 6.0, 16)]
    assert mon.row_windows(ts, [3, 3, 3, 1, 5, 2, 2], 6) == [(1.0, 2.0, 6), (3.0, 5.0, 9)]  # 4 rows wait


def test_row_windows_from_the_store_count_rows_and_the_latest_n_rows_are_exactly_n(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.duckdb")
    for i in range(6):  # six requests of 8 rows (x = 8i … 8i+7), each labelled row by row
        x = np.arange(8 * i, 8 * i + 8, dtype=float)[:, None]
        store.cur().execute(
            "INSERT INTO predictions (ts, model, version, variant, request_id, inputs, outputs) "
            "VALUES (?, 'm', 1, 'production', ?, ?, ?)",
            [100.0 + i, f"r{i}", json.dumps({"x": x.tolist()}), json.dumps({"p": (x / 100).tolist()})])
        store.cur().execute("INSERT INTO feedback (request_id, label, ts, model) VALUES (?, ?, ?, 'm')",
                            [f"r{i}", json.dumps([int(v) % 2 for v in x[:, 0]]), 200.0])
    ts, rows = mon.prediction_rows_after(store, "m", 1, None, 100)
    assert rows == [8] * 6 and mon.row_windows(ts, rows, 20) == [(100.0, 102.0, 24), (103.0, 105.0, 24)]
    got, n = mon.window_rows(store, "m", 1, 100.0, 102.0, True)
    assert (len(got), n) == (3, 24)
    for size, requests in [(5, 1), (12, 2), (16, 2), (48, 6), (100, 6)]:
        start, end, window = mon.latest_rows(store, "m", 1, mon.parse_window(f"{size}rows"), 0.0)
        inputs = decode_tensors([r[0] for r in window], {"x": ["x"]})["x"]
        assert (len(window), end) == (requests, 105.0)
        assert inputs.tolist() == list(range(48 - min(size, 48), 48))  # the newest rows, no more, no less
        assert start == 100.0 + 6 - requests
        labels = [label for r in window for label in json.loads(r[2])]
        assert labels == [v % 2 for v in range(48 - min(size, 48), 48)]
        assert sum(len(json.loads(r[1])["p"]) for r in window) == min(size, 48)


def test_consecutive_windows() -> None:
    assert mon.trailing_true([]) == 0
    assert mon.trailing_true([True, True, False]) == 0
    assert mon.trailing_true([False, True, True]) == 2
    assert mon.trailing_true([True, False, True, True, True]) == 3


def test_logged_tensors_become_columns() -> None:
    signature = [{"name": "features", "datatype": "FP32", "shape": [-1, 3]},
                 {"name": "age", "datatype": "INT64", "shape": [-1]}]
    layout = tensor_columns(signature, {"features": ["a", "b", "c"]})
    assert layout == {"features": ["a", "b", "c"], "age": ["age"]}
    assert tensor_columns(signature[:1]) == {"features": ["features[0]", "features[1]", "features[2]"]}
    rows = ['{"features": [[1, 2, 3]], "age": [40]}', '{"features": [[4, 5, 6], [7, 8, 9]], "age": [41, 42]}',
            None, "[1, 2]"]
    cols = decode_tensors(rows, layout)
    assert cols["a"].tolist() == [1, 4, 7] and cols["c"].tolist() == [3, 6, 9]
    assert cols["age"].tolist() == [40, 41, 42]


def test_accuracy_and_ece_from_feedback_match_hand_computation() -> None:
    rows = [
        ('{"p": [[0.9, 0.1]]}', "0"),                  # right, confidence 0.9
        ('{"p": [[0.2, 0.8], [0.7, 0.3]]}', "[1, 1]"),  # right (0.8), wrong (0.7)
        ('{"p": [[0.4, 0.6]]}', None),                 # no label yet: left out
        ('{"p": [[0.45, 0.55]]}', "0"),                # wrong, confidence 0.55
    ]
    probs, labels = mon.labelled_outputs(rows, "p")
    assert labels.tolist() == [0, 1, 1, 0]
    assert mon.label_accuracy(probs, labels) == 0.5
    # 15 bins: 0.9 → bin 13 (acc 1), 0.8 → bin 12 (acc 1), 0.7 → bin 10 (acc 0), 0.55 → bin 8 (acc 0)
    expected = (abs(1 - 0.9) + abs(1 - 0.8) + abs(0 - 0.7) + abs(0 - 0.55)) / 4
    assert drift.expected_calibration_error(probs, labels) == pytest.approx(expected, abs=1e-12)


# pipelines ----------------------------------------------------------------------------------

GOOD = """name = "p"
model = "demo"

[steps.train]
command = ["python", "-m", "mldeck.agent.demo.train", "--epochs", "2"]

[register]
gate = "val_acc >= 0.9"
promote = "challenger"
"""


def test_demo_pipeline_file_parses() -> None:
    spec, steps, _ = read_pipeline(REPO / "agent" / "demo" / "retrain.toml")
    assert list(steps) == ["data", "train"] and spec.model == "demo"
    assert spec.register is not None and spec.register.promote == "challenger"
    assert launch_target(steps["data"].command)["module"] == "mldeck.agent.demo.labelled"
    assert launch_target(steps["train"].command)["module"] == "mldeck.agent.demo.train"


def test_steps_run_in_their_fixed_order() -> None:
    text = GOOD.replace("[steps.train]", '[steps.evaluate]\ncommand = ["python", "eval.py"]\n\n'
                        '[steps.data]\ncommand = ["prep.py", "--out", "x"]\n\n[steps.train]')
    _, steps = parse_pipeline(text, "f.toml")
    assert list(steps) == ["data", "train", "evaluate"]
    assert launch_target(steps["data"].command) == {"script": "prep.py", "args": ["--out", "x"]}


@pytest.mark.parametrize(("change", "needle"), [
    (('"2"]', "2]"), "f.toml, line 5 (steps.train.command[4]): Expected `str`, got `int`"),
    (("[steps.train]", "[steps.deploy]"), "f.toml, line 4: unknown step 'deploy'"),
    (('"python", "-m"', '"bash", "-c"'), "f.toml, line 5 (steps.train.command): command"),
    (("val_acc >= 0.9", "val_acc >> 0.9"), "f.toml, line 8 (register.gate): gate 'val_acc >> 0.9' is not"),
    (("val_acc >= 0.9", "__import__('os').system('x')"), "line 8 (register.gate)"),
    (('"challenger"', '"production"'), "line 9 (register.promote): a pipeline promotes to staging"),
    (("promote", "promot"), "f.toml, line 9 (register.promot): Object contains unknown field `promot`"),
    (('model = "demo"', 'model = "../etc"'), "f.toml, line 2 (model)"),
    (("[register]", "[register\n"), "not valid TOML"),
])
def test_bad_pipeline_files_name_the_line_and_field(change: tuple[str, str], needle: str) -> None:
    with pytest.raises(PipelineError) as err:
        parse_pipeline(GOOD.replace(*change), "f.toml")
    assert needle in str(err.value)


def test_gate_expressions() -> None:
    assert [str(r) for r in parse_gate("val_acc >= 0.92 and val_loss < 0.3")] == ["val_acc >= 0.92",
                                                                                  "val_loss < 0.3"]
    assert check_gate("val_acc >= 0.9", {"val_acc": 0.95}, "m") == []
    assert check_gate("val_acc >= 0.9 && val_loss < 0.3", {"val_acc": 0.85}, "m") == [
        "val_acc 0.85 < 0.9", "val_loss is missing (gate needs val_loss < 0.3)"]
    for bad in ["", "val_acc", "val_acc >= high", "1 or 1", "val_acc >= 0.9 or val_loss < 1", "len(x) > 1"]:
        with pytest.raises(PipelineError, match="METRIC OP NUMBER"):
            parse_gate(bad)


def test_monitor_config_is_checked_at_load(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text('[monitor]\nwindow = "200rows"\n[monitor.models.demo]\ndrift_windows = 2\n'
                    'columns = {mean_radius = {method = "psi", threshold = 0.2}}\n')
    config = load_config(path).monitor
    assert config.policy("demo").drift_windows == 2 and config.policy("other").drift_windows == 3
    assert config.policy("demo").columns["mean_radius"].method == "psi"
    for bad, needle in [('window = "5 parsecs"', "5 parsecs"),
                        ("[monitor.models.x]\ndrift_share = 2", "drift_share"),
                        ('[monitor.models.x]\ncolumns = {a = {method = "magic"}}', "magic")]:
        path.write_text(f"[monitor]\n{bad}\n")
        with pytest.raises(ConfigError, match=needle):
            load_config(path)
    assert msgspec.to_builtins(load_config(tmp_path / "none.toml").monitor)["window"] == "5m"


def test_unshifted_simulated_rows_do_not_drift_and_shifted_ones_do() -> None:
    from mldeck.agent.demo import data
    from mldeck.agent.demo.traffic import Dealer, shift_rows

    split = data.load_split()
    frame = {c: split.x_train[:, i] for i, c in enumerate(split.columns)}
    dealer = Dealer(len(split.x_train), seed=3)
    idx = np.array([dealer.next() for _ in range(200)])
    stats = {c: (float(v.mean()), float(v.std())) for c, v in frame.items()}
    moved = shift_rows(frame, ["mean_area"], 1.0, 1.0, stats)
    assert drift.drift_report(frame, {c: v[idx] for c, v in frame.items()}).drifted_columns == []
    assert drift.drift_report(frame, {c: v[idx] for c, v in moved.items()}).drifted_columns == ["mean_area"]


def test_a_window_is_judged_against_its_reference_and_unusable_traffic_is_invalid() -> None:
    rng = np.random.default_rng(7)
    reference = {"a": rng.normal(0, 1, 500), "b": rng.normal(0, 1, 500)}
    ref = Reference(drift.ReferenceProfile.build(reference), {"x": ["a", "b"]}, None, {}, {"val_acc": 0.9})

    def rows(shift: float) -> list[tuple[str | None, str | None, str | None]]:
        """200 of the reference's own rows in requests of 20, column a moved by `shift`."""
        pick = rng.permutation(500)[:200]
        batch = np.column_stack([reference["a"][pick] + shift, reference["b"][pick]])
        return [(msgspec.json.encode({"x": batch[i:i + 20].tolist()}).decode(), None, None)
                for i in range(0, 200, 20)]

    steady, _ = judge_window(ref, ModelPolicy(), rows(0.0))
    summary, columns = judge_window(ref, ModelPolicy(drift_share=0.5), rows(2.0))
    assert steady["drifted_columns"] == [] and not steady["dataset_drifted"]
    assert summary["drifted_columns"] == ["a"] and summary["dataset_drifted"] and summary["n_rows"] == 200
    assert summary["n_requests"] == 10 and summary["baseline"] == 0.9 and summary["accuracy"] is None
    assert [(c["column"], c["role"], c["drifted"]) for c in columns] == [("a", "input", True),
                                                                         ("b", "input", False)]
    with pytest.raises(Invalid, match="cannot test this window: column 'a' has no usable values"):
        judge_window(ref, ModelPolicy(), [('{"other": [1]}', None, None)])
