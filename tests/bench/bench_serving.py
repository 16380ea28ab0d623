"""Serving benchmark: mldeck's model server against a naive aiohttp server, `mlflow models serve`,
MLServer and LitServe.

    .venv/bin/python tests/bench/bench_serving.py [--seconds 10] [--mlflow-python /tmp/mlflowenv/bin/python]
        [--mlserver-python /work/peers/mlserver/bin/python]
        [--litserve-python /work/peers/litserve/bin/python]
        [--rounds 2] [--peers-only]

Load comes from a separate process (an aiohttp client, not the server's code):
64 closed-loop clients, one row per request recorded, the warm-up discarded.
1. the small MLP 32→256→256→2: mldeck (dynamic batching) vs a naive per-request
   aiohttp server on the same weights vs `mlflow models serve` (when an MLflow
   environment is given; otherwise its figure from NOTES is quoted, labelled so);
2. a compute-heavy MLP (~6M parameters): mldeck with batching on vs off, with the
   batch-size histogram;
3. a hot swap every 2 s during 30 s of load: failures counted;
4. when their environments are given (each a venv with torch and the peer), the small MLP side by side
   with MLServer (a custom runtime, adaptive batching 64 / 1 ms; request log, metrics and gzip off, its
   fastest here) and LitServe (batching 64 / 1 ms), in alternating rounds (mldeck, MLServer, LitServe,
   then again), each server started fresh for its turn and given the same KServe v2 body.
The naive server and the load generator are modes of this script (--naive-server, --load).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from mldeck.core.ports import free_port

REPO = Path(__file__).resolve().parents[2]

CLIENTS = 64
SMALL = [32, 256, 256, 2]
WARMUP_S = 3.0
QUOTED_MLFLOW = {"rps": 600.0, "p50_ms": None, "p99_ms": 330.0, "errors": 0, "note": "quoted from NOTES"}


# the models ---------------------------------------------------------------------


def make_models(root: Path) -> dict[str, Path]:
    """The small MLP (two versions, for swaps) and the heavy one, exported as model folders."""
    import torch

    from mldeck.core.modelfile import export_model

    def mlp(sizes: list[int], seed: int) -> torch.nn.Module:
        torch.manual_seed(seed)
        layers: list[torch.nn.Module] = []
        for a, b in itertools.pairwise(sizes):
            layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
        return torch.nn.Sequential(*layers[:-1]).eval()

    out = {}
    for key, sizes, seed in (("small1", SMALL, 1), ("small2", SMALL, 2),
                             ("heavy", [512, 2048, 2048, 512], 3)):
        model = mlp(sizes, seed)
        sample = np.random.default_rng(seed).normal(size=(16, sizes[0])).astype(np.float32)
        export_model(model, sample, root / key)
        torch.save(model.state_dict(), root / f"{key}.state.pt")
        out[key] = root / key
    return out


# the naive baseline server ------------------------------------------------------------


def naive_server(folder: Path, port: int) -> None:
    """Per-request inference inline on the event loop: parse, forward one request, answer."""
    from aiohttp import web

    from mldeck.core.modelfile import load_model

    model = load_model(folder)
    name = model.signature.inputs[0].name

    async def infer(request: web.Request) -> web.Response:
        body = await request.json()
        item = body["inputs"][0]
        x = np.asarray(item["data"], dtype=np.float32).reshape(item["shape"])
        out = model.predict({name: x})
        outputs = [{"name": k, "datatype": "FP32", "shape": list(v.shape), "data": v.ravel().tolist()}
                   for k, v in out.items()]
        return web.json_response({"model_name": "mlp", "outputs": outputs})

    app = web.Application()
    app.router.add_post("/v2/models/{name}/infer", infer)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


MLFLOW_SERVER = """
import sys, numpy, torch, mlflow.pytorch
state, out, layers = sys.argv[1], sys.argv[2], [int(x) for x in sys.argv[3].split(",")]
mods = []
for a, b in zip(layers, layers[1:]):
    mods += [torch.nn.Linear(a, b), torch.nn.ReLU()]
