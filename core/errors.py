"""One error hierarchy for all of mldeck, and the one table that maps it to JSON-RPC codes and back.

Every error a person may see is a MldeckError: its message says what went wrong and what to do, and is
shown as it is (one line on stderr, the status bar of the TUI, the `message` of a JSON-RPC error). The
agent turns one into a wire error and the client turns that back into the same class, both through
WIRE_CODES, so a caller catches `NotFound` whether the run was looked up locally or over SSH.
"""

from __future__ import annotations

from typing import Any


class MldeckError(Exception):
    """Something a person can act on; `data` carries structured details for programs."""

    exit_code = 1

    def __init__(self, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.data = data


class Invalid(MldeckError, ValueError):
    """The request itself is wrong: a bad parameter, name, value or file (a ValueError, so that msgspec
    reports one raised in a validator as a validation error with its field's path)."""


class ParseError(Invalid):
    """A message that is not JSON."""


class BadRequest(Invalid):
    """JSON that is not a JSON-RPC request."""


class TooLarge(Invalid):
    """A message or result over a size limit."""


class UsageError(Invalid):
    """A command line that cannot work as written (missing or clashing options): exit 2, like argparse."""

    exit_code = 2


class NotFound(MldeckError):
    """The run, model, version, host or file named does not exist."""


class Conflict(MldeckError):
    """The thing exists but is in a state that forbids this (already registered, still running…)."""


class Refused(MldeckError):
    """A rule said no: a promotion gate, a policy, a sandbox."""


class GateRefused(Refused):
    """A promotion stopped by its gates; `failed` names each gate with its numbers."""

    def __init__(self, message: str, failed: list[str]) -> None:
        super().__init__(message, {"failed_gates": failed})
        self.failed = failed


class Unavailable(MldeckError):
    """The host, agent or service cannot answer now (down, unreachable, timed out); try again later."""

    exit_code = 3


class MethodNotAvailable(Unavailable):
    """The agent does not know this method: an older agent, or a feature it was built without."""


class Internal(MldeckError):
    """A bug: the agent logged the traceback; the message names the exception."""


# Most specific first: the first class an error is an instance of gives its code.
WIRE_CODES: tuple[tuple[type[MldeckError], int], ...] = (
    (ParseError, -32700),
    (BadRequest, -32600),
    (MethodNotAvailable, -32601),
    (TooLarge, -32010),
    (Invalid, -32602),
    (Internal, -32603),
    (NotFound, -32004),
    (Conflict, -32009),
    (GateRefused, -32011),
    (Refused, -32003),
    (Unavailable, -32001),
    (MldeckError, -32000),
)
_BY_CODE = {code: cls for cls, code in WIRE_CODES}


def wire_code(exc: MldeckError | type[MldeckError]) -> int:
    kind = exc if isinstance(exc, type) else type(exc)
    return next(code for cls, code in WIRE_CODES if issubclass(kind, cls))


def from_wire(code: Any, message: Any, data: Any = None) -> MldeckError:
    """The error an agent sent, as the class it raised (a GateRefused keeps its failed gates)."""
    cls = _BY_CODE.get(code, MldeckError) if isinstance(code, int) else MldeckError
    text = str(message) if message is not None else f"error {code}"
    if cls is GateRefused:
        failed = data.get("failed_gates") if isinstance(data, dict) else None
        return GateRefused(text, list(failed or []))
    return cls(text, data)
