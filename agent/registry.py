"""The registry service and its models.* methods: register a run's model, move aliases through
their gates, audit it all.

Registration verifies the artifact in the agent's one long-lived model verifier process
(`python -m mldeck.core.modelfile serve`: the agent never imports torch, and that process imports it
once, not once per registration), then copies it into models/<name>/<version>/.
Every committed change is published once on the `models` topic, after its transaction,
so the model server and the TUI see an alias move as one event, never a half state.
Runs that call `run.register_model(...)` are registered when their event is ingested; pipelines
and the monitor call register / promote / rollback here directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import json
import logging
import secrets
import shutil
from pathlib import Path
from typing import Any

from mldeck.agent.runs import no_run
from mldeck.agent.service import Context, rpc
from mldeck.agent.worker import ChildWorker
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
from mldeck.core.runlog import named
from mldeck.core.signature import REFERENCE_FILE

log = logging.getLogger("mldeck.registry")

TOPIC = "models"
EVENT_FIELDS = ("name", "alias", "version", "from_version", "action")
VERIFY_TIMEOUT_S = 300.0
REFUSED_STATUSES = {"failed", "queued"}


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

    from mldeck.core.drift import ReferenceProfile, table_frame

    try:
        profile = ReferenceProfile.build(table_frame(pq.read_table(parquet)))
        profile.save(folder)
    except (OSError, ValueError) as exc:
        raise Invalid(f"{REFERENCE_FILE} next to the model cannot be used: {exc}") from None
    summary = profile.to_dict()
    return {"n_rows": summary["n_rows"], "sample_rows": summary["sample_rows"],
            "columns": list(summary["columns"])}


def version_by_name(row: dict[str, Any]) -> dict[str, Any]:
    """A version for the wire: the metrics it copied from its run, NaN and infinities by name (as runs.get
    sends them; JSON has neither, and a null would read as "no value")."""
    return {**row, "metrics": named(row.get("metrics") or {})}


def preview_by_name(preview: dict[str, Any]) -> dict[str, Any]:
    """A promotion's preview for the wire: each metric's candidate, current and delta by name."""
    deltas = {key: named(delta) for key, delta in preview["deltas"].items()}
    return {**preview, "deltas": deltas}


class Registry:
    """Versions, aliases and the audit log: what `models.*`, pipelines and the monitor change them with."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.store = ctx.store
        self.user = getpass.getuser()
        self._requests: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
        self.verifier = ChildWorker(["mldeck.core.modelfile", "serve"], "the model verifier process",
                                    "verify-worker", ctx.tasks, VERIFY_TIMEOUT_S)
        ctx.hub.declare(TOPIC)

    async def start(self) -> None:
        for stale in self.ctx.layout.models.glob("*/.incoming-*"):  # copies cut short by a crash
            await asyncio.to_thread(shutil.rmtree, stale, ignore_errors=True)
        self.ctx.hub.on("run.event", self._on_run_event)
        self.ctx.tasks.spawn(self._register_in_order(), "register-models")

    async def stop(self) -> None:
        """The verifier process goes with the agent."""
        await self.verifier.stop()

    async def verify_artifact(self, folder: Path) -> dict[str, Any]:
        """Re-run the folder's stored sample in the verifier process; its signature if the outputs match."""
        result = await self.verifier.ask({"folder": str(folder)}, f"verifying {folder}")
        if not result.get("ok"):
            raise Invalid(f"model artifact {folder} refused: {result.get('message')}")
        return result["signature"]

    def _publish(self, result: dict[str, Any]) -> None:
        self.ctx.hub.publish(TOPIC, {k: result.get(k) for k in EVENT_FIELDS})

    async def register(
        self, run_id: str, name: str, artifact: str | None, actor: str, verified_by_job: bool = False
    ) -> dict[str, Any]:
        """Copy the run's model folder in as the next version of `name`; a job's own export is trusted,
        any other folder is verified by loading it in the verifier process first."""
        registry.check_model_name(name)
        run = await self.ctx.read(self.store.get_run, run_id)
        if run is None:
            raise no_run(run_id)
        if run.get("status") in REFUSED_STATUSES:
            why = f": {run['status_reason']}" if run.get("status_reason") else ""
            raise Conflict(
                f"run {run_id} is {run['status']}{why}; only a trained model can be registered"
            )
        existing = await self.ctx.read(registry.version_of_run, self.store, name, run_id)
        if existing is not None:
            raise Conflict(f"run {run_id} is already version {existing} of {name!r}")
        run_dir = self.ctx.layout.run_dir(run_id)
        source = Path(artifact) if artifact else run_dir / "artifacts" / "model"
        if not source.is_absolute():
            source = run_dir / source
        if not source.is_dir():
            raise NotFound(
                f"no model folder at {source}; export one with run.log_model(...) in the "
                "training script, or pass --artifact FOLDER"
            )
        signature = exported_signature(source) if verified_by_job else await self.verify_artifact(source)
        models_dir = self.ctx.layout.models
        staged = models_dir / name / f".incoming-{secrets.token_hex(4)}"
        try:
            try:
                await asyncio.to_thread(shutil.copytree, source, staged)
            except OSError as exc:
                raise Invalid(f"could not copy {source} into the registry: {exc}") from None
            profile = await asyncio.to_thread(build_profile, staged)
            details = {"source": str(source), "reference": profile}
            row = await self.ctx.db(registry.register_version, self.store, models_dir, name, run, staged,
                                    signature, actor, details)
        finally:
            with contextlib.suppress(FileNotFoundError):
                await asyncio.to_thread(shutil.rmtree, staged)
        row["reference"] = profile
        row["notes"] = [] if profile else [
            f"no {REFERENCE_FILE} next to the model: this version has no drift reference"
        ]
        self._publish({"name": name, "version": row["version"], "action": "register"})
        return row

    async def promote(
        self, name: str, version: int, alias: str, actor: str, reason: str | None = None, force: bool = False
    ) -> dict[str, Any]:
        """Point the alias at the version through the alias's gates (or past them, forced with a reason)."""
        gate = registry.gate_for(self.ctx.config.registry, name, alias)
        result = await self.ctx.db(registry.promote, self.store, name, version, alias, actor, gate, reason,
                                   force)
        if result["changed"]:
            self._publish(result)
        return result

    async def rollback(self, name: str, alias: str, actor: str, reason: str | None = None) -> dict[str, Any]:
        """Move the alias back to the version it held before."""
        result = await self.ctx.db(registry.rollback, self.store, name, alias, actor, reason)
        self._publish(result)
        return result

    async def archive(self, name: str, version: int, actor: str, reason: str | None = None) -> dict[str, Any]:
        """Retire a version that holds no alias."""
        result = await self.ctx.db(registry.archive, self.store, name, version, actor, reason)
        self._publish(result)
        return result

    @rpc("models.register")
    async def models_register(self, p: RegisterParams) -> dict[str, Any]:
        return version_by_name(await self.register(p.run_id, p.name, p.artifact, p.actor or self.user))

    @rpc("models.list")
    async def list(self, p: ModelsListParams) -> list[dict[str, Any]]:
        rows = await self.ctx.read(registry.list_models, self.store)
        return rows if p.include_archived else [r for r in rows if r["archived"] < r["versions"]]

    @rpc("models.versions")
    async def versions(self, p: VersionsParams) -> list[dict[str, Any]]:
        return [version_by_name(v) for v in await self.ctx.read(registry.list_versions, self.store, p.name)]

    @rpc("models.get")
    async def get(self, p: GetParams) -> dict[str, Any]:
        version = await self.ctx.read(registry.get_version, self.store, p.name, p.version, p.alias)
        return version_by_name(version)

    @rpc("models.promote")
    async def models_promote(self, p: PromoteParams) -> dict[str, Any]:
        if p.dry_run:
            gate = registry.gate_for(self.ctx.config.registry, p.name, p.alias)
            return preview_by_name(await self.ctx.read(registry.preview_promotion, self.store, p.name,
                                                       p.version, p.alias, gate))
        return await self.promote(p.name, p.version, p.alias, p.actor or self.user, p.reason, p.force)

    @rpc("models.rollback")
    async def models_rollback(self, p: RollbackParams) -> dict[str, Any]:
        if p.dry_run:
            return await self.ctx.read(registry.preview_rollback, self.store, p.name, p.alias)
        return await self.rollback(p.name, p.alias, p.actor or self.user, p.reason)

    @rpc("models.archive")
    async def models_archive(self, p: ArchiveParams) -> dict[str, Any]:
        return await self.archive(p.name, p.version, p.actor or self.user, p.reason)

    @rpc("models.audit")
    async def audit(self, p: AuditParams) -> list[dict[str, Any]]:
        return await self.ctx.read(registry.audit_rows, self.store, p.name, p.limit)

    @rpc("models.lineage")
    async def lineage(self, p: LineageParams) -> dict[str, Any]:
        info = await self.ctx.read(registry.lineage, self.store, p.name, p.version)
        return {**info, "version": version_by_name(info["version"])}

    def _on_run_event(self, event: dict[str, Any]) -> None:
        if event.get("event") == "register_model":
            self._requests.put_nowait((event["run_id"], event.get("data") or {}))

    async def _register_in_order(self) -> None:
        """One at a time, in the order the runs asked: versions are numbered as the events came."""
        while True:
            run_id, data = await self._requests.get()
            await self._register_from_event(run_id, data)

    async def _register_from_event(self, run_id: str, data: dict[str, Any]) -> None:
        name = str(data.get("name"))
        try:
            row = await self.register(run_id, name, data.get("artifact"), str(data.get("actor") or self.user),
                                      verified_by_job=True)
            log.info("registered %s v%d from run %s", name, row["version"], run_id)
        except Exception as exc:  # one run's request failing must not end the loop: logged and published
            if not isinstance(exc, MldeckError):
                log.exception("registering %r from run %s failed", name, run_id)
            log.warning("run %s asked to register %r: %s", run_id, name, exc)
            self.ctx.hub.publish(TOPIC, {"name": name, "alias": None, "version": None, "from_version": None,
                                         "action": "register_failed", "run_id": run_id, "message": str(exc)})
