"""Registry: models, versions with metrics and aliases; promote, roll back, archive, audit, lineage."""

from __future__ import annotations

import json
from typing import Any, ClassVar

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, VerticalScroll
from textual.widgets import DataTable, Static

from mldeck.core.errors import MethodNotAvailable, MldeckError
from mldeck.tui.screens.base import DeckScreen, screen_work, why
from mldeck.tui.screens.dialogs import Confirm, Prompt
from mldeck.tui.screens.promote import AliasPicker, PromoteDialog, alias_choices
from mldeck.tui.units import age, number

SHOWN_METRICS = 4


def alias_marks(aliases: list[str]) -> Text:
    styles = {"production": "bold green", "staging": "bold yellow", "challenger": "bold magenta"}
    text = Text()
    for a in aliases:
        text.append(f"● {a} ", styles.get(a, "bold cyan"))
    return text


class RegistryScreen(DeckScreen):
    TITLE = "Registry"
    HELP = ("Models on every host; their versions with metrics and alias markers. On a version: p promotes "
            "(pick alias, see gates, deltas and drift, enter confirms), b rolls back an alias, a archives.")
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("p", "promote", "promote"),
        Binding("b", "rollback", "rollback"),
        Binding("a", "archive", "archive"),
        Binding("A", "audit", "audit log"),
        Binding("L", "lineage", "lineage"),
        Binding("tab", "switch", "models/versions", show=False),
        Binding("ctrl+r", "reload", "reload", show=False),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.models: list[tuple[str, dict[str, Any]]] = []
        self.versions: list[dict[str, Any]] = []
        self.selected: tuple[str, dict[str, Any]] | None = None

    def compose(self) -> ComposeResult:
        yield self.header()
        with Horizontal(id="registry"):
            yield DataTable(id="models", cursor_type="row")
            yield DataTable(id="versions", cursor_type="row", zebra_stripes=True)
        yield self.status_line()
        yield self.footer()

    def on_mount(self) -> None:
        self.query_one("#models", DataTable).add_columns("host", "model", "versions", "aliases")
        self.query_one("#models", DataTable).focus()
        self.load_models()
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
                models += [(host, m) for m in out.value]
            elif isinstance(out.error, MethodNotAvailable):
                problems.append(f"{host}: the registry is not available on this agent")
            else:
                problems.append(f"{host}: {out.why}")
        self.models = models
        table = self.query_one("#models", DataTable)
        keep = table.cursor_row
        table.clear()
        for host, m in models:
            aliases = alias_marks([f"{a}→v{v}" for a, v in (m.get("aliases") or {}).items()])
            table.add_row(host, m["name"], m.get("versions"), aliases)
        if models:
            table.move_cursor(row=min(keep, len(models) - 1))
            await self.load_versions()
        self.say("  ·  ".join(problems) or note or f"{len(models)} models  ·  tab switches list, p promotes")

    @on(DataTable.RowHighlighted, "#models")
    async def model_highlighted(self) -> None:
        await self.load_versions()

    @on(DataTable.RowSelected, "#models")
    def model_selected(self) -> None:
        self.query_one("#versions", DataTable).focus()

    async def load_versions(self) -> None:
        row = self.query_one("#models", DataTable).cursor_row
        if not 0 <= row < len(self.models):
            return
        host, model = self.models[row]
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
        keys = keys[:SHOWN_METRICS]
        table = self.query_one("#versions", DataTable)
        keep = table.cursor_row
        table.clear(columns=True)
        table.add_columns("version", "aliases", *keys, "run", "created", "state")
        for v in versions:
            m = v.get("metrics") or {}
            table.add_row(f"v{v['version']}", alias_marks(v.get("aliases") or []),
                          *(number(m.get(k)) for k in keys), v.get("run_id") or "-",
                          age(v.get("created_at")), "archived" if v.get("archived") else "")
        if versions:
            table.move_cursor(row=min(keep, len(versions) - 1))

    def current_version(self) -> dict[str, Any] | None:
        row = self.query_one("#versions", DataTable).cursor_row
        return self.versions[row] if 0 <= row < len(self.versions) else None

    def action_switch(self) -> None:
        models, versions = self.query_one("#models", DataTable), self.query_one("#versions", DataTable)
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
        held = model.get("aliases") or {}

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
        held = model.get("aliases") or {}
        if not held:
            self.say(f"{model['name']} has no alias to roll back")
            return

        def picked(alias: str | None) -> None:
            if alias:
                self.app.push_screen(
                    Confirm(f"Roll back {model['name']} {alias} (now v{held.get(alias)})?",
                            "the alias goes back to the version it held before"),
                    lambda yes: yes and self.registry_action(host, "models.rollback",
                                                             name=model["name"], alias=alias))

        picker = AliasPicker(f"Roll back which alias of {model['name']}?", sorted(held), held)
        self.app.push_screen(picker, picked)

    def action_archive(self) -> None:
        version = self.current_version()
        if version is None or self.selected is None:
            return
        host, model = self.selected

        def reason(text: str | None) -> None:
            if text is not None:
                self.registry_action(host, "models.archive", name=model["name"], version=version["version"],
                                     reason=text or None)

        def confirmed(yes: bool | None) -> None:
            if yes:
                self.app.push_screen(Prompt("Why archive it? (optional, for the audit log)"), reason)

        self.app.push_screen(Confirm(f"Archive {model['name']} v{version['version']}?",
                                     "an archived version can hold no alias"), confirmed)

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

    def __init__(self, host: str, name: str) -> None:
        super().__init__()
        self.host = host
        self.name_ = name

    def compose(self) -> ComposeResult:
        yield self.header()
        yield DataTable(id="audit", cursor_type="row", zebra_stripes=True)
        yield self.status_line()
        yield self.footer()

    @screen_work()
    async def on_mount(self) -> None:
        self.sub_title = f"{self.name_} on {self.host}"
        table = self.query_one(DataTable)
        table.add_columns("when", "actor", "action", "alias", "version", "from", "comment")
        try:
            rows = await self.call(self.host, "models.audit", name=self.name_)
        except MldeckError as exc:
            self.say(why(exc))
            return
        for r in rows:
            table.add_row(age(r.get("ts")), r.get("actor"), r.get("action"), r.get("alias") or "-",
                          number(r.get("version")), number(r.get("from_version")), r.get("comment") or "")
        table.focus()


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


