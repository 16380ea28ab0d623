"""The drift monitor: judge each production version's traffic window by window, and act on it.

Every `monitor.interval_s` it looks for closed tumbling windows (time or rows, see
core.monitor) of each model's production version, tests every input column and every
output against the version's reference profile (core.drift; outputs against the model's
stored sample outputs), scores the labelled requests (accuracy, ECE), and writes one
drift_reports row per column plus one monitor_windows row, publishing on `drift`. Then the
model's policy (config `[monitor.models.NAME]`) may raise an alert (`alerts` topic), start
its retraining pipeline, or roll production back; each automatic action is audited by
`mldeck-monitor` with the numbers behind it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mldeck.core import monitor as mon
from mldeck.core import registry
from mldeck.core.config import ModelPolicy
from mldeck.core.errors import Conflict, Invalid, MldeckError, NotFound
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
from mldeck.core.registry import RollbackParams
from mldeck.core.signature import SAMPLE_FILE

if TYPE_CHECKING:
    from mldeck.agent.daemon import Agent
    from mldeck.agent.rpc import Connection
    from mldeck.core import drift

log = logging.getLogger("mldeck.monitor")
TOPIC = "drift"
ALERTS = "alerts"
COLUMNS_FILE = "columns.json"
POLICY_WINDOWS = 50
MAX_BINS = 200


@dataclass
class Reference:
    """What a version's windows are compared with: input and output profiles and the column layout."""

    inputs: drift.ReferenceProfile
    input_layout: dict[str, list[str]]
    outputs: drift.ReferenceProfile | None
    output_layout: dict[str, list[str]]
    metrics: dict[str, float]

    def roles(self) -> dict[str, str]:
        """Column → "input" or "output": every column drift.distribution can draw."""
        out = {c: "input" for cols in self.input_layout.values() for c in cols}
        for c in self.outputs.columns if self.outputs is not None else ():
            out.setdefault(c, "output")
        return out


def load_reference(row: dict[str, Any]) -> Reference | None:
    """The version's reference.json/parquet, columns.json and sample.npz outputs; None without a profile."""
    from mldeck.core import drift  # scipy loads only once a model is watched

    folder = Path(row["artifact"])
    if not (folder / drift.ReferenceProfile.JSON_NAME).is_file():
        return None
    profile = drift.ReferenceProfile.load(folder)
    signature = row.get("signature") or {}
    try:
        names = json.loads((folder / COLUMNS_FILE).read_text())
    except (OSError, ValueError):
        names = {}
    layout = {t: [c for c in cols if c in profile.columns]
              for t, cols in mon.tensor_columns(signature.get("inputs") or [], names).items()}
    layout = {t: cols for t, cols in layout.items() if cols}
    if not layout:
        return None
    out_layout = mon.tensor_columns(signature.get("outputs") or [])
    outputs = None
    if (folder / SAMPLE_FILE).is_file():
        with np.load(folder / SAMPLE_FILE, allow_pickle=False) as sample:
            frame: dict[str, np.ndarray] = {}
            for tensor, cols in out_layout.items():
                key = f"outputs/{tensor}"
                if key in sample:
                    arr = sample[key]
                    split = {cols[0]: arr} if arr.ndim == 1 else {c: arr[:, i] for i, c in enumerate(cols)}
                    frame.update(split)
        if frame:
            outputs = drift.ReferenceProfile.build(frame)
    return Reference(profile, layout, outputs, out_layout, row.get("metrics") or {})


