"""Who may do what on the model server: the token from the agent's home, as a bearer header.

Three levels, chosen per route: OPEN (health probes), SERVE (inference and every read: open
unless `[serving] require_token`) and WRITE (feedback, and anything that changes what the
server or the agent will do: always the token).
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from enum import Enum

from aiohttp import web

from mldeck.agent.serving.codec import BadRequest
from mldeck.core.servingtoken import HEADER, SCHEME

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Level(Enum):
    OPEN = "open"
    SERVE = "serve"
    WRITE = "write"


class Auth:
    """Wraps handlers so that a request without the right token is a 401 before any work is done."""

    def __init__(self, token: str, require_token: bool) -> None:
        self._token = token.encode()
        self.require_token = require_token

    def guard(self, handler: Handler, level: Level) -> Handler:
        if level is Level.OPEN or (level is Level.SERVE and not self.require_token):
            return handler
        what = "feedback and other writes need" if level is Level.WRITE else "this server requires"

        async def checked(request: web.Request) -> web.StreamResponse:
            self.check(request, what)
            return await handler(request)

        return checked

    def check(self, request: web.Request, what: str) -> None:
        given = request.headers.get(HEADER, "")
        if not given.startswith(SCHEME):
            raise BadRequest(f"{what} the server's token: send `{HEADER}: {SCHEME}<token>` "
                             "(`mldeck serve token` prints it)", 401, "unauthorized")
        if not hmac.compare_digest(given[len(SCHEME):].strip().encode(), self._token):
            raise BadRequest("the token sent is not this server's (`mldeck serve token` prints it)",
                             401, "unauthorized")
