"""Where a run came from: the code's commit and dirty flag, and a fingerprint of its data."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path


def git_state(path: Path) -> tuple[str | None, bool | None]:
    """The commit and dirty flag of the repository holding path, if any."""
    cwd = path if path.is_dir() else path.parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5
        )
        if sha.returncode != 0:
            return None, None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd, capture_output=True, text=True, timeout=5,
        )
        return sha.stdout.strip(), bool(dirty.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        return None, None


def fingerprint(paths: list[str | os.PathLike[str]]) -> str | None:
    """A content hash of the declared data files, so two runs can tell their data apart."""
    if not paths:
        return None
    digest = hashlib.blake2b(digest_size=16)
    for p in sorted(Path(x) for x in paths):
        files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
        for f in files:
            digest.update(str(f.name).encode() + b"\0")
            with open(f, "rb") as fh:
                while chunk := fh.read(1 << 20):
                    digest.update(chunk)
    return digest.hexdigest()
