"""`mldeck predict` reads inputs as users hold them, and named features reach the monitor.

A real agent registers, through the SDK, a small CNN on 8×8 images (input `pixels` [-1, 1, 8, 8]) and
an MLP whose three features are named. The CNN predicts from 64 per-pixel columns, one flat list
column, a fixed-size list column (whose types, and every other column's, the output keeps) and CSV;
the MLP from its named columns in any order, and its drift report names the features.
"""

from __future__ import annotations

import itertools
import json
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from mldeck.core.errors import Invalid
from mldeck.tui.cli.predict_cmd import ahead
from tests.conftest import AgentProc, rpc, start_agent, wait_for
from tests.serving.conftest import free_port

pytestmark = pytest.mark.timeout(600)

FEATURES = ["mean_radius", "mean_texture", "mean_area"]
ROWS = 300
TRAIN = f"""
import numpy as np, torch
from torch import nn
from mldeck.core import track

torch.manual_seed(0)
rng = np.random.default_rng(0)
run = track.init(name="predict-tests")
cnn = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(256, 3)).eval()
run.register_model(cnn, sample=rng.random((64, 1, 8, 8), dtype=np.float32), name="digits",
                   input_names=["pixels"], output_names=["logits"], artifact="digits")
mlp = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 2)).eval()
table = rng.normal(size=(2000, 3)).astype(np.float32)
run.register_model(mlp, sample=table[:64], name="tumor", output_names=["logits"], reference=table,
                   features={FEATURES!r}, artifact="tumor")
run.finish()
"""


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProc]:
    home = tmp_path_factory.mktemp("predict") / "home"
    proc = start_agent(home, config=f"[serving]\nport = {free_port()}\nmax_queue_delay_ms = 1\n")
    try:
        trained = proc.python("-c", TRAIN, timeout=300)
        assert trained.returncode == 0, trained.stderr
        for name in ("digits", "tumor"):
            wait_for(lambda n=name: rpc(home, "models.versions", {"name": n}).get("result"), timeout=120,
                     what=f"{name} registered")
    except BaseException:
        proc.stop()
        raise
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(1).random((ROWS, 1, 8, 8), dtype=np.float32)


def expected(agent: AgentProc, name: str, inputs: dict[str, np.ndarray]) -> np.ndarray:
    from mldeck.core.modelfile import load_model

    return load_model(agent.home / "models" / name / "1").predict(inputs)["logits"]


def predict(agent: AgentProc, model: str, source: Path, target: Path, *extra: str) -> pa.Table:
    done = agent.cli("predict", model, "--input", str(source), "--output", str(target), "--batch-size", "64",
                     "--json", *extra, timeout=120)
    assert done.code == 0, done.err
    assert done.json()["rows"] == ROWS and done.err == ""
    return pq.read_table(target) if target.suffix == ".parquet" else pacsv.read_csv(target)


def logits(table: pa.Table, n: int) -> np.ndarray:
    return np.column_stack([table.column(f"logits_{i}").to_numpy() for i in range(n)])


def same(got: np.ndarray, want: np.ndarray, rtol: float = 1e-5) -> None:
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol / 10)


def pixel_columns(x: np.ndarray) -> dict[str, np.ndarray]:
    flat = x.reshape(len(x), -1)
    return {f"pixels[{i}]": flat[:, i] for i in range(flat.shape[1])}


def test_images_as_one_column_per_pixel(agent: AgentProc, images: np.ndarray, tmp_path: Path) -> None:
    source = tmp_path / "pixels.parquet"
    pq.write_table(pa.table({"id": np.arange(ROWS), **pixel_columns(images)}), source)
    out = predict(agent, "digits/1", source, tmp_path / "out.parquet")
    same(logits(out, 3), expected(agent, "digits", {"pixels": images}))
    assert out.column("id").to_pylist() == list(range(ROWS))


def test_images_as_one_flat_list_column(agent: AgentProc, images: np.ndarray, tmp_path: Path) -> None:
    source = tmp_path / "flat.parquet"
    flat = pa.array(list(images.reshape(ROWS, 64)), pa.list_(pa.float32()))
    pq.write_table(pa.table({"pixels": flat}), source)
    out = predict(agent, "digits/1", source, tmp_path / "out.parquet")
    same(logits(out, 3), expected(agent, "digits", {"pixels": images}))


