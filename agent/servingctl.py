"""The agent's side of serving (the Serving service): supervise the model server, tell it what to
serve, ingest its logs, and answer the `serving.*` methods.

The server (`python -m mldeck.agent.serving`, which imports torch) is a process of its own session,
restarted with backoff if it dies while wanted. It outlives the agent: a planned stop (`mldeck agent
stop`, SIGTERM) leaves it serving, as a crash does, and the next agent adopts the server it finds
running (same pid and start time, ready, same [serving] settings) instead of replacing it, so serving
never stops for the agent's sake; only `serving.stop` ends it. What it serves comes from
`serving/manifest.json`, written here atomically from the aliases table and the
traffic split whenever the registry publishes on `models` (and on a slow poll of
the store behind that). Its prediction, feedback and alert lines are ingested
into the store exactly once by the ingest module, through the parsers below.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import msgspec
import psutil
import pyarrow as pa

from mldeck.agent.child import end_child
from mldeck.agent.ingest import Source, rows_parser
from mldeck.agent.service import Context, rpc
from mldeck.core import cost as costs
from mldeck.core import serving as sv
from mldeck.core.atomic import write_atomic
from mldeck.core.errors import Invalid, NotFound, Unavailable
from mldeck.core.paths import Layout
from mldeck.core.protocol import NoParams
from mldeck.core.registry import get_version
from mldeck.core.serving import LabelledParams, StatsParams, TrafficParams
from mldeck.core.servingtoken import HEADER, SCHEME, bearer, serving_token, token_path
from mldeck.core.signature import column_names, tensor_columns

if TYPE_CHECKING:
    from mldeck.agent.collector import Collector
    from mldeck.agent.ingest import Ingest

log = logging.getLogger("mldeck.servingctl")

TOPIC = "serving"
POLL_S = 5.0
STATS_EVERY_S = 2.0
PRUNE_EVERY_S = 5.0
USAGE_EVERY_S = 10.0
START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 15.0
BACKOFF_MAX_S = 30.0
STABLE_S = 60.0
LOG_FILE = "server.log"
PID_FILE = "server.pid"
WATCH_POLL_S = 0.5

_INT = pa.int32()
_STR = pa.string()
_FLOAT = pa.float64()

parse_predictions = rows_parser(
    sv.PredictionRow, "predictions",
    {"ts": _FLOAT, "model": _STR, "version": _INT, "variant": _STR, "request_id": _STR, "inputs": _STR,
     "outputs": _STR, "latency_ms": _FLOAT},
    lambda rows: [("serving.predictions", {"model": rows[0].model, "rows": len(rows)})],
)
parse_feedback = rows_parser(
    sv.FeedbackRow, "feedback", {"request_id": _STR, "label": _STR, "ts": _FLOAT, "model": _STR}
)
parse_alerts = rows_parser(
    sv.AlertLine, "alerts",
    {"alert_id": _STR, "ts": _FLOAT, "model": _STR, "version": _INT, "kind": _STR, "message": _STR,
     "details": _STR},
    lambda rows: [("alerts", msgspec.to_builtins(r)) for r in rows],
)


class Serving:
    """The model server child process, the manifest it serves from, and the `serving.*` methods."""

    def __init__(self, ctx: Context, ingest: Ingest, collector: Collector) -> None:
        self.ctx = ctx
        self.collector = collector
        self.ingest = ingest
        self.config = ctx.config.serving
        self.dir = ctx.layout.serving
        self.proc: ServerProcess | None = None
        self._usage: tuple[int, float, float] | None = None  # pid, monotonic time, CPU seconds
        self.wanted = False
        self.started_at: float | None = None
        self.restarts = 0
        self.last_exit: dict[str, Any] | None = None
        self.manifest = sv.Manifest()
        self._dirty = asyncio.Event()
        self._dirty.set()
        self._lock = asyncio.Lock()
        self._launching = asyncio.Lock()
        self._session: aiohttp.ClientSession | None = None
        ctx.hub.declare(TOPIC)
        ctx.hub.on("models", self.models_changed)
        for pattern, parser in ((sv.PREDICTIONS_GLOB, parse_predictions), (sv.FEEDBACK_GLOB, parse_feedback),
                                (sv.ALERTS_GLOB, parse_alerts)):
            ingest.add_source(Source(pattern, parser))

    async def start(self) -> None:
        tasks = self.ctx.tasks
        tasks.spawn(self.refresher(), "serving-manifest")
        tasks.every(STATS_EVERY_S, self.publish_stats, "serving-stats")
        tasks.every(PRUNE_EVERY_S, self.prune_segments, "serving-prune")
        tasks.every(USAGE_EVERY_S, self.account_usage, "serving-usage")

    async def stop(self) -> None:
        """A planned stop of the agent leaves the server serving; the next agent adopts it."""
        if self.running and self.proc is not None:
            log.info("model server pid %d keeps serving on %s; the next agent adopts it", self.proc.pid,
                     self.url)
        if self._session is not None:
            await self._session.close()

    @property
    def url(self) -> str:
        host = self.config.host
        host = "127.0.0.1" if host in ("0.0.0.0", "") else ("[::1]" if host == "::" else host)
        return f"http://{host}:{self.config.port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    # the methods ----------------------------------------------------------------

    @rpc("serving.status")
    async def status(self, p: NoParams) -> dict[str, Any]:
        return self.describe()

    @rpc("serving.start")
    async def start_server(self, p: NoParams) -> dict[str, Any]:
        await self.launch()
        await self.wait_live()
        return self.describe()

    @rpc("serving.stop")
    async def stop_server(self, p: NoParams) -> dict[str, Any]:
        await self.terminate()
        return self.describe()

    @rpc("serving.token")
    async def token(self, p: NoParams) -> dict[str, Any]:
        """The token feedback (and, with require_token, everything) must carry; made on first use."""
        home = self.ctx.layout.home
        token = await asyncio.to_thread(serving_token, home)
        return {"token": token, "header": f"{HEADER}: {SCHEME}{token}", "path": str(token_path(home)),
                "required_for": "everything but health" if self.config.require_token else "feedback"}

    @rpc("serving.stats")
    async def stats(self, p: StatsParams) -> dict[str, Any]:
        return await self.server_stats(p.window_s)

    @rpc("serving.traffic")
    async def traffic(self, p: TrafficParams) -> dict[str, Any]:
        if p.shadow is None and p.canary is None:
            raise Invalid("say what to change: shadow (true/false) and/or canary (percent)")
        await self.require_model(p.name)
        split = await self.ctx.db(sv.set_traffic, self.ctx.store, p.name, p.shadow, p.canary)
        manifest = await self.write_manifest()
        served = manifest.models.get(p.name)
        challenger = served.aliases.get(sv.CHALLENGER) if served else None
        split["challenger"] = challenger.version if challenger else None
        if challenger is None and (split["shadow"] or split["canary"]):
            split["warning"] = (
                f"{p.name} has no challenger alias yet: shadow and canary take effect once one is "
                f"promoted (`mldeck models promote {p.name} VERSION --to challenger`)"
            )
        return split

    @rpc("serving.labelled")
    async def labelled(self, p: LabelledParams) -> dict[str, Any]:
        await self.require_model(p.name)
        store = self.ctx.store
        rows = await self.ctx.read(sv.labelled_requests, store, p.name, p.since, p.limit)
        newest = await self.ctx.read(get_version, store, p.name, max((r[1] for r in rows), default=None))
        layout = tensor_columns((newest.get("signature") or {}).get("inputs") or [],
                                column_names(Path(newest["artifact"])))
        columns = await asyncio.to_thread(sv.labelled_columns, rows, layout)
        return {"name": p.name, "version": newest["version"], "n_requests": len(rows),
                "n_rows": len(columns["label"]), "columns": columns}

    async def require_model(self, name: str) -> None:
        if not await self.ctx.read(sv.model_known, self.ctx.store, name):
            raise NotFound(f"no model {name!r} on this host (`mldeck models ls` lists them)")

    def describe(self) -> dict[str, Any]:
        """The server's state as `serving.status` reports it."""
        return {
            "running": self.running,
            "wanted": self.wanted,
            "pid": self.proc.pid if self.running and self.proc else None,
            "url": self.url,
            "host": self.config.host,
            "port": self.config.port,
            "started_at": self.started_at if self.running else None,
            "restarts": self.restarts,
            "last_exit": self.last_exit,
            "log": str(self.dir / LOG_FILE),
            "manifest": msgspec.to_builtins(self.manifest),
        }

    # the manifest ------------------------------------------------------------

    def models_changed(self, _event: Any = None) -> None:
        """Hub listener on `models`: rewrite the manifest soon (coalescing bursts of events)."""
        self._dirty.set()

    async def write_manifest(self) -> sv.Manifest:
        async with self._lock:
            manifest = await self.ctx.read(sv.build_manifest, self.ctx.store, self.ctx.layout.home)
            if msgspec.to_builtins(manifest.models) != msgspec.to_builtins(self.manifest.models) or not (
                self.dir / sv.MANIFEST_FILE
            ).exists():
                self.dir.mkdir(parents=True, exist_ok=True)
                data = sv.encode_manifest(manifest)
                await asyncio.to_thread(write_atomic, self.dir / sv.MANIFEST_FILE, data)
                log.info("manifest: %s", {n: {a: v.version for a, v in m.aliases.items()}
                                          for n, m in manifest.models.items()})
                self.manifest = manifest
            return self.manifest

    async def refresher(self) -> None:
        """Refresh when the registry says so, and every POLL_S behind that; a failure never ends it."""
        try:
            await self.resume()
        except Exception as exc:
            self.ctx.tasks.failed("serving-manifest", exc)
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._dirty.wait(), POLL_S)
            self._dirty.clear()
            try:
                await self.refresh()
            except Exception as exc:
                self.ctx.tasks.failed("serving-manifest", exc)

    async def refresh(self) -> None:
        """Put the manifest in step with the store; start the server once there is something to serve."""
        manifest = await self.write_manifest()
        if self.config.autostart and manifest.models and not self.wanted and self.last_exit is None:
            log.info("models have aliases: starting the model server (serving.autostart)")
            await self.launch()

    # the process ---------------------------------------------------------------

    def command(self) -> list[str]:
        c = self.config
        return [
            sys.executable, "-m", "mldeck.agent.serving", "--home", str(self.ctx.layout.home),
            "--host", c.host, "--port", str(c.port), "--max-batch-size", str(c.max_batch_size),
            "--max-queue-delay-ms", str(c.max_queue_delay_ms), "--max-body-bytes", str(c.max_body_bytes),
            "--device", c.device, "--log-queue", str(c.log_queue), "--segment-bytes", str(c.segment_bytes),
        ]

    async def resume(self) -> None:
        """Adopt the server an earlier agent left running if it is ready and runs these settings."""
        async with self._launching:
            proc = await asyncio.to_thread(left_running, self.ctx.layout)
            if proc is None or self.running:
                return
            stats = await self._get(sv.STATS_PATH, window_s="1")
            why = ("it does not answer" if stats is None or stats.get("pid") != proc.pid
                   else "it is not ready" if not stats.get("ready")
                   else "[serving] changed" if stats.get("config") != self.config.for_server() else None)
            if why is not None:
                log.warning("not adopting model server pid %d left by an earlier agent: %s; replacing it",
                            proc.pid, why)
                return
            await self.write_manifest()
            self.proc = ServerProcess(proc)
            self.wanted = True
            self.last_exit = None
            self.started_at = proc.create_time()
            log.info("adopted model server pid %d, left running by an earlier agent", proc.pid)
            self.ctx.hub.publish(TOPIC, {"kind": "state", "state": "adopted", "pid": proc.pid})
            self.ctx.tasks.spawn(self.supervise(self.proc), "serving-supervisor")

    async def _spawn(self) -> ServerProcess:
        """Start the server as a plain process, not an asyncio child (whose transport kills it on close)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        ended = await asyncio.to_thread(end_left_running, self.ctx.layout)
        if ended is not None:
            log.warning("ended model server pid %d left by an earlier agent, not adopted", ended)
        with open(self.dir / LOG_FILE, "ab") as out:
            child = subprocess.Popen(
                self.command(), stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True,
            )
        proc = ServerProcess(psutil.Process(child.pid), child)
        self.proc = proc
        self.started_at = time.time()
        with contextlib.suppress(psutil.Error):  # one that died at once is supervised all the same
            record = ServerRecord(proc.pid, proc.process.create_time())
            write_atomic(self.dir / PID_FILE, msgspec.json.encode(record))
        log.info("model server started: pid %d on %s", proc.pid, self.url)
        self.ctx.hub.publish(TOPIC, {"kind": "state", "state": "starting", "pid": proc.pid})
        return proc

    async def launch(self) -> None:
        """Start the process under supervision, without waiting for it to answer.

        Autostart and `serving.start` may ask at the same moment: one process, never two on one port.
        """
        async with self._launching:
            if self.running:
                return
            await self.write_manifest()
            self.wanted = True
            self.last_exit = None
            proc = await self._spawn()
            self.ctx.tasks.spawn(self.supervise(proc), "serving-supervisor")

    async def wait_live(self) -> None:
        """Until the server is ready (its first manifest applied), or say why it is not."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if not self.running:
                why = self.last_exit["message"] if self.last_exit else "it exited"
                raise Unavailable(f"the model server did not start: {why}")
            if await self._get("/v2/health/ready") is not None:
                return
            await asyncio.sleep(0.2)
        raise Unavailable(
            f"the model server did not answer within {START_TIMEOUT_S:.0f}s; "
            f"see {self.dir / LOG_FILE}")

    async def supervise(self, proc: ServerProcess) -> None:
        """Restart the server if it dies while wanted, backing off when it keeps dying."""
        backoff = 1.0
        while True:
            code = await proc.wait()
            uptime = time.time() - (self.started_at or time.time())
            tail = _tail(self.dir / LOG_FILE)
            self.last_exit = {"code": code, "at": time.time(), "uptime_s": uptime, "message":
                              f"exit code {code}: {tail}" if tail else f"exit code {code}"}
            if not self.wanted or proc is not self.proc:
                return
            log.warning("model server died (%s); restarting in %.0fs", self.last_exit["message"], backoff)
            self.ctx.hub.publish(TOPIC, {"kind": "state", "state": "died", **self.last_exit})
            await asyncio.sleep(backoff)
            if not self.wanted or proc is not self.proc:
                return
            backoff = 1.0 if uptime > STABLE_S else min(BACKOFF_MAX_S, backoff * 2)
            self.restarts += 1
            proc = await self._spawn()

    async def terminate(self) -> None:
        """End the server on request; it stays down until asked to start again."""
        self.wanted = False
        proc = self.proc
        if proc is not None and proc.returncode is None:
            await end_child(proc, STOP_TIMEOUT_S)
            self.ctx.hub.publish(TOPIC, {"kind": "state", "state": "stopped", "pid": proc.pid})
        self.last_exit = {"code": proc.returncode if proc else None, "at": time.time(),
                          "message": "stopped on request"}

    # talking to the server and watching it ---------------------------------------

    async def _get(self, path: str, **query: str) -> Any:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
        try:
            headers = bearer(await asyncio.to_thread(serving_token, self.ctx.layout.home))
            async with self._session.get(self.url + path, params=query, headers=headers) as resp:
                return await resp.json() if resp.status == 200 else None
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return None

    async def server_stats(self, window_s: float = 60.0) -> dict[str, Any]:
        if not self.running:
            return {"running": False, "models": {}}
        data = await self._get(sv.STATS_PATH, window_s=str(window_s))
        if data is None:
            return {"running": True, "ready": False, "models": {}}
        return {"running": True, **data}

    async def publish_stats(self) -> None:
        """Stats on the `serving` topic, while someone listens."""
        if self.running and self.ctx.hub.has_subscribers(TOPIC):
            self.ctx.hub.publish(TOPIC, {"kind": "stats", **await self.server_stats()})

    async def account_usage(self) -> None:
        """What the server used since the last tick: its GPUs' time and its CPU time."""
        if not self.running or self.proc is None:
            self._usage = None
            return
        pid = self.proc.pid
        try:
            times = psutil.Process(pid).cpu_times()
        except psutil.Error:
            return
        now, cpu = time.monotonic(), times.user + times.system
        last, self._usage = self._usage, (pid, now, cpu)
        if last is not None and last[0] == pid:
            gpus = sum(1 for g in (self.collector.latest or {}).get("gpus") or []
                       if any(p == pid for p, _ in g.get("processes") or []))
            await self.ctx.db(costs.record_serving_usage, self.ctx.store, time.time(), pid,
                              gpus * (now - last[1]), cpu - last[2])

    async def prune_segments(self) -> None:
        """Delete log segments past the newest keep_segments (per model and kind) once they are stored."""
        if not self.config.keep_segments:
            return
        old = sv.old_segments(self.dir, self.config.keep_segments)
        gone = [p for p in old if self.ingest.ingested(p)]
        for path in gone:
            path.unlink(missing_ok=True)
        if gone:
            await self.ingest.forget(gone)
            log.info("deleted %d ingested log segments: %s", len(gone), ", ".join(p.name for p in gone))

