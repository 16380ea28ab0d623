"""Model folders: export round-trips, the TorchScript fallback, refusal of mismatches, verify, checks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mldeck.core import modelfile, signature
from mldeck.core.modelfile import ModelMismatch
from mldeck.core.signature import InvalidInput, Signature

REPO = Path(__file__).resolve().parents[2]


def mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(30, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2), torch.nn.Softmax(-1)
    ).eval()


def rows(n: int, cols: int = 30, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, cols)).astype(np.float32)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One exported MLP folder the read-only tests share."""
    folder = tmp_path_factory.mktemp("models") / "mlp"
    modelfile.export_model(
        mlp(), {"features": rows(300)}, folder, output_names=["probabilities"],
        extra_files={"reference.parquet": b"PAR1"},
    )
    return folder


def test_export_round_trips_with_a_dynamic_batch(exported: Path) -> None:
    sig = Signature.read(exported)
    assert sig.format == "torch.export" and sig.file == "model.pt2" and not sig.allow_nan
    assert [(s.name, s.datatype, s.shape) for s in sig.inputs] == [("features", "FP32", [-1, 30])]
    assert [(s.name, s.datatype, s.shape) for s in sig.outputs] == [
        ("probabilities", "FP32", [-1, 2])
    ]
    assert {p.name for p in exported.iterdir()} == {
        "model.pt2", "signature.json", "sample.npz", "reference.parquet"
    }
    assert Signature.from_dict(json.loads((exported / "signature.json").read_text())) == sig
    x = rows(1234, seed=1)  # a batch size the export never saw
    got = modelfile.load_model(exported).predict({"features": x})
    with torch.no_grad():
        want = mlp()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got["probabilities"], want, atol=1e-6)


def test_several_inputs_and_dict_outputs_keep_their_names(tmp_path: Path) -> None:
    class Two(torch.nn.Module):
        def forward(self, a: torch.Tensor, b: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"sum": a.sum(-1) + b, "count": (a > 0).sum(-1)}

    a, b = rows(50, 4), rows(50, 1)[:, 0].astype(np.float64)
    sig = modelfile.export_model(Two(), {"b": b, "a": a}, tmp_path / "m", input_names=["a", "b"])
    assert [(s.name, s.datatype) for s in sig.inputs] == [("a", "FP32"), ("b", "FP64")]
    assert {s.name: s.datatype for s in sig.outputs} == {"sum": "FP64", "count": "INT64"}
    got = modelfile.load_model(tmp_path / "m").predict({"b": b[:3], "a": a[:3]})
    np.testing.assert_array_equal(got["count"], (a[:3] > 0).sum(-1))


