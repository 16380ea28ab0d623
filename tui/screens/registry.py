"""Registry: models, versions with metrics and aliases; promote, roll back, archive, audit, lineage."""

from __future__ import annotations

import shlex
from typing import Any, ClassVar

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, VerticalScroll
from textual.widgets import Static

from mldeck.core.errors import MethodNotAvailable, MldeckError
from mldeck.tui.screens.base import DeckScreen, screen_work, why
from mldeck.tui.screens.dialogs import ReasonConfirm
from mldeck.tui.screens.promote import (
    PRODUCTION,
    AliasPicker,
    PromoteDialog,
    alias_choices,
    rollback_choices,
)
from mldeck.tui.units import age, number
from mldeck.tui.widgets.deck_table import Col, DeckTable, TableBox

SHOWN_METRICS = 4
TICK_S = 1.0  # the "created 3m05s ago" column moves on while the screen is open
ALIAS_STYLES = {"production": "bold green", "staging": "bold yellow", "challenger": "bold magenta"}
MODEL_COLUMNS = [Col("host", priority=2), Col("name", "model", priority=0), Col("versions", priority=1),
                 Col("aliases", priority=0, shrink_to=14)]
AUDIT_COLUMNS = [Col("ts", "when", priority=0, fmt=age), Col("actor", priority=2),
                 Col("action", priority=0), Col("alias", priority=0), Col("version", priority=0),
                 Col("from_version", "from", priority=1), Col("comment", "reason", priority=0, shrink_to=20)]


def alias_style(text: Any) -> str:
    """The colour of the most important alias in a cell (production first)."""
    for alias, style in ALIAS_STYLES.items():
        if alias in str(text or ""):
            return style
    return "bold cyan" if text else ""


def aliases_text(aliases: Any) -> str:
    """"production staging" → "● production ● staging"."""
    return " ".join(f"● {a}" for a in str(aliases or "").split())


def version_columns(keys: list[str]) -> list[Col]:
    return [Col("version", priority=0, fmt=lambda v: f"v{v}"),
            Col("aliases", priority=0, fmt=aliases_text, style=alias_style, shrink_to=14),
            *(Col(f"m:{k}", k, priority=2) for k in keys),
            Col("run_id", "run", priority=3), Col("created_at", "created", priority=1, fmt=age),
            Col("state", priority=1)]


