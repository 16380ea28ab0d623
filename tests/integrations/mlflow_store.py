"""The MLflow stores of the import test, made with the real mlflow package.

`python mlflow_store.py FOLDER` makes both in one process (MLflow and torch are imported once):
FOLDER/mlflow.db, a sqlite store, and FOLDER/mlruns, a file store, with their artifacts under
FOLDER/artifacts-db and FOLDER/artifacts-mlruns. Each holds two experiments: three runs with 1,500 points
each of two metrics (steps and timestamps of their own, a NaN among them), params and tags, one run FAILED
and one KILLED. The sqlite store also holds a registered PyTorch model `tiny` with two versions, only the
first with an input example, and the alias `champion` on it. Prints the MLflow run ids and versions of
each store as one JSON line: {"sqlite": {"uri", "runs", "versions"}, "mlruns": {...}}.
"""

from __future__ import annotations

import json
import math
import sys
import warnings
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag

from mldeck.integrations.mlflow import mlflow_pytorch

POINTS = 1_500
T0_MS = 1_700_000_000_000


def log_runs(client: Any, artifacts: str, made: dict[str, Any]) -> None:
    """The three runs of two experiments, their points logged in batches of MLflow's most (1,000)."""
    for n, (experiment, status) in enumerate(
        [("churn", "FINISHED"), ("churn", "FAILED"), ("vision", "KILLED")]
    ):
        exp = client.get_experiment_by_name(experiment)
        exp_id = exp.experiment_id if exp else client.create_experiment(experiment, artifacts)
        run = client.create_run(exp_id, start_time=T0_MS + n * 10_000_000, run_name=f"run-{n}",
                                tags={"team": "ml", "seed": str(n)})
        t0 = T0_MS + n * 10_000_000
        metrics = [
            Metric("loss", math.nan if (n, i) == (0, 7) else 1.0 / (i + 1 + n), t0 + i * 37, i)
            for i in range(POINTS)
        ] + [Metric("acc", i / POINTS, t0 + i * 41, 2 * i) for i in range(POINTS)]
        for start in range(0, len(metrics), 1000):
            client.log_batch(run.info.run_id, metrics=metrics[start:start + 1000])
        params = [Param("lr", str(0.01 * (n + 1))), Param("optimizer", "adam")]
        client.log_batch(run.info.run_id, params=params, tags=[RunTag("stage", "import-test")])
        client.set_terminated(run.info.run_id, status, end_time=T0_MS + n * 10_000_000 + 99_000)
        made["runs"].append(run.info.run_id)


def log_models(client: Any, made: dict[str, Any]) -> None:
    """Two versions of `tiny`, each from a run of its own; only the first has an input example."""
    import torch

    pytorch = mlflow_pytorch()
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2)).eval()
    example = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)
    for with_example in (True, False):
        with mlflow.start_run(experiment_id=client.get_experiment_by_name("churn").experiment_id,
                              run_name="tiny-model"):
            mlflow.log_param("hidden", "8")
            mlflow.log_metric("val_acc", 0.9)
            info = pytorch.log_model(
                model, name="model", input_example=example if with_example else None,
                serialization_format="pt2" if with_example else "pickle", pip_requirements=["torch"],
                registered_model_name="tiny",
            )
            made["runs"].append(mlflow.active_run().info.run_id)
            made["versions"].append(str(info.registered_model_version))
    client.set_registered_model_alias("tiny", "champion", made["versions"][0])


def make(uri: str, artifacts: Path, models: bool) -> dict[str, Any]:
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = MlflowClient()
    made: dict[str, Any] = {"uri": uri, "runs": [], "versions": []}
    log_runs(client, str(artifacts), made)
    if models:
        log_models(client, made)
    return made


def main(folder: Path) -> None:
    warnings.filterwarnings("ignore")
    stores = {
        "sqlite": make(f"sqlite:///{folder / 'mlflow.db'}", folder / "artifacts-db", models=True),
        "mlruns": make(str(folder / "mlruns"), folder / "artifacts-mlruns", models=False),
    }
    print(json.dumps(stores))


if __name__ == "__main__":
    main(Path(sys.argv[1]).resolve())
