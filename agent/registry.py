"""The models.* methods: register a run's model, move aliases through their gates, audit it all.

Registration verifies the artifact in a child process (`python -m mldeck.core.modelfile verify`),
because the agent never imports torch, then copies it into models/<name>/<version>/.
Every committed change is published once on the `models` topic, after its transaction,
so the model server and the TUI see an alias move as one event, never a half state.
Runs that call `run.register_model(...)` are registered when their event is ingested.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import json
import logging
import os
import secrets
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mldeck.core import registry
from mldeck.core.errors import Conflict, Invalid, MldeckError, NotFound
from mldeck.core.registry import (
    ArchiveParams,
    AuditParams,
    GetParams,
    LineageParams,
    ModelsListParams,
    PromoteParams,
    RegisterParams,
    RollbackParams,
    VersionsParams,
)

if TYPE_CHECKING:
    from mldeck.agent.daemon import Agent
    from mldeck.agent.rpc import Connection

log = logging.getLogger("mldeck.registry")

TOPIC = "models"
EVENT_FIELDS = ("name", "alias", "version", "from_version", "action")
VERIFY_TIMEOUT_S = 300.0
REFERENCE_FILE = "reference.parquet"
REFUSED_STATUSES = {"failed", "queued"}
_PACKAGE_ROOT = str(Path(registry.__file__).resolve().parent.parent)


async def verify_artifact(folder: Path) -> dict[str, Any]:
    """Load the folder in a child process and re-run its stored sample; the signature if it matches."""
    path = os.pathsep.join(filter(None, [_PACKAGE_ROOT, os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mldeck.core.modelfile", "verify", str(folder),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), VERIFY_TIMEOUT_S)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise Invalid(
            f"verifying {folder} took over {VERIFY_TIMEOUT_S:.0f}s; refused"
        ) from None
    lines = out.decode(errors="replace").strip().splitlines()
    try:
        result = json.loads(lines[-1])
    except (IndexError, ValueError):
        tail = (err.decode(errors="replace").strip().splitlines() or ["no output"])[-1]
        raise Invalid(f"could not verify the model in {folder}: {tail}") from None
    if not result.get("ok"):
        raise Invalid(f"model artifact {folder} refused: {result.get('message')}")
    return result["signature"]


def exported_signature(folder: Path) -> dict[str, Any]:
    """The signature a job's export_model wrote: it has just compared the saved model's outputs with
    the live model's in the job itself, so re-loading it here would only repeat that check."""
    try:
        return json.loads((folder / "signature.json").read_text())
    except (OSError, ValueError) as exc:
        raise Invalid(f"{folder} has no readable signature.json: {exc}") from None


def build_profile(folder: Path) -> dict[str, Any] | None:
    """reference.json (per-column summary) next to the reference sample, for drift; None if no sample."""
    parquet = folder / REFERENCE_FILE
    if not parquet.is_file():
        return None
    import pyarrow.parquet as pq

    from mldeck.core.drift import ReferenceProfile

    try:
        table = pq.read_table(parquet)
        frame = {name: table.column(name).to_numpy(zero_copy_only=False) for name in table.column_names}
        profile = ReferenceProfile.build(frame)
        profile.save(folder)
    except (OSError, ValueError) as exc:
        raise Invalid(f"{REFERENCE_FILE} next to the model cannot be used: {exc}") from None
    summary = profile.to_dict()
    return {"n_rows": summary["n_rows"], "sample_rows": summary["sample_rows"],
            "columns": list(summary["columns"])}


