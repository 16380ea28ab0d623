"""One of a few values in one widget: space, enter or ←/→ step through them (a Select is a dozen widgets)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from textual.binding import Binding, BindingType
from textual.content import Content
from textual.widget import Widget


class Choice(Widget, can_focus=True):
    """options are (label, value) pairs; `value` is the chosen one's value."""

    DEFAULT_CSS = """
    Choice { height: 3; border: tall $border-blurred; padding: 0 1; background: $surface; }
    Choice:focus { border: tall $accent; background: $boost; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("space,enter,right", "step(1)", "next choice", show=False),
        Binding("left", "step(-1)", "previous choice", show=False),
    ]

    def __init__(self, options: Sequence[tuple[str, Any]], value: Any = None, **kw: Any) -> None:
        super().__init__(**kw)
        self.options = list(options)
        values = [v for _, v in self.options]
        self.at = values.index(value) if value in values else 0

    @property
    def value(self) -> Any:
        return self.options[self.at][1] if self.options else None

    def action_step(self, step: int) -> None:
        if self.options:
            self.at = (self.at + step) % len(self.options)
            self.refresh()

    def render(self) -> Content:
        label = self.options[self.at][0] if self.options else "-"
        if len(self.options) < 2:
            return Content(label)
        return Content.assemble(("‹ ", "dim"), label, (" ›   (space or ←/→ changes it)", "dim"))
