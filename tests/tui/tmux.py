"""The real `mldeck` binary in a tmux pane: keys in with send-keys, the screen back with capture-pane."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path

TMUX = shutil.which("tmux")
CAPTURE_EVERY_S = 0.01


class Pane:
    """One detached tmux session running a command; close() ends it."""

    def __init__(self, command: list[str], env: dict[str, str], cwd: Path, size: tuple[int, int]) -> None:
        assert TMUX, "tmux is not installed (`apt-get install -y tmux`)"
        self.session = f"mldeck-test-{uuid.uuid4().hex[:8]}"
        # the pane gets exactly this environment: tmux's server would otherwise hand it its own
        setenv = [arg for k, v in env.items() for arg in ("-e", f"{k}={v}")]
        width, height = size
        subprocess.run([TMUX, "new-session", "-d", "-s", self.session, "-x", str(width), "-y", str(height),
                        "-c", str(cwd), *setenv, *command],
                       check=True, env={**os.environ, "TERM": "xterm-256color"})

    def record(self, path: Path) -> None:
        """Everything the program writes to the terminal from now on, appended to path (every frame, even
        one shown for a few milliseconds)."""
        subprocess.run([TMUX, "pipe-pane", "-o", "-t", self.session, f"cat >> {shlex.quote(str(path))}"],
                       check=True)

    def keys(self, *keys: str) -> None:
        """Each key as tmux names it ("1", "Escape", "Enter", "/")."""
        subprocess.run([TMUX, "send-keys", "-t", self.session, *keys], check=True)

    def lines(self) -> list[str]:
        done = subprocess.run([TMUX, "capture-pane", "-p", "-t", self.session],
                              capture_output=True, text=True)
        return done.stdout.splitlines()

    def title(self) -> str:
        """The title line: the app, the screen's title (and subtitle)."""
        lines = self.lines()
        return lines[0].strip() if lines else ""

    def wait(self, predicate: Callable[[list[str]], bool], timeout: float, what: str) -> float:
        """Seconds until predicate(screen lines) held; AssertionError with the screen if it never did."""
        start = time.perf_counter()
        while time.perf_counter() - start < timeout:
            if predicate(self.lines()):
                return time.perf_counter() - start
            time.sleep(CAPTURE_EVERY_S)
        screen = "\n".join(self.lines())
        raise AssertionError(f"timed out after {timeout}s waiting for {what}; screen:\n{screen}")

    def close(self) -> None:
        subprocess.run([TMUX, "kill-session", "-t", self.session], capture_output=True)
