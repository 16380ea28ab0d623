"""The drift monitor: judge each production version's traffic window by window, and act on it.

Every `monitor.interval_s` it looks for closed tumbling windows (time or rows, see
core.monitor) of each model's production version, tests every input column (an image's or a
sequence's summary features, core.summaries) and every output against the version's reference
profile (core.judge, core.drift; outputs against the model's stored sample outputs), scores
the labelled requests (accuracy, ECE), and writes one
drift_reports row per column plus one monitor_windows row, publishing on `drift`. Then the
model's policy (config `[monitor.models.NAME]`) may raise an alert (`alerts` topic), start
its retraining pipeline, or roll production back; each automatic action is audited by
`mldeck-monitor` with the numbers behind it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mldeck.agent.service import Context, rpc
from mldeck.core import monitor as mon
from mldeck.core.config import ModelPolicy
from mldeck.core.errors import Conflict, MldeckError, NotFound
from mldeck.core.judge import Reference, column_distribution, judge_window, load_reference
from mldeck.core.monitor import (
    ACTOR,
    AlertResolveParams,
    AlertsListParams,
    DriftCheckParams,
    DriftDistributionParams,
    DriftHistoryParams,
    DriftReportParams,
    DriftStatusParams,
)
from mldeck.core.pipeline import PipelineError
from mldeck.core.registry import check_model_name, get_version, list_models, open_alerts
from mldeck.core.serving import PRODUCTION

if TYPE_CHECKING:
    from mldeck.agent.pipelines import Pipelines
    from mldeck.agent.registry import Registry

log = logging.getLogger("mldeck.monitor")
TOPIC = "drift"
ALERTS = "alerts"
POLICY_WINDOWS = 50


class Monitor:
    """One per agent: the window loop, the policies, and the drift.* / alerts.* methods."""

    def __init__(self, ctx: Context, registry: Registry, pipelines: Pipelines) -> None:
        self.ctx = ctx
        self.store = ctx.store
        self.registry = registry
        self.pipelines = pipelines
        self.cfg = ctx.config.monitor
        self.spec = mon.parse_window(self.cfg.window)
        self.refs: dict[tuple[str, int], Reference | None] = {}
        self._lock = asyncio.Lock()
        ctx.hub.declare(TOPIC, ALERTS)

    async def start(self) -> None:
        if self.cfg.enabled:
            self.ctx.tasks.every(self.cfg.interval_s, self.tick, "monitor")

    async def reference(self, row: dict[str, Any]) -> Reference | None:
        key = (row["name"], row["version"])
        if key not in self.refs:
            try:
                self.refs[key] = await asyncio.to_thread(load_reference, row)
            except (OSError, ValueError) as exc:
                log.warning("%s v%d: reference profile unreadable: %s", *key, exc)
                self.refs[key] = None
            if self.refs[key] is None:
                log.warning("%s v%d has no usable reference profile: not monitored", *key)
        return self.refs[key]

    async def tick(self, name: str | None = None) -> list[dict[str, Any]]:
        """Judge every closed window of every production version (or of one model)."""
        async with self._lock:
            judged = []
            for row in await self.ctx.read(mon.production_versions, self.store):
                if name is None or row["name"] == name:
                    judged += await self.judge_model(row)
            return judged

    async def _windows(self, name: str, version: int, now: float) -> list[tuple[float, float]]:
        after = await self.ctx.read(mon.last_window_end, self.store, name, version)
        if self.spec.kind == "time":
            first = await self.ctx.read(mon.first_prediction_ts, self.store, name, version)
            if first is None:
                return []
            return mon.time_windows(first, after, now, self.spec.size, self.cfg.grace_s)
        size = int(self.spec.size)
        ts, rows = await self.ctx.read(mon.prediction_rows_after, self.store, name, version, after,
                                       size * 20 + 1)
        return [(a, b) for a, b, _ in mon.row_windows(ts, rows, size)]

    async def judge_model(self, row: dict[str, Any]) -> list[dict[str, Any]]:
        name, version = row["name"], row["version"]
        ref = await self.reference(row)
        if ref is None:
            return []
        policy = self.cfg.policy(name)
        judged = []
        for start, end in await self._windows(name, version, time.time()):
            rows, n_rows = await self.ctx.read(mon.window_rows, self.store, name, version, start, end,
                                               self.spec.kind == "rows")
            summary: dict[str, Any] = {"n_rows": n_rows, "n_requests": len(rows), "n_columns": 0}
            results: list[dict[str, Any]] = []
            if n_rows >= self.cfg.min_rows:
                try:
                    summary, results = await asyncio.to_thread(judge_window, ref, policy, rows,
                                                                self.cfg.column_types)
                except ValueError as exc:
                    log.warning("%s v%d window %.0f-%.0f not judged: %s", name, version, start, end, exc)
            now = time.time()
            summary = {"model": name, "version": version, "window_start": start, "window_end": end, "ts": now,
                       **summary}
            table = mon.report_table(name, version, start, end, now, results)
            await self.ctx.db(mon.save_window, self.store, summary, table)
            judged.append(summary)
            if results:
                self.ctx.hub.publish(TOPIC, {**summary, "columns": results})
                await self.apply_policy(name, version, policy, summary)
        return judged

    # policies -------------------------------------------------------------------------

    async def apply_policy(self, name: str, version: int, policy: ModelPolicy, last: dict[str, Any]) -> None:
        stored = await self.ctx.read(mon.recent_windows, self.store, name, version, POLICY_WINDOWS)
        windows = [w for w in stored if w["n_columns"]]
        streak = mon.trailing_true([bool(w["dataset_drifted"]) for w in windows])
        if policy.drift_windows and streak >= policy.drift_windows:
            recent = windows[-streak:]
            await self.alert(name, version, "drift", policy, (
                f"{name} v{version}: inputs drifted in {streak} consecutive windows "
                f"(≥ {policy.drift_share:.0%} of columns; last window {last['share_drifted']:.0%}: "
                f"{', '.join(last['drifted_columns'])})"
            ), {"consecutive_windows": streak, "required_windows": policy.drift_windows,
                "drift_share": policy.drift_share, "share_drifted": [w["share_drifted"] for w in recent],
                "window_ends": [w["window_end"] for w in recent], "drifted_columns": last["drifted_columns"],
                "since": recent[0]["window_start"]})
        accuracy = last.get("accuracy")
        if (policy.accuracy_floor is not None and accuracy is not None
                and last["n_labeled"] >= policy.min_labels and accuracy < policy.accuracy_floor):
            await self.alert(name, version, "accuracy", policy, (
                f"{name} v{version}: live accuracy {accuracy:.3f} on {last['n_labeled']} labelled rows is "
                f"below the floor {policy.accuracy_floor:g}"
            ), {"accuracy": accuracy, "floor": policy.accuracy_floor, "n_labeled": last["n_labeled"],
                "ece": last.get("ece"), "baseline": last.get("baseline"), "window_end": last["window_end"]})
        if policy.rollback:
            await self.maybe_rollback(name, version, policy)
        await self.resolve_cleared(name, version, policy, windows, last)

    async def resolve_cleared(self, name: str, version: int, policy: ModelPolicy,
                              windows: list[dict[str, Any]], last: dict[str, Any]) -> None:
        """Close the model's alerts whose condition has cleared on its production version."""
        reasons: dict[str, str] = {}
        clean = mon.trailing_true([not w["dataset_drifted"] for w in windows])
        if policy.drift_windows and clean >= policy.drift_windows:
            reasons["drift"] = (
                f"inputs of {name} v{version} matched its reference in {clean} consecutive windows "
                f"(last: {last['share_drifted']:.0%} of columns drifted; alert at {policy.drift_share:.0%})"
            )
        accuracy = last.get("accuracy")
        if (policy.accuracy_floor is not None and accuracy is not None
                and last["n_labeled"] >= policy.min_labels and accuracy >= policy.accuracy_floor):
            reasons["accuracy"] = (
                f"live accuracy of {name} v{version} is {accuracy:.3f} on {last['n_labeled']} labelled "
                f"rows, at or above the floor {policy.accuracy_floor:g}"
            )
        if not reasons:
            return
        for alert in await self.ctx.read(open_alerts, self.store, name):
            reason = reasons.get(alert["kind"])
            if reason is None:
                continue
            try:
                done = await self.ctx.db(mon.resolve_alert, self.store, alert["alert_id"], ACTOR, reason)
            except Conflict:
                continue  # resolved by hand meanwhile
            log.info("alert %s resolved: %s", alert["alert_id"], reason)
            self.ctx.hub.publish(ALERTS, done)

    async def alert(self, name: str, version: int, kind: str, policy: ModelPolicy | None, message: str,
                    details: dict[str, Any]) -> dict[str, Any] | None:
        """Raise one open alert per model version and kind; start the retraining pipeline if set."""
        if await self.ctx.read(mon.open_alert, self.store, name, version, kind) is not None:
            return None
        alert = await self.ctx.db(mon.raise_alert, self.store, name, version, kind, message, details)
        log.warning("alert %s: %s", alert["alert_id"], message)
        self.ctx.hub.publish(ALERTS, alert)
        if policy is not None and policy.retrain:
            await self.retrain(name, version, policy.retrain, alert)
        return alert

    async def retrain(self, name: str, version: int, file: str, alert: dict[str, Any]) -> None:
        path = Path(file).expanduser()
        path = path if path.is_absolute() else self.ctx.layout.home / path
        details: dict[str, Any] = {"alert_id": alert["alert_id"], "kind": alert["kind"], "file": str(path)}
        running = self.pipelines.running_for(name)
        if running:
            comment = f"retraining already running ({running}); not started again for {alert['alert_id']}"
            details["pipeline_id"] = running
        else:
            try:
                started = await self.pipelines.start_file(
                    path, {"alert_id": alert["alert_id"], "model": name, "kind": alert["kind"]}, ACTOR)
                details["pipeline_id"] = started["pipeline_id"]
                comment = f"started pipeline {started['pipeline_id']} ({path.name}) on {alert['alert_id']}"
            except PipelineError as exc:
                comment = f"retraining pipeline could not start: {exc}"
        log.info("%s: %s", name, comment)
        await self.ctx.db(mon.audit, self.store, ACTOR, "retrain", name, version, comment, details)

    async def maybe_rollback(self, name: str, version: int, policy: ModelPolicy) -> None:
        """Undo the last promotion to production when the new version does worse live than its predecessor."""
        move = await self.ctx.read(mon.last_production_move, self.store, name)
        if move is None or move["version"] != version:
            return
        before = move["from_version"]
        new_acc, new_n = await self.ctx.read(mon.live_accuracy, self.store, name, version)
        old_acc, old_n = await self.ctx.read(mon.live_accuracy, self.store, name, before)
        if new_acc is None or old_acc is None or min(new_n, old_n) < policy.min_labels:
            return
        if new_acc >= old_acc - policy.rollback_margin:
            return
        numbers = {"new_version": version, "new_accuracy": new_acc, "new_labels": new_n,
                   "old_version": before, "old_accuracy": old_acc, "old_labels": old_n,
                   "margin": policy.rollback_margin}
        reason = (f"automatic rollback: v{version} live accuracy {new_acc:.3f} ({new_n} labels) is below "
                  f"v{before}'s {old_acc:.3f} ({old_n} labels) by more than {policy.rollback_margin:g}")
        try:
            await self.registry.rollback(name, PRODUCTION, ACTOR, reason)
        except MldeckError as exc:
            log.warning("%s: rollback refused: %s", name, exc.message)
            return
        await self.alert(name, version, "rollback", None, reason, numbers)

    # reads ------------------------------------------------------------------------------

    async def require_model(self, name: str) -> None:
        """NotFound, naming the models there are, unless the registry has this model."""
        check_model_name(name)
        models = [m["name"] for m in await self.ctx.read(list_models, self.store)]
        if name not in models:
            known = f"models here: {', '.join(models)}" if models else "this registry has no models yet"
            raise NotFound(f"no model {name!r} in this registry (`mldeck models ls` lists them); {known}")

    async def version_row(self, name: str, version: int | None, hint: str) -> dict[str, Any]:
        """The asked version's registry row, else production's; the hint says what to pass without one."""
        await self.require_model(name)
        if version is None:
            row = await self.production(name)
            if row is None:
                raise NotFound(f"{name} has no production version; {hint}")
            return row
        return await self.ctx.read(get_version, self.store, name, version)

    async def production(self, name: str) -> dict[str, Any] | None:
        rows = await self.ctx.read(mon.production_versions, self.store)
        return next((r for r in rows if r["name"] == name), None)

    async def latest(self, name: str, version: int) -> dict[str, Any] | None:
        windows = await self.ctx.read(mon.recent_windows, self.store, name, version, POLICY_WINDOWS)
        judged = [w for w in windows if w["n_columns"]]
        return judged[-1] if judged else None

    async def model_status(self, name: str) -> dict[str, Any]:
        """The model's production version and its latest judged window, column by column."""
        row = await self.production(name)
        alerts = await self.ctx.read(mon.list_alerts, self.store, False, name, 100)
        out: dict[str, Any] = {"name": name, "version": None, "drifted": None, "rows": [],
                               "open_alerts": len(alerts), "window": str(self.spec)}
        if row is None:
            return {**out, "note": f"{name} has no production version to monitor"}
        out["version"] = row["version"]
        last = await self.latest(name, row["version"])
        if last is None:
            return {**out, "note": f"no judged {self.spec} window of v{row['version']} yet"}
        cols = await self.ctx.read(mon.window_columns, self.store, name, row["version"], last["window_end"])
        keep = ("window_start", "window_end", "n_rows", "share_drifted", "drifted_columns", "output_drifted",
                "accuracy", "ece", "n_labeled", "baseline")
        return {**out, **{k: last[k] for k in keep}, "drifted": bool(last["dataset_drifted"]),
                "rows": [{"model": name, "version": row["version"], **c} for c in cols]}

    # methods ---------------------------------------------------------------------------

    @rpc("drift.status")
    async def status(self, p: DriftStatusParams) -> dict[str, Any]:
        if p.name is not None:
            await self.require_model(p.name)
            return await self.model_status(p.name)
        served = await self.ctx.read(mon.production_versions, self.store)
        models = [await self.model_status(r["name"]) for r in served]
        return {"rows": [r for m in models for r in m["rows"]],
                "models": [{k: v for k, v in m.items() if k != "rows"} for m in models]}

    @rpc("drift.report")
    async def report(self, p: DriftReportParams) -> dict[str, Any]:
        spec = mon.parse_window(p.window) if p.window is not None else self.spec
        row = await self.version_row(p.name, p.version, "pass version to report on one")
        version = row["version"]
        if p.window is None:
            last = await self.latest(p.name, version)
            if last is None:
                raise NotFound(f"no judged {self.spec} window of {p.name} v{version} yet; "
                               "pass a window (e.g. 5m or 200rows) to test the latest traffic now")
            cols = await self.ctx.read(mon.window_columns, self.store, p.name, version, last["window_end"])
            return {"name": p.name, "source": "stored", **last, "columns": cols}
        ref = await self.reference(row)
        if ref is None:
            raise Conflict(f"{p.name} v{version} has no reference profile to compare with")
        start, end, rows = await self.ctx.read(mon.latest_rows, self.store, p.name, version, spec,
                                               time.time())
        if not rows:
            raise NotFound(f"{p.name} v{version} has no logged predictions in the last {spec}")
        summary, cols = await asyncio.to_thread(judge_window, ref, self.cfg.policy(p.name), rows,
                                                self.cfg.column_types)
        return {"name": p.name, "model": p.name, "version": version, "source": "live", "window_start": start,
                "window_end": end, **summary, "columns": cols}

    @rpc("drift.distribution")
    async def distribution(self, p: DriftDistributionParams) -> dict[str, Any]:
        """One column's reference against the current rows of the version's latest judged window."""
        row = await self.version_row(p.name, p.version, "pass version to pick one")
        version = row["version"]
        ref = await self.reference(row)
        if ref is None:
            raise Conflict(f"{p.name} v{version} has no reference profile to compare with")
        roles = ref.roles()
        if p.column not in roles:
            raise NotFound(f"{p.name} v{version} has no column {p.column!r}; its columns: {', '.join(roles)}")
        last = await self.latest(p.name, version)
        if last is None:
            raise NotFound(f"no judged {self.spec} window of {p.name} v{version} yet: the current "
                           "distribution comes from the latest window the monitor has judged")
        start, end = last["window_start"], last["window_end"]
        rows, _ = await self.ctx.read(mon.window_rows, self.store, p.name, version, start, end,
                                      self.spec.kind == "rows")
        shares = await asyncio.to_thread(column_distribution, ref, p.column, rows, p.bins,
                                         self.cfg.column_types)
        return {"name": p.name, "column": p.column, "version": version, "window_start": start,
                "window_end": end, **shares}

    @rpc("drift.history")
    async def history(self, p: DriftHistoryParams) -> dict[str, Any]:
        await self.require_model(p.name)
        windows = await self.ctx.read(mon.history, self.store, p.name, p.limit)
        return {"name": p.name, "window": str(self.spec), "windows": windows}

    @rpc("drift.check")
    async def check(self, p: DriftCheckParams) -> dict[str, Any]:
        if p.name is not None:
            await self.require_model(p.name)
        return {"windows": await self.tick(p.name)}

    @rpc("alerts.list")
    async def alerts_list(self, p: AlertsListParams) -> dict[str, Any]:
        return {"alerts": await self.ctx.read(mon.list_alerts, self.store, p.all, p.name, p.limit)}

    @rpc("alerts.resolve")
    async def alerts_resolve(self, p: AlertResolveParams) -> dict[str, Any]:
        alert = await self.ctx.db(mon.resolve_alert, self.store, p.alert_id, p.actor or "mldeck", p.reason)
        self.ctx.hub.publish(ALERTS, alert)
        return alert
