"""The Textual app (placeholder until the TUI lands)."""

from __future__ import annotations


def run_tui() -> int:
    print("mldeck: the TUI is not built yet; see `mldeck --help` for the commands")
    return 2