def lineage_text(got: dict[str, Any]) -> Text:
    v, run = got.get("version") or {}, got.get("run") or {}
    out = Text()
    out.append(f"{v.get('name')} v{v.get('version')}\n", "bold")
    out.append(f"  metrics   {json.dumps(v.get('metrics'))}\n  data      {v.get('data_hash')}\n")
    out.append(f"  code      {v.get('git_sha')}{' (dirty)' if v.get('git_dirty') else ''}\n")
    if run:
        out.append(f"└ run {run.get('run_id')} ({run.get('name')}, {run.get('status')})\n", "bold")
        out.append(f"    params  {json.dumps(run.get('params'))}\n")
        out.append(f"    command {json.dumps(run.get('command'))}\n")
    for depth, p in enumerate(got.get("parents") or [], start=1):
        who = f"{p.get('name') or ''} {p.get('status') or ''}"
        out.append("    " * depth + f"└ parent run {p.get('run_id')} {who}\n")
    for r in got.get("replaced") or []:
        how = f"({r.get('action')}, {r.get('actor')})"
        out.append(f"replaced v{r.get('replaced_version')} as {r.get('alias')} {how}\n")
    for r in got.get("replaced_by") or []:
        out.append(f"replaced by v{r.get('by_version')} as {r.get('alias')} ({r.get('action')})\n", "dim")
    return out
