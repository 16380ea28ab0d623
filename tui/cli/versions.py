"""Whether an agent runs the mldeck release this machine runs. A different protocol is refused at hello;
a different release that speaks the same protocol still works, but may lack a method or a fix, so the
commands that show an agent's version warn about it."""

from __future__ import annotations

import sys

from mldeck.core.version import VERSION
from mldeck.tui.hosts import LOCAL


def version_skew(host: str, agent_version: str | None) -> str | None:
    """What to say when `host`'s agent runs another release than this machine; None when it is the same."""
    if agent_version is None or agent_version == VERSION:
        return None
    fix = ("restart it: `mldeck agent stop && mldeck agent start`" if host == LOCAL
           else f"`mldeck agent install --host {host}` installs this one there")
    return f"the agent on {host} runs mldeck {agent_version}, this machine {VERSION}; {fix}"


def warn_version_skew(host: str, agent_version: str | None) -> None:
    note = version_skew(host, agent_version)
    if note:
        print(f"mldeck: warning: {note}", file=sys.stderr)