class ServerRecord(msgspec.Struct, array_like=True):
    """server.pid: the server's pid and start time, so a pid reused by another process is not taken."""

    pid: int
    created: float


class ServerProcess:
    """The model server behind asyncio's Process interface, watched by polling so that it outlives the agent.

    One this agent started is also its Popen, which gives its exit code; one an earlier agent started is
    not our child: its exit status cannot be known, and `returncode` is 0 once it is gone.
    """

    def __init__(self, process: psutil.Process, child: subprocess.Popen[bytes] | None = None) -> None:
        self.process = process
        self._child = child
        self.pid = process.pid
        self._code: int | None = None

    @property
    def returncode(self) -> int | None:
        if self._code is None:
            self._code = self._child.poll() if self._child is not None else 0 if gone(self.process) else None
        return self._code

    async def wait(self) -> int:
        while (code := self.returncode) is None:
            await asyncio.sleep(WATCH_POLL_S)
        return code

    def terminate(self) -> None:
        with contextlib.suppress(psutil.NoSuchProcess):
            self.process.terminate()

    def kill(self) -> None:
        with contextlib.suppress(psutil.NoSuchProcess):
            self.process.kill()


def left_running(layout: Layout) -> psutil.Process | None:
    """The model server an agent of this home started, if it still runs (pid and start time checked)."""
    try:
        record = msgspec.json.decode((layout.serving / PID_FILE).read_bytes(), type=ServerRecord)
        proc = psutil.Process(record.pid)
        if abs(proc.create_time() - record.created) > 1.0:
            return None  # the pid was reused
        cmdline = proc.cmdline()
    except (OSError, msgspec.DecodeError, msgspec.ValidationError, psutil.Error):
        return None
    return proc if "mldeck.agent.serving" in cmdline and str(layout.home) in cmdline else None


def end_left_running(layout: Layout) -> int | None:
    """End the model server an agent of this home left running (it holds the port): its pid, or None."""
    proc = left_running(layout)
    if proc is None:
        return None
    for send in (proc.terminate, proc.kill):
        with contextlib.suppress(psutil.NoSuchProcess):
            send()
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while time.monotonic() < deadline:
            if gone(proc):
                return proc.pid
            time.sleep(0.05)
    raise Unavailable(f"the model server pid {proc.pid} left by an earlier agent does not end")


def gone(proc: psutil.Process) -> bool:
    """Whether the process has exited: a zombie has (reaped here if it is our child, else by its parent)."""
    try:
        if proc.status() != psutil.STATUS_ZOMBIE:
            return False
    except psutil.NoSuchProcess:
        return True
    with contextlib.suppress(psutil.Error):
        proc.wait(0)
    return True


def _tail(path: Path, lines: int = 1) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(max(0, os.path.getsize(path) - 4096))
            return " ".join(fh.read().decode(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return ""
