"""Why a served model decided what it did: a modal with its latest logged request's top features (their
values, attributions and reference percentiles; Integrated Gradients, `explain.request`) and, from the Drift
screen, which features drive its predictions in the latest window against its reference rows
(`explain.summary`). Opened with `e` on the Serving and Drift screens; Esc closes it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, cast

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

from mldeck.core.errors import MldeckError
from mldeck.tui.screens.base import why
from mldeck.tui.units import number

if TYPE_CHECKING:
    from mldeck.tui.app import MldeckApp

TOP = 10
EXPLAIN_TIMEOUT_S = 330.0  # the agent gives its child process 300 s; the first one loads torch


def percentile(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}%"


def request_view(res: dict[str, Any], feature: str | None = None) -> RenderableType:
    """One explained row: what it predicted, then its top features (the selected one in bold)."""
    what = f"class {res['target']} of {res['output']}" if res.get("target") is not None else res["output"]
    head = Text(f"request {res['request_id']} (v{res['version']}, row {res['row']}): {what} = "
                f"{number(res['score'])}, {number(res['baseline_score'])} at the {res['baseline']}")
    table = Table("feature", "value", "attribution", "reference percentile", box=None, pad_edge=False)
    for f in res["features"]:
        table.add_row(f["feature"], number(f["value"]), number(f["attribution"]), percentile(f["percentile"]),
                      style="bold" if f["feature"] == feature else "")
    more = Text(f"the top {len(res['features'])} of {res['n_features']} values by |attribution|", "dim")
    return Group(head, table, more)


def summary_view(summary: dict[str, Any], feature: str | None = None) -> RenderableType:
    """Mean |attribution| per feature in the window beside the reference rows', the window's largest first."""
    head = Text(f"what drives v{summary['version']}'s predictions: mean |attribution| over "
                f"{summary['n_explained']} explained rows of the window and {summary['n_reference']} "
                "reference rows")
    parts: list[RenderableType] = [head]
    if not summary["n_explained"]:
        parts.append(Text(f"no explained request in the window ([serving] explain_sample is "
                          f"{summary['sample']:g}: set it above 0 to explain live traffic)", "dim"))
    if summary.get("reference_note"):
        parts.append(Text(summary["reference_note"], "dim"))
    table = Table("feature", "window", "reference", box=None, pad_edge=False)
    for f in summary["features"]:
        table.add_row(f["feature"], number(f["current"]), number(f["reference"]),
                      style="bold" if f["feature"] == feature else "")
    return Group(*parts, table)


class ExplanationScreen(ModalScreen[None]):
    """The explanation of a model's latest logged request (and, with summary, of its latest window)."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,q", "dismiss", "close")]

    def __init__(self, host: str, model: str, feature: str | None = None, summary: bool = False) -> None:
        super().__init__()
        self.host = host
        self.model = model
        self.feature = feature
        self.summary = summary
        self.result: dict[str, Any] | None = None

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog", id="explanation"):
            yield Static(Text(f"why {self.model} decided what it did", "bold"))
            with VerticalScroll():
                yield Static(f"explaining {self.model}'s latest request…", id="explanation-body")
            yield Static("[dim]esc closes[/dim]", classes="dialog-keys")

    def on_mount(self) -> None:
        self.load()

    async def ask(self, method: str, **params: Any) -> Any:
        """One call with the explanation's own deadline: a child process computes it, minutes at worst."""
        return await cast("MldeckApp", self.app).fleet.call(self.host, method, timeout_s=EXPLAIN_TIMEOUT_S,
                                                             **params)

    @work(exclusive=True)
    async def load(self) -> None:
        parts: list[RenderableType] = []
        try:
            self.result = await self.ask("explain.request", name=self.model, top=TOP)
            parts.append(request_view(self.result, self.feature))
        except MldeckError as exc:
            parts.append(Text(why(exc)))
        if self.summary:
            try:
                got = await self.ask("explain.summary", name=self.model)
                parts += [Text(""), summary_view(got, self.feature)]
            except MldeckError as exc:
                parts.append(Text(why(exc)))
        if self.is_attached:
            self.query_one("#explanation-body", Static).update(Group(*parts))