model = torch.nn.Sequential(*mods[:-1]).eval()
model.load_state_dict(torch.load(state))
mlflow.pytorch.save_model(model, out, input_example=numpy.zeros((2, layers[0]), numpy.float32))
"""


# the peers: the same MLP from the same weights, loaded in each peer's own environment --------------

PEER_MLP = """
import torch


def build(state, sizes):
    mods = []
    for a, b in zip(sizes, sizes[1:]):
        mods += [torch.nn.Linear(a, b), torch.nn.ReLU()]
    model = torch.nn.Sequential(*mods[:-1]).eval()
    model.load_state_dict(torch.load(state))
    return model
"""

MLSERVER_RUNTIME = """
import torch
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse

from peer_mlp import build


class MLP(MLModel):
    async def load(self) -> bool:
        extra = self.settings.parameters.extra
        self.model = build(extra["state"], extra["sizes"])
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        x = torch.from_numpy(NumpyCodec.decode_input(payload.inputs[0]))
        with torch.inference_mode():
            y = self.model(x).numpy()
        return InferenceResponse(model_name=self.name, outputs=[NumpyCodec.encode_output("output__0", y)])
"""

LITSERVE_SERVER = """
import sys

import litserve as ls
import torch

from peer_mlp import build


class MLP(ls.LitAPI):
    def setup(self, device):
        self.model = build(sys.argv[1], [int(x) for x in sys.argv[2].split(",")])

    def decode_request(self, request):
        item = request["inputs"][0]
        return torch.tensor(item["data"], dtype=torch.float32).reshape(item["shape"])

    def batch(self, inputs):
        return torch.cat(inputs)

    def predict(self, x):
        with torch.inference_mode():
            return self.model(x)

    def unbatch(self, output):
        return list(output.split(1))

    def encode_response(self, y):
        return {"outputs": [{"name": "output__0", "datatype": "FP32", "shape": list(y.shape),
                             "data": y.ravel().tolist()}]}


if __name__ == "__main__":
    server = ls.LitServer(MLP(max_batch_size=64, batch_timeout=0.001), accelerator="cpu")
    server.run(host="127.0.0.1", port=int(sys.argv[3]), generate_client_file=False, log_level="warning")
"""


# the load generator -------------------------------------------------------------------


def load_mode(url: str, body_file: Path, seconds: float, clients: int, out: Path) -> None:
    """Closed-loop clients for `seconds`; one row per request: start, latency, status."""
    import aiohttp

    body = body_file.read_bytes()
    rows: list[tuple[float, float, int]] = []

    async def client(session: aiohttp.ClientSession, until: float) -> None:
        while (t0 := time.perf_counter()) < until:
            try:
                async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as r:
                    await r.read()
                    status = r.status
            except aiohttp.ClientError:
                status = 0
            rows.append((t0, time.perf_counter() - t0, status))

    async def main() -> None:
        conn = aiohttp.TCPConnector(limit=clients)
        async with aiohttp.ClientSession(connector=conn) as session:
            until = time.perf_counter() + seconds
            await asyncio.gather(*(client(session, until) for _ in range(clients)))

    asyncio.run(main())
    np.save(out, np.array(rows, dtype=np.float64))


def drive(url: str, body: bytes, seconds: float, tmp: Path, clients: int = CLIENTS) -> dict[str, Any]:
    """Run the load generator process, then summarise its rows after the warm-up."""
    body_file, out = tmp / "body.json", tmp / "rows.npy"
    body_file.write_bytes(body)
    subprocess.run([sys.executable, __file__, "--load", url, "--body", str(body_file), "--seconds",
                    str(seconds + WARMUP_S), "--clients", str(clients), "--out", str(out)], check=True)
    rows = np.load(out)
    start = rows[:, 0].min() + WARMUP_S
    kept = rows[rows[:, 0] >= start]
    ok = kept[kept[:, 2] == 200]
    span = kept[:, 0].max() + kept[kept[:, 0].argmax(), 1] - start
    lat = ok[:, 1] * 1000
    return {
        "requests": len(kept), "rps": len(ok) / span, "errors": int((kept[:, 2] != 200).sum()),
        "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99)),
    }


# servers ----------------------------------------------------------------------------------


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 180, ready: bool = False) -> None:
    """Until the URL answers at all, or (ready) answers 200."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except urllib.error.HTTPError:
            if not ready:
                return
            time.sleep(0.2)
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer")



