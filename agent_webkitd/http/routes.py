"""The HTTP layer: aiohttp routes, body limits and error mapping.

Each request arrives with its principal (auth.py); a handler finds the session as that
principal (404 unless theirs or they are an admin: the Supervisor decides), parses and
validates the rest (through `wire`), and turns every failure into
`{"error": {"code", "message"}}` with the right status. It knows nothing about the SDK.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from aiohttp import web

from ..agents import genui
from ..config import Config
from ..errors import ApiError, bad_request
from ..identity.principals import Principal
from ..metrics import clean_subscriber_id
from ..protocol import openapi, wire
from ..sessions import gauges, history
from ..sessions.inputs import handle_input
from ..sessions.session import Session
from ..sessions.supervisor import Supervisor
from . import cors, sse
from .auth import AUTH, NO_STORE, PRINCIPAL, Auth, auth_middleware, no_store_for_tickets
from .files import WorkspaceFiles
from .usage import UsageRoutes

log = structlog.get_logger(__name__)
OPENAPI = openapi.render().encode()

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
SUBSCRIBER_HEADER = "X-Subscriber-ID"
CLIENT_CLOSED = 499
# A plain request slower than this is logged as a warning: a proxy in front gives up at a
# few seconds (conf/nginx-cluster.conf: 5 s), and then only this host's log says why.
SLOW_REQUEST_S = 1.0

SUPERVISOR = web.AppKey("supervisor", Supervisor)
CONFIG = web.AppKey("config", Config)
GENUI: web.AppKey[tuple[genui.Component, ...]] = web.AppKey("genui")


def json_response(
    data: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=json.dumps(data, separators=(",", ":")).encode(),
        status=status,
        content_type="application/json",
        headers=headers,
    )


def error_response(error: ApiError) -> web.Response:
    return json_response(error.body(), error.status, error.headers)


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure becomes a JSON error body; every request is counted and logged."""
    started = time.monotonic()
    try:
        response = await handler(request)
    except asyncio.CancelledError:
        # The client went away mid-request (aiohttp cancels the handler); account for it
        # as nginx does: 499, "client closed request".
        _account(request, CLIENT_CLOSED, started)
        raise
    except ApiError as exc:
        response = error_response(exc)
    except web.HTTPRequestEntityTooLarge as exc:
        response = error_response(
            ApiError(413, "payload_too_large", exc.text or "request body too large")
        )
    except web.HTTPException as exc:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status, "http_error")
        allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        response = error_response(ApiError(exc.status, code, exc.reason, allow))
    except Exception:
        log.exception("request_failed", method=request.method, path=request.path)
        response = error_response(ApiError(500, "internal", "internal server error"))
    if isinstance(response, web.Response) and response.status == 409:
        request.app[SUPERVISOR].metrics.decision_conflicts.inc({"code": _error_code(response)})
    _account(request, response.status, started)
    return response


def _account(request: web.Request, status: int, started: float) -> None:
    """The access log line and the per-route request counter."""
    route = request.match_info.route.resource
    request.app[SUPERVISOR].metrics.http_requests.inc(
        {
            "route": route.canonical if route is not None else "unmatched",
            "method": request.method,
            "status": str(status),
        }
    )
    principal = request.get(PRINCIPAL)
    duration = time.monotonic() - started
    # Streams and file transfers last as long as they must; anything else is slow.
    slow = duration >= SLOW_REQUEST_S and not (route is not None and _long_lived(route.canonical))
    # The path only: a query string can hold a stream ticket, and never reaches a log.
    (log.warning if slow else log.info)(
        "http_request",
        method=request.method,
        path=request.path,
        principal=principal.name if principal is not None else None,
        status=status,
        duration_ms=round(duration * 1000, 1),
        **({"slow": True} if slow else {}),
    )


def _long_lived(route: str) -> bool:
    return route.endswith("/stream") or "/files" in route


def _error_code(response: web.Response) -> str:
    try:
        code: str = json.loads(response.body)["error"]["code"]  # type: ignore[arg-type]
    except (TypeError, ValueError, KeyError):
        return "unknown"
    return code


async def read_json(request: web.Request, *, allow_empty: bool) -> Any:
    limit = request.app[CONFIG].server.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(413, "payload_too_large", f"request body is larger than {limit} bytes")
    raw = await request.read()
    if not raw.strip():
        if allow_empty:
            return {}  # no body: the same as an empty object
        raise bad_request("invalid_body", "the request body must be a JSON object")
    too_deep = bad_request(
        "json_too_deep", f"the request body is nested deeper than {wire.MAX_DEPTH} levels"
    )
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise bad_request("invalid_json", f"the request body is not valid JSON: {exc}") from exc
    except RecursionError:  # deeper than the parser's own stack
        raise too_deep from None
    if not wire.within_depth(body):
        raise too_deep
    return body