def test_the_output_keeps_the_input_types(agent: AgentProc, images: np.ndarray, tmp_path: Path) -> None:
    source = tmp_path / "fixed.parquet"
    given = pa.table({
        "pixels": pa.FixedSizeListArray.from_arrays(pa.array(images.ravel()), 64),
        "id": pa.array(np.arange(ROWS), pa.int32()),
        "weight": pa.array(np.ones(ROWS, np.float16)),
        "note": pa.array([f"row {i}" for i in range(ROWS)]),
    })
    pq.write_table(given, source)
    out = predict(agent, "digits/1", source, tmp_path / "out.parquet")
    assert out.schema.field("pixels").type == pa.list_(pa.float32(), 64)
    assert out.select(given.column_names).equals(given)
    assert out.schema.field("logits_0").type == pa.float32()
    same(logits(out, 3), expected(agent, "digits", {"pixels": images}))


def test_csv_in_and_out(agent: AgentProc, images: np.ndarray, tmp_path: Path) -> None:
    source, target = tmp_path / "pixels.csv", tmp_path / "out.csv"
    pacsv.write_csv(pa.table({"id": np.arange(ROWS), **pixel_columns(images)}), source)
    out = predict(agent, "digits/1", source, target)
    same(logits(out, 3), expected(agent, "digits", {"pixels": images}), rtol=1e-4)
    assert out.column("id").to_pylist() == list(range(ROWS))


@pytest.mark.slow
def test_named_feature_columns_in_any_order(agent: AgentProc, tmp_path: Path) -> None:
    x = np.random.default_rng(2).normal(size=(ROWS, 3)).astype(np.float32)
    source = tmp_path / "tumor.csv"
    columns = {"id": np.arange(ROWS), "mean_area": x[:, 2], "note": ["n"] * ROWS, "mean_radius": x[:, 0],
               "mean_texture": x[:, 1]}
    pacsv.write_csv(pa.table(columns), source)
    out = predict(agent, "tumor/1", source, tmp_path / "out.parquet")
    same(logits(out, 2), expected(agent, "tumor", {"input__0": x}))
    del columns["mean_texture"]
    pacsv.write_csv(pa.table(columns), source)
    refused = agent.cli("predict", "tumor/1", "--input", str(source), "--output", str(tmp_path / "no.csv"))
    assert refused.code == 1 and "lacks the feature columns ['mean_texture']" in refused.err
    assert not (tmp_path / "no.csv").exists()


def test_rows_that_do_not_fit_are_refused(agent: AgentProc, images: np.ndarray, tmp_path: Path) -> None:
    source, target = tmp_path / "short.parquet", tmp_path / "out.parquet"
    pq.write_table(pa.table({"pixels": pa.array(list(images.reshape(ROWS, 64)[:, :63]))}), source)
    refused = agent.cli("predict", "digits/1", "--input", str(source), "--output", str(target))
    assert refused.code == 1, refused.out
    assert "rows 1-300: column 'pixels' holds 63 values per row" in refused.err and "takes 64" in refused.err
    assert not target.exists() and not list(tmp_path.glob(".out.parquet*"))


def post(url: str, body: dict[str, Any]) -> Any:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def test_the_drift_report_names_the_features(agent: AgentProc) -> None:
    agent.cli("models", "promote", "tumor", "1", "--to", "production", "--yes", check=True)
    url = agent.cli("serve", "start", "--json", check=True, timeout=240).json()["url"]
    x = np.random.default_rng(3).normal(size=(200, 3)).astype(np.float32)
    for i in range(0, 200, 10):
        rows = {"name": "input__0", "datatype": "FP32", "shape": [10, 3],
                "data": x[i:i + 10].ravel().tolist()}
        post(f"{url}/v2/models/tumor/infer", {"id": f"r{i}", "inputs": [rows]})
    sql = "SELECT count(*) AS n FROM predictions WHERE model = 'tumor'"
    wait_for(lambda: agent.cli("query", sql, "--json", check=True).json()[0]["n"] == 20, timeout=60,
             what="the requests in the store")
    report = agent.cli("drift", "report", "tumor", "--window", "200rows", "--json", check=True).json()
    assert [c["column"] for c in report["columns"] if c["role"] == "input"] == FEATURES
    assert report["n_rows"] == 200


def test_a_failing_stage_stops_the_reader_under_it() -> None:
    """A batch that does not fit ends predict while the file is still being read ahead: the reading
    thread must stop then, not at exit, where a thread inside pyarrow aborted the process ("terminate
    called without an active exception", exit -6) after the error was printed."""
    closed = threading.Event()

    def read() -> Iterator[int]:
        try:
            yield from itertools.count()
        finally:
            closed.set()

    def predict(batches: Iterator[int]) -> Iterator[int]:
        for batch in batches:
            if batch == 3:
                raise Invalid("rows 4-4: column 'pixels' holds 63 values per row")
            yield batch

    with pytest.raises(Invalid) as failed:
        list(ahead(predict(ahead(read()))))
    assert "rows 4-4" in str(failed.value)  # the error, with its traceback, is still held here
    assert closed.wait(5), "the reader still runs"
    assert not [t for t in threading.enumerate() if t.name == "predict-ahead"]