class RegistryScreen(DeckScreen):
    TITLE = "Registry"
    HELP = ("Models on every host; their versions with metrics and alias markers. On a version: p promotes "
            "(pick alias, see gates, deltas and drift, give a reason, enter confirms), b rolls back an alias "
            "(the confirmation names the version it goes back to), a archives. / filters, o sorts.")
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("p", "promote", "promote"),
        Binding("b", "rollback", "rollback"),
        Binding("a", "archive", "archive"),
        Binding("A", "audit", "audit log"),
        Binding("L", "lineage", "lineage"),
        Binding("tab", "switch", "models/versions", show=False),
        Binding("ctrl+r", "reload", "reload", show=False),
    ]
    AUTO_FOCUS = "#models"

    def __init__(self) -> None:
        super().__init__()
        self.selected: tuple[str, dict[str, Any]] | None = None
        self.versions: list[dict[str, Any]] = []
        self.models_by_key: dict[tuple[str, str], dict[str, Any]] = {}

    def compose(self) -> ComposeResult:
        yield self.header()
        with Horizontal(id="registry"):
            yield TableBox(DeckTable(MODEL_COLUMNS, row_key=("host", "name"), id="models",
                                     empty="no models yet: a run's register_model() adds one"))
            yield TableBox(DeckTable(version_columns([]), row_key=("version",), id="versions",
                                     empty="no versions"))
        yield self.status_line()
        yield self.footer()

    @property
    def models_table(self) -> DeckTable:
        return self.query_one("#models", DeckTable)

    @property
    def versions_table(self) -> DeckTable:
        return self.query_one("#versions", DeckTable)

    def on_mount(self) -> None:
        self.load_models()
        self.set_interval(TICK_S, self.versions_table.refresh)
        self.set_interval(TICK_S, self.query_one("#models", DeckTable).refresh)
        if self.deck.live:
            for host in self.deck.fleet.names:
                self.follow(host)

    @screen_work(group="registry-follow")
    async def follow(self, host: str) -> None:
        try:
            async for _ in self.deck.fleet.subscribe(host, "models"):
                self.load_models()
        except MldeckError:
            return

    @screen_work(exclusive=True, group="models")
    async def load_models(self, note: str = "") -> None:
        outcomes = await self.deck.fleet.gather("models.list")
        models, problems = [], []
        for host, out in outcomes.items():
            if out.ok:
                for m in out.value:
                    held = m.get("aliases") or {}
                    words = " ".join(f"{a}→v{v}" for a, v in held.items())
                    models.append({**m, "host": host, "held": held, "aliases": words})
            elif isinstance(out.error, MethodNotAvailable):
                problems.append(f"{host}: the registry is not available on this agent")
            else:
                problems.append(f"{host}: {out.why}")
        self.models_by_key = {(m["host"], m["name"]): m for m in models}
        self.models_table.records(models)
        await self.load_versions()
        said = "  ·  ".join(problems) or note or f"{len(models)} models  ·  tab switches list, p promotes"
        self.updated(said)

    @on(DeckTable.RowHighlighted, "#models")
    async def model_highlighted(self) -> None:
        await self.load_versions()

    @on(DeckTable.RowSelected, "#models")
    def model_selected(self) -> None:
        self.versions_table.focus()

    def current_model(self) -> tuple[str, dict[str, Any]] | None:
        row = self.models_table.current()
        if row is None:
            return None
        model = self.models_by_key.get((row["host"], row["name"]))
        return (row["host"], model) if model else None

    async def load_versions(self) -> None:
        chosen = self.current_model()
        if chosen is None:
            self.selected, self.versions = None, []
            self.versions_table.records([])
            return
        host, model = chosen
        try:
            versions = await self.call(host, "models.versions", name=model["name"])
        except MldeckError as exc:
            self.say(why(exc))
            return
        self.selected = (host, model)
        self.versions = versions
        keys: list[str] = []
        for v in versions:
            keys += [k for k in (v.get("metrics") or {}) if k not in keys]
        rows = [{**{f"m:{k}": x for k, x in (v.get("metrics") or {}).items()},
                 **{k: v.get(k) for k in ("version", "run_id", "created_at")},
                 "aliases": " ".join(v.get("aliases") or []),
                 "state": "archived" if v.get("archived") else ""} for v in versions]
        self.versions_table.records(rows, version_columns(keys[:SHOWN_METRICS]))

    def current_version(self) -> dict[str, Any] | None:
        row = self.versions_table.current()
        if row is None:
            return None
        return next((v for v in self.versions if v["version"] == row["version"]), None)

    def action_switch(self) -> None:
        models, versions = self.models_table, self.versions_table
        (versions if models.has_focus else models).focus()

    def action_reload(self) -> None:
        self.load_models()

    # the flows -------------------------------------------------------------------

    def action_promote(self) -> None:
        version = self.current_version()
        if version is None or self.selected is None:
            self.say("no version selected")
            return
        host, model = self.selected
        held = model["held"]

        def picked(alias: str | None) -> None:
            if alias:
                current = next((v for v in self.versions if v["version"] == held.get(alias)), None)
                self.app.push_screen(PromoteDialog(host, version, alias, current), self.promoted)

        title = f"Promote [b]{model['name']} v{version['version']}[/b] to which alias?"
        self.app.push_screen(AliasPicker(title, alias_choices(held), held), picked)

    def promoted(self, result: dict[str, Any] | None) -> None:
        if result:
            forced = " (forced)" if result.get("forced") else ""
            was = f", was v{result['from_version']}" if result.get("from_version") else ""
            moved = f"{result['alias']} → v{result['version']}"
            self.load_models(f"promoted {result['name']}: {moved}{forced}{was}")

    def action_rollback(self) -> None:
        if self.selected is None:
            return
        host, model = self.selected
        held = model["held"]
        if not held:
            self.say(f"{model['name']} has no alias to roll back")
            return
        picker = AliasPicker(f"Roll back which alias of {model['name']}?", rollback_choices(held), held)
        self.app.push_screen(picker, lambda alias: alias and self.confirm_rollback(host, model, alias))

    @screen_work(group="registry-action")
    async def confirm_rollback(self, host: str, model: dict[str, Any], alias: str) -> None:
        """The agent says where the alias would go (a dry run); the person confirms with a reason."""
        name = model["name"]
        try:
            plan = await self.call(host, "models.rollback", name=name, alias=alias, dry_run=True)
        except MldeckError as exc:
            self.say(why(exc))
            return
        question = f"Roll back {name} {alias}: v{plan['from_version']} → v{plan['version']}?"

        def done(reason: str | None) -> None:
            if reason is not None:
                self.registry_action(host, "models.rollback", name=name, alias=alias, reason=reason or None)

        self.app.push_screen(ReasonConfirm(question, f"{alias} goes back to v{plan['version']}, the version "
                                           f"it held before v{plan['from_version']}",
                                           required=alias == PRODUCTION), done)

    def action_archive(self) -> None:
        version = self.current_version()
        if version is None or self.selected is None:
            return
        host, model = self.selected

        def reason(text: str | None) -> None:
            if text is not None:
                self.registry_action(host, "models.archive", name=model["name"], version=version["version"],
                                     reason=text or None)

        self.app.push_screen(ReasonConfirm(f"Archive {model['name']} v{version['version']}?",
                                           "an archived version can hold no alias"), reason)

    @screen_work(group="registry-action")
    async def registry_action(self, host: str, method: str, **params: Any) -> None:
        try:
            res = await self.call(host, method, **params)
        except MldeckError as exc:
            self.say(why(exc))
            return
        moved = f"{res.get('alias')} → " if res.get("alias") else ""
        self.load_models(f"{method.split('.')[1]}: {res.get('name')} {moved}v{res.get('version')}")

    def action_audit(self) -> None:
        if self.selected:
            self.app.push_screen(AuditScreen(self.selected[0], self.selected[1]["name"]))

    def action_lineage(self) -> None:
        version = self.current_version()
        if version and self.selected:
            host, model = self.selected
            self.app.push_screen(LineageScreen(host, model["name"], version["version"]))


