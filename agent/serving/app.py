"""The HTTP face of the server: KServe v2 REST routes on aiohttp, Triton's extensions, feedback, metrics.

Routes (a model by name answers with its `production` alias, or the canary split):
  GET  /v2/health/live, /v2/health/ready, /v2                                    (open)
  GET  /v2/models/{name}[/versions/{v} | /aliases/{alias}][/ready | /config | /stats]
  POST /v2/models/{name}[/versions/{v} | /aliases/{alias}]/infer
  GET  /v2/models/stats; POST /v2/repository/index                (Triton's extensions)
  POST /v2/models/{name}/feedback  {"request_id": ..., "label": ...}   (token always)
  GET  /metrics (Prometheus text), /mldeck/stats (JSON for the agent)
`{name}@{alias}` in place of `{name}` also picks an alias, so stock clients that only
know `/v2/models/{name}` can reach the challenger or staging. Everything but health needs
the token when `require_token` is set (see auth.py).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

import msgspec
import numpy as np
from aiohttp import web

from mldeck.agent.serving.auth import Auth, Level
from mldeck.agent.serving.batcher import Done
from mldeck.agent.serving.codec import (
    BadRequest,
    InferRequest,
    check_outputs,
    decode_json,
    encode_response,
    parse_infer,
)
from mldeck.agent.serving.guard import Guard
from mldeck.agent.serving.hardware import Hardware
from mldeck.agent.serving.metrics import CONTENT_TYPE, Metrics
from mldeck.agent.serving.pool import Pool, Served, Version
from mldeck.agent.serving.recent import RecentIds
from mldeck.agent.serving.triton import IndexRequest, index_entry, model_config, platform
from mldeck.core.config import ServingSection
from mldeck.core.serving import CHALLENGER, STATS_PATH, FeedbackLine, PredictionLine
from mldeck.core.signature import InvalidInput, check_request

log = logging.getLogger("mldeck.serving.http")

SERVER_NAME = "mldeck"
SERVER_VERSION = "0.1.0"
EXTENSIONS = ["binary_tensor_data", "model_repository", "statistics", "model_repository_aliases", "feedback"]
SHADOW_QUEUE_LIMIT = 4  # batches' worth of waiting rows before shadow copies are skipped
LOG_MAX_VALUES = 65_536  # inputs larger than this are logged as null, to keep the log useful
REQUEST_ID_HEADER = "X-Request-ID"
INDEX_BODY_BYTES = 4096  # POST /v2/repository/index takes at most {"ready": true}
FEEDBACK_SHAPE = 'feedback is a JSON object {"request_id": "...", "label": ...} and nothing else'

_encode = msgspec.json.Encoder().encode
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=_encode(data), status=status, content_type="application/json")


def error(message: str, status: int = 400) -> web.Response:
    """{"error": ...}; a 401 says how to authenticate, a 408 closes the connection."""
    response = json_response({"error": message}, status)
    if status == 401:
        response.headers["WWW-Authenticate"] = "Bearer"
    if status == 408:
        response.force_close()
    return response


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error as {"error": ...}: aiohttp's own 404/405/413 too, and never a traceback."""
    try:
        return await handler(request)
    except BadRequest as exc:
        return error(str(exc), exc.status)
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


class Feedback(msgspec.Struct, forbid_unknown_fields=True):
    """The body of POST /v2/models/{name}/feedback."""

    request_id: Annotated[str, msgspec.Meta(min_length=1)]
    label: Any


_decode_feedback = msgspec.json.Decoder(Feedback).decode
_decode_index = msgspec.json.Decoder(IndexRequest).decode


