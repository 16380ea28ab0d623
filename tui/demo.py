"""The newcomer's story, told through the agent's RPC: sweep, promote, serve, drift, retrain, promote.

The same coroutine drives `mldeck demo --headless` (printing each step) and the TUI demo
(where it runs as a worker while the screens show the agent's live state).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mldeck.core.client import Client
from mldeck.core.errors import Conflict, MldeckError
from mldeck.core.runlog import TERMINAL

MODEL = "demo"
SHIFTED = ["mean_radius", "worst_texture", "mean_concavity"]
WINDOW_ROWS = 200
TRAFFIC_S = 3600
"""Long enough for any machine: the story stops its traffic when it ends, however it ends."""

Say = Callable[[str], None]


class DemoFailed(RuntimeError):
    """A step of the story did not happen; the message says which and why."""


def free_port() -> int:
    """A free loopback port below Linux's ephemeral range, so outgoing connections will not take it."""
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(20000, 32000)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise DemoFailed("no free port for the model server between 20000 and 32000")


def demo_config(port: int, retrain: Path) -> str:
    """agent.toml for the demo home: gates on promotion, fast drift windows, retrain on drift."""
    return f"""
[serving]
port = {port}
max_queue_delay_ms = 2.0

[registry.gates.{MODEL}.staging]
metrics = ["val_acc >= 0.85"]

[registry.gates.{MODEL}.production]
metrics = ["val_acc >= 0.9"]

[monitor]
window = "{WINDOW_ROWS}rows"
interval_s = 1
min_rows = 30

[monitor.models.{MODEL}]
drift_share = 0.05
drift_windows = 2
retrain = "{retrain}"
"""


