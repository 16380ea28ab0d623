"""Summary features of N-D inputs (core.summaries) by hand, and the profile and window judging built on them:
an image reference stored flattened by the SDK is regrouped and judged on its features."""

from __future__ import annotations

from pathlib import Path

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mldeck.core import drift
from mldeck.core import monitor as mon
from mldeck.core.config import ModelPolicy
from mldeck.core.judge import Reference, judge_window, regroup_inputs
from mldeck.core.summaries import rule_for, summarize, summarize_column, summarize_examples

RNG = np.random.default_rng(11)


def test_image_features_by_hand() -> None:
    # one 2-channel 4×4 image: channel 0 counts 0..15, channel 1 is all 2
    x = np.stack([np.arange(16.0).reshape(4, 4), np.full((4, 4), 2.0)])[None]
    got = summarize("img", "image", x)
    assert list(got) == [f"img.channel{c}.{s}" for c in (0, 1) for s in ("mean", "std", "min", "max")] + [
        "img.grid0_0.mean", "img.grid0_1.mean", "img.grid1_0.mean", "img.grid1_1.mean"]
    assert got["img.channel0.mean"][0] == 7.5
    assert got["img.channel0.std"][0] == pytest.approx(np.arange(16).std())
    assert (got["img.channel0.min"][0], got["img.channel0.max"][0]) == (0.0, 15.0)
    assert (got["img.channel1.mean"][0], got["img.channel1.std"][0]) == (2.0, 0.0)
    # top-left quarter of channel 0 holds 0, 1, 4, 5 (mean 2.5); with channel 1 (2) averaged in: 2.25
    assert got["img.grid0_0.mean"][0] == 2.25 and got["img.grid1_1.mean"][0] == (12.5 + 2) / 2


def test_one_channel_odd_sizes_volumes_and_many_channels() -> None:
    grey = summarize("g", "image", np.arange(15.0).reshape(1, 3, 5))  # [H, W]: one channel, 3×5
    assert grey["g.grid0_0.mean"][0] == np.mean([0, 1])  # row 0, columns 0–1
    assert grey["g.grid1_1.mean"][0] == np.mean([7, 8, 9, 12, 13, 14])  # rows 1–2, columns 2–4
    tiny = summarize("t", "image", np.array([[[[3.0]]]]))  # a 1×1 image: every cell is its one pixel
    assert {tiny[f"t.grid{a}_{b}.mean"][0] for a in (0, 1) for b in (0, 1)} == {3.0}
    volume = summarize("v", "image", RNG.normal(size=(5, 2, 4, 4, 4)))
    assert sum(".grid" in k for k in volume) == 8 and "v.grid1_0_1.mean" in volume
    many = summarize("m", "image", RNG.normal(size=(3, 32, 2, 2)))
    assert [k for k in many if ".grid" not in k] == [f"m.all.{s}" for s in ("mean", "std", "min", "max")]


def test_sequence_features_and_ragged_examples() -> None:
    batch = np.array([[3.0, 4.0, 0.0], [1.0, 1.0, 1.0]])
    got = summarize("tok", "sequence", batch)
    assert got["tok.length"].tolist() == [3, 3] and got["tok.length"].dtype.kind == "i"
    assert got["tok.norm"].tolist() == [5.0, pytest.approx(np.sqrt(3))]
    assert got["tok.mean"].tolist() == [pytest.approx(7 / 3), 1.0] and got["tok.std"][1] == 0.0
    ragged = summarize_examples("s", "sequence", [[1.0, 2.0], [3.0], [4.0, 5.0]])
    assert ragged["s.length"].tolist() == [2, 1, 2] and ragged["s.mean"].tolist() == [1.5, 3.0, 4.5]
    missing = summarize_examples("s", "sequence", [[1.0], None])
    assert np.isnan(missing["s.length"][1]) and missing["s.norm"][0] == 1.0


def test_rules_from_the_reference_data() -> None:
    assert rule_for(np.zeros((4, 1, 8, 8))) == "image" and rule_for(np.zeros((4, 8, 8))) == "image"
    assert rule_for(np.zeros((4, 20))) == "sequence"
    assert rule_for(np.array([np.zeros(2), np.zeros(3)], dtype=object)) == "sequence"
    assert rule_for(np.zeros(4)) is None and rule_for(np.array(["a", "b"], dtype=object)) is None
    assert summarize_column("x", np.zeros(3)) is None
    with pytest.raises(ValueError, match="rank 2 or more"):
        summarize("x", "image", np.zeros((2, 5)))