class Server:
    """Handlers sharing the pool of served models, the metrics and the prediction log."""

    def __init__(self, pool: Pool, metrics: Metrics, config: ServingSection, auth: Auth, guard: Guard,
                 hardware: Hardware) -> None:
        self.pool = pool
        self.metrics = metrics
        self.config = config
        self.auth = auth
        self.guard = guard
        self.hardware = hardware
        self.recent = RecentIds(config.feedback_ids)
        self.shadow_dropped = 0
        self._tasks: set[asyncio.Task[Any]] = set()

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self.guard.middleware(), json_errors],
                              client_max_size=self.config.max_body_bytes)

        def add(method: str, path: str, handler: Handler, level: Level = Level.SERVE) -> None:
            app.router.add_route(method, path, self.auth.guard(handler, level))

        prefixes = ("/v2/models/{name}", "/v2/models/{name}/versions/{version}",
                    "/v2/models/{name}/aliases/{alias}")
        for prefix in prefixes:  # first: the router tries routes in order, and inference is most of them
            add("POST", prefix + "/infer", self.infer)
        add("GET", "/v2/health/live", self.live, Level.OPEN)
        add("GET", "/v2/health/ready", self.ready, Level.OPEN)
        add("GET", "/v2", self.server_metadata)
        add("GET", "/v2/models/stats", self.statistics)
        add("POST", "/v2/repository/index", self.repository_index)
        for prefix in prefixes:
            add("GET", prefix, self.model_metadata)
            add("GET", prefix + "/ready", self.model_ready)
            add("GET", prefix + "/config", self.model_config)
            add("GET", prefix + "/stats", self.statistics)
        add("POST", "/v2/models/{name}/feedback", self.feedback, Level.WRITE)
        add("GET", "/metrics", self.prometheus)
        add("GET", STATS_PATH, self.stats)
        return app

    # health and metadata ------------------------------------------------------

    async def live(self, request: web.Request) -> web.Response:
        return json_response({"live": True})

    async def ready(self, request: web.Request) -> web.Response:
        ready = self.pool.ready
        return json_response({"ready": ready}, 200 if ready else 503)

    async def server_metadata(self, request: web.Request) -> web.Response:
        return json_response({"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": EXTENSIONS})

    def _served(self, request: web.Request) -> Served:
        name = request.match_info["name"].partition("@")[0]
        served = self.pool.models.get(name)
        if served is None:
            known = ", ".join(sorted(self.pool.models)) or "none yet"
            raise BadRequest(f"model {name!r} is not served here (served: {known})", 404, "not_found")
        return served

    def _resolve(self, request: web.Request, request_id: str = "") -> tuple[Served, Version, str]:
        """The version a route addresses (and the variant it counts as), or a 404 naming what exists."""
        info = request.match_info
        alias = info.get("alias") or info["name"].partition("@")[2] or None
        served = self._served(request)
        if "version" in info:
            version = served.by_version(_version_number(info["version"]))
            variant = "version"
        elif alias:
            version, variant = served.aliases.get(alias), alias
        else:
            version, variant = served.route(request_id)
        if version is None:
            have = ", ".join(f"{a}={v.version}" for a, v in sorted(served.aliases.items())) or "none"
            what = f"version {info['version']}" if "version" in info else f"alias {alias or 'production'}"
            raise BadRequest(f"model {served.name!r} has no served {what} (serving: {have})", 404,
                             "not_found")
        return served, version, variant

    async def model_metadata(self, request: web.Request) -> web.Response:
        served, version, _ = self._resolve(request)
        sig = version.signature
        return json_response({
            "name": served.name,
            "versions": [str(v) for v in served.versions()],
            "platform": platform(sig),
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
        served, version, _ = self._resolve(request)
        return json_response({"name": served.name, "version": str(version.version), "ready": True})

    async def model_config(self, request: web.Request) -> web.Response:
        served, version, _ = self._resolve(request)
        s = self.pool.settings
        return json_response(model_config(served.name, version.signature, served.versions(),
                                          s.max_batch_size, s.max_queue_delay_ms, s.device))

    async def statistics(self, request: web.Request) -> web.Response:
        """Triton's statistics extension: every served version of one model (or of all), or one version."""
        if "name" not in request.match_info:
            wanted = [(s.name, v) for s in self.pool.models.values() for v in s.versions()]
        elif "version" in request.match_info or "alias" in request.match_info:
            served, version, _ = self._resolve(request)
            wanted = [(served.name, version.version)]
        else:
            served = self._served(request)
            wanted = [(served.name, v) for v in served.versions()]
        return json_response({"model_stats": [self.metrics.stats(name, v).json(name, str(v))
                                              for name, v in sorted(wanted)]})

    async def repository_index(self, request: web.Request) -> web.Response:
        body = await self._read(request, INDEX_BODY_BYTES)
        ready_only = bool(body.strip()) and decode_json(body, "the index request", _decode_index,
                                                         'it is empty or {"ready": true|false}').ready
        rows = [index_entry(s.name, v) for s in self.pool.models.values() for v in s.versions()]
        if not ready_only:
            rows += [index_entry(name, version, why) for (name, version, _), why in self.pool.failed.items()]
        return json_response(sorted(rows, key=lambda r: (r["name"], int(r["version"]))))

    # reading bodies ------------------------------------------------------------------

    async def _read(self, request: web.Request, limit: int) -> bytes:
        """The whole body, within `limit` bytes and `body_timeout_s` (a 408 then: the client is too slow)."""
        if request.content_length is not None and request.content_length > limit:
            raise BadRequest(_too_large(limit, request.content_length), 413, "too_large")
        chunks: list[bytes] = []
        size = 0
        content = request.content
        try:  # no timer when the body came whole with the headers, as most do
            async with asyncio.timeout(None if content.is_eof() else self.config.body_timeout_s):
                while chunk := await content.readany():
                    size += len(chunk)
                    if size > limit:
                        raise BadRequest(_too_large(limit, None), 413, "too_large")
                    chunks.append(chunk)
        except TimeoutError:
            raise BadRequest(f"the request body did not arrive within {self.config.body_timeout_s:g}s "
                             f"({size} bytes came)", 408, "timeout") from None
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    # inference -----------------------------------------------------------------

    async def infer(self, request: web.Request) -> web.Response:
        start = time.perf_counter()
        info = request.match_info
        name = info["name"].partition("@")[0]
        model = name if name in self.pool.models else "unknown"
        number, variant, served_version = info.get("version", ""), "production", False
        try:
            body = await self._read(request, self.config.max_body_bytes)
            parsed = parse_infer(body, request.headers.get("Inference-Header-Content-Length"),
                                 self.config.max_id_chars)
            request_id = parsed.id or _header_id(request, self.config.max_id_chars) or os.urandom(8).hex()
            served, version, variant = self._resolve(request, request_id)
            number, served_version = str(version.version), True
            arrays, rows, chosen = self._check(version, parsed)
            done: Done = await version.batcher.submit(arrays, rows)
        except (BadRequest, InvalidInput) as exc:
            status = getattr(exc, "status", 400)
            self.metrics.failure(model, number, variant, getattr(exc, "reason", "bad_input"),
                                 time.perf_counter() - start, served_version)
            return error(str(exc), status)
        except Exception as exc:
            log.exception("inference on %s version %s failed", model, number)
            self.metrics.failure(model, number, variant, "internal", time.perf_counter() - start,
                                 served_version)
            return error(f"inference failed: {type(exc).__name__}: {exc}", 500)
        body, headers = encode_response(served.name, version.version, parsed.id, version.signature,
                                        done.outputs, chosen)
        headers[REQUEST_ID_HEADER] = request_id
        elapsed = time.perf_counter() - start
        self.metrics.success(served.name, version.version, variant, rows, elapsed, done.queue_s, done.timing)
        self.recent.add(served.name, request_id)
        self._log(served.name, version.version, variant, request_id, arrays, done, elapsed)
        response = web.Response(body=body, headers=headers)
        if served.shadow and variant == "production":
            challenger = served.aliases.get(CHALLENGER)
            if challenger is not None and challenger is not version:
                await response.prepare(request)
                await response.write_eof()
                self._shadow(challenger, request_id, arrays, rows)
        return response

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
                self.metrics.failure(challenger.name, str(challenger.version), "shadow", "internal",
                                     time.perf_counter() - start, True)
                return
            elapsed = time.perf_counter() - start
            self.metrics.success(challenger.name, challenger.version, "shadow", rows, elapsed,
                                 done.queue_s, done.timing)
            self._log(challenger.name, challenger.version, "shadow", request_id, arrays, done, elapsed)

        task = asyncio.get_running_loop().create_task(mirror())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # feedback, metrics, stats -------------------------------------------------------

    async def feedback(self, request: web.Request) -> web.Response:
        served = self._served(request)
        body = await self._read(request, self.config.max_feedback_bytes)
        fb = decode_json(body, "the feedback body", _decode_feedback, FEEDBACK_SHAPE)
        if len(fb.request_id) > self.config.max_id_chars:
            raise BadRequest(f'"request_id" is {len(fb.request_id)} characters; ids are at most '
                             f"{self.config.max_id_chars}")
        if not label_fits(fb.label):
            raise BadRequest('"label" is the true answer: a number, string or boolean, or a rectangular list '
                             "of them (one per row); not null, not an object")
        if (served.name, fb.request_id) not in self.recent:
            raise BadRequest(
                f"no request {fb.request_id!r} to {served.name} among the last {self.config.feedback_ids} "
                "this server answered: feedback names the id of an answered request", 404, "not_found")
        self.pool.predlog.feedback(FeedbackLine(ts=time.time(), model=served.name, request_id=fb.request_id,
                                                label=fb.label))
        return json_response({"accepted": True, "model": served.name, "request_id": fb.request_id})

    async def prometheus(self, request: web.Request) -> web.Response:
        pending = {(s.name, v.version): v.batcher.depth for s in self.pool.models.values()
                   for v in s.aliases.values()}
        lines = self.metrics.render(pending)
        lines += ["# HELP mldeck_open_connections Connections open now",
                  "# TYPE mldeck_open_connections gauge", f"mldeck_open_connections {self.guard.open}"]
        lines += await self.hardware.lines()
        return web.Response(body=("\n".join(lines) + "\n").encode(), headers={"Content-Type": CONTENT_TYPE})

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
            "connections": {"open": self.guard.open, "limit": self.guard.max_connections},
            "config": self.config.for_server(),
        })


def label_fits(label: Any) -> bool:
    """Numbers, booleans or strings, alone or as a rectangular list (one per row): what the monitor reads
    as an array; never null, an object, or ragged or deep lists."""
    try:
        return np.asarray(label).dtype.kind in "biufU"
    except (ValueError, TypeError, OverflowError):
        return False


def _version_number(text: str) -> int:
    if not text.isascii() or not text.isdigit() or len(text) > 18:
        raise BadRequest(f"version must be a whole number, got {text[:40]!r}")
    return int(text)


def _header_id(request: web.Request, max_id_chars: int) -> str | None:
    value = request.headers.get(REQUEST_ID_HEADER)
    if value is not None and len(value) > max_id_chars:
        raise BadRequest(f"{REQUEST_ID_HEADER} is {len(value)} characters; the limit is {max_id_chars}")
    return value or None


def _too_large(limit: int, size: int | None) -> str:
    got = f" ({size} bytes)" if size is not None else ""
    return f"request body over the {limit}-byte limit{got}"