class Mldeck:
    """The real server process on a home whose manifest this benchmark writes."""

    def __init__(self, home: Path, device: str, *extra: str) -> None:
        self.home = home
        self.port = free_port()
        (home / "serving").mkdir(parents=True, exist_ok=True)
        self.log = open(home / "server.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mldeck.agent.serving", "--home", str(home), "--port", str(self.port),
             "--device", device, *extra],
            cwd=REPO, stdout=self.log, stderr=self.log,
        )
        self.url = f"http://127.0.0.1:{self.port}"
        wait_http(self.url + "/v2/health/live", self.proc)

    def serve(self, folder: Path, version: int) -> None:
        from mldeck.core.serving import Manifest, ServedModel, ServedVersion, encode_manifest
        from mldeck.core.track import write_atomic

        manifest = Manifest(written_at=time.time(), models={
            "mlp": ServedModel(aliases={"production": ServedVersion(version, str(folder))})})
        write_atomic(self.home / "serving" / "manifest.json", encode_manifest(manifest))
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            stats = json.loads(urllib.request.urlopen(self.url + "/mldeck/stats", timeout=5).read())
            if stats["models"].get("mlp", {}).get("aliases", {}).get("production") == version:
                return
            time.sleep(0.05)
        raise RuntimeError("the manifest was not applied")

    def metrics(self) -> str:
        return urllib.request.urlopen(self.url + "/metrics", timeout=5).read().decode()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def v2_body(features: int) -> bytes:
    x = np.random.default_rng(0).normal(size=(1, features)).astype(np.float32)
    return json.dumps({"inputs": [{"name": "input__0", "datatype": "FP32", "shape": [1, features],
                                   "data": x.ravel().tolist()}]}).encode()


def batch_histogram(text: str, version: int) -> dict[str, int]:
    """One version's mldeck_batch_size buckets as non-cumulative counts (le → executions)."""
    counts, prev = {}, 0
    for line in text.splitlines():
        if line.startswith("mldeck_batch_size_bucket") and f'version="{version}"' in line:
            le = line.split('le="')[1].split('"')[0]
            total = int(float(line.rsplit(" ", 1)[1]))
            if total - prev:
                counts[le] = total - prev
            prev = total
    return counts


def row(name: str, r: dict[str, Any]) -> str:
    p50 = f"{r['p50_ms']:.1f}" if r.get("p50_ms") is not None else "-"
    return (f"| {name} | {r['rps']:,.0f} | {p50} | {r['p99_ms']:.1f} | {r['errors']} |"
            + (f" {r['note']} |" if r.get("note") else " measured |"))


