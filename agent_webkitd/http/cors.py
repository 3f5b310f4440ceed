"""CORS for browser front ends on other origins: an exact-origin allow-list.

An allowed origin gets `Access-Control-Allow-Origin: <that origin>` on every response,
errors and streams included (so a page can read why a call failed), and its preflights
are answered here, without a token (a browser's preflight never carries one). Every
header a client of the protocol sends is allowed, `Last-Event-ID` among them: without
it a browser blocks every stream reconnect. Any other origin gets no CORS headers, and
the browser keeps the response from the page. No credentials mode: tokens travel in
headers or tickets, never cookies.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

ALLOW_METHODS = "GET, POST, PUT, DELETE"  # PUT: workspace uploads
ALLOW_HEADERS = "Authorization, Content-Type, Last-Event-ID, X-Subscriber-ID"
EXPOSE_HEADERS = "X-Subscriber-ID, Retry-After, WWW-Authenticate, ETag, Content-Disposition"
MAX_AGE_S = "600"

ORIGINS = web.AppKey("cors_origins", frozenset[str])


@web.middleware
async def preflight_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer a preflight from an allowed origin for a path that exists; anything else
    goes on (aiohttp resolves OPTIONS on a path with routes to 405, elsewhere to 404)."""
    exc = request.match_info.http_exception
    if (
        request.method == "OPTIONS"
        and "Access-Control-Request-Method" in request.headers
        and request.headers.get("Origin") in request.app[ORIGINS]
        and exc is not None
        and exc.status == 405
    ):
        return web.Response(
            status=204,
            headers={
                "Access-Control-Allow-Methods": ALLOW_METHODS,
                "Access-Control-Allow-Headers": ALLOW_HEADERS,
                "Access-Control-Max-Age": MAX_AGE_S,
            },
        )
    return await handler(request)


async def add_cors_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: every response, streams and errors included."""
    origin = request.headers.get("Origin")
    response.headers.add("Vary", "Origin")
    if origin is not None and origin in request.app[ORIGINS]:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Expose-Headers"] = EXPOSE_HEADERS