def judge_window(
    ref: Reference, policy: ModelPolicy, rows: list[tuple[str | None, str | None, str | None]],
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """One window's verdict: per-column results (inputs then outputs) and the summary numbers."""
    from mldeck.core import drift  # scipy loads only once a model is watched

    overrides = {c: drift.ColumnTest(o.method, o.threshold) for c, o in policy.columns.items()}
    current = mon.decode_tensors([r[0] for r in rows], ref.input_layout)
    columns = [c for cols in ref.input_layout.values() for c in cols]
    n_rows = len(current[columns[0]])
    report = drift.drift_report(ref.inputs, current, columns=columns, overrides=overrides,
                                drift_share=policy.drift_share)
    results = [{**c.to_dict(), "role": "input", "n_rows": n_rows} for c in report.columns]
    output_drifted = None
    if policy.outputs and ref.outputs is not None:
        out = mon.decode_tensors([r[1] for r in rows], ref.output_layout)
        out_cols = [c for c in ref.outputs.columns if len(out.get(c, ())) > 0]
        if out_cols:
            out_report = drift.drift_report(ref.outputs, out, columns=out_cols, overrides=overrides,
                                            drift_share=policy.drift_share)
            results += [{**c.to_dict(), "role": "output", "n_rows": n_rows} for c in out_report.columns]
            output_drifted = out_report.dataset_drifted
    accuracy = ece = None
    probs, labels = mon.labelled_outputs([(r[1], r[2]) for r in rows], next(iter(ref.output_layout), ""))
    if labels.size:
        accuracy = mon.label_accuracy(probs, labels)
        ece = drift.expected_calibration_error(probs, labels)
    baseline = ref.metrics.get(policy.metric)
    summary = {
        "n_rows": n_rows, "n_requests": len(rows), "n_columns": len(report.columns),
        "n_drifted": len(report.drifted_columns), "share_drifted": report.share_drifted,
        "drift_share": report.drift_share, "dataset_drifted": report.dataset_drifted,
        "drifted_columns": report.drifted_columns, "output_drifted": output_drifted,
        "n_labeled": int(labels.size), "accuracy": accuracy, "ece": ece,
        "baseline_metric": policy.metric if baseline is not None else None, "baseline": baseline,
    }
    return summary, results


def column_distribution(
    ref: Reference, column: str, rows: list[tuple[str | None, str | None, str | None]], bins: int | None
) -> dict[str, Any]:
    """One column of a window's requests beside its reference sample, as drift.distribution's fractions."""
    from mldeck.core import drift  # scipy loads only once a model is watched

    role = ref.roles()[column]
    profile, layout, at = (ref.inputs, ref.input_layout, 0) if role == "input" else (
        ref.outputs, ref.output_layout, 1)
    assert profile is not None
    tensor = {t: cols for t, cols in layout.items() if column in cols}
    current = mon.decode_tensors([r[at] for r in rows], tensor)[column]
    shares = drift.distribution(profile.sample[column], current, kind=profile.kinds[column],
                                bins=bins or drift.DISTRIBUTION_BINS)
    return {"role": role, **shares}


class Monitor:
    """One per agent: the window loop, the policies, and the drift.* / alerts.* methods."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.cfg = agent.config.monitor
        self.spec = mon.parse_window(self.cfg.window)
        self.refs: dict[tuple[str, int], Reference | None] = {}
        self._lock = asyncio.Lock()

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

    async def loop(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.interval_s)
            try:
                await self.tick()
            except Exception:
                log.exception("monitor tick failed; trying again")

    async def tick(self, name: str | None = None) -> list[dict[str, Any]]:
        """Judge every closed window of every production version (or of one model)."""
        async with self._lock:
            judged = []
            for row in await self.agent.read(mon.production_versions, self.agent.store):
                if name is None or row["name"] == name:
                    judged += await self.judge_model(row)
            return judged

    async def _windows(self, name: str, version: int, now: float) -> list[tuple[float, float]]:
        store = self.agent.store
        after = await self.agent.read(mon.last_window_end, store, name, version)
        if self.spec.kind == "time":
            first = await self.agent.read(mon.first_prediction_ts, store, name, version)
            if first is None:
                return []
            return mon.time_windows(first, after, now, self.spec.size, self.cfg.grace_s)
        size = int(self.spec.size)
        ts = await self.agent.read(mon.prediction_ts_after, store, name, version, after, size * 20 + 1)
        return [(a, b) for a, b, _ in mon.row_windows(ts, size)]

    async def judge_model(self, row: dict[str, Any]) -> list[dict[str, Any]]:
        name, version = row["name"], row["version"]
        ref = await self.reference(row)
        if ref is None:
            return []
        policy = self.cfg.policy(name)
        judged = []
        for start, end in await self._windows(name, version, time.time()):
            rows = await self.agent.read(mon.window_rows, self.agent.store, name, version, start, end,
                                         self.spec.kind == "rows")
            summary: dict[str, Any] = {"n_rows": 0, "n_requests": len(rows), "n_columns": 0}
            results: list[dict[str, Any]] = []
            if len(rows) >= self.cfg.min_rows:
                try:
                    summary, results = await asyncio.to_thread(judge_window, ref, policy, rows)
                except ValueError as exc:
                    log.warning("%s v%d window %.0f-%.0f not judged: %s", name, version, start, end, exc)
            now = time.time()
            summary = {"model": name, "version": version, "window_start": start, "window_end": end, "ts": now,
                       **summary}
            table = mon.report_table(name, version, start, end, now, results)
            await self.agent.db(mon.save_window, self.agent.store, summary, table)
            judged.append(summary)
            if results:
                self.agent.hub.publish(TOPIC, {**summary, "columns": results})
                await self.apply_policy(name, version, policy, summary)
        return judged

    # policies -------------------------------------------------------------------------

    async def apply_policy(self, name: str, version: int, policy: ModelPolicy, last: dict[str, Any]) -> None:
        store = self.agent.store
        windows = [w for w in await self.agent.read(mon.recent_windows, store, name, version, POLICY_WINDOWS)
                   if w["n_columns"]]
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
        store = self.agent.store
        for alert in await self.agent.read(mon.open_alerts, store, name):
            reason = reasons.get(alert["kind"])
            if reason is None:
                continue
            try:
                done = await self.agent.db(mon.resolve_alert, store, alert["alert_id"], ACTOR, reason)
            except Conflict:
                continue  # resolved by hand meanwhile
            log.info("alert %s resolved: %s", alert["alert_id"], reason)
            self.agent.hub.publish(ALERTS, done)

    async def alert(self, name: str, version: int, kind: str, policy: ModelPolicy | None, message: str,
                    details: dict[str, Any]) -> dict[str, Any] | None:
        """Raise one open alert per model version and kind; start the retraining pipeline if set."""
        store = self.agent.store
        if await self.agent.read(mon.open_alert, store, name, version, kind) is not None:
            return None
        alert = await self.agent.db(mon.raise_alert, store, name, version, kind, message, details)
        log.warning("alert %s: %s", alert["alert_id"], message)
        self.agent.hub.publish(ALERTS, alert)
        if policy is not None and policy.retrain:
            await self.retrain(name, version, policy.retrain, alert)
        return alert

    async def retrain(self, name: str, version: int, file: str, alert: dict[str, Any]) -> None:
        pipelines = self.agent.pipelines  # type: ignore[attr-defined]
        path = Path(file).expanduser()
        path = path if path.is_absolute() else self.agent.layout.home / path
        details: dict[str, Any] = {"alert_id": alert["alert_id"], "kind": alert["kind"], "file": str(path)}
        running = pipelines.running_for(name)
        if running:
            comment = f"retraining already running ({running}); not started again for {alert['alert_id']}"
            details["pipeline_id"] = running
        else:
            try:
                started = await pipelines.start_file(path, {"alert_id": alert["alert_id"], "model": name,
                                                            "kind": alert["kind"]}, ACTOR)
                details["pipeline_id"] = started["pipeline_id"]
                comment = f"started pipeline {started['pipeline_id']} ({path.name}) on {alert['alert_id']}"
            except PipelineError as exc:
                comment = f"retraining pipeline could not start: {exc}"
        log.info("%s: %s", name, comment)
        await self.agent.db(mon.audit, self.agent.store, ACTOR, "retrain", name, version, comment, details)

    async def maybe_rollback(self, name: str, version: int, policy: ModelPolicy) -> None:
        """Undo the last promotion to production when the new version does worse live than its predecessor."""
        store = self.agent.store
        move = await self.agent.read(mon.last_production_move, store, name)
        if move is None or move["version"] != version:
            return
        before = move["from_version"]
        new_acc, new_n = await self.agent.read(mon.live_accuracy, store, name, version)
        old_acc, old_n = await self.agent.read(mon.live_accuracy, store, name, before)
        if new_acc is None or old_acc is None or min(new_n, old_n) < policy.min_labels:
            return
        if new_acc >= old_acc - policy.rollback_margin:
            return
        numbers = {"new_version": version, "new_accuracy": new_acc, "new_labels": new_n,
                   "old_version": before, "old_accuracy": old_acc, "old_labels": old_n,
                   "margin": policy.rollback_margin}
        reason = (f"automatic rollback: v{version} live accuracy {new_acc:.3f} ({new_n} labels) is below "
                  f"v{before}'s {old_acc:.3f} ({old_n} labels) by more than {policy.rollback_margin:g}")
        handler = self.agent.dispatcher.methods["models.rollback"][1]
        try:
            await handler(RollbackParams(name=name, alias=mon.PRODUCTION, reason=reason, actor=ACTOR), None)
        except MldeckError as exc:
            log.warning("%s: rollback refused: %s", name, exc.message)
            return
        await self.alert(name, version, "rollback", None, reason, numbers)

    # methods ---------------------------------------------------------------------------

    async def require_model(self, name: str) -> None:
        try:
            await self.agent.read(registry.get_version, self.agent.store, name)
        except NotFound as exc:
            models = [m["name"] for m in await self.agent.read(registry.list_models, self.agent.store)]
            known = f"models here: {', '.join(models)}" if models else "this registry has no models yet"
            raise NotFound(f"{exc}; {known}") from None

    async def version_row(self, name: str, version: int | None, hint: str) -> dict[str, Any]:
        """The asked version's registry row, else production's; the hint says what to pass without one."""
        await self.require_model(name)
        if version is None:
            row = await self.production(name)
            if row is None:
                raise NotFound(f"{name} has no production version; {hint}")
            return row
        return await self.agent.read(registry.get_version, self.agent.store, name, version)

    async def production(self, name: str) -> dict[str, Any] | None:
        rows = await self.agent.read(mon.production_versions, self.agent.store)
        return next((r for r in rows if r["name"] == name), None)

    async def latest(self, name: str, version: int) -> dict[str, Any] | None:
        windows = await self.agent.read(mon.recent_windows, self.agent.store, name, version, POLICY_WINDOWS)
        judged = [w for w in windows if w["n_columns"]]
        return judged[-1] if judged else None

    async def status(self, name: str) -> dict[str, Any]:
        row = await self.production(name)
        alerts = await self.agent.read(mon.list_alerts, self.agent.store, False, name, 100)
        out: dict[str, Any] = {"name": name, "version": None, "drifted": None, "rows": [],
                               "open_alerts": len(alerts), "window": str(self.spec)}
        if row is None:
            return {**out, "note": f"{name} has no production version to monitor"}
        out["version"] = row["version"]
        last = await self.latest(name, row["version"])
        if last is None:
            return {**out, "note": f"no judged {self.spec} window of v{row['version']} yet"}
        cols = await self.agent.read(mon.window_columns, self.agent.store, name, row["version"],
                                     last["window_end"])
        keep = ("window_start", "window_end", "n_rows", "share_drifted", "drifted_columns", "output_drifted",
                "accuracy", "ece", "n_labeled", "baseline")
        return {**out, **{k: last[k] for k in keep}, "drifted": bool(last["dataset_drifted"]),
                "rows": [{"model": name, "version": row["version"], **c} for c in cols]}

    async def report(self, p: DriftReportParams) -> dict[str, Any]:
        try:
            spec = mon.parse_window(p.window) if p.window is not None else self.spec
        except ValueError as exc:
            raise Invalid(str(exc)) from None
        row = await self.version_row(p.name, p.version, "pass version to report on one")
        version = row["version"]
        if p.window is None:
            last = await self.latest(p.name, version)
            if last is None:
                raise NotFound(f"no judged {self.spec} window of {p.name} v{version} yet; "
                                         "pass a window (e.g. 5m or 200rows) to test the latest traffic now")
            cols = await self.agent.read(mon.window_columns, self.agent.store, p.name, version,
                                         last["window_end"])
            return {"name": p.name, "source": "stored", **last, "columns": cols}
        ref = await self.reference(row)
        if ref is None:
            raise Conflict(f"{p.name} v{version} has no reference profile to compare with")
        start, end, rows = await self.agent.read(mon.latest_rows, self.agent.store, p.name, version, spec,
                                                 time.time())
        if not rows:
            raise NotFound(f"{p.name} v{version} has no logged predictions in the last {spec}")
        try:
            summary, cols = await asyncio.to_thread(judge_window, ref, self.cfg.policy(p.name), rows)
        except ValueError as exc:
            raise Invalid(f"cannot test this window: {exc}") from None
        return {"name": p.name, "model": p.name, "version": version, "source": "live", "window_start": start,
                "window_end": end, **summary, "columns": cols}

    async def distribution(self, p: DriftDistributionParams) -> dict[str, Any]:
        """One column's reference against the current rows of the version's latest judged window."""
        if p.bins is not None and not 1 <= p.bins <= MAX_BINS:
            raise Invalid(f"bins must be between 1 and {MAX_BINS}, got {p.bins}")
        row = await self.version_row(p.name, p.version, "pass version to pick one")
        version = row["version"]
        ref = await self.reference(row)
        if ref is None:
            raise Conflict(f"{p.name} v{version} has no reference profile to compare with")
        roles = ref.roles()
        if p.column not in roles:
            raise NotFound(f"{p.name} v{version} has no column {p.column!r}; its columns: "
                                     f"{', '.join(roles)}")
        last = await self.latest(p.name, version)
        if last is None:
            raise NotFound(f"no judged {self.spec} window of {p.name} v{version} yet: the current "
                                     "distribution comes from the latest window the monitor has judged")
        start, end = last["window_start"], last["window_end"]
        rows = await self.agent.read(mon.window_rows, self.agent.store, p.name, version, start, end,
                                     self.spec.kind == "rows")
        shares = await asyncio.to_thread(column_distribution, ref, p.column, rows, p.bins)
        return {"name": p.name, "column": p.column, "version": version, "window_start": start,
                "window_end": end, **shares}


def register(agent: Agent) -> None:
    monitor = Monitor(agent)
    agent.monitor = monitor  # type: ignore[attr-defined]
    agent.topics.update({TOPIC, ALERTS})
    if monitor.cfg.enabled:
        agent.spawn(monitor.loop(), "monitor")

    async def status(p: DriftStatusParams, conn: Connection) -> dict[str, Any]:
        if p.name is not None:
            await monitor.require_model(p.name)
            return await monitor.status(p.name)
        served = await agent.read(mon.production_versions, agent.store)
        models = [await monitor.status(r["name"]) for r in served]
        return {"rows": [r for m in models for r in m["rows"]],
                "models": [{k: v for k, v in m.items() if k != "rows"} for m in models]}

    async def report(p: DriftReportParams, conn: Connection) -> dict[str, Any]:
        return await monitor.report(p)

    async def distribution(p: DriftDistributionParams, conn: Connection) -> dict[str, Any]:
        return await monitor.distribution(p)

    async def history(p: DriftHistoryParams, conn: Connection) -> dict[str, Any]:
        if not 1 <= p.limit <= 100_000:
            raise Invalid("limit must be between 1 and 100000")
        await monitor.require_model(p.name)
        windows = await agent.read(mon.history, agent.store, p.name, p.limit)
        return {"name": p.name, "window": str(monitor.spec), "windows": windows}

    async def check(p: DriftCheckParams, conn: Connection) -> dict[str, Any]:
        if p.name is not None:
            await monitor.require_model(p.name)
        return {"windows": await monitor.tick(p.name)}

    async def alerts_list(p: AlertsListParams, conn: Connection) -> dict[str, Any]:
        if not 1 <= p.limit <= 100_000:
            raise Invalid("limit must be between 1 and 100000")
        return {"alerts": await agent.read(mon.list_alerts, agent.store, p.all, p.name, p.limit)}

    async def alerts_resolve(p: AlertResolveParams, conn: Connection) -> dict[str, Any]:
        alert = await agent.db(mon.resolve_alert, agent.store, p.alert_id, p.actor or "mldeck", p.reason)
        agent.hub.publish(ALERTS, alert)
        return alert

    d = agent.dispatcher
    d.add("drift.status", DriftStatusParams, status)
    d.add("drift.report", DriftReportParams, report)
    d.add("drift.history", DriftHistoryParams, history)
    d.add("drift.distribution", DriftDistributionParams, distribution)
    d.add("drift.check", DriftCheckParams, check)
    d.add("alerts.list", AlertsListParams, alerts_list)
    d.add("alerts.resolve", AlertResolveParams, alerts_resolve)