def run_mlflow(python: str, tmp: Path, seconds: float) -> dict[str, Any]:
    """`mlflow models serve` (its own environment) on the same weights, loaded the same way."""
    folder = tmp / "mlflow-model"
    subprocess.run([python, "-c", MLFLOW_SERVER, str(tmp / "models" / "small1.state.pt"),
                    str(folder), "32,256,256,2"], check=True)
    port = free_port()
    env = {**os.environ, "PATH": f"{Path(python).parent}:{os.environ['PATH']}"}
    mlflow = subprocess.Popen([str(Path(python).parent / "mlflow"), "models", "serve", "-m",
                               str(folder), "-p", str(port), "--env-manager", "local"],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    wait_http(f"http://127.0.0.1:{port}/ping", mlflow)
    x = np.random.default_rng(0).normal(size=(1, 32)).astype(np.float32)
    try:
        return drive(f"http://127.0.0.1:{port}/invocations", json.dumps({"inputs": x.tolist()}).encode(),
                     seconds, tmp)
    finally:
        os.killpg(mlflow.pid, 15)
        mlflow.wait()


class Peer:
    """A peer server in its own environment and process group, serving the small MLP on the v2 body."""

    def __init__(self, argv: list[str], cwd: Path, python: str, url: str, ready_url: str) -> None:
        env = {**os.environ, "PYTHONPATH": str(cwd.parent),
               "PATH": f"{Path(python).parent}:{os.environ['PATH']}"}
        self.log = open(cwd / "server.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=self.log, stderr=self.log,
                                     start_new_session=True)
        self.url = url
        try:
            wait_http(ready_url, self.proc, ready=True)
        except RuntimeError:
            self.stop()
            raise RuntimeError(f"{argv[0]} did not start; see {cwd / 'server.log'}") from None

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.log.close()


def peer_version(python: str, module: str) -> str:
    done = subprocess.run([python, "-c", f"import {module}; print({module}.__version__)"],
                          capture_output=True, text=True, check=True)
    return done.stdout.strip()


def peer_files(tmp: Path) -> Path:
    """The peers' code: the shared MLP builder beside each peer's server folder."""
    root = tmp / "peers"
    for name in ("mlserver", "litserve"):
        (root / name).mkdir(parents=True, exist_ok=True)
    (root / "peer_mlp.py").write_text(PEER_MLP)
    (root / "mlserver" / "runtime.py").write_text(MLSERVER_RUNTIME)
    (root / "litserve" / "server.py").write_text(LITSERVE_SERVER)
    return root


def start_mlserver(python: str, root: Path, state: Path) -> Peer:
    """`mlserver start` on a custom runtime, adaptive batching 64 / 1 ms, one inference worker (default)."""
    folder = root / "mlserver"
    port = free_port()
    (folder / "settings.json").write_text(json.dumps({  # its fastest here: no request log, metrics or gzip
        "http_port": port, "grpc_port": free_port(), "metrics_port": free_port(), "host": "127.0.0.1",
        "debug": False, "metrics_endpoint": None, "gzip_enabled": False}))
    (folder / "model-settings.json").write_text(json.dumps({
        "name": "mlp", "implementation": "runtime.MLP", "max_batch_size": 64, "max_batch_time": 0.001,
        "parameters": {"extra": {"state": str(state), "sizes": SMALL}}}))
    url = f"http://127.0.0.1:{port}"
    return Peer([str(Path(python).parent / "mlserver"), "start", str(folder)], folder, python,
                url + "/v2/models/mlp/infer", url + "/v2/models/mlp/ready")


def start_litserve(python: str, root: Path, state: Path) -> Peer:
    """A LitAPI with batch/unbatch, batching 64 / 1 ms, decoding the same v2 body."""
    folder = root / "litserve"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    return Peer([python, str(folder / "server.py"), str(state), ",".join(map(str, SMALL)), str(port)],
                folder, python, url + "/predict", url + "/health")


def run_peers(args: argparse.Namespace, tmp: Path, models: dict[str, Path], body: bytes) -> None:
    """Alternating rounds, each server started fresh for its turn; one table side by side, then ratios."""
    root = peer_files(tmp)
    state = tmp / "models" / "small1.state.pt"
    contenders: list[tuple[str, Any]] = [("mldeck", None)]
    if args.mlserver_python:
        contenders.append((f"MLServer {peer_version(args.mlserver_python, 'mlserver')}",
                           lambda: start_mlserver(args.mlserver_python, root, state)))
    if args.litserve_python:
        contenders.append((f"LitServe {peer_version(args.litserve_python, 'litserve')}",
                           lambda: start_litserve(args.litserve_python, root, state)))
    rounds: list[dict[str, dict[str, Any]]] = []
    for n in range(args.rounds):
        results: dict[str, dict[str, Any]] = {}
        for name, start in contenders:
            if start is None:
                server = Mldeck(tmp / f"home-peers-{n}", args.device)
                server.serve(models["small1"], 1)
                url = server.url + "/v2/models/mlp/infer"
            else:
                server = start()
                url = server.url
            load = os.getloadavg()[0]  # the box may be shared: what else ran is part of the figure
            try:
                results[name] = {**drive(url, body, args.seconds, tmp), "load": load}
            finally:
                server.stop()
            print(f"round {n + 1}, {name}: {results[name]['rps']:,.0f} req/s (load {load:.1f})", flush=True)
        rounds.append(results)
    names = [name for name, _ in contenders]
    print("\n## Small MLP 32→256→256→2 side by side: each with batching 64 / 1 ms, the same 64 clients\n")
    print("| round | " + " | ".join(f"{n} req/s | p50 ms | p99 ms" for n in names) + " | load at each turn |")
    print("| ---: |" + " ---: | ---: | ---: |" * len(names) + " --- |")
    for n, results in enumerate(rounds, start=1):
        cells = [f"{r['rps']:,.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f}" for r in results.values()]
        loads = " / ".join(f"{r['load']:.1f}" for r in results.values())
        print(f"| {n} | " + " | ".join(cells) + f" | {loads} |")
    errors = {name: sum(r[name]["errors"] for r in rounds) for name in names}
    print(f"\nfailed requests: {errors}")
    for name in names[1:]:
        ratios = [r["mldeck"]["rps"] / r[name]["rps"] for r in rounds]
        print(f"mldeck / {name}: {min(ratios):.1f}–{max(ratios):.1f}× req/s by round")
    print()


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--swap-seconds", type=float, default=30.0)
    p.add_argument("--mlflow-python", help="python of a venv with mlflow (and torch) installed")
    p.add_argument("--mlserver-python", help="python of a venv with mlserver (and torch) installed")
    p.add_argument("--litserve-python", help="python of a venv with litserve (and torch) installed")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds against MLServer and LitServe")
    p.add_argument("--peers-only", action="store_true", help="only the side by side with MLServer/LitServe")
    p.add_argument("--device", default="cpu", help="where mldeck runs the models (cpu, like the baselines)")
    p.add_argument("--naive-server", nargs=2, metavar=("FOLDER", "PORT"))
    p.add_argument("--load", metavar="URL")
    p.add_argument("--body")
    p.add_argument("--clients", type=int, default=CLIENTS)
    p.add_argument("--out")
    args = p.parse_args()
    if args.naive_server:
        naive_server(Path(args.naive_server[0]), int(args.naive_server[1]))
        return 0
    if args.load:
        load_mode(args.load, Path(args.body), args.seconds, args.clients, Path(args.out))
        return 0

    tmp = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    print(f"# serving benchmark, {time.strftime('%Y-%m-%d %H:%M')}, {len(os.sched_getaffinity(0))} CPUs, "
          f"mldeck on {args.device}, "
          f"{CLIENTS} closed-loop clients, {args.seconds:.0f}s measured after {WARMUP_S:.0f}s warm-up\n")
    models = make_models(tmp / "models")
    results: dict[str, dict[str, Any]] = {}
    body32 = v2_body(32)
    if args.mlserver_python or args.litserve_python:
        run_peers(args, tmp, models, body32)
    if args.peers_only:
        return 0

    server = Mldeck(tmp / "home", args.device)
    server.serve(models["small1"], 1)
    url = server.url + "/v2/models/mlp/infer"
    results["mldeck (dynamic batching)"] = drive(url, body32, args.seconds, tmp)
    small_hist = batch_histogram(server.metrics(), 1)

    port = free_port()
    naive = subprocess.Popen([sys.executable, __file__, "--naive-server", str(models["small1"]), str(port)],
                             cwd=REPO)
    wait_http(f"http://127.0.0.1:{port}/", naive)
    results["naive aiohttp, per request"] = drive(f"http://127.0.0.1:{port}/v2/models/mlp/infer", body32,
                                                  args.seconds, tmp)
    naive.terminate()
    naive.wait()

    if args.mlflow_python:
        try:
            results["mlflow models serve"] = run_mlflow(args.mlflow_python, tmp, args.seconds)
        except (OSError, RuntimeError, subprocess.CalledProcessError) as exc:
            print(f"mlflow could not be measured ({exc}); quoting NOTES\n")
            results["mlflow models serve"] = QUOTED_MLFLOW
    else:
        results["mlflow models serve"] = QUOTED_MLFLOW


    print("## Small MLP 32→256→256→2, one row per request\n")
    print("| server | req/s | p50 ms | p99 ms | errors | |\n| --- | ---: | ---: | ---: | ---: | --- |")
    for name, r in results.items():
        print(row(name, r))
    ours = results["mldeck (dynamic batching)"]
    print(f"\nmldeck / naive: {ours['rps'] / results['naive aiohttp, per request']['rps']:.2f}x; "
          f"mldeck / mlflow: {ours['rps'] / results['mlflow models serve']['rps']:.1f}x; "
          f"batch sizes (le → executions): {small_hist}\n")

    heavy = v2_body(512)
    server.serve(models["heavy"], 3)
    on = drive(server.url + "/v2/models/mlp/infer", heavy, args.seconds, tmp)
    heavy_hist = batch_histogram(server.metrics(), 3)
    server.stop()
    off_server = Mldeck(tmp / "home-off", args.device, "--max-batch-size", "1")
    off_server.serve(models["heavy"], 3)
    off = drive(off_server.url + "/v2/models/mlp/infer", heavy, args.seconds, tmp)
    off_server.stop()
    print("## Compute-heavy MLP 512→2048→2048→512 (6.3M parameters)\n")
    print("| server | req/s | p50 ms | p99 ms | errors | |\n| --- | ---: | ---: | ---: | ---: | --- |")
    print(row("mldeck, batching on (max_batch_size 64)", on))
    print(row("mldeck, batching off (max_batch_size 1)", off))
    print(f"\nbatching on / off: {on['rps'] / off['rps']:.1f}x; batch sizes with batching on "
          f"(le → executions): {heavy_hist}\n")

    swap = Mldeck(tmp / "home-swap", args.device)
    swap.serve(models["small1"], 1)
    done = {"swaps": 0}

    async def flipper() -> None:
        version = 1
        end = time.monotonic() + args.swap_seconds + WARMUP_S
        while time.monotonic() < end - 2:
            await asyncio.sleep(2)
            version = 2 if version == 1 else 1
            await asyncio.to_thread(swap.serve, models[f"small{version}"], version)
            done["swaps"] += 1

    async def both() -> dict[str, Any]:
        flip = asyncio.create_task(flipper())
        result = await asyncio.to_thread(drive, swap.url + "/v2/models/mlp/infer", body32,
                                         args.swap_seconds, tmp)
        await flip
        return result

    swapped = asyncio.run(both())
    stats = json.loads(urllib.request.urlopen(swap.url + "/mldeck/stats", timeout=5).read())
    swap.stop()
    print(f"## Hot swap every 2 s during {args.swap_seconds:.0f} s of load\n")
    print("| server | req/s | p50 ms | p99 ms | errors | |\n| --- | ---: | ---: | ---: | ---: | --- |")
    print(row(f"mldeck, {done['swaps']} swaps (server counted {stats['swaps']})", swapped))
    print(f"\nfailed requests during swaps: {swapped['errors']} of {swapped['requests']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
