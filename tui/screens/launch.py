"""Launch: a form for one run or a sweep; checked here before it is sent, then the new run opens.

Digits jump screens until a text field takes the keys (tab, or a click); Esc gives them back. The status
line follows the last launch until its run ends.
"""

from __future__ import annotations

import shlex
from typing import Any, ClassVar

from textual import events
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Grid, VerticalScroll
from textual.widgets import Input, Label

from mldeck.core.errors import MethodNotAvailable, MldeckError
from mldeck.core.jobs import AMP, check_param_names
from mldeck.core.runlog import TERMINAL
from mldeck.core.sweep import parse_grid, parse_value
from mldeck.tui.screens.base import DeckScreen, screen_work, why
from mldeck.tui.units import span
from mldeck.tui.widgets.choice import Choice

EARLY_STOP = ["", "median", "asha"]
FOLLOW_S = 2.0


def parse_params(text: str) -> dict[str, Any]:
    """`lr=0.01 epochs=3 name=x` → typed values (numbers when they read as numbers)."""
    out: dict[str, Any] = {}
    for item in shlex.split(text):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"param {item!r} must look like name=value")
        out[key] = parse_value(value)
    check_param_names(out)
    return out


class LaunchScreen(DeckScreen):
    TITLE = "Launch"
    HELP = ("A run: host, script, params (name=value ...), GPUs, AMP. A sweep: also grid axes "
            "(lr=0.1,0.01 batch=32,64), the metric to optimize and early stopping. tab moves between "
            "fields, esc leaves a field (digits jump screens again), ctrl+s sends.")
    BINDINGS: ClassVar[list[BindingType]] = [Binding("ctrl+s", "send", "launch")]
    AUTO_FOCUS = "#host"

    def __init__(self) -> None:
        super().__init__()
        self.launched: tuple[str, str] | None = None

    def compose(self) -> ComposeResult:
        yield self.header()
        hosts = [(h, h) for h in self.deck.fleet.names]
        with VerticalScroll(), Grid(id="launch-form"):
            yield Label("host")
            yield Choice(hosts, id="host")
            yield Label("script")
            yield Input(placeholder="train.py (a path on that host) or -m package.module", id="script")
            yield Label("params")
            yield Input(placeholder="lr=0.01 epochs=5", id="params")
            yield Label("GPUs")
            yield Input("0", id="gpus", type="integer")
            yield Label("AMP")
            yield Choice([("off", ""), *((a, a) for a in AMP)], id="amp")
            yield Label("experiment / name")
            yield Input(placeholder="experiment name (optional)", id="experiment")
            yield Label("sweep grid")
            yield Input(placeholder="lr=0.1,0.01 batch=32,64 (empty: a single run)", id="grid")
            yield Label("sweep metric")
            yield Input(placeholder="val_loss (min) or val_acc:max", id="metric")
            yield Label("early stopping")
            yield Choice([(e or "none", e) for e in EARLY_STOP], id="early")
        yield self.status_line()
        yield self.footer()

    def on_mount(self) -> None:
        self.say("tab to a field and type; ctrl+s sends")

    def on_descendant_focus(self, event: events.DescendantFocus) -> None:
        if isinstance(event.widget, Input):
            self.say(f"typing in {event.widget.id}  ·  esc leaves the field  ·  ctrl+s sends")

    def on_descendant_blur(self, event: events.DescendantBlur) -> None:
        if isinstance(event.widget, Input) and self.launched is None:
            self.say("tab to a field and type; ctrl+s sends")

    def value(self, wid: str) -> str:
        return str(self.query_one(f"#{wid}", Input).value).strip()

    def build(self) -> tuple[str, str, dict[str, Any]]:
        """(host, method, params) from the form, or ValueError saying which field is wrong."""
        host = str(self.query_one("#host", Choice).value)
        script = self.value("script")
        if not script:
            raise ValueError("script: give the training script's path (or -m module)")
        target = {"module": script[3:].strip()} if script.startswith("-m ") else {"script": script}
        params = parse_params(self.value("params"))
        gpus = int(self.value("gpus") or 0)
        if gpus < 0:
            raise ValueError("GPUs: 0 or more")
        common: dict[str, Any] = {**target, "params": params, "gpus": gpus}
        amp = str(self.query_one("#amp", Choice).value)
        if amp:
            common["amp"] = amp
        if self.value("experiment"):
            common["experiment"] = self.value("experiment")
        grid = self.value("grid").split()
        if not grid:
            return host, "runs.launch", common
        parse_grid(grid)
        metric, _, mode = self.value("metric").partition(":")
        if not metric:
            raise ValueError("sweep metric: which metric decides (e.g. val_loss, or val_acc:max)")
        sweep = {**common, "grid": grid, "metric": metric, "mode": mode or "min"}
        early = str(self.query_one("#early", Choice).value)
        if early:
            sweep["early_stop"] = early
        return host, "sweeps.create", sweep

    def action_send(self) -> None:
        try:
            host, method, params = self.build()
        except ValueError as exc:
            self.say(f"not sent: {exc}")
            return
        self.send(host, method, params)

    @screen_work(exclusive=True, group="launch")
    async def send(self, host: str, method: str, params: dict[str, Any]) -> None:
        self.say(f"sending {method} to {host}…")
        try:
            result = await self.call(host, method, **params)
        except MethodNotAvailable as exc:
            self.say(f"{exc}: this agent cannot launch jobs")
            return
        except MldeckError as exc:
            self.say(f"refused: {why(exc)}")
            return
        from mldeck.tui.screens.run_detail import RunDetailScreen

        run_id = result.get("run_id") or next(iter(result.get("run_ids") or []), None)
        self.say(f"{method}: {result.get('sweep_id') or run_id} {result.get('status', '')}")
        if run_id:
            self.launched = (host, run_id)
            self.poll(FOLLOW_S, self.follow_launch)
            self.app.push_screen(RunDetailScreen(host, run_id))

    async def follow_launch(self) -> bool:
        """The last launched run's status, read again while it runs; True once it has ended."""
        if self.launched is None:
            return True
        host, run_id = self.launched
        run = await self.call(host, "runs.get", run_id=run_id)
        status = run.get("status")
        took = span(run.get("started_at"), run.get("ended_at"))
        self.updated(f"last launch: {run.get('name') or run_id} on {host}: {status} ({took})")
        return status in TERMINAL