def test_data_dependent_model_falls_back_to_torchscript(tmp_path: Path) -> None:
    class Branchy(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = torch.nn.Linear(3, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if (x >= 0).all():  # torch.export cannot guard on data
                return self.linear(x)
            return -self.linear(x)

    model = Branchy().eval()
    x = np.abs(rows(40, 3))
    with pytest.warns(torch.jit.TracerWarning):
        sig = modelfile.export_model(model, x, tmp_path / "m")
    assert sig.format == "torchscript" and (tmp_path / "m" / "model.pt").exists()
    assert "data-dependent" in sig.fallback_reason
    assert [s.name for s in sig.inputs] == ["input__0"] and sig.outputs[0].name == "output__0"
    got = modelfile.load_model(tmp_path / "m").predict({"input__0": x[:7]})
    with torch.no_grad():
        want = model(torch.from_numpy(x[:7])).numpy()
    np.testing.assert_allclose(got["output__0"], want, atol=1e-6)
    assert modelfile.verify_folder(tmp_path / "m") == sig


def test_mismatch_is_refused_and_leaves_no_folder(tmp_path: Path) -> None:
    dropout_on = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Dropout(0.5))  # train mode
    with pytest.raises(ModelMismatch, match=r"differs .* call model.eval\(\) first"):
        modelfile.export_model(dropout_on, rows(100, 3), tmp_path / "m")
    assert list(tmp_path.iterdir()) == []


def test_export_never_overwrites(exported: Path) -> None:
    before = (exported / "model.pt2").stat().st_mtime_ns
    with pytest.raises(FileExistsError):
        modelfile.export_model(mlp(), {"features": rows(10)}, exported)
    assert (exported / "model.pt2").stat().st_mtime_ns == before


def verify(folder: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, dict]:
    """The verify command in this process (its exit code is main's return value)."""
    code = modelfile.main(["verify", str(folder)])
    return code, json.loads(capsys.readouterr().out)


def test_verify_command_in_its_own_process(exported: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "mldeck.core.modelfile", "verify", str(exported)],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["ok"] and result["signature"] == Signature.read(exported).to_dict()


def test_verify_refuses_outputs_that_differ(
    exported: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:

    tampered = tmp_path / "tampered"
    tampered.mkdir()
    for f in exported.iterdir():
        (tampered / f.name).write_bytes(f.read_bytes())
    with np.load(exported / "sample.npz") as stored:
        arrays = dict(stored)
    arrays["outputs/probabilities"] = arrays["outputs/probabilities"][:, ::-1].copy()
    np.savez(tampered / "sample.npz", **arrays)
    code, result = verify(tampered, capsys)
    assert code == 1 and not result["ok"] and result["signature"] is None
    assert "ModelMismatch" in result["message"] and "probabilities" in result["message"]


def test_verify_names_what_is_missing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, result = verify(tmp_path, capsys)
    assert code == 1 and not result["ok"] and "signature.json is missing" in result["message"]


def test_signature_and_serving_modules_do_not_import_torch() -> None:
    code = "import sys, mldeck.core.modelfile, mldeck.core.serving; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO, timeout=60).returncode == 0


SIG = Signature.from_dict({
    "inputs": [
        {"name": "features", "datatype": "FP32", "shape": [-1, 2]},
        {"name": "ids", "datatype": "INT64", "shape": [-1]},
    ],
    "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 2]}],
    "format": "torch.export",
    "file": "model.pt2",
})


def item(name: str = "features", datatype: str = "FP32", shape=(2, 2), data=(1, 2, 3, 4)) -> dict:
    return {"name": name, "datatype": datatype, "shape": list(shape), "data": list(data)}


def test_check_request_accepts_a_good_request() -> None:
    arrays = signature.check_request(SIG, [item(), item("ids", "INT64", [2], [7, 8])])
    assert arrays["features"].dtype == np.float32 and arrays["features"].shape == (2, 2)
    assert arrays["ids"].tolist() == [7, 8]


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ([item("feature")], "unknown input 'feature'; this model takes features (FP32 [-1, 2])"),
        ([item(datatype="FP64")], "input 'features' must be FP32, got FP64"),
        ([item(shape=(1, 4))], "input 'features' must have shape [-1, 2], got [1, 4]"),
        ([item(shape=(2, 2), data=(1, 2, 3))], "shape [2, 2] needs 4 values, got 3"),
        ([item(data=(1, float("nan"), 3, 4))], "contains NaN or infinity"),
        ([item(data=(1, "2", 3, 4))], "data is not all FP32 values"),
        ([item("ids", "INT64", [2], [1.5, 2])], "data is not all INT64 values"),
        ([item()], "missing input ids (INT64 [-1])"),
        ([item(), item()], "input 'features' is given twice"),
        ([item(), item("ids", "INT64", [3], [1, 2, 3])], "same batch size, got [2, 3]"),
        ([{"name": "features"}], "missing ['datatype', 'shape', 'data']"),
    ],
)
def test_check_request_says_what_is_wrong(inputs: list[dict], message: str) -> None:
    with pytest.raises(InvalidInput) as info:
        signature.check_request(SIG, inputs)
    assert message in str(info.value)


def test_nan_passes_when_the_signature_allows_it() -> None:
    allowing = Signature.from_dict({**SIG.to_dict(), "allow_nan": True})
    got = signature.check_inputs(
        allowing, {"features": np.array([[np.nan, 1]], np.float32), "ids": np.array([1])}
    )
    assert np.isnan(got["features"][0, 0])