def principal_of(request: web.Request) -> Principal:
    principal: Principal = request[PRINCIPAL]
    return principal


async def find_session(request: web.Request) -> Session:
    """The path's session, as the caller may see it (404 otherwise). Every session route
    starts here, before anything that could tell whether the session exists. Shielded: a
    claim from the store finishes even if the client goes away."""
    supervisor = request.app[SUPERVISOR]
    return await asyncio.shield(
        supervisor.find(request.match_info["session_id"], principal_of(request))
    )


async def create_session(request: web.Request) -> web.StreamResponse:
    body = wire.parse_create(await read_json(request, allow_empty=True))
    # Shielded: a client that hangs up mid-create leaves a registered session that idles
    # out, never a half-started one.
    session = await asyncio.shield(request.app[SUPERVISOR].create(body, principal_of(request)))
    return json_response({"session_id": session.id, "protocol_version": wire.PROTOCOL_VERSION})


async def stream(request: web.Request) -> web.StreamResponse:
    supervisor = request.app[SUPERVISOR]
    session = await find_session(request)
    cursor = sse.parse_cursor(request)
    graceful = request.query.get("graceful") in ("1", "true")
    try:
        after, preface = sse.resolve_start(
            session.log, cursor, durable=supervisor.store.durable, graceful=graceful
        )
    except ApiError as exc:
        if exc.status == 412:
            supervisor.metrics.resume_412.inc({})
        raise
    subscriber = subscriber_id(request) or f"sub-{uuid.uuid4().hex[:12]}"
    supervisor.open_stream(session)
    try:
        response, evicted = await sse.stream_events(
            request,
            session.log,
            after,
            {SUBSCRIBER_HEADER: subscriber},
            supervisor.store,
            write_timeout_s=request.app[CONFIG].server.write_timeout_s,
            from_edge=cursor is None,
            preface=preface,
        )
    finally:
        supervisor.close_stream(session)
    if evicted:
        supervisor.metrics.subscribers_evicted.inc({})
        session.logger.info("subscriber_evicted", subscriber_id=subscriber)
    return response


async def stream_ticket(request: web.Request) -> web.StreamResponse:
    """A read-only pass to this session's stream for the browser's native EventSource."""
    session = await find_session(request)
    tickets = request.app[AUTH].tickets
    ticket = tickets.issue(session.id, principal_of(request))
    return json_response({"ticket": ticket, "expires_in": int(tickets.ttl_s)}, headers=NO_STORE)


async def post_input(request: web.Request) -> web.StreamResponse:
    session = await find_session(request)
    message = wire.parse_inbound(await read_json(request, allow_empty=False))
    await asyncio.shield(
        handle_input(
            session,
            message,
            request.app[CONFIG].agent.allowed_permission_modes,
            subscriber_id(request),
        )
    )
    return web.Response(status=204)


def subscriber_id(request: web.Request) -> str | None:
    return clean_subscriber_id(request.headers.get(SUBSCRIBER_HEADER))


async def list_sessions(request: web.Request) -> web.StreamResponse:
    """The caller's own sessions; an admin's, all of them (or `?owner=`'s). The host's
    counts are for admins only: they say how many sessions other users have."""
    supervisor = request.app[SUPERVISOR]
    principal = principal_of(request)
    owner = request.query.get("owner") if principal.admin else None
    sessions = [history.listed(s) for s in supervisor.visible(principal, owner)]
    counts: dict[str, Any] = {}
    if principal.admin:
        counts = {
            **gauges.counts(supervisor),
            "agents_by_principal": supervisor.slots.by_principal(),
        }
    return json_response({"sessions": sessions, **counts})


async def get_session(request: web.Request) -> web.StreamResponse:
    session = await find_session(request)
    usage = request.app[SUPERVISOR].ledger.session_usage(session.id)
    return json_response({**history.describe(session, full=True), "usage": usage})


async def get_messages(request: web.Request) -> web.StreamResponse:
    return json_response(await history.messages(await find_session(request)))


async def get_snapshot(request: web.Request) -> web.StreamResponse:
    return json_response(await history.snapshot(await find_session(request)))


async def delete_session(request: web.Request) -> web.StreamResponse:
    session = await find_session(request)
    await asyncio.shield(request.app[SUPERVISOR].close(session, "closed"))
    return web.Response(status=204)


async def list_artefacts(request: web.Request) -> web.StreamResponse:
    session = await find_session(request)
    listed = [a.describe() for a in session.artefacts.list()]
    return json_response({"session_id": session.id, "artefacts": listed})


