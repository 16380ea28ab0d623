"""Where mldeck keeps its files, and the check that keeps names from escaping them."""

from __future__ import annotations

import os
import re
import secrets
import time
from pathlib import Path

from mldeck.core.errors import Invalid

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class BadName(Invalid):
    """A name that would not be safe as a single path component."""


def check_name(name: str, what: str = "name") -> str:
    """Refuse names that could climb out of their folder or hide as dotfiles."""
    if not isinstance(name, str) or not _NAME.match(name) or ".." in name:
        raise BadName(
            f"{what} {name!r} is not allowed: use 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit, and no '..'"
        )
    return name


def new_run_id() -> str:
    """Sortable by creation time and unique without coordination."""
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)


def mldeck_home(override: str | os.PathLike[str] | None = None) -> Path:
    """The agent's data folder: --home, then $MLDECK_HOME, then the XDG default."""
    if override:
        return Path(override).expanduser().resolve()
    env = os.environ.get("MLDECK_HOME")
    if env:
        return Path(env).expanduser().resolve()
    data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data) / "mldeck"


def config_dir() -> Path:
    """The laptop-side config folder (hosts file), XDG-aware."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "mldeck"


ARCHIVE_DIR = "archive"
"""The home's folder of archived runs, beside the store file (core.archive)."""


class Layout:
    """The folders and files of one agent home, as DESIGN.md lays them out."""

    def __init__(self, home: Path) -> None:
        self.home = Path(home)

    @property
    def db(self) -> Path:
        return self.home / "mldeck.duckdb"

    @property
    def socket(self) -> Path:
        return self.home / "agent.sock"

    @property
    def pidfile(self) -> Path:
        return self.home / "agent.pid"

    @property
    def lockfile(self) -> Path:
        return self.home / "agent.lock"

    @property
    def log(self) -> Path:
        return self.home / "agent.log"

    @property
    def config(self) -> Path:
        return self.home / "agent.toml"

    @property
    def runs(self) -> Path:
        return self.home / "runs"

    @property
    def models(self) -> Path:
        return self.home / "models"

    @property
    def serving(self) -> Path:
        return self.home / "serving"

    def run_dir(self, run_id: str) -> Path:
        return self.runs / check_name(run_id, "run id")

    def model_dir(self, name: str, version: int) -> Path:
        return self.models / check_name(name, "model name") / str(int(version))

    def ensure(self) -> None:
        """Create the home with owner-only permissions (the socket lives here)."""
        self.home.mkdir(parents=True, exist_ok=True)
        os.chmod(self.home, 0o700)
        for sub in (self.runs, self.models, self.serving):
            sub.mkdir(exist_ok=True)
