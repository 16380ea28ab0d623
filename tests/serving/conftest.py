"""Serving fixtures: model folders exported once, and a real model server process on a free port."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import numpy as np
import pytest

from mldeck.core.ports import free_port
from mldeck.core.serving import Manifest, ServedModel, ServedVersion, encode_manifest
from mldeck.core.servingtoken import bearer, serving_token
from mldeck.core.track import write_atomic
from tests.conftest import REPO, agent_env

FEATURES = 16



def export_mlp(folder: Path, seed: int) -> Path:
    import torch

    from mldeck.core.modelfile import export_model

    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Linear(FEATURES, 32), torch.nn.ReLU(), torch.nn.Linear(32, 3)
    ).eval()
    sample = np.random.default_rng(seed).normal(size=(32, FEATURES)).astype(np.float32)
    export_model(model, sample, folder, output_names=["scores"])
    return folder


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two versions of one small MLP, and a folder that looks like a model but cannot load."""
    root = tmp_path_factory.mktemp("models")
    dirs = {"v1": export_mlp(root / "v1", 1), "v2": export_mlp(root / "v2", 2)}
    broken = root / "broken"
    broken.mkdir()
    (broken / "signature.json").write_bytes((dirs["v1"] / "signature.json").read_bytes())
    (broken / "model.pt2").write_bytes(b"this is not a model")
    dirs["broken"] = broken
    return dirs


class ServerProc:
    """A `python -m mldeck.agent.serving` process on its own home and port, driven by its manifest."""

    def __init__(self, home: Path, port: int, proc: subprocess.Popen[bytes]) -> None:
        self.home = home
        self.port = port
        self.proc = proc
        self.url = f"http://127.0.0.1:{port}"

    def manifest(self, models: dict[str, dict[str, Any]]) -> None:
        """Serve {name: {"aliases": {alias: (version, folder)}, "shadow": .., "canary": ..}}."""
        manifest = Manifest(written_at=time.time(), models={
            name: ServedModel(
                aliases={a: ServedVersion(v, str(f)) for a, (v, f) in spec["aliases"].items()},
                shadow=spec.get("shadow", False), canary=spec.get("canary", 0.0),
            )
            for name, spec in models.items()
        })
        write_atomic(self.home / "serving" / "manifest.json", encode_manifest(manifest))

    def auth(self) -> dict[str, str]:
        """The header that carries this server's token (from its home, as any client reads it)."""
        return bearer(serving_token(self.home))

    def stats(self) -> dict[str, Any]:
        import urllib.request

        req = urllib.request.Request(self.url + "/mldeck/stats", headers=self.auth())
        with urllib.request.urlopen(req, timeout=10) as resp:
            return msgspec.json.decode(resp.read())

    def wait_serving(self, name: str, aliases: dict[str, int], timeout: float = 60,
                     shadow: bool = False, canary: float = 0.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            model = self.stats()["models"].get(name, {})
            if (model.get("aliases") == aliases and model.get("shadow") == shadow
                    and model.get("canary") == canary):
                return model
            time.sleep(0.1)
        raise AssertionError(f"{name} not serving {aliases} after {timeout}s: {self.stats()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_server(home: Path, *extra: str, timeout: float = 90) -> ServerProc:
    (home / "serving").mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = open(home / "server.log", "ab")  # noqa: SIM115 (the child keeps it)
    proc = subprocess.Popen(
        [sys.executable, "-m", "mldeck.agent.serving", "--home", str(home), "--port", str(port), *extra],
        stdout=log, stderr=log, env=agent_env(home), cwd=REPO,
    )
    server = ServerProc(home, port, proc)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {(home / 'server.log').read_text()[-2000:]}")
        try:
            server.stats()
            return server
        except OSError:
            time.sleep(0.2)
    server.stop()
    raise RuntimeError(f"server did not start: {(home / 'server.log').read_text()[-2000:]}")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, model_dirs: dict[str, Path]) -> Iterator[ServerProc]:
    """A server with `mlp` v1 as production and v2 as challenger; small limits to test them."""
    home = tmp_path_factory.mktemp("serving-home")
    proc = start_server(home, "--max-batch-size", "32", "--max-queue-delay-ms", "5",
                        "--max-body-bytes", "200000")
    proc.manifest({"mlp": {"aliases": {"production": (1, model_dirs["v1"]),
                                       "challenger": (2, model_dirs["v2"])}}})
    proc.wait_serving("mlp", {"production": 1, "challenger": 2})
    yield proc
    proc.stop()


def infer_body(rows: np.ndarray, request_id: str | None = None, name: str = "input__0") -> dict[str, Any]:
    body: dict[str, Any] = {"inputs": [{"name": name, "datatype": "FP32", "shape": list(rows.shape),
                                        "data": rows.ravel().tolist()}]}
    if request_id is not None:
        body["id"] = request_id
    return body


async def post(session: aiohttp.ClientSession, url: str, body: Any, **kw: Any) -> tuple[int, Any]:
    data = body if isinstance(body, bytes) else msgspec.json.encode(body)
    async with session.post(url, data=data, **kw) as resp:
        return resp.status, await resp.json(content_type=None)


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of a metric's samples with the given labels; the parser reads counters as name_total."""
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            wanted = all(sample.labels.get(k) == v for k, v in labels.items())
            if sample.name in (name, name + "_total") and wanted:
                total += sample.value
    return total


os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")