class AuditScreen(DeckScreen):
    TITLE = "Audit log"
    HELP = "Every promotion, rollback and archive of the model: who, when, from which version, why."
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "app.back", "back")]
    AUTO_FOCUS = "#audit"

    def __init__(self, host: str, name: str) -> None:
        super().__init__()
        self.host = host
        self.name_ = name

    def compose(self) -> ComposeResult:
        yield self.header()
        table = DeckTable(AUDIT_COLUMNS, id="audit", empty="nothing audited yet")
        table.sort_key = "ts"
        yield TableBox(table)
        yield self.status_line()
        yield self.footer()

    def on_mount(self) -> None:
        self.sub_title = f"{self.name_} on {self.host}"
        self.poll(TICK_S * 10, self.load)
        self.set_interval(TICK_S, self.query_one("#audit", DeckTable).refresh)

    async def load(self) -> None:
        rows = await self.call(self.host, "models.audit", name=self.name_)
        self.query_one("#audit", DeckTable).records(rows)
        self.updated(f"{len(rows)} entries, newest first")


class LineageScreen(DeckScreen):
    TITLE = "Lineage"
    HELP = "Where the version came from: its run, params, code, data, parent runs, and what it replaced."
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "app.back", "back")]

    def __init__(self, host: str, name: str, version: int) -> None:
        super().__init__()
        self.host = host
        self.name_ = name
        self.version = version

    def compose(self) -> ComposeResult:
        yield self.header()
        with VerticalScroll():
            yield Static(id="lineage")
        yield self.status_line()
        yield self.footer()

    @screen_work()
    async def on_mount(self) -> None:
        self.sub_title = f"{self.name_} v{self.version} on {self.host}"
        try:
            got = await self.call(self.host, "models.lineage", name=self.name_, version=self.version)
        except (MldeckError, MethodNotAvailable) as exc:
            self.say(why(exc))
            return
        self.query_one("#lineage", Static).update(lineage_text(got))


def pairs(values: dict[str, Any] | None) -> str:
    """{'lr': 0.013816616647993512, 'epochs': 5} → "lr=0.01382  epochs=5"."""
    return "  ".join(f"{k}={number(v)}" for k, v in (values or {}).items()) or "-"


def command_text(command: Any) -> str:
    return shlex.join(map(str, command)) if isinstance(command, list) else str(command or "-")


def lineage_text(got: dict[str, Any]) -> Text:
    v, run = got.get("version") or {}, got.get("run") or {}
    out = Text()
    out.append(f"{v.get('name')} v{v.get('version')}\n", "bold")
    out.append(f"  metrics   {pairs(v.get('metrics'))}\n  data      {v.get('data_hash') or '-'}\n")
    out.append(f"  code      {v.get('git_sha') or '-'}{' (dirty)' if v.get('git_dirty') else ''}\n")
    if run:
        out.append(f"└ run {run.get('run_id')} ({run.get('name')}, {run.get('status')})\n", "bold")
        out.append(f"    params  {pairs(run.get('params'))}\n")
        out.append(f"    command {command_text(run.get('command'))}\n")
    for depth, p in enumerate(got.get("parents") or [], start=1):
        who = f"{p.get('name') or ''} {p.get('status') or ''}"
        out.append("    " * depth + f"└ parent run {p.get('run_id')} {who}\n")
    for r in got.get("replaced") or []:
        how = f"({r.get('action')}, {r.get('actor')})"
        out.append(f"replaced v{r.get('replaced_version')} as {r.get('alias')} {how}\n")
    for r in got.get("replaced_by") or []:
        out.append(f"replaced by v{r.get('by_version')} as {r.get('alias')} ({r.get('action')})\n", "dim")
    return out
