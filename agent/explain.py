"""Explanations of served predictions: `explain.request` attributes one logged request's prediction to its
input values with Integrated Gradients against the reference mean (core.explain, run in a child process:
the agent never imports torch) and keeps the result next to the prediction, in `explanations`."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

from mldeck.agent.child import ask_child
from mldeck.agent.service import Context, rpc
from mldeck.core import monitor as mon
from mldeck.core.errors import Invalid, NotFound
from mldeck.core.monitor import ExplainParams
from mldeck.core.registry import get_version

EXPLAIN_TIMEOUT_S = 300.0


class Explainer:
    """One per agent: explains logged requests, one child process at a time."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.store = ctx.store
        self._one = asyncio.Semaphore(1)

    async def _attribute(self, folder: Path, inputs: str, row: int) -> dict[str, Any]:
        """Run core.explain on the version's folder; its result, or its reason as Invalid."""
        request = json.dumps({"inputs": json.loads(inputs), "row": row}).encode()
        async with self._one:
            result = await ask_child("mldeck.core.explain", [str(folder)], "explaining this request",
                                     EXPLAIN_TIMEOUT_S, request)
        if not result.pop("ok"):
            raise Invalid(f"cannot explain this request: {result['message']}")
        return result

    @rpc("explain.request")
    async def request(self, p: ExplainParams) -> dict[str, Any]:
        """Attributions of one row of a logged request, most important first (the top `top` of them)."""
        logged = await self.ctx.read(mon.logged_request, self.store, p.name, p.request_id)
        if logged is None:
            raise NotFound(f"{p.name} has no logged request {p.request_id!r} (request ids are in "
                           "`mldeck query \"SELECT request_id FROM predictions\"`)")
        if logged["inputs"] is None:
            raise Invalid(f"request {p.request_id} was logged without its inputs (too large to log)")
        version = await self.ctx.read(get_version, self.store, p.name, logged["version"])
        result = await self._attribute(Path(version["artifact"]), logged["inputs"], p.row)
        record = {"request_id": p.request_id, "model": p.name, "version": logged["version"],
                  "ts": time.time(), **result}
        await self.ctx.db(mon.save_explanation, self.store, record)
        return {"name": p.name, **{k: v for k, v in record.items() if k not in ("model", "features")},
                "n_features": len(result["features"]), "features": result["features"][:p.top]}
