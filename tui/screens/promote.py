"""The promotion flow: pick an alias, then a dialog with gates, metric deltas (green when better, by the
metric's direction) and drift, and a reason for the audit log (required for production); Enter promotes."""

from __future__ import annotations

from typing import Any, ClassVar

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, OptionList, Static

from mldeck.core.errors import GateRefused, Invalid, MethodNotAvailable, MldeckError
from mldeck.tui.screens.base import rpc, screen_work, why
from mldeck.tui.units import lower_is_better, number

PRODUCTION = "production"
DEFAULT_ALIASES = [PRODUCTION, "staging", "challenger"]


def alias_choices(held: dict[str, int]) -> list[str]:
    """The usual aliases first (production on top: the common move), then any others in use."""
    return DEFAULT_ALIASES + sorted(a for a in held if a not in DEFAULT_ALIASES)


def rollback_choices(held: dict[str, int]) -> list[str]:
    """The aliases the model holds, production first (the one a rollback is usually for)."""
    return [a for a in DEFAULT_ALIASES if a in held] + sorted(a for a in held if a not in DEFAULT_ALIASES)


def delta_style(metric: str, delta: float) -> str:
    """Green when the candidate is better, red when worse: lower is better for a loss, an error, a latency."""
    if delta == 0:
        return ""
    better = delta < 0 if lower_is_better(metric) else delta > 0
    return "green" if better else "red"


def deltas(candidate: dict[str, Any], current: dict[str, Any] | None) -> Table:
    """Each metric of the candidate against the version the alias holds now."""
    t = Table("metric", "candidate", "current", "Δ", "", box=None, padding=(0, 2), header_style="bold")
    mine = candidate.get("metrics") or {}
    theirs = (current or {}).get("metrics") or {}
    for key in sorted(set(mine) | set(theirs)):
        a, b = mine.get(key), theirs.get(key)
        delta, verdict = Text("-"), Text("")
        if isinstance(a, (int, float)) and isinstance(b, (int, float)):
            d = a - b
            style = delta_style(key, d)
            delta = Text(f"{d:+.4g}", style)
            verdict = Text({"green": "better", "red": "worse"}.get(style, "same"), style)
        t.add_row(key, number(a), number(b), delta, verdict)
    return t


