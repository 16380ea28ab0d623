"""The pipelines service and its pipelines.* methods: run a pipeline's steps as jobs in order, gate,
register and promote.

A pipeline run is also a row in `runs` (experiment `pipelines`), the parent of its steps'
runs, so `models lineage` of the registered version walks from the model to its training
run to the pipeline and the alert that triggered it (the runs carry `pipeline` and
`alert_id` tags). Steps are launched and awaited through the Jobs service; registration and
promotion go through the Registry service, so their checks, gates, audit rows and `models`
events are the registry's own.
"""

from __future__ import annotations

import logging
import secrets
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mldeck.agent.ingest import parse_run_metrics
from mldeck.agent.service import Context, rpc
from mldeck.core import pipeline as pl
from mldeck.core.errors import Invalid, MldeckError, NotFound
from mldeck.core.jobs import LaunchParams
from mldeck.core.pipeline import PipelineListParams, PipelineRef, PipelineRunParams

if TYPE_CHECKING:
    from mldeck.agent.ingest import Ingest
    from mldeck.agent.jobs import Jobs
    from mldeck.agent.registry import Registry

log = logging.getLogger("mldeck.pipelines")
TOPIC = "pipelines"


class StepFailed(MldeckError):
    """A step ended the pipeline; the message says which and why."""


