"""A free TCP port, for a rendezvous, a model server or a test's daemon."""

from __future__ import annotations

import socket


def free_port(host: str = "127.0.0.1") -> int:
    """A port the system has just handed out on host (another process may still take it first)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1" if host == "localhost" else host, 0))
        return int(sock.getsockname()[1])
