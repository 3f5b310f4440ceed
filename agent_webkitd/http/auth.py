"""Authentication at the HTTP edge: each request's bearer token, or a stream ticket on a
stream, becomes `request[PRINCIPAL]` before any handler runs; everything else is 401.

Public paths (health, metrics, the API description) and CORS preflights need no token.
Responses to ticket requests are never cached and never leak their URL (which holds the
ticket) through a Referer.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from ..errors import ApiError
from ..identity.oidc import InvalidToken
from ..identity.principals import DEFAULT_ADMIN, Authenticator, Principal, unauthorized
from ..identity.tickets import Tickets
from ..metrics import Metrics

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/openapi.json"})
STREAM_ROUTE = "/sessions/{session_id}/stream"
NO_STORE = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"}

PRINCIPAL = "agent_webkitd.principal"
BY_TICKET = "agent_webkitd.by_ticket"


class Auth:
    """What the middleware needs: who may sign in, and how tickets are checked."""

    def __init__(
        self,
        authenticator: Authenticator | None,  # None: auth disabled (everyone is the admin)
        tickets: Tickets,
        metrics: Metrics,
    ) -> None:
        self.authenticator = authenticator
        self.tickets = tickets
        self.metrics = metrics

    async def start(self) -> None:
        if self.authenticator is not None and self.authenticator.jwt is not None:
            await self.authenticator.jwt.start()

    async def stop(self) -> None:
        if self.authenticator is not None and self.authenticator.jwt is not None:
            await self.authenticator.jwt.stop()

    async def principal(self, request: web.Request) -> Principal:
        ticket = request.query.get("ticket")
        if ticket is not None:
            return self._by_ticket(request, ticket)
        if self.authenticator is None:
            return DEFAULT_ADMIN
        try:
            return await self.authenticator.principal(request.headers.get("Authorization", ""))
        except InvalidToken as exc:
            self.metrics.auth_failures.inc({"reason": exc.reason})
            raise unauthorized(str(exc)) from None
        except ApiError:
            self.metrics.auth_failures.inc({"reason": "bad_token"})
            raise

    def _by_ticket(self, request: web.Request, ticket: str) -> Principal:
        request[BY_TICKET] = True
        resource = request.match_info.route.resource
        on_stream = (
            request.method == "GET" and resource is not None and resource.canonical == STREAM_ROUTE
        )
        principal = (
            self.tickets.principal(ticket, request.match_info["session_id"]) if on_stream else None
        )
        if principal is None:
            self.metrics.auth_failures.inc({"reason": "bad_ticket"})
            raise unauthorized(
                "the stream ticket is not valid here (expired, or for another session)"
            )
        return principal


AUTH = web.AppKey("auth", Auth)


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path in PUBLIC_PATHS or request.method == "OPTIONS":
        return await handler(request)
    request[PRINCIPAL] = await request.app[AUTH].principal(request)
    return await handler(request)


async def no_store_for_tickets(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: a ticket request's response, stream or error, is not cached
    and sends no Referer onward."""
    if request.get(BY_TICKET):
        response.headers.update(NO_STORE)
