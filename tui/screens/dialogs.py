"""Modal dialogs: help for the current screen, the `:` command line, confirmation (with a reason)."""

from __future__ import annotations

from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Input, Static

from mldeck.tui.screens.base import DeckScreen

GLOBAL_KEYS = [
    ("1-8", "jump: fleet, runs, compare, launch, registry, serving, drift, cost"),
    (":", "command mode (:runs, :models, :host NAME, :q)"),
    ("ctrl+p", "command palette"),
    (":demo", "what the demo story said so far (when one runs)"),
    ("?", "this help"),
    ("esc", "out of a text field, then back"),
    ("q", "quit"),
]
GLOBAL = {"escape", "esc", "q", "question_mark", "?", ":"}


class HelpScreen(ModalScreen[None]):
    """Every key of the screen underneath, then the global ones."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,q,question_mark", "dismiss", "close"),
        Binding("down,j", "scroll(1)", "scroll down", show=False),
        Binding("up,k", "scroll(-1)", "scroll up", show=False),
        Binding("pagedown,space", "scroll(10)", "page down", show=False),
        Binding("pageup", "scroll(-10)", "page up", show=False),
    ]

    def __init__(self, screen: DeckScreen | None) -> None:
        super().__init__()
        self.under = screen

    def compose(self) -> ComposeResult:
        title = self.under.TITLE if self.under else "mldeck"
        lines = [f"[b]{title}[/b]"]
        if self.under and self.under.HELP:
            lines.append(self.under.HELP)
        lines.append("")
        keys = [k for k in (type(self.under).key_help() if self.under else []) if k[0] not in GLOBAL]
        table_keys = [("/", "filter the table"),
                      ("o", "sort by the column under the cursor (again: reverse)"),
                      ("←/→", "move the column cursor (hidden columns come in)")]
        if self.under and self.under.query("DeckTable"):
            keys += [k for k in table_keys if k[0] not in dict(keys)]
        for key, what in [*keys, ("", ""), *GLOBAL_KEYS]:
            lines.append(f"  [b]{key:<10}[/b] {what}" if key else "")
        with Vertical(id="help", classes="dialog"):
            with VerticalScroll(id="help-text"):
                yield Static("\n".join(lines))
            yield Static("[dim]↑/↓ scroll · esc closes[/dim]", classes="dialog-keys")

    def action_scroll(self, lines: int) -> None:
        self.query_one("#help-text", VerticalScroll).scroll_relative(y=lines, animate=False)


class CommandLine(ModalScreen[str | None]):
    """`:` then a command; Enter runs it, Esc cancels."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "cancel")]

    def compose(self) -> ComposeResult:
        yield Input(placeholder="runs | models | host NAME | fleet | compare | launch | serving | drift | "
                    "cost | q", id="command")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value.strip())

    def action_cancel(self) -> None:
        self.dismiss(None)


class Confirm(ModalScreen[bool]):
    """A destructive action waits for Enter (or y); Esc (or n) cancels."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter,y", "yes", "confirm"),
        Binding("escape,n", "no", "cancel"),
    ]

    def __init__(self, question: str, details: str = "") -> None:
        super().__init__()
        self.question = question
        self.details = details

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog", id="confirm"):
            yield Static(f"[b]{self.question}[/b]")
            if self.details:
                yield Static(self.details, id="confirm-details")
            yield Static("[b]enter[/b] confirm   [b]esc[/b] cancel", classes="dialog-keys")

    def action_yes(self) -> None:
        self.dismiss(True)

    def action_no(self) -> None:
        self.dismiss(False)


class ReasonConfirm(ModalScreen[str | None]):
    """A change the audit log keeps: the question, what it does, and why (required where it matters).
    Enter confirms with the reason ("" when optional and none given); Esc cancels (None)."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "cancel")]

    def __init__(self, question: str, details: str = "", required: bool = False) -> None:
        super().__init__()
        self.question = question
        self.details = details
        self.required = required

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog", id="confirm"):
            yield Static(f"[b]{self.question}[/b]", markup=True)
            if self.details:
                yield Static(self.details, id="confirm-details")
            need = "required" if self.required else "optional"
            yield Static(f"reason for the audit log ({need}):", classes="field-label")
            yield Input(placeholder="why", id="reason")
            yield Static("[b]enter[/b] confirm   [b]esc[/b] cancel", classes="dialog-keys")

    def on_mount(self) -> None:
        self.query_one("#reason", Input).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        reason = event.value.strip()
        if self.required and not reason:
            self.notify("give a reason: the audit log keeps it", severity="warning")
            return
        self.dismiss(reason)

    def action_cancel(self) -> None:
        self.dismiss(None)


class Prompt(ModalScreen[str | None]):
    """One line of text (a filter, a share); Enter accepts, Esc cancels."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "cancel")]

    def __init__(self, label: str, value: str = "", placeholder: str = "") -> None:
        super().__init__()
        self.label = label
        self.value = value
        self.placeholder = placeholder

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog prompt"):
            yield Static(self.label)
            yield Input(value=self.value, placeholder=self.placeholder, id="prompt")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value)

    def action_cancel(self) -> None:
        self.dismiss(None)


class DemoLog(ModalScreen[None]):
    """Every line the demo story said, oldest first."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,q", "dismiss", "close")]

    def __init__(self, lines: list[str]) -> None:
        super().__init__()
        self.lines = lines

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog", id="demo-log"):
            yield Static("[b]demo[/b]")
            yield Static("\n".join(self.lines) or "no demo story is running", markup=False)
            yield Static("[dim]esc closes[/dim]")
