"""The pipelines.* methods: run a pipeline's steps as jobs in order, gate, register and promote.

A pipeline run is also a row in `runs` (experiment `pipelines`), the parent of its steps'
runs, so `models lineage` of the registered version walks from the model to its training
run to the pipeline and the alert that triggered it (the runs carry `pipeline` and
`alert_id` tags). Registration goes through the registry's `register_model` run event (as if
the training job had called `run.register_model`), promotion through `models.promote`, so
their checks, gates, audit rows and `models` events are the registry's own.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mldeck.agent.ingest import parse_run_metrics
from mldeck.core import pipeline as pl
from mldeck.core import registry
from mldeck.core.errors import Invalid, MldeckError, NotFound
from mldeck.core.jobs import LaunchParams
from mldeck.core.pipeline import PipelineError, PipelineListParams, PipelineRef, PipelineRunParams
from mldeck.core.registry import PromoteParams

if TYPE_CHECKING:
    from mldeck.agent.daemon import Agent
    from mldeck.agent.rpc import Connection

log = logging.getLogger("mldeck.pipelines")
TOPIC = "pipelines"
REGISTER_TIMEOUT_S = 600.0


class StepFailed(Exception):
    """A step or the registration ended the pipeline; the message says which and why."""


class Pipelines:
    """Starts pipeline runs as agent tasks and records each step as it goes."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.running: dict[str, str] = {}
        self._waiting: dict[str, list[asyncio.Future[dict[str, Any]]]] = {}
        agent.hub.on("models", self._on_models)

    def running_for(self, model: str) -> str | None:
        """The id of a pipeline still running for this model, if any."""
        return next((pid for pid, m in self.running.items() if m == model), None)

    async def start_file(self, path: Path, trigger: dict[str, Any] | None, actor: str) -> dict[str, Any]:
        spec, steps, text = pl.read_pipeline(path)
        return await self.start(spec, steps, text, str(path), path.parent, trigger, actor)

    async def start(
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
        await self.agent.db(pl.insert_pipeline, self.agent.store, row, run)
        self.running[pid] = spec.model or ""
        self.publish(pid, spec.name, "running")
        self.agent.spawn(self._run(pid, spec, steps, base, trigger, actor), f"pipeline-{pid}")
        return {k: row[k] for k in ("pipeline_id", "name", "status", "steps", "gate", "model", "trigger")}

    def publish(self, pid: str, name: str, status: str, **data: Any) -> None:
        self.agent.hub.publish(TOPIC, {"pipeline_id": pid, "name": name, "status": status, **data})

    async def _update(self, pid: str, **fields: Any) -> None:
        await self.agent.db(pl.update_pipeline, self.agent.store, pid, **fields)

    async def _call(self, method: str, params: Any) -> Any:
        """A registry method in-process: the same checks, audit rows and events as over RPC."""
        handler = self.agent.dispatcher.methods[method][1]
        return await handler(params, None)  # type: ignore[arg-type]

    async def _step(self, pid: str, name: str, step: pl.Step, spec: pl.PipelineSpec, base: Path,
                    trigger: dict[str, Any] | None, done: dict[str, str]) -> dict[str, Any]:
        cwd = str((base / spec.cwd).resolve()) if spec.cwd else None
        params = LaunchParams(
            **pl.launch_target(step.command), name=f"{spec.name}.{name}", experiment=spec.experiment,
            gpus=step.gpus, cwd=cwd, env={**step.env, **pl.step_env(pid, trigger, done)},
        )
        try:
            run_id = await self.agent.jobs.launch(params)  # type: ignore[attr-defined]
        except ValueError as exc:
            raise StepFailed(f"step {name} could not start: {exc}") from None
        return {"step": name, "run_id": run_id, "status": "running"}

    async def _run(self, pid: str, spec: pl.PipelineSpec, steps: dict[str, pl.Step], base: Path,
                   trigger: dict[str, Any] | None, actor: str) -> None:
        agent, store = self.agent, self.agent.store
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
                run = await agent.jobs.wait(rows[i]["run_id"])  # type: ignore[attr-defined]
                run_dir = agent.layout.run_dir(rows[i]["run_id"])
                await agent.ingest.ingest_file(run_dir / "metrics.jsonl", parse_run_metrics)
                await agent.db(pl.set_lineage, store, rows[i]["run_id"], pid, {**tags, "step": name})
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
            final = {"status": "failed", "message": str(exc)}
        except Exception as exc:  # a background task: every failure ends the pipeline with its reason
            log.exception("pipeline %s failed", pid)
            final = {"status": "failed", "message": f"{type(exc).__name__}: {exc}"}
        finally:
            self.running.pop(pid, None)
        await self._update(pid, ended_at=time.time(), **final)
        self.publish(pid, spec.name, final["status"], message=final.get("message"),
                     version=final.get("registered_version"), alias=final.get("promoted_alias"))

    def _on_models(self, event: dict[str, Any]) -> None:
        for fut in self._waiting.pop(str(event.get("name")), []):
            if not fut.done():
                fut.set_result(event)

    async def register_run(self, run_id: str, model: str, artifact: str, actor: str) -> dict[str, Any]:
        """Register the step's model as the SDK's `run.register_model` does: the job that exported it
        has already compared the saved model's outputs with the live one's, so it is not re-loaded."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + REGISTER_TIMEOUT_S
        self.agent.hub.publish("run.event", {"run_id": run_id, "event": "register_model", "t": time.time(),
                                             "data": {"name": model, "artifact": artifact, "actor": actor}})
        while True:
            fut: asyncio.Future[dict[str, Any]] = loop.create_future()
            self._waiting.setdefault(model, []).append(fut)
            version = await self.agent.read(registry.version_of_run, self.agent.store, model, run_id)
            if version is not None:
                return await self.agent.read(registry.get_version, self.agent.store, model, version)
            try:
                event = await asyncio.wait_for(fut, max(0.0, deadline - loop.time()))
            except TimeoutError:
                raise StepFailed(f"registering run {run_id} took over {REGISTER_TIMEOUT_S:.0f}s") from None
            if event.get("action") == "register_failed" and event.get("run_id") == run_id:
                raise StepFailed(f"registration failed: {event.get('message')}")

    async def _register(self, pid: str, spec: pl.PipelineSpec, rows: list[dict[str, Any]],
                        actor: str) -> dict[str, Any]:
        reg, model = spec.register, str(spec.model)
        assert reg is not None
        by_step = {r["step"]: r["run_id"] for r in rows}
        metric_runs = [by_step[s] for s in ("train", "evaluate") if s in by_step]
        latest = await self.agent.read(self.agent.store.latest_metrics, metric_runs)
        metrics = {k: v for run_id in metric_runs for k, v in latest.get(run_id, {}).items()}
        out: dict[str, Any] = {}
        if reg.gate:
            failed = pl.check_gate(reg.gate, metrics, model)
            if failed:
                await self._update(pid, gate_failed=failed)
                return {"status": "gated", "message": f"gate {reg.gate!r} refused registration: "
                        + "; ".join(failed)}
        version = await self.register_run(by_step[reg.step], model, reg.artifact, actor)
        out["registered_version"] = version["version"]
        await self._update(pid, registered_version=version["version"])
        if reg.promote:
            reason = f"pipeline {pid}" + (f": gate {reg.gate} held ({_numbers(reg.gate, metrics)})"
                                          if reg.gate else "")
            try:
                await self._call("models.promote", PromoteParams(
                    name=model, version=version["version"], alias=reg.promote, reason=reason, actor=actor))
            except MldeckError as exc:
                return {**out, "status": "registered", "message": f"registered v{version['version']} but "
                        f"not promoted to {reg.promote}: {exc.message}"}
            out["promoted_alias"] = reg.promote
        return out


def _numbers(gate: str, metrics: dict[str, float]) -> str:
    return ", ".join(f"{r.key}={metrics[r.key]:.4g}" for r in pl.parse_gate(gate) if r.key in metrics)


def register(agent: Agent) -> None:
    pipelines = Pipelines(agent)
    agent.pipelines = pipelines  # type: ignore[attr-defined]
    agent.topics.add(TOPIC)

    async def run(p: PipelineRunParams, conn: Connection) -> dict[str, Any]:
        if (p.file is None) == (p.spec is None):
            raise Invalid("give exactly one of file (a path on the agent's host) or spec (TOML)")
        actor = p.actor or "mldeck"
        try:
            if p.file is not None:
                path = Path(p.file).expanduser()
                if not path.is_absolute():
                    path = agent.layout.home / path
                return await pipelines.start_file(path, p.trigger, actor)
            if len(p.spec or "") > pl.MAX_FILE_BYTES:
                raise PipelineError(f"the pipeline spec is over {pl.MAX_FILE_BYTES // 1024} KiB")
            spec, steps = pl.parse_pipeline(p.spec or "", "pipeline spec")
            return await pipelines.start(spec, steps, p.spec or "", None, agent.layout.home, p.trigger, actor)
        except PipelineError as exc:
            raise Invalid(str(exc)) from None

    async def get(p: PipelineRef, conn: Connection) -> dict[str, Any]:
        row = await agent.read(pl.get_pipeline, agent.store, p.pipeline_id)
        if row is None:
            raise NotFound(f"no pipeline run {p.pipeline_id!r} (`mldeck pipeline ls` lists them)")
        return row

    async def list_(p: PipelineListParams, conn: Connection) -> list[dict[str, Any]]:
        if not 1 <= p.limit <= 10_000:
            raise Invalid("limit must be between 1 and 10000")
        return await agent.read(pl.list_pipelines, agent.store, p.limit)

    agent.dispatcher.add("pipelines.run", PipelineRunParams, run)
    agent.dispatcher.add("pipelines.get", PipelineRef, get)
    agent.dispatcher.add("pipelines.list", PipelineListParams, list_)