async def get_artefact(request: web.Request) -> web.StreamResponse:
    """One artefact with its content, at `?version=n` (the latest by default)."""
    session = await find_session(request)
    number = artefact_version(request.query.get("version"))
    artefact, version, content = await session.artefacts.read(
        request.match_info["artefact_id"], number
    )
    return json_response(
        {
            **artefact.describe(version),
            "latest_version": artefact.latest.version,
            "content": content,
        }
    )


async def list_artefact_versions(request: web.Request) -> web.StreamResponse:
    session = await find_session(request)
    artefact = session.artefacts.get(request.match_info["artefact_id"])
    versions = [v.describe() for v in artefact.versions]
    return json_response({"artefact_id": artefact.artefact_id, "versions": versions})


async def delete_artefact(request: web.Request) -> web.StreamResponse:
    """Gone with every version; the stream gets `artefact_deleted`."""
    session = await find_session(request)
    await asyncio.shield(session.artefacts.delete(request.match_info["artefact_id"]))
    return web.Response(status=204)


def artefact_version(raw: str | None) -> int | None:
    """`?version=n`: a positive integer, or absent (the latest)."""
    if raw is None:
        return None
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 18 or int(raw) < 1:
        raise bad_request("invalid_version", f"version must be a positive integer, got {raw!r}")
    return int(raw)


async def healthz(request: web.Request) -> web.StreamResponse:
    supervisor = request.app[SUPERVISOR]
    confinement = supervisor.confinement
    return json_response(
        {
            "ok": True,
            "sandbox": confinement.sandbox,  # "none": agents run unconfined (DESIGN §12)
            "network": confinement.network,
            **gauges.counts(supervisor),
        }
    )


async def readyz(request: web.Request) -> web.StreamResponse:
    """Ready = accepting sessions and the store answers."""
    supervisor = request.app[SUPERVISOR]
    if supervisor.draining:
        return json_response({"ready": False, "reason": "draining"}, status=503)
    try:
        await supervisor.store.check()
    except Exception as exc:  # any store failure means not ready; say which
        return json_response({"ready": False, "reason": f"store unavailable: {exc}"}, status=503)
    return json_response({"ready": True})


async def openapi_document(request: web.Request) -> web.StreamResponse:
    return web.Response(body=OPENAPI, content_type="application/json")


async def genui_schema(request: web.Request) -> web.StreamResponse:
    """The generative-UI render tools and their components' schemas (any principal)."""
    return json_response(genui.schema_document(request.app[GENUI]))


async def metrics(request: web.Request) -> web.StreamResponse:
    supervisor = request.app[SUPERVISOR]
    gauges.refresh(supervisor)
    body, headers = supervisor.metrics.render(request.headers.getall("Accept", []))
    return web.Response(body=body, headers=headers)


def build_app(
    config: Config,
    supervisor: Supervisor,
    auth: Auth,
    components: tuple[genui.Component, ...] = (),
) -> web.Application:
    app = web.Application(
        middlewares=[errors_middleware, cors.preflight_middleware, auth_middleware],
        client_max_size=config.server.max_body_bytes,
    )
    app[CONFIG] = config
    app[SUPERVISOR] = supervisor
    app[AUTH] = auth
    app[GENUI] = components
    app[cors.ORIGINS] = frozenset(config.server.cors_allowed_origins)
    app.on_response_prepare.append(cors.add_cors_headers)
    app.on_response_prepare.append(no_store_for_tickets)
    app.router.add_post("/sessions", create_session)
    app.router.add_get("/sessions", list_sessions)
    app.router.add_get("/sessions/{session_id}", get_session)
    app.router.add_get("/sessions/{session_id}/stream", stream)
    app.router.add_post("/sessions/{session_id}/input", post_input)
    app.router.add_post("/sessions/{session_id}/stream-ticket", stream_ticket)
    app.router.add_get("/sessions/{session_id}/messages", get_messages)
    app.router.add_get("/sessions/{session_id}/snapshot", get_snapshot)
    app.router.add_delete("/sessions/{session_id}", delete_session)
    app.router.add_get("/sessions/{session_id}/artefacts", list_artefacts)
    app.router.add_get("/sessions/{session_id}/artefacts/{artefact_id}", get_artefact)
    app.router.add_delete("/sessions/{session_id}/artefacts/{artefact_id}", delete_artefact)
    app.router.add_get(
        "/sessions/{session_id}/artefacts/{artefact_id}/versions", list_artefact_versions
    )
    WorkspaceFiles(find_session, config.agent).add_routes(app)
    UsageRoutes(supervisor.ledger, principal_of).add_routes(app)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/openapi.json", openapi_document)
    app.router.add_get("/genui/schema", genui_schema)
    return app
