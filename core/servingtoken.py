"""The model server's token: a secret in the agent's home that feedback and other writes must carry.

The server, the agent and `mldeck serve token` all read it from here; whichever needs it first
creates it, owner-only (0600), with an atomic link so two creators never see half a file.
Clients send it as `Authorization: Bearer <token>`.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from pathlib import Path

from mldeck.core.errors import Refused

TOKEN_FILE = "serving.token"
HEADER = "Authorization"
SCHEME = "Bearer "


def token_path(home: Path) -> Path:
    return Path(home) / TOKEN_FILE


def _read(path: Path) -> str:
    with open(path, "rb") as fh:
        st = os.fstat(fh.fileno())
        if st.st_uid != os.getuid() or st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise Refused(f"{path} must belong to this user and be readable by it alone "
                          f"(mode 0600); fix it with `chmod 600 {path}` or delete it to make a new token")
        token = fh.read().decode("ascii", errors="replace").strip()
    if len(token) < 32:
        raise Refused(f"{path} does not hold a token; delete it and a new one is made")
    return token


def serving_token(home: Path) -> str:
    """The token, made on first use."""
    path = token_path(home)
    if path.exists():
        return _read(path)
    tmp = path.with_name(f".{TOKEN_FILE}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(secrets.token_urlsafe(32).encode() + b"\n")
        with contextlib.suppress(FileExistsError):  # another process made it first: theirs is the token
            os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return _read(path)


def bearer(token: str) -> dict[str, str]:
    """The header a client sends."""
    return {HEADER: SCHEME + token}
