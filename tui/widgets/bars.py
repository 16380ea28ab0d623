"""The title line and the key line of every screen, each one widget drawn as one line.

Textual's Header and Footer are a dozen widgets between them (a widget per key), restyled every time a
screen is shown or the focus moves: 100-300 ms on a busy two-core machine. These two repaint a line.
"""

from __future__ import annotations

from typing import Any

from textual.content import Content
from textual.widget import Widget

ICON = "≡"


class TitleBar(Widget):
    """`≡ mldeck   Runs — subtitle`: the app, then the screen's title and subtitle, centred."""

    DEFAULT_CSS = """
    TitleBar { dock: top; height: 1; background: $panel; color: $foreground; }
    """

    def on_mount(self) -> None:
        for node, name in ((self.app, "sub_title"), (self.screen, "title"), (self.screen, "sub_title")):
            self.watch(node, name, self.changed, init=False)

    def changed(self, _value: Any) -> None:
        self.refresh()

    def render(self) -> Content:
        screen, app = self.screen, self.app
        title = screen.title or app.title
        sub = screen.sub_title or app.sub_title
        middle = f"{title} — {sub}" if sub else title
        left = f" {ICON} {app.title}  "
        room = max(1, self.size.width - len(left))
        if len(middle) > room:
            middle = middle[: room - 1] + "…"
        pad = max(0, (self.size.width - len(middle)) // 2 - len(left))
        return Content.assemble((left, "bold"), " " * pad, (middle, "bold"))


class KeyBar(Widget):
    """The keys the focused widget, the screen and the app offer now, as `key what` pairs."""

    DEFAULT_CSS = """
    KeyBar { dock: bottom; height: 1; background: $footer-background; color: $footer-foreground; }
    """

    def on_mount(self) -> None:
        self.screen.bindings_updated_signal.subscribe(self, self.changed)

    def on_unmount(self) -> None:
        self.screen.bindings_updated_signal.unsubscribe(self)

    def changed(self, _screen: Any) -> None:
        self.refresh()

    def render(self) -> Content:
        parts: list[str | tuple[str, str]] = []
        seen: set[str] = set()
        for active in self.screen.active_bindings.values():
            binding = active.binding
            if not binding.show or binding.description in seen:
                continue
            seen.add(binding.description)
            style = "bold $footer-key-foreground" if active.enabled else "dim"
            parts += [(f" {self.app.get_key_display(binding)}", style), f" {binding.description} "]
        return Content.assemble(*parts)
