"""Feature names: given to log_model, or a DataFrame's own, kept in columns.json and reference.parquet."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mldeck.core import track
from mldeck.core.signature import column_names

torch = pytest.importorskip("torch")

FEATURES = ["mean_radius", "mean_texture", "mean_area"]


def table_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Linear(3, 2).eval()


def rows(n: int = 100) -> np.ndarray:
    return np.random.default_rng(0).normal(size=(n, 3)).astype(np.float32)


def test_named_features_name_the_reference_and_columns_json(tmp_path: Path) -> None:
    x = rows()
    run = track.init(name="named", home=tmp_path)
    folder = run.log_model(table_model(), sample=x[:16], reference=x, features=FEATURES)
    run.finish()
    assert column_names(folder) == {"input__0": FEATURES}
    table = pq.read_table(folder / "reference.parquet")
    assert table.column_names == FEATURES
    assert np.array_equal(table.column("mean_area").to_numpy(), x[:, 2])


def test_register_model_names_features_per_input(tmp_path: Path) -> None:
    class TwoInputs(torch.nn.Module):
        def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return b.sum(dim=1) + a

    a, b = rows()[:, 0], rows()
    run = track.init(name="two", home=tmp_path)
    folder = run.register_model(TwoInputs().eval(), sample={"a": a, "b": b}, name="two",
                                reference={"a": a, "b": b}, features={"b": FEATURES})
    run.finish()
    assert json.loads((folder / "columns.json").read_text()) == {"b": FEATURES}
    assert pq.read_table(folder / "reference.parquet").column_names == ["a", *FEATURES]


def test_a_dataframe_reference_keeps_its_column_names(tmp_path: Path) -> None:
    pd = pytest.importorskip("pandas")
    x = rows()
    frame = pd.DataFrame(x, columns=FEATURES)
    run = track.init(name="frame", home=tmp_path)
    folder = run.log_model(table_model(), sample=x[:16], reference=frame)
    assert column_names(folder) == {"input__0": FEATURES}
    assert pq.read_table(folder / "reference.parquet").column_names == FEATURES
    # a Table sample names the features; a reference with the columns in another order (and one more)
    # is read by name, not by position
    shuffled = pa.table({"label": np.zeros(100), "mean_area": x[:, 2], "mean_radius": x[:, 0],
                         "mean_texture": x[:, 1]})
    again = run.log_model(table_model(), sample=pa.table(frame[:16]), reference=shuffled, artifact="again")
    run.finish()
    table = pq.read_table(again / "reference.parquet")
    assert table.column_names == FEATURES and np.array_equal(table.column("mean_radius").to_numpy(), x[:, 0])


def test_feature_names_that_cannot_name_the_columns_are_refused(tmp_path: Path) -> None:
    pd = pytest.importorskip("pandas")
    x = rows()
    run = track.init(name="bad", home=tmp_path)
    with pytest.raises(ValueError, match="has 3 columns but 2 feature names"):
        run.log_model(table_model(), sample=x, features=FEATURES[:2], artifact="short")
    with pytest.raises(ValueError, match=r"given twice: \['a'\]"):
        run.log_model(table_model(), sample=x, features=["a", "a", "b"], artifact="twice")
    with pytest.raises(ValueError, match=r"lacks the feature columns \['mean_area'\]"):
        run.log_model(table_model(), sample=x, features=FEATURES, artifact="other",
                      reference=pd.DataFrame(x, columns=["mean_radius", "mean_texture", "area"]))
    images = np.zeros((4, 1, 2, 2), np.float32)
    with pytest.raises(ValueError, match=r"N-D, its columns input__0\[i\]"):
        run.log_model(torch.nn.Flatten().eval(), sample=images, features=list("abcd"), artifact="nd")
    run.finish()
    assert not (run.dir / "artifacts").exists() or not any((run.dir / "artifacts").iterdir())