def register(agent: Agent) -> None:
    store = agent.store
    d = agent.dispatcher
    agent.topics.add(TOPIC)
    agent_user = getpass.getuser()
    for stale in agent.layout.models.glob("*/.incoming-*"):  # copies cut short by a crash
        shutil.rmtree(stale, ignore_errors=True)

    def publish(result: dict[str, Any]) -> None:
        agent.hub.publish(TOPIC, {k: result.get(k) for k in EVENT_FIELDS})

    async def call(fn: Any, *args: Any, write: bool = False) -> Any:
        return await (agent.db if write else agent.read)(fn, store, *args)

    async def do_register(
        run_id: str, name: str, artifact: str | None, actor: str, verified_by_job: bool = False
    ) -> dict[str, Any]:
        try:
            registry.check_model_name(name)
            run_dir = agent.layout.run_dir(run_id)
        except ValueError as exc:
            raise Invalid(str(exc)) from None
        run = await agent.read(store.get_run, run_id)
        if run is None:
            raise NotFound(f"no run {run_id!r} on this host (`mldeck runs ls` lists them)")
        if run.get("status") in REFUSED_STATUSES:
            why = f": {run['status_reason']}" if run.get("status_reason") else ""
            raise Conflict(
                f"run {run_id} is {run['status']}{why}; only a trained model can be registered"
            )
        existing = await agent.read(registry.version_of_run, store, name, run_id)
        if existing is not None:
            raise Conflict(f"run {run_id} is already version {existing} of {name!r}")
        source = Path(artifact) if artifact else run_dir / "artifacts" / "model"
        if not source.is_absolute():
            source = run_dir / source
        if not source.is_dir():
            raise NotFound(
                f"no model folder at {source}; export one with run.register_model(...) in the "
                "training script, or pass --artifact FOLDER"
            )
        signature = exported_signature(source) if verified_by_job else await verify_artifact(source)
        models_dir = agent.layout.models
        staged = models_dir / name / f".incoming-{secrets.token_hex(4)}"
        try:
            try:
                await asyncio.to_thread(shutil.copytree, source, staged)
            except OSError as exc:
                raise Invalid(f"could not copy {source} into the registry: {exc}") from None
            profile = await asyncio.to_thread(build_profile, staged)
            details = {"source": str(source), "reference": profile}
            row = await agent.db(
                registry.register_version, store, models_dir, name, run, staged, signature, actor, details
            )
        finally:
            with contextlib.suppress(FileNotFoundError):
                await asyncio.to_thread(shutil.rmtree, staged)
        row["reference"] = profile
        row["notes"] = [] if profile else [
            f"no {REFERENCE_FILE} next to the model: this version has no drift reference"
        ]
        publish({"name": name, "version": row["version"], "action": "register"})
        return row

    async def models_register(p: RegisterParams, conn: Connection) -> dict[str, Any]:
        return await do_register(p.run_id, p.name, p.artifact, p.actor or agent_user)

    async def models_list(p: ModelsListParams, conn: Connection) -> list[dict[str, Any]]:
        rows = await call(registry.list_models)
        return rows if p.include_archived else [r for r in rows if r["archived"] < r["versions"]]

    async def models_versions(p: VersionsParams, conn: Connection) -> list[dict[str, Any]]:
        return await call(registry.list_versions, p.name)

    async def models_get(p: GetParams, conn: Connection) -> dict[str, Any]:
        return await call(registry.get_version, p.name, p.version, p.alias)

    async def models_promote(p: PromoteParams, conn: Connection) -> dict[str, Any]:
        gate = registry.gate_for(agent.config.registry, p.name, p.alias)
        if p.dry_run:
            return await call(registry.preview_promotion, p.name, p.version, p.alias, gate)
        result = await call(
            registry.promote, p.name, p.version, p.alias, p.actor or agent_user, gate, p.reason, p.force,
            write=True,
        )
        if result["changed"]:
            publish(result)
        return result

    async def models_rollback(p: RollbackParams, conn: Connection) -> dict[str, Any]:
        result = await call(registry.rollback, p.name, p.alias, p.actor or agent_user, p.reason, write=True)
        publish(result)
        return result

    async def models_archive(p: ArchiveParams, conn: Connection) -> dict[str, Any]:
        result = await call(registry.archive, p.name, p.version, p.actor or agent_user, p.reason, write=True)
        publish(result)
        return result

    async def models_audit(p: AuditParams, conn: Connection) -> list[dict[str, Any]]:
        if not 1 <= p.limit <= 100_000:
            raise Invalid("limit must be between 1 and 100000")
        return await call(registry.audit_rows, p.name, p.limit)

    async def models_lineage(p: LineageParams, conn: Connection) -> dict[str, Any]:
        return await call(registry.lineage, p.name, p.version)

    async def register_from_event(run_id: str, data: dict[str, Any]) -> None:
        name = str(data.get("name"))
        try:
            row = await do_register(
                run_id, name, data.get("artifact"), str(data.get("actor") or agent_user), verified_by_job=True
            )
            log.info("registered %s v%d from run %s", name, row["version"], run_id)
        except Exception as exc:  # a background task: every failure is logged and published, never lost
            if not isinstance(exc, MldeckError):
                log.exception("registering %r from run %s failed", name, run_id)
            log.warning("run %s asked to register %r: %s", run_id, name, exc)
            agent.hub.publish(TOPIC, {"name": name, "alias": None, "version": None, "from_version": None,
                                      "action": "register_failed", "run_id": run_id, "message": str(exc)})

    requests: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()

    async def register_in_order() -> None:
        """One at a time, in the order the runs asked: versions are numbered as the events came."""
        while True:
            run_id, data = await requests.get()
            await register_from_event(run_id, data)

    def on_run_event(event: dict[str, Any]) -> None:
        if event.get("event") == "register_model":
            requests.put_nowait((event["run_id"], event.get("data") or {}))

    agent.spawn(register_in_order(), "register-models")

    agent.hub.on("run.event", on_run_event)
    d.add("models.register", RegisterParams, models_register)
    d.add("models.list", ModelsListParams, models_list)
    d.add("models.versions", VersionsParams, models_versions)
    d.add("models.get", GetParams, models_get)
    d.add("models.promote", PromoteParams, models_promote)
    d.add("models.rollback", RollbackParams, models_rollback)
    d.add("models.archive", ArchiveParams, models_archive)
    d.add("models.audit", AuditParams, models_audit)
    d.add("models.lineage", LineageParams, models_lineage)