async def until(what: str, check: Callable[[], Any], timeout: float, every: float = 0.5) -> Any:
    """Poll an async check until it returns something truthy, or fail the step by name."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await check()
        if value:
            return value
        await asyncio.sleep(every)
    raise DemoFailed(f"{what}: not done within {timeout:.0f}s")


async def sweep_step(client: Client, say: Say, gpus: int) -> dict[str, Any]:
    say("1/4 sweep: 4 trials of the demo MLP (lr × hidden), median early stopping on val_loss")
    sweep = await client.call(
        "sweeps.create", module="mldeck.agent.demo.train", name="demo-sweep", experiment="demo",
        params={"epochs": 12}, grid=["lr=0.02,0.0005", "hidden=64,8"], metric="val_loss", mode="min",
        early_stop="median", warmup_steps=3, min_trials=2, gpus=min(gpus, 1),
    )

    async def finished() -> dict[str, Any] | None:
        shown = await client.call("sweeps.show", sweep_id=sweep["sweep_id"])
        trials = shown["trials"]
        return shown if trials and all(t["status"] in TERMINAL for t in trials) else None

    shown = await until("the sweep", finished, timeout=600)
    trials = shown["trials"]
    pruned = [t for t in trials if t.get("status") == "pruned"]
    best = next((t for t in trials if t["status"] == "succeeded"), None)
    if best is None:
        raise DemoFailed(f"the sweep: no trial succeeded ({[t['status'] for t in trials]})")
    say(f"    {len(trials)} trials, {len(pruned)} stopped early; best {best['run_id']} "
        f"val_loss {best.get('best') or float('nan'):.4f}")
    return {"sweep_id": sweep["sweep_id"], "trials": len(trials), "stopped_early": len(pruned),
            "best_run": best["run_id"], "best_val_loss": best.get("best")}


async def promote_step(client: Client, say: Say, run_id: str) -> dict[str, Any]:
    say(f"2/4 registry: register {run_id} as {MODEL!r}, promote to staging, then production")
    version = await client.call("models.register", run_id=run_id, name=MODEL, actor="mldeck-demo")
    v = version["version"]
    for alias in ("staging", "production"):
        await client.call("models.promote", name=MODEL, version=v, alias=alias, actor="mldeck-demo",
                          reason=f"demo: best trial of the sweep to {alias}")
    say(f"    {MODEL} v{v} (val_acc {version['metrics'].get('val_acc', float('nan')):.3f}) "
        "is staging and production")
    return {"version": v, "val_acc": version["metrics"].get("val_acc")}


async def serve_step(client: Client, say: Say) -> dict[str, Any]:
    say("3/4 serving: start the model server and wait until production answers")
    await client.call("serving.start")

    async def ready() -> dict[str, Any] | None:
        status = await client.call("serving.status")
        served = (status.get("manifest") or {}).get("models", {}).get(MODEL)
        return status if status["running"] and served else None

    status = await until("the model server", ready, timeout=180)
    say(f"    serving at {status['url']}")
    return {"url": status["url"]}


async def drift_step(client: Client, say: Say, url: str, auto: bool) -> dict[str, Any]:
    say(f"4/4 monitoring: traffic for {MODEL}, then {', '.join(SHIFTED)} shift by 2 std")
    traffic = await client.call(
        "runs.launch", module="mldeck.agent.demo.traffic", name="demo-traffic", experiment="demo-traffic",
        args=["--url", url, "--model", MODEL, "--rps", "80", "--duration", str(TRAFFIC_S), "--shift-at", "6",
              "--shift-columns", ",".join(SHIFTED), "--shift-std", "2", "--feedback-share", "0.6"],
    )
    try:
        return await watch_drift(client, say, auto)
    finally:
        with contextlib.suppress(MldeckError):  # the traffic lasts the story, and ends with it
            await client.call("runs.stop", run_id=traffic["run_id"])


async def watch_drift(client: Client, say: Say, auto: bool) -> dict[str, Any]:
    """From the shifted traffic to the drift alert, the retrained challenger in shadow, and its promotion."""

    async def drift_alert() -> dict[str, Any] | None:
        alerts = (await client.call("alerts.list", name=MODEL))["alerts"]
        return next((a for a in alerts if a["kind"] == "drift"), None)

    alert = await until("the drift alert", drift_alert, timeout=300)
    status = await client.call("drift.status", name=MODEL)
    say(f"    drift on {', '.join(sorted(status['drifted_columns']))}: alert {alert['alert_id']}, "
        "retraining pipeline started")

    async def retrained() -> dict[str, Any] | None:
        rows = await client.call("pipelines.list")
        mine = [r for r in rows if (r.get("trigger") or {}).get("alert_id") == alert["alert_id"]]
        return mine[0] if mine and mine[0]["status"] not in ("running", "queued") else None

    pipe = await until("the retraining pipeline", retrained, timeout=600)
    if pipe["status"] != "succeeded":
        raise DemoFailed(f"the retraining pipeline ended {pipe['status']}: {pipe.get('message')}")
    challenger = pipe["registered_version"]
    train = next(s["run_id"] for s in pipe["steps"] if s["step"] == "train")
    learned = ((await client.call("runs.get", run_id=train)).get("params") or {}).get("labelled_rows")
    say(f"    {MODEL} v{challenger} retrained on the data set plus {learned or 0} labelled served rows "
        "since the drift began; gate passed")
    await client.call("serving.traffic", name=MODEL, shadow=True)

    async def shadowed() -> int:
        rows = (await client.call("query", sql="SELECT count(*) FROM predictions WHERE variant = 'shadow'"))
        return int(rows["rows"][0][0])

    shadow_rows = await until("shadow predictions of the challenger", shadowed, timeout=180)
    say(f"    {MODEL} v{challenger} is challenger, in shadow ({shadow_rows} mirrored requests so far)")
    if auto:
        await client.call("models.promote", name=MODEL, version=challenger, alias="production",
                          actor="mldeck-demo", reason="demo: retrained challenger beat the drift")
    else:
        say(f"    promote it: 5, select v{challenger}, p, production, Enter")

    async def promoted() -> bool:
        got = await client.call("models.get", name=MODEL, alias="production")
        return got["version"] == challenger

    await until("the challenger's promotion", promoted, timeout=120 if auto else 1800)
    try:
        await client.call("alerts.resolve", alert_id=alert["alert_id"], actor="mldeck-demo",
                          reason=f"v{challenger} retrained on the drift and promoted")
    except Conflict:
        say(f"    the monitor had resolved {alert['alert_id']}: v{challenger}'s inputs match its reference")
    served = await client.call("query", sql=f"SELECT count(*) FROM predictions WHERE model = '{MODEL}'")
    say(f"    {MODEL} v{challenger} is production; {served['rows'][0][0]} predictions logged")
    return {"alert_id": alert["alert_id"], "drifted_columns": sorted(status["drifted_columns"]),
            "pipeline_id": pipe["pipeline_id"], "challenger": challenger,
            "predictions": served["rows"][0][0]}


async def run_story(client: Client, say: Say, gpus: int, auto: bool = True) -> dict[str, Any]:
    """The whole story; returns its figures, raises DemoFailed naming the step that failed."""
    started = time.monotonic()
    figures: dict[str, Any] = {}
    try:
        figures["sweep"] = await sweep_step(client, say, gpus)
        figures["registry"] = await promote_step(client, say, figures["sweep"]["best_run"])
        figures["serving"] = await serve_step(client, say)
        figures["drift"] = await drift_step(client, say, figures["serving"]["url"], auto)
        aliases = (await client.call("models.versions", name=MODEL))
        figures["aliases"] = {a: v["version"] for v in aliases for a in v.get("aliases", [])}
        audit = await client.call("models.audit", name=MODEL)
        figures["audit"] = [
            " ".join(filter(None, [a["actor"], a["action"], a.get("alias"), f"v{a['version']}"]))
            for a in audit
        ]
    except MldeckError as exc:
        raise DemoFailed(f"the agent refused a step: {exc.message}") from None
    figures["seconds"] = round(time.monotonic() - started, 1)
    return figures