class Pipelines:
    """Starts pipeline runs as agent tasks and records each step as it goes."""

    def __init__(self, ctx: Context, jobs: Jobs, registry: Registry, ingest: Ingest) -> None:
        self.ctx = ctx
        self.store = ctx.store
        self.jobs = jobs
        self.registry = registry
        self.ingest = ingest
        self.running: dict[str, str] = {}
        ctx.hub.declare(TOPIC)

    def running_for(self, model: str) -> str | None:
        """The id of a pipeline still running for this model, if any."""
        return next((pid for pid, m in self.running.items() if m == model), None)

    async def start_file(self, path: Path, trigger: dict[str, Any] | None, actor: str) -> dict[str, Any]:
        spec, steps, text = pl.read_pipeline(path)
        return await self.start_spec(spec, steps, text, str(path), path.parent, trigger, actor)

    async def start_spec(
        self, spec: pl.PipelineSpec, steps: dict[str, pl.Step], text: str, file: str | None, base: Path,
        trigger: dict[str, Any] | None, actor: str,
    ) -> dict[str, Any]:
        """Record the pipeline and its parent run, then run it in the background."""
        pid = f"pl-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
        now = time.time()
        row = {
            "pipeline_id": pid, "name": spec.name, "file": file, "spec": text, "trigger": trigger or {},
            "actor": actor, "status": "running", "steps": [{"step": s, "run_id": None, "status": "pending"}
                                                           for s in steps],
            "gate": spec.register.gate if spec.register else None, "gate_failed": [], "model": spec.model,
            "registered_version": None, "promoted_alias": None, "message": None, "created_at": now,
            "ended_at": None,
        }
        tags = {"kind": "pipeline", **({"alert_id": str(trigger["alert_id"])} if trigger and
                                       trigger.get("alert_id") else {})}
        run = {"run_id": pid, "name": spec.name, "experiment": spec.experiment, "status": "running",
               "params": {"file": file, "trigger": trigger or {}}, "tags": tags, "created_at": now,
               "started_at": now, "managed": True, "command": ["pipeline", file or "(spec)"]}
        await self.ctx.db(pl.insert_pipeline, self.store, row, run)
        self.running[pid] = spec.model or ""
        self.publish(pid, spec.name, "running")
        self.ctx.tasks.spawn(self._run(pid, spec, steps, base, trigger, actor), f"pipeline-{pid}")
        return {k: row[k] for k in ("pipeline_id", "name", "status", "steps", "gate", "model", "trigger")}

    def publish(self, pid: str, name: str, status: str, **data: Any) -> None:
        self.ctx.hub.publish(TOPIC, {"pipeline_id": pid, "name": name, "status": status, **data})

    async def _update(self, pid: str, **fields: Any) -> None:
        await self.ctx.db(pl.update_pipeline, self.store, pid, **fields)

    async def _step(self, pid: str, name: str, step: pl.Step, spec: pl.PipelineSpec, base: Path,
                    trigger: dict[str, Any] | None, done: dict[str, str]) -> dict[str, Any]:
        cwd = str((base / spec.cwd).resolve()) if spec.cwd else None
        params = LaunchParams(
            **pl.launch_target(step.command), name=f"{spec.name}.{name}", experiment=spec.experiment,
            gpus=step.gpus, cwd=cwd, env={**step.env, **pl.step_env(pid, trigger, done)},
        )
        try:
            run_id = await self.jobs.launch(params)
        except MldeckError as exc:
            raise StepFailed(f"step {name} could not start: {exc.message}") from exc
        return {"step": name, "run_id": run_id, "status": "running"}

    async def _run(self, pid: str, spec: pl.PipelineSpec, steps: dict[str, pl.Step], base: Path,
                   trigger: dict[str, Any] | None, actor: str) -> None:
        rows = [{"step": s, "run_id": None, "status": "pending"} for s in steps]
        done: dict[str, str] = {}
        tags = {"pipeline": pid, **({"alert_id": str(trigger["alert_id"])} if trigger and
                                    trigger.get("alert_id") else {})}
        final: dict[str, Any] = {"status": "succeeded", "message": None}
        try:
            for i, (name, step) in enumerate(steps.items()):
                rows[i] = await self._step(pid, name, step, spec, base, trigger, done)
                await self._update(pid, steps=rows)
                self.publish(pid, spec.name, "running", step=name, run_id=rows[i]["run_id"])
                run = await self.jobs.wait(rows[i]["run_id"])
                run_dir = self.ctx.layout.run_dir(rows[i]["run_id"])
                await self.ingest.ingest_file(run_dir / "metrics.jsonl", parse_run_metrics)
                await self.ctx.db(pl.set_lineage, self.store, rows[i]["run_id"], pid, {**tags, "step": name})
                rows[i]["status"] = run.get("status")
                await self._update(pid, steps=rows)
                if run.get("status") != "succeeded":
                    why = run.get("status_reason") or run.get("status")
                    raise StepFailed(f"step {name} {run.get('status')}: {why} (`mldeck runs logs "
                                     f"{rows[i]['run_id']}`)")
                done[name] = str(run_dir)
            if spec.register is not None:
                final.update(await self._register(pid, spec, rows, actor))
        except StepFailed as exc:
            final = {"status": "failed", "message": exc.message}
        except Exception as exc:  # a background task: every failure ends the pipeline with its reason
            log.exception("pipeline %s failed", pid)
            final = {"status": "failed", "message": f"{type(exc).__name__}: {exc}"}
        finally:
            self.running.pop(pid, None)
        await self._update(pid, ended_at=time.time(), **final)
        self.publish(pid, spec.name, final["status"], message=final.get("message"),
                     version=final.get("registered_version"), alias=final.get("promoted_alias"))

    async def _register(self, pid: str, spec: pl.PipelineSpec, rows: list[dict[str, Any]],
                        actor: str) -> dict[str, Any]:
        """Gate, register the step's model and promote it. The job that exported the model has already
        compared the saved model's outputs with the live one's, so it is not re-loaded."""
        reg, model = spec.register, str(spec.model)
        assert reg is not None
        by_step = {r["step"]: r["run_id"] for r in rows}
        metric_runs = [by_step[s] for s in ("train", "evaluate") if s in by_step]
        latest = await self.ctx.read(self.store.latest_metrics, metric_runs)
        metrics = {k: v for run_id in metric_runs for k, v in latest.get(run_id, {}).items()}
        if reg.gate:
            failed = pl.check_gate(reg.gate, metrics, model)
            if failed:
                await self._update(pid, gate_failed=failed)
                return {"status": "gated", "message": f"gate {reg.gate!r} refused registration: "
                        + "; ".join(failed)}
        try:
            version = await self.registry.register(by_step[reg.step], model, reg.artifact, actor,
                                                   verified_by_job=True)
        except MldeckError as exc:
            return {"status": "failed", "message": f"registration failed: {exc.message}"}
        out: dict[str, Any] = {"registered_version": version["version"]}
        await self._update(pid, registered_version=version["version"])
        if reg.promote:
            reason = f"pipeline {pid}" + (f": gate {reg.gate} held ({_numbers(reg.gate, metrics)})"
                                          if reg.gate else "")
            try:
                await self.registry.promote(model, version["version"], reg.promote, actor, reason)
            except MldeckError as exc:
                return {**out, "status": "registered", "message": f"registered v{version['version']} but "
                        f"not promoted to {reg.promote}: {exc.message}"}
            out["promoted_alias"] = reg.promote
        return out

    @rpc("pipelines.run")
    async def run(self, p: PipelineRunParams) -> dict[str, Any]:
        if (p.file is None) == (p.spec is None):
            raise Invalid("give exactly one of file (a path on the agent's host) or spec (TOML)")
        actor = p.actor or "mldeck"
        home = self.ctx.layout.home
        if p.file is not None:
            path = Path(p.file).expanduser()
            return await self.start_file(path if path.is_absolute() else home / path, p.trigger, actor)
        spec, steps = pl.parse_pipeline(p.spec or "", "pipeline spec")
        return await self.start_spec(spec, steps, p.spec or "", None, home, p.trigger, actor)

    @rpc("pipelines.get")
    async def get(self, p: PipelineRef) -> dict[str, Any]:
        row = await self.ctx.read(pl.get_pipeline, self.store, p.pipeline_id)
        if row is None:
            raise NotFound(f"no pipeline run {p.pipeline_id!r} (`mldeck pipeline ls` lists them)")
        return row

    @rpc("pipelines.list")
    async def list(self, p: PipelineListParams) -> list[dict[str, Any]]:
        return await self.ctx.read(pl.list_pipelines, self.store, p.limit)


def _numbers(gate: str, metrics: dict[str, float]) -> str:
    return ", ".join(f"{r.key}={metrics[r.key]:.4g}" for r in pl.parse_gate(gate) if r.key in metrics)