class AliasPicker(ModalScreen[str | None]):
    """Which alias to move; Enter picks the highlighted one (production first)."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "cancel")]

    def __init__(self, title: str, aliases: list[str], held: dict[str, int]) -> None:
        super().__init__()
        self.title_text = title
        self.aliases = aliases
        self.held = held

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog", id="alias-picker"):
            yield Static(self.title_text)
            yield OptionList(*(f"{a}  (now v{self.held[a]})" if a in self.held else f"{a}  (unset)"
                               for a in self.aliases), id="aliases")
            yield Static("[b]enter[/b] pick   [b]esc[/b] cancel", classes="dialog-keys")

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(self.aliases[event.option_index])

    def action_cancel(self) -> None:
        self.dismiss(None)


class PromoteDialog(ModalScreen[dict[str, Any] | None]):
    """Shows what the promotion would do; Enter asks the agent, which checks the gates for real."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "confirm", "promote"),
        Binding("ctrl+f", "force", "force (with a reason)"),
        Binding("escape", "cancel", "cancel"),
    ]

    def __init__(self, host: str, candidate: dict[str, Any], alias: str, current: dict[str, Any] | None):
        super().__init__()
        self.host = host
        self.candidate = candidate
        self.alias = alias
        self.current = current
        self.failed: list[str] | None = None

    @property
    def name_(self) -> str:
        return str(self.candidate["name"])

    def compose(self) -> ComposeResult:
        c = self.candidate
        now = f"v{self.current['version']}" if self.current else "nothing"
        need = "required for production" if self.required else "optional"
        with Vertical(classes="dialog", id="promote"):
            yield Static(f"[b]Promote {c['name']} v{c['version']} to {self.alias}[/b]  (holds {now} now)")
            yield Static(deltas(c, self.current), id="deltas")
            yield Static("gates: checking…", id="gates")
            yield Static("drift: checking…", id="drift")
            yield Static(f"reason for the audit log ({need}):", classes="field-label")
            yield Input(placeholder="why this version", id="reason")
            yield Static("[b]enter[/b] promote   [b]esc[/b] cancel", classes="dialog-keys", id="promote-keys")

    @property
    def required(self) -> bool:
        return self.alias == PRODUCTION

    @property
    def reason(self) -> str:
        return self.query_one("#reason", Input).value.strip()

    def on_mount(self) -> None:
        self.query_one("#reason", Input).focus()
        self.check()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.action_confirm()

    @screen_work(group="promote-check")
    async def check(self) -> None:
        """Gates by a dry run where the agent offers one; drift from open alerts and drift status."""
        gates = self.query_one("#gates", Static)
        try:
            res = await rpc(self.app, self.host, "models.promote", name=self.name_,  # type: ignore[arg-type]
                            version=self.candidate["version"], alias=self.alias, dry_run=True)
            self.show_gates(res.get("failed_gates") or [], gated=res.get("gated", True))
        except MldeckError as exc:
            if isinstance(exc, Invalid) and "dry_run" in exc.message:
                gates.update("gates: the agent checks them when you press enter")
            elif isinstance(exc, GateRefused):
                self.show_gates(exc.failed)
            else:
                gates.update(f"gates: {why(exc)}")
        self.query_one("#drift", Static).update(await self.drift_line())

    async def drift_line(self) -> Text:
        try:
            status = await rpc(self.app, self.host, "drift.status", name=self.name_)  # type: ignore[arg-type]
        except MethodNotAvailable:
            return Text("drift: not available on this agent", "dim")
        except MldeckError as exc:
            return Text(f"drift: {why(exc)}", "dim")
        if not isinstance(status, dict):
            return Text("drift: -", "dim")
        alerts = status.get("open_alerts") or 0
        tail = f", {alerts} open alert(s)" if alerts else ""
        if status.get("drifted") is None:
            return Text(f"drift: {status.get('note') or 'not judged yet'}{tail}", "red" if alerts else "dim")
        bad = bool(status["drifted"])
        return Text(f"drift: {'DRIFTED' if bad else 'no drift'}{tail}", "red" if bad or alerts else "green")

    def show_gates(self, failed: list[str], gated: bool = True) -> None:
        self.failed = failed
        text = Text("gates: ")
        if not failed:
            text.append("all passed ✓" if gated else f"none configured for {self.alias} ✓", "green")
        for f in failed:
            text.append(f"\n  ✗ {f}", "red")
        self.query_one("#gates", Static).update(text)
        if failed:
            self.query_one("#promote-keys", Static).update(
                "[b]ctrl+f[/b] force (the reason says why the gates are overridden)   [b]esc[/b] cancel")

    def action_confirm(self) -> None:
        if self.failed:
            self.notify("gates failed: ctrl+f forces it with a reason, or esc", severity="warning")
            return
        if self.required and not self.reason:
            self.notify(f"a promotion to {self.alias} needs a reason (the audit log keeps it)",
                        severity="warning")
            return
        self.promote(False, self.reason or None)

    def action_force(self) -> None:
        if not self.reason:
            self.notify("forcing past the gates needs a reason: type it first", severity="warning")
            return
        self.promote(True, self.reason)

    @screen_work(exclusive=True, group="promote")
    async def promote(self, force: bool, reason: str | None) -> None:
        try:
            res = await rpc(self.app, self.host, "models.promote", name=self.name_,  # type: ignore[arg-type]
                            version=self.candidate["version"], alias=self.alias, force=force, reason=reason)
        except MldeckError as exc:
            if isinstance(exc.data, dict) and exc.data.get("failed_gates"):
                self.show_gates(exc.data["failed_gates"])
            else:
                self.query_one("#gates", Static).update(Text(why(exc), "red"))
            return
        self.dismiss(res)

    def action_cancel(self) -> None:
        self.dismiss(None)
