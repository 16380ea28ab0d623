"""The loop of the agent's long-lived child processes (the explainer, the model verifier): one JSON request
a line on stdin, one JSON answer a line on stdout, until the agent closes stdin."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterable
from typing import IO, Any

Answer = Callable[[dict[str, Any]], dict[str, Any]]


def serve(answer: Answer, lines: Iterable[str], out: IO[str]) -> None:
    """Answer each request line with one JSON line: answer's, or {"ok": false, "message": why}."""
    for line in lines:
        try:
            result = answer(json.loads(line))
        except Exception as exc:  # the caller is another process: every failure becomes a message
            result = {"ok": False, "message": str(exc) or type(exc).__name__}
        out.write(json.dumps(result) + "\n")
        out.flush()


def serve_stdio(answer: Answer) -> int:
    """Serve the agent on stdin/stdout; whatever the user's model prints goes to stderr, not the answers."""
    answers = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    serve(answer, sys.stdin, answers)
    return 0
