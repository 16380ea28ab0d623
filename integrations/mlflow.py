"""MLflow's history as mldeck's: each MLflow run becomes a run folder in the SDK's own line format.

The agent stays the only writer of its store: a run is written into a staging folder of the home and
renamed into runs/ whole, where the agent ingests it as it ingests any script's run. A run's id is
`mlflow-<MLflow run id>`, so importing again finds it and adds nothing. A registered PyTorch model
version is re-exported as an mldeck model folder inside its run when its input example (or a tensor
signature of fixed shape) gives a sample to verify it with; the command then registers it through the
agent. Other versions are import-only: their runs come along, the versions are named with the reason.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from mldeck.core.atomic import write_atomic
from mldeck.core.errors import Invalid, NotFound
from mldeck.core.paths import Layout
from mldeck.core.runlog import nonfinite_name

RUN_PREFIX = "mlflow-"
SOURCE_TAG = "mldeck.imported_from"
STATUS = {"FINISHED": "succeeded", "FAILED": "failed", "KILLED": "stopped"}
"""MLflow run statuses as mldeck's; a run still RUNNING (or SCHEDULED) in MLflow is imported as stopped."""
NOTE_SUFFIX = ".import-only.txt"
"""Next to where a version's export would be: why it is import-only, read again by later imports."""
STAGING = ".importing"
"""Where run folders are put together in the home before they are renamed into runs/."""
PAGE = 1000
LIGHTNING_AUTOLOG = "mlflow.pytorch._lightning_autolog"
"""What mlflow.pytorch imports when Lightning is installed, and with it pytorch_lightning (seconds)."""

Progress = Callable[[int, int], None]


@dataclass
class Version:
    """One registered model version and what becomes of it in mldeck."""

    name: str
    version: int
    mlflow_run_id: str | None
    run_id: str | None = None
    artifact: str | None = None
    """The mldeck model folder's path inside its run, when the version could be re-exported."""
    note: str | None = None
    """Why it is import-only."""
    aliases: list[str] = field(default_factory=list)


@dataclass
class Imported:
    runs: list[str] = field(default_factory=list)
    """mldeck run ids written by this import."""
    points: int = 0
    skipped: list[str] = field(default_factory=list)
    """One line per thing left out, saying why."""
    versions: list[Version] = field(default_factory=list)


def run_id_for(mlflow_run_id: str) -> str:
    return f"{RUN_PREFIX}{mlflow_run_id}"


