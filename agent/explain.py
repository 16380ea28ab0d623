"""Explanations of served predictions: `explain.request` attributes one logged request's prediction to its
input values with Integrated Gradients against the reference mean (core.explain, run in the agent's one
long-lived explainer process, an agent.worker: the agent never imports torch) and keeps the result next
to the prediction, in `explanations`.

With `[serving] explain_sample` above 0, a periodic task explains that share of the logged live requests
(every row of each, off the request path: the model server only logs them), so `explain.summary` can say
which features drive a version's predictions in a window, beside what drives them on its reference rows.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from mldeck.agent.service import Context, rpc
from mldeck.agent.worker import ChildWorker
from mldeck.core import monitor as mon
from mldeck.core.errors import Invalid, NotFound
from mldeck.core.monitor import ExplainParams, ExplainSummaryParams, mean_abs_attributions
from mldeck.core.registry import get_version

log = logging.getLogger("mldeck.explain")
EXPLAIN_TIMEOUT_S = 300.0
SAMPLE_EVERY_S = 2.0
SAMPLE_REQUESTS = 32  # logged requests explained per tick, newest first
SAMPLE_ROWS = 16  # rows explained per sampled request
SAMPLE_LOOKBACK_S = 3_600.0  # requests older than this when the agent starts are not sampled
REFERENCE_ROWS = 64
SUMMARY_EXPLANATIONS = 5_000


class Explainer:
    """One per agent: explains logged requests (asked for, or sampled), one at a time in its worker."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.store = ctx.store
        self.share = ctx.config.serving.explain_sample
        self.since = time.time() - SAMPLE_LOOKBACK_S
        self.unexplainable: dict[str, str] = {}  # "model:version" → why its requests cannot be explained
        self.failed: set[str] = set()  # sampled request ids that could not be explained
        self.references: dict[tuple[str, int], dict[str, Any]] = {}
        self.worker = ChildWorker(["mldeck.core.explain"], "the explainer process", "explain-worker",
                                  ctx.tasks, EXPLAIN_TIMEOUT_S)

    async def start(self) -> None:
        if self.share > 0:
            self.ctx.tasks.every(SAMPLE_EVERY_S, self.explain_sample, "explain-sample")

    async def stop(self) -> None:
        """The worker goes with the agent."""
        await self.worker.stop()

    async def _explain(self, folder: Path, request: dict[str, Any], what: str) -> dict[str, Any]:
        """The worker's core.explain answer on the version's folder; its reason as Invalid if it has none."""
        result = await self.worker.ask({"folder": str(folder), **request}, what)
        if not result.pop("ok"):
            raise Invalid(f"cannot explain {what.removeprefix('explaining ')}: {result['message']}")
        return result

    async def _folder(self, name: str, version: int) -> Path:
        return Path((await self.ctx.read(get_version, self.store, name, version))["artifact"])

    @rpc("explain.request")
    async def request(self, p: ExplainParams) -> dict[str, Any]:
        """Attributions of one row of a logged request, most important first (the top `top` of them)."""
        request_id = p.request_id or await self.ctx.read(mon.latest_request_id, self.store, p.name)
        if request_id is None:
            raise NotFound(f"{p.name} has no logged request yet: send it traffic to explain")
        logged = await self.ctx.read(mon.logged_request, self.store, p.name, request_id)
        if logged is None:
            raise NotFound(f"{p.name} has no logged request {request_id!r} (request ids are in "
                           "`mldeck query \"SELECT request_id FROM predictions\"`)")
        if logged["inputs"] is None:
            raise Invalid(f"request {request_id} was logged without its inputs (too large to log)")
        folder = await self._folder(p.name, logged["version"])
        result = await self._explain(folder, {"inputs": json.loads(logged["inputs"]), "row": p.row},
                                     "explaining this request")
        record = {"request_id": request_id, "model": p.name, "version": logged["version"], "ts": time.time(),
                  **result}
        await self.ctx.db(mon.save_explanation, self.store, record)
        return {"name": p.name, **{k: v for k, v in record.items() if k not in ("model", "features")},
                "n_features": len(result["features"]), "features": result["features"][:p.top]}

    async def explain_sample(self) -> int:
        """Explain the sampled logged requests not explained yet; how many rows were explained."""
        found = await self.ctx.read(mon.sampled_requests, self.store, self.share, self.since,
                                    list(self.unexplainable), sorted(self.failed), SAMPLE_REQUESTS)
        by_version: dict[tuple[str, int], list[dict[str, Any]]] = {}
        for r in found:
            by_version.setdefault((r["model"], r["version"]), []).append(r)
        done = 0
        for (name, version), requests in by_version.items():
            payload = {"requests": [{"request_id": r["request_id"], "inputs": json.loads(r["inputs"])}
                                    for r in requests], "max_rows": SAMPLE_ROWS}
            try:
                what = f"explaining sampled requests of {name} v{version}"
                results = (await self._explain(await self._folder(name, version), payload, what))["results"]
            except (Invalid, NotFound) as exc:
                self.unexplainable[f"{name}:{version}"] = exc.message
                log.warning("%s v%d: sampled requests are not explained: %s", name, version, exc.message)
                continue
            for result in results:
                if "error" in result:
                    self.failed.add(result["request_id"])
                    log.warning("%s v%d request %s not explained: %s", name, version, result["request_id"],
                                result["error"])
                    continue
                await self.ctx.db(mon.save_explanation, self.store,
                                  {"model": name, "version": version, "ts": time.time(), **result})
                done += 1
        return done

    async def reference(self, name: str, version: int) -> dict[str, Any]:
        """Mean |attribution| per feature on the version's reference rows, computed once per version."""
        key = (name, version)
        if key not in self.references:
            try:
                self.references[key] = await self._explain(await self._folder(name, version),
                                                           {"reference_rows": REFERENCE_ROWS},
                                                           f"explaining the reference of {name} v{version}")
            except Invalid as exc:
                return {"n": 0, "features": {}, "note": exc.message}
        return self.references[key]

    @rpc("explain.summary")
    async def summary(self, p: ExplainSummaryParams) -> dict[str, Any]:
        """Mean |attribution| per feature over a window's explained requests and over reference rows."""
        version = p.version if p.version is not None else await self._production(p.name)
        start, end = await self._span(p.name, version, p.window)
        explained = await self.ctx.read(mon.window_explanations, self.store, p.name, version, start, end,
                                        SUMMARY_EXPLANATIONS)
        current = mean_abs_attributions([{"features": f} for f in explained]) if explained else {}
        ref = await self.reference(p.name, version)
        names = sorted(set(current) | set(ref["features"]),
                       key=lambda f: (-current.get(f, -1.0), -ref["features"].get(f, 0.0)))
        rows = [{"feature": f, "current": current.get(f), "reference": ref["features"].get(f)} for f in names]
        out = {"name": p.name, "version": version, "window_start": start, "window_end": end,
               "n_explained": len(explained), "n_reference": ref["n"], "sample": self.share,
               "n_features": len(rows), "features": rows[:p.top]}
        return {**out, "reference_note": ref["note"]} if "note" in ref else out

    async def _production(self, name: str) -> int:
        rows = await self.ctx.read(mon.production_versions, self.store)
        found = next((r["version"] for r in rows if r["name"] == name), None)
        if found is None:
            raise NotFound(f"{name} has no production version; pass version to pick one")
        return found

    async def _span(self, name: str, version: int, window: str | None) -> tuple[float, float]:
        """The window asked for (the latest of its size), else the version's latest judged window, else the
        latest of the monitor's window size."""
        if window is None:
            judged = [w for w in await self.ctx.read(mon.recent_windows, self.store, name, version, 50)
                      if w["n_columns"]]
            if judged:
                return judged[-1]["window_start"], judged[-1]["window_end"]
        spec = mon.parse_window(window or self.ctx.config.monitor.window)
        return await self.ctx.read(mon.latest_span, self.store, name, version, spec, time.time())