def test_a_profile_of_images_round_trips_with_its_rule(tmp_path: Path) -> None:
    x = RNG.normal(size=(300, 3, 6, 6))
    profile = drift.ReferenceProfile.build({"image": x, "age": RNG.integers(20, 80, 300)})
    assert profile.tensors["image"].rule == "image" and profile.tensors["image"].shape == [3, 6, 6]
    assert len(profile.tensors["image"].columns) == 3 * 4 + 4
    assert "image" not in profile.columns and profile.kinds["image.channel2.max"] == "numeric"
    profile.save(tmp_path)
    loaded = drift.ReferenceProfile.load(tmp_path)
    assert loaded.tensors == profile.tensors and loaded.to_dict() == profile.to_dict()
    # a reference table with a tensor column (its shape kept) and a list column (ragged sequences)
    table = pa.table({"pixels": pa.FixedShapeTensorArray.from_numpy_ndarray(x[:, :1].astype(np.float32)),
                      "tokens": pa.array([list(range(i % 7)) for i in range(300)], pa.list_(pa.float64()))})
    pq.write_table(table, tmp_path / "user.parquet")
    frame = drift.table_frame(pq.read_table(tmp_path / "user.parquet"))
    assert frame["pixels"].shape == (300, 1, 6, 6) and frame["tokens"].dtype == object
    built = drift.ReferenceProfile.build(frame)
    assert {t: s.rule for t, s in built.tensors.items()} == {"pixels": "image", "tokens": "sequence"}
    assert built.kinds["tokens.length"] == "categorical"  # 7 lengths: an integer with ≤ 10 values


def flattened_reference(x: np.ndarray) -> drift.ReferenceProfile:
    """The profile the registry builds from an SDK reference: one column per pixel, `pixels[i]`."""
    flat = x.reshape(len(x), -1)
    return drift.ReferenceProfile.build({f"pixels[{i}]": flat[:, i] for i in range(flat.shape[1])})


def test_a_flattened_image_reference_is_regrouped_and_windows_are_judged_on_features() -> None:
    x = RNG.normal(0.5, 0.2, size=(2_000, 1, 4, 4))
    inputs = [{"name": "pixels", "datatype": "FP32", "shape": [-1, 1, 4, 4]}]
    profile = regroup_inputs(flattened_reference(x), inputs)
    assert not any(c.startswith("pixels[") for c in profile.columns)
    assert profile.tensors["pixels"].shape == [1, 4, 4]
    assert len(profile.sample["pixels.channel0.mean"]) == 2_000
    columns = profile.tensors["pixels"].columns
    ref = Reference(profile, {"pixels": columns}, None, {"p": ["p[0]", "p[1]"]}, {})

    def rows(images: np.ndarray, logits: np.ndarray, labels: np.ndarray) -> mon_rows:
        return [(msgspec.json.encode({"pixels": images[i:i + 10].tolist()}).decode(),
                 msgspec.json.encode({"p": logits[i:i + 10].tolist()}).decode(),
                 msgspec.json.encode(labels[i:i + 10].tolist()).decode()) for i in range(0, len(images), 10)]

    fresh = RNG.normal(0.5, 0.2, size=(600, 1, 4, 4))
    logits = RNG.normal(size=(600, 2)) * 3
    labels = RNG.integers(0, 2, 600)
    clean, _ = judge_window(ref, ModelPolicy(), rows(fresh, logits, labels))
    bright, cols = judge_window(ref, ModelPolicy(), rows(fresh + 0.3, logits, labels))
    assert clean["n_rows"] == 600 and clean["drifted_columns"] == []
    assert "pixels.channel0.mean" in bright["drifted_columns"]
    assert "pixels.channel0.std" not in bright["drifted_columns"]
    assert [c["column"] for c in cols] == columns
    # logits are read as logits: accuracy and ECE of their softmax
    probs = mon.class_probabilities(logits)
    assert np.allclose(probs.sum(axis=1), 1) and clean["n_labeled"] == 600
    assert clean["accuracy"] == pytest.approx(np.mean(probs.argmax(axis=1) == labels))
    assert clean["ece"] == pytest.approx(drift.expected_calibration_error(probs, labels))
    # a request whose images have another rank gives no features, and is left out
    odd = [(msgspec.json.encode({"pixels": np.zeros((3, 4, 4)).tolist()}).decode(), None, None)]
    assert judge_window(ref, ModelPolicy(), rows(fresh, logits, labels) + odd)[0]["n_rows"] == 600


mon_rows = list[tuple[str | None, str | None, str | None]]


def test_class_probabilities_keeps_probabilities_and_reads_logits() -> None:
    probs = np.array([[0.2, 0.8], [1.0, 0.0]])
    assert np.array_equal(mon.class_probabilities(probs), probs)
    assert mon.class_probabilities(np.array([[0.0, np.log(3)]])) == pytest.approx(np.array([[0.25, 0.75]]))
    assert mon.class_probabilities(np.array([0.3, 0.9])).tolist() == [0.3, 0.9]
    assert mon.class_probabilities(np.array([0.0, 2.0]))[0] == 0.5