def open_client(uri: str) -> Any:
    """An MlflowClient for a tracking URI: a local mlruns folder, sqlite:///..., or a server's URL."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # the import draws its own
    from mlflow import MlflowClient

    if "://" not in uri or uri.startswith("file:"):
        folder = Path(uri.removeprefix("file://").removeprefix("file:")).expanduser()
        if not folder.is_dir():
            raise NotFound(f"no MLflow folder at {folder} (give an mlruns folder, sqlite:///FILE or a URL)")
        uri = str(folder.resolve())
        os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"  # MLflow 3 reads its file store only when asked to
    elif uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise NotFound(f"no MLflow database at {uri.removeprefix('sqlite:///')}")
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _pages(search: Callable[..., Any], **kwargs: Any) -> Iterator[Any]:
    token = None
    while True:
        page = search(page_token=token, **kwargs)
        yield from page
        token = page.token
        if not token:
            return


def registered_versions(client: Any) -> list[Version]:
    """Every registered model version, oldest first within each model, with the aliases naming it."""
    out = []
    for model in _pages(client.search_registered_models, max_results=100):
        by_version: dict[str, list[str]] = {}
        for alias, version in (model.aliases or {}).items():
            by_version.setdefault(str(version), []).append(alias)
        found = _pages(client.search_model_versions, filter_string=f"name='{model.name}'", max_results=PAGE)
        for mv in sorted(found, key=lambda v: int(v.version)):
            out.append(Version(model.name, int(mv.version), mv.run_id or None,
                               aliases=sorted(by_version.get(str(mv.version), []))))
    return out


def import_store(client: Any, layout: Layout, progress: Progress | None = None) -> Imported:
    """Write every run not imported before; re-export the registered versions of the runs written."""
    from mlflow.entities import ViewType

    result = Imported(versions=registered_versions(client))
    by_run: dict[str, list[Version]] = {}
    for version in result.versions:
        if version.mlflow_run_id:
            by_run.setdefault(version.mlflow_run_id, []).append(version)
        else:
            version.note = "it has no MLflow run to import it with"
    experiments = list(_pages(client.search_experiments, view_type=ViewType.ALL, max_results=PAGE))
    runs = [
        (experiment, run)
        for experiment in experiments
        for run in _pages(client.search_runs, experiment_ids=[experiment.experiment_id],
                          run_view_type=ViewType.ALL, max_results=PAGE)
    ]
    layout.runs.mkdir(parents=True, exist_ok=True)
    for done, (experiment, run) in enumerate(runs, start=1):
        mlflow_id = run.info.run_id
        run_id = run_id_for(mlflow_id)
        versions = by_run.pop(mlflow_id, [])
        for version in versions:
            version.run_id = run_id
        if run.info.lifecycle_stage == "deleted" or experiment.lifecycle_stage == "deleted":
            result.skipped.append(f"run {mlflow_id} ({run.info.run_name}): deleted in MLflow")
            for version in versions:
                version.note = "its run is deleted in MLflow"
        elif layout.run_dir(run_id).exists():
            result.skipped.append(f"run {mlflow_id} ({run.info.run_name}): imported before as {run_id}")
            for version in versions:
                _find_export(layout.run_dir(run_id), version)
        else:
            result.points += _write_run(client, layout, experiment.name, run, versions)
            result.runs.append(run_id)
        if progress is not None:
            progress(done, len(runs))
    for versions in by_run.values():
        for version in versions:
            version.note = f"its run {version.mlflow_run_id} is not in this store"
    with contextlib.suppress(OSError):  # left only if a run is being put together there right now
        (layout.home / STAGING).rmdir()
    return result


def _find_export(run_dir: Path, version: Version) -> None:
    """A version whose run came with an earlier import: its export, or the note on why there is none."""
    artifact = _artifact_name(version)
    if (run_dir / artifact).is_dir():
        version.artifact = artifact
        return
    try:
        version.note = (run_dir / f"{artifact}{NOTE_SUFFIX}").read_text().strip()
    except OSError:
        version.note = "its run was imported before it was registered in MLflow: it has no export"


def _artifact_name(version: Version) -> str:
    return f"artifacts/mlflow-{version.name}-v{version.version}"


def _write_run(client: Any, layout: Layout, experiment: str, run: Any, versions: list[Version]) -> int:
    """Put the run folder together in staging, then rename it into runs/; the points it holds."""
    info, data = run.info, run.data
    run_id = run_id_for(info.run_id)
    tags = dict(data.tags)
    tags[SOURCE_TAG] = f"mlflow run {info.run_id}"
    started = info.start_time / 1000 if info.start_time else None
    spec = {
        "run_id": run_id, "name": info.run_name or tags.get("mlflow.runName") or info.run_id,
        "experiment": experiment, "params": dict(data.params), "tags": tags,
        "git_sha": tags.get("mlflow.source.git.commit"), "git_dirty": None, "data_hash": None,
        "host": None, "user": info.user_id or tags.get("mlflow.user"), "created_at": started,
        "command": [tags["mlflow.source.name"]] if tags.get("mlflow.source.name") else [],
    }
    lines: list[dict[str, Any]] = [{"t": started or 0.0, "e": "init", "d": {k: v for k, v in spec.items()
                                                                        if k != "run_id"}}]
    for key in sorted(data.metrics):
        for point in client.get_metric_history(info.run_id, key):
            value = point.value if point.value - point.value == 0.0 else nonfinite_name(point.value)
            lines.append({"t": point.timestamp / 1000, "s": point.step, "m": {key: value}})
    points = len(lines) - 1
    status = STATUS.get(info.status, "stopped")
    ended = info.end_time / 1000 if info.end_time else started or 0.0
    lines.append({"t": ended, "e": "finish", "d": {
        "status": status, "reason": f"imported from MLflow, where it is {info.status}", "stop_seen": False}})

    staging = layout.home / STAGING
    staging.mkdir(exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=f"{run_id}-", dir=staging))
    try:
        write_atomic(folder / "run.json", msgspec.json.encode(spec))
        write_atomic(folder / "metrics.jsonl", msgspec.json.Encoder().encode_lines(lines))
        if versions:
            (folder / "artifacts").mkdir()
        for version in versions:
            try:
                _export_version(client, version, folder / _artifact_name(version))
                version.artifact = _artifact_name(version)
            except Invalid as exc:
                version.note = exc.message
                write_atomic(folder / f"{_artifact_name(version)}{NOTE_SUFFIX}", f"{exc.message}\n".encode())
        os.rename(folder, layout.run_dir(run_id))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return points


def _export_version(client: Any, version: Version, dest: Path) -> None:
    """Re-export a PyTorch-flavour version as an mldeck model folder checked on its sample; else Invalid."""
    import mlflow
    from mlflow.models import Model

    with tempfile.TemporaryDirectory() as tmp:
        uri = client.get_model_version_download_uri(version.name, str(version.version))
        local = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp)
        meta = Model.load(local)
        if "pytorch" not in meta.flavors:
            flavours = ", ".join(sorted(f for f in meta.flavors if f != "python_function")) or "pyfunc"
            raise Invalid(f"a {flavours} model: only PyTorch models are re-exported")
        sample = meta.load_input_example(local)
        if sample is None:
            sample = _sample_from_signature(meta)
        if sample is None:
            raise Invalid("its PyTorch model has no input example and no fixed-shape tensor signature to "
                          "check a re-export with")
        try:
            _export_pytorch(local, sample, dest)
        except Exception as exc:  # the model's own code or format: whatever it is, the version stays behind
            why = f"{type(exc).__name__}: {exc}"
            raise Invalid(f"its PyTorch model could not be re-exported: {why}") from None


def mlflow_pytorch() -> Any:
    """mlflow.pytorch without its Lightning autologging, which an import never uses; a pickled
    LightningModule still imports Lightning itself when it is loaded."""
    held = LIGHTNING_AUTOLOG not in sys.modules
    if held:
        sys.modules[LIGHTNING_AUTOLOG] = None  # its import raises ImportError, which mlflow.pytorch allows
    try:
        import mlflow.pytorch
    finally:
        if held:
            del sys.modules[LIGHTNING_AUTOLOG]
    return mlflow.pytorch


def _export_pytorch(local: str, sample: Any, dest: Path) -> None:
    from mldeck.core import modelfile

    model = mlflow_pytorch().load_model(local, map_location="cpu")
    with contextlib.suppress(NotImplementedError):  # a pt2 program is traced already: it has no modes
        model.eval()
    modelfile.export_model(model, sample, dest)


def _sample_from_signature(meta: Any) -> Any:
    """Zeros shaped by a tensor signature with one input of fixed shape (but the batch), else None."""
    import numpy as np
    from mlflow.types.schema import TensorSpec

    inputs = meta.signature.inputs.inputs if meta.signature is not None else []
    if len(inputs) != 1 or not isinstance(inputs[0], TensorSpec):
        return None
    shape = inputs[0].shape
    if any(d < 0 for d in shape[1:]):
        return None
    return np.zeros((1, *shape[1:]), dtype=inputs[0].type)
