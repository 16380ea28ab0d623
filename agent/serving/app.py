"""The HTTP face of the server: KServe v2 REST routes on aiohttp, plus feedback, metrics and stats.

Routes (a model by name answers with its `production` alias, or the canary split):
  GET  /v2/health/live, /v2/health/ready, /v2
  GET  /v2/models/{name}[/versions/{v} | /aliases/{alias}][/ready]
  POST /v2/models/{name}[/versions/{v} | /aliases/{alias}]/infer
  POST /v2/models/{name}/feedback       {"request_id": ..., "label": ...}  (mldeck extension)
  GET  /metrics (Prometheus text), /mldeck/stats (JSON for the agent)
`{name}@{alias}` in place of `{name}` also picks an alias, so stock clients that only
know `/v2/models/{name}` can reach the challenger or staging.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from aiohttp import web

from mldeck.agent.serving.batcher import Done
from mldeck.agent.serving.codec import BadRequest, InferRequest, check_outputs, encode_response, parse_infer
from mldeck.agent.serving.metrics import Metrics
from mldeck.agent.serving.pool import Pool, Served, Version
from mldeck.core.serving import CHALLENGER, STATS_PATH, FeedbackLine, PredictionLine
from mldeck.core.signature import InvalidInput, check_request

log = logging.getLogger("mldeck.serving.http")

SERVER_NAME = "mldeck"
SERVER_VERSION = "0.1.0"
EXTENSIONS = ["binary_tensor_data", "model_repository_aliases", "feedback"]
SHADOW_QUEUE_LIMIT = 4  # batches' worth of waiting rows before shadow copies are skipped
LOG_MAX_VALUES = 65_536  # inputs larger than this are logged as null, to keep the log useful

_encode = msgspec.json.Encoder().encode
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=_encode(data), status=status, content_type="application/json")


def error(message: str, status: int = 400) -> web.Response:
    return json_response({"error": message}, status)


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error as {"error": ...}: aiohttp's own 404/405/413 too, and never a traceback."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        if exc.status in (404, 405):
            return error(f"no route {request.method} {request.path}; GET /v2 describes this server, "
                         "inference is POST /v2/models/{name}/infer", exc.status)
        return error(exc.text or exc.reason, exc.status)
    except Exception as exc:
        log.exception("%s %s failed", request.method, request.path)
        return error(f"internal error: {type(exc).__name__}", 500)


class Server:
    """Handlers sharing the pool of served models, the metrics and the prediction log."""

    def __init__(self, pool: Pool, metrics: Metrics, max_body_bytes: int) -> None:
        self.pool = pool
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.shadow_dropped = 0
        self._tasks: set[asyncio.Task[Any]] = set()

    def app(self) -> web.Application:
        app = web.Application(middlewares=[json_errors], client_max_size=self.max_body_bytes)
        r = app.router
        r.add_get("/v2/health/live", self.live)
        r.add_get("/v2/health/ready", self.ready)
        r.add_get("/v2", self.server_metadata)
        for prefix in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}",
                       "/v2/models/{name}/aliases/{alias}"):
            r.add_get(prefix, self.model_metadata)
            r.add_get(prefix + "/ready", self.model_ready)
            r.add_post(prefix + "/infer", self.infer)
        r.add_post("/v2/models/{name}/feedback", self.feedback)
        r.add_get("/metrics", self.prometheus)
        r.add_get(STATS_PATH, self.stats)
        return app

    # health and metadata ------------------------------------------------------

    async def live(self, request: web.Request) -> web.Response:
        return json_response({"live": True})

    async def ready(self, request: web.Request) -> web.Response:
        ready = self.pool.ready
        return json_response({"ready": ready}, 200 if ready else 503)

    async def server_metadata(self, request: web.Request) -> web.Response:
        return json_response({"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": EXTENSIONS})

    def _resolve(self, request: web.Request, request_id: str = "") -> tuple[Served, Version, str]:
        """The version a route addresses (and the variant it counts as), or a 404 naming what exists."""
        info = request.match_info
        name, _, at_alias = info["name"].partition("@")
        alias = info.get("alias") or at_alias or None
        served = self.pool.models.get(name)
        if served is None:
            known = ", ".join(sorted(self.pool.models)) or "none yet"
            raise BadRequest(f"model {name!r} is not served here (served: {known})", 404, "not_found")
        if "version" in info:
            try:
                number = int(info["version"])
            except ValueError:
                raise BadRequest(f"version must be a number, got {info['version']!r}") from None
            version = served.by_version(number)
            variant = "version"
        elif alias:
            version, variant = served.aliases.get(alias), alias
        else:
            version, variant = served.route(request_id)
        if version is None:
            have = ", ".join(f"{a}={v.version}" for a, v in sorted(served.aliases.items())) or "none"
            what = f"version {info['version']}" if "version" in info else f"alias {alias or 'production'}"
            raise BadRequest(f"model {name!r} has no served {what} (serving: {have})", 404, "not_found")
        return served, version, variant

    async def model_metadata(self, request: web.Request) -> web.Response:
        try:
            served, version, _ = self._resolve(request)
        except BadRequest as exc:
            return error(str(exc), exc.status)
        sig = version.signature
        return json_response({
            "name": served.name,
            "versions": sorted({str(v.version) for v in served.aliases.values()}),
            "platform": "pytorch_torchscript" if sig.format == "torchscript" else "pytorch_torch_export",
            "inputs": [msgspec.to_builtins(s) for s in sig.inputs],
            "outputs": [msgspec.to_builtins(s) for s in sig.outputs],
            "parameters": {
                "version": version.version,
                "aliases": {a: v.version for a, v in served.aliases.items()},
                "max_batch_size": self.pool.settings.max_batch_size,
                "allow_nan": sig.allow_nan,
            },
        })

    async def model_ready(self, request: web.Request) -> web.Response:
        try:
            served, version, _ = self._resolve(request)
        except BadRequest as exc:
            return error(str(exc), exc.status)
        return json_response({"name": served.name, "version": str(version.version), "ready": True})

    # inference -----------------------------------------------------------------

    async def infer(self, request: web.Request) -> web.Response:
        start = time.perf_counter()
        name = request.match_info["name"].partition("@")[0]
        model, number, variant = name if name in self.pool.models else "unknown", None, "production"
        try:
            if request.content_length is not None and request.content_length > self.max_body_bytes:
                raise BadRequest(self._too_large(request.content_length), 413, "too_large")
            try:
                body = await request.read()
            except web.HTTPRequestEntityTooLarge:
                raise BadRequest(self._too_large(None), 413, "too_large") from None
            parsed = parse_infer(body, request.headers.get("Inference-Header-Content-Length"))
            request_id = parsed.id or request.headers.get("X-Request-ID") or os.urandom(8).hex()
            served, version, variant = self._resolve(request, request_id)
            model, number = served.name, version.version
            arrays, rows, chosen = self._check(version, parsed)
            done: Done = await version.batcher.submit(arrays, rows)
        except (BadRequest, InvalidInput) as exc:
            status = getattr(exc, "status", 400)
            self.metrics.failure(model, number, variant, getattr(exc, "reason", "bad_input"))
            return error(str(exc), status)
        except Exception as exc:
            log.exception("inference on %s version %s failed", model, number)
            self.metrics.failure(model, number, variant, "internal")
            return error(f"inference failed: {type(exc).__name__}: {exc}", 500)
        body, headers = encode_response(model, number, parsed.id or request_id, version.signature,
                                        done.outputs, chosen)
        elapsed = time.perf_counter() - start
        self.metrics.success(model, number, variant, rows, elapsed, done.queue_s, done.compute_s)
        self._log(model, number, variant, request_id, arrays, done, elapsed)
        response = web.Response(body=body, headers=headers)
        if served.shadow and variant == "production":
            challenger = served.aliases.get(CHALLENGER)
            if challenger is not None and challenger is not version:
                await response.prepare(request)
                await response.write_eof()
                self._shadow(challenger, request_id, arrays, rows)
        return response

    def _too_large(self, size: int | None) -> str:
        got = f" ({size} bytes)" if size is not None else ""
        return f"request body over the {self.max_body_bytes}-byte limit{got}; send fewer rows per request"

    def _check(
        self, version: Version, parsed: InferRequest
    ) -> tuple[dict[str, Any], int, list[tuple[str, bool]]]:
        arrays = check_request(version.signature, parsed.inputs)
        rows = len(next(iter(arrays.values())))
        limit = self.pool.settings.max_batch_size
        if rows > limit:
            raise BadRequest(f"batch of {rows} rows is over max_batch_size {limit}; split the request")
        if rows == 0:
            raise BadRequest("the request has no rows (batch dimension 0)")
        return arrays, rows, check_outputs(version.signature, parsed)

    def _log(self, model: str, version: int, variant: str, request_id: str,
             arrays: dict[str, Any], done: Done, elapsed: float) -> None:
        small = sum(a.size for a in arrays.values()) <= LOG_MAX_VALUES
        self.pool.predlog.prediction(PredictionLine(
            ts=time.time(), model=model, version=version, variant=variant, request_id=request_id,
            inputs=arrays if small else None, outputs=done.outputs if small else None,
            latency_ms=elapsed * 1000.0,
        ))

    def _shadow(self, challenger: Version, request_id: str, arrays: dict[str, Any], rows: int) -> None:
        """Mirror a request to the challenger after the response went out; its answer is only logged."""
        if challenger.batcher.depth > SHADOW_QUEUE_LIMIT * self.pool.settings.max_batch_size:
            self.shadow_dropped += 1
            self.metrics.count("mldeck_shadow_dropped", model=challenger.name)
            return

        async def mirror() -> None:
            start = time.perf_counter()
            try:
                done = await challenger.batcher.submit(arrays, rows)
            except Exception as exc:
                log.warning("shadow request to %s version %d failed: %s",
                            challenger.name, challenger.version, exc)
                self.metrics.failure(challenger.name, challenger.version, "shadow", "internal")
                return
            elapsed = time.perf_counter() - start
            self.metrics.success(challenger.name, challenger.version, "shadow", rows, elapsed,
                                 done.queue_s, done.compute_s)
            self._log(challenger.name, challenger.version, "shadow", request_id, arrays, done, elapsed)

        task = asyncio.get_running_loop().create_task(mirror())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # feedback, metrics, stats -------------------------------------------------------

    async def feedback(self, request: web.Request) -> web.Response:
        name = request.match_info["name"].partition("@")[0]
        if name not in self.pool.models:
            return error(f"model {name!r} is not served here", 404)
        try:
            obj = msgspec.json.decode(await request.read())
        except msgspec.DecodeError as exc:
            return error(f"the feedback body is not valid JSON: {exc}")
        if not isinstance(obj, dict) or set(obj) - {"request_id", "label"} or "label" not in obj:
            return error('feedback is a JSON object {"request_id": "...", "label": ...} and nothing else')
        request_id = obj.get("request_id")
        if not isinstance(request_id, str) or not request_id or len(request_id) > 256:
            return error('"request_id" must be the id of an earlier request (a non-empty string)')
        self.pool.predlog.feedback(FeedbackLine(ts=time.time(), model=name, request_id=request_id,
                                                label=obj["label"]))
        return json_response({"accepted": True, "model": name, "request_id": request_id})

    async def prometheus(self, request: web.Request) -> web.Response:
        for served in self.pool.models.values():
            for version in served.aliases.values():
                self.metrics.queue_depth(served.name, version.version, version.batcher.depth)
        return web.Response(text=self.metrics.render(), content_type="text/plain",
                            headers={"X-Content-Format": "prometheus-0.0.4"})

    async def stats(self, request: web.Request) -> web.Response:
        try:
            window_s = float(request.query.get("window_s", "60"))
        except ValueError:
            return error("window_s must be a number of seconds")
        if not 1 <= window_s <= 60:
            return error("window_s must be between 1 and 60")
        models = self.pool.describe()
        live = self.metrics.window(window_s)
        for name, info in models.items():
            info["variants"] = live.get(name, {})
            info["batch_sizes"] = self.metrics.batch_histogram(name)
        log_ = self.pool.predlog
        return json_response({
            "ts": time.time(),
            "pid": os.getpid(),
            "uptime_s": time.time() - self.metrics.started,
            "ready": self.pool.ready,
            "window_s": window_s,
            "models": models,
            "swaps": self.pool.swaps,
            "manifest_at": self.pool.manifest_at,
            "load_failures": list(self.pool.failed.values()),
            "prediction_log": {"written": log_.written, "queued": log_.pending,
                               "sampled_out": log_.sampled_out, "dropped": log_.dropped},
            "shadow_dropped": self.shadow_dropped,
        })
