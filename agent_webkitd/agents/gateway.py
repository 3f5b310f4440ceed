"""The model gateway (DESIGN §12): the one place the real model credential is used.

Agents are untrusted, so no CLI ever holds the real credential. Each CLI's
ANTHROPIC_BASE_URL points here and its ANTHROPIC_API_KEY is a session key issued for that
CLI start and revoked when it stops. The gateway checks the session key, drops the CLI's
credential headers, adds the real one and forwards the request to the upstream API.

It forwards only what the CLI uses: `POST /v1/messages` and `POST /v1/messages/count_tokens`
(the bundled CLI's model calls, both sent with `?beta=true`); anything else is 404 before
any upstream contact. Bodies stream through unbuffered both ways, so each SSE delta leaves
as it arrives, and upstream statuses, headers and bodies pass unchanged (errors included).
There are no retries here: the CLI retries. Keys and the credential are never logged.

Each session key names the session its CLI serves, so the gateway is also where usage is
counted (usage/ledger.py): each `/v1/messages` response's usage is read as it streams
past (usage/meter.py) and counted before its last bytes reach the CLI. A session whose
principal is over budget has its next model request refused with an error the CLI does
not retry (BUDGET_REFUSAL), so its turn ends after the request that crossed the line.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import structlog
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from structlog.typing import FilteringBoundLogger
from yarl import URL

from ..metrics import Metrics
from ..usage.ledger import Ledger, utc_now
from ..usage.meter import NEWLINE, USAGE_KEY, ResponseMeter

DEFAULT_UPSTREAM = "https://api.anthropic.com"
KEY_PREFIX = "awk-session-"
FORWARDED = frozenset({("POST", "/v1/messages"), ("POST", "/v1/messages/count_tokens")})
CONNECT_TIMEOUT_S = 30.0  # to reach the upstream; a response may then take minutes
STOP_GRACE_S = 5.0  # for requests in flight when the gateway stops
# Never forwarded either way: hop-by-hop headers (and the CLI's own credential, inward).
# Content-Length passes: the body's bytes pass unchanged, so upstream gets a sized request.
HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "host"}
)
CREDENTIAL_HEADERS = frozenset({"x-api-key", "authorization"})
METERED = "/v1/messages"  # count_tokens answers a count, it spends none
# A request over budget is refused as a rate limit the CLI must not retry: the real CLI
# (2.1.332) retries 408/409/429/5xx and even a plain 400 (up to 10 times, with fallbacks),
# but gives up at once on `x-should-retry: false`, and on a 429 whose retry-after is over
# a minute (tests/test_usage.py proves it end to end).
BUDGET_STATUS, BUDGET_ERROR = 429, "rate_limit_error"


@dataclass(frozen=True)
class Credential:
    """The real model credential, as the header that carries it. Its repr hides the value."""

    header: str  # "x-api-key" or "authorization"
    value: str  # the key, or "Bearer <token>"

    def __repr__(self) -> str:
        return f"Credential(header={self.header!r}, value=<hidden>)"

    __str__ = __repr__

    @classmethod
    def from_environment(cls, env: Mapping[str, str]) -> Credential | None:
        """ANTHROPIC_API_KEY as x-api-key, else an OAuth or auth token as a bearer."""
        if key := env.get("ANTHROPIC_API_KEY", "").strip():
            return cls("x-api-key", key)
        for name in ("CLAUDE_CODE_OAUTH_TOKEN", "ANTHROPIC_AUTH_TOKEN"):
            if token := env.get(name, "").strip():
                return cls("authorization", f"Bearer {token}")
        return None


def upstream_url(configured: str, env: Mapping[str, str]) -> str:
    """`[model] upstream_url`, else the daemon's ANTHROPIC_BASE_URL, else the public API."""
    return (configured or env.get("ANTHROPIC_BASE_URL") or DEFAULT_UPSTREAM).rstrip("/")


def _error(status: int, kind: str, message: str) -> web.Response:
    """An error shaped like the Anthropic API's own, which the CLI knows how to report."""
    body = {"type": "error", "error": {"type": kind, "message": message}}
    return web.json_response(body, status=status)


def _end_to_end(headers: CIMultiDictProxy[str], drop: frozenset[str]) -> CIMultiDict[str]:
    """The headers that pass through: not hop-by-hop (nor named by Connection), not `drop`."""
    named = {n.strip().lower() for v in headers.getall("connection", []) for n in v.split(",")}
    skip = HOP_BY_HOP | drop | named
    return CIMultiDict(
        (k, v) for k, v in headers.items() if k.lower() not in skip and not _is_proxy(k)
    )


def _is_proxy(name: str) -> bool:
    return name.lower().startswith("proxy-")


def _session_key(headers: CIMultiDictProxy[str]) -> str | None:
    if key := headers.get("x-api-key"):
        return key
    scheme, _, token = headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


class ModelGateway:
    def __init__(
        self,
        upstream: str,
        credential: Credential | None,
        socket_path: Path,
        *,
        tcp: bool,
        logger: FilteringBoundLogger | None = None,
        ledger: Ledger | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.socket_path = socket_path
        self.tcp_url: str | None = None
        self._upstream = upstream.rstrip("/")
        self._credential = credential
        self._tcp = tcp
        self._log: FilteringBoundLogger = logger or structlog.get_logger(__name__)
        self._keys: dict[str, str | None] = {}  # session key -> the session its CLI serves
        self._ledger = ledger
        self._metrics = metrics
        self._runner: web.AppRunner | None = None
        self._client: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        return f"ModelGateway(upstream={self._upstream!r}, socket={str(self.socket_path)!r})"

    # --- session keys ------------------------------------------------------------

    def issue_key(self, session_id: str | None = None) -> str:
        """A fresh session key for one CLI start (serving `session_id`), valid until revoked."""
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        self._keys[key] = session_id
        return key

    def revoke(self, key: str) -> None:
        self._keys.pop(key, None)

    @property
    def live_keys(self) -> int:
        return len(self._keys)

    # --- life ----------------------------------------------------------------------

    async def start(self) -> None:
        # No per-host limit: every CLI's stream is a long request to the same host.
        # Transparent both ways: bytes pass unchanged with their Content-Encoding, and
        # aiohttp adds none of its default headers the CLI did not send.
        self._client = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT_S),
            auto_decompress=False,
            skip_auto_headers=("Accept", "Accept-Encoding", "User-Agent", "Content-Type"),
        )
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # handler_cancellation: a CLI that hangs up cancels its request upstream at once.
        self._runner = web.AppRunner(
            app, access_log=None, handler_cancellation=True, shutdown_timeout=STOP_GRACE_S
        )
        await self._runner.setup()
        self.socket_path.unlink(missing_ok=True)  # a stale socket from an earlier run
        await web.UnixSite(self._runner, str(self.socket_path)).start()
        os.chmod(self.socket_path, 0o600)
        if self._tcp:
            await web.TCPSite(self._runner, "127.0.0.1", 0).start()
            port = next(a[1] for a in self._runner.addresses if isinstance(a, tuple))
            self.tcp_url = f"http://127.0.0.1:{port}"
        self._log.info("model_gateway_started", upstream=self._upstream, tcp_url=self.tcp_url)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._client is not None:
            await self._client.close()
            self._client = None
        self.socket_path.unlink(missing_ok=True)
        self.tcp_url = None

    # --- requests ------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        started = time.monotonic()
        key = _session_key(request.headers)
        # The raw path, as sent: no decoding or normalising can turn it into another one.
        path = request.raw_path.partition("?")[0]
        if key is None or key not in self._keys:
            response: web.StreamResponse = _error(
                401, "authentication_error", "invalid or expired session key"
            )
        elif (request.method, path) not in FORWARDED:
            response = _error(404, "not_found_error", f"not forwarded: {request.method} {path}")
        elif (refusal := self._refusal(path, self._keys[key])) is not None:
            response = refusal
        else:
            response = await self._forward(request, self._keys[key] if path == METERED else None)
        if self._metrics is not None:
            self._metrics.model_requests.inc({"status": str(response.status)})
        self._log.info(
            "model_request",
            path=path,
            status=response.status,
            duration_ms=round((time.monotonic() - started) * 1000, 1),
        )
        return response

    def _refusal(self, path: str, session_id: str | None) -> web.Response | None:
        """A model request of a session whose principal is over budget: refused."""
        if self._ledger is None or session_id is None or path != METERED:
            return None
        over = self._ledger.refuse(session_id)
        if over is None:
            return None
        refusal = _error(BUDGET_STATUS, BUDGET_ERROR, f"budget_exceeded: {over.message()}")
        refusal.headers["x-should-retry"] = "false"
        refusal.headers["retry-after"] = str(over.retry_after(utc_now()))
        return refusal

    async def _forward(self, request: web.Request, metered: str | None) -> web.StreamResponse:
        """Pass the request on and stream the answer back; with `metered` (a session
        id), count the response's usage for that session."""
        assert self._client is not None
        headers = _end_to_end(request.headers, CREDENTIAL_HEADERS)
        if self._credential is not None:
            headers[self._credential.header] = self._credential.value
        url = URL(self._upstream + request.raw_path, encoded=True)
        try:
            # Redirects go back to the CLI: following one would send the credential on.
            upstream = await self._client.post(
                url, headers=headers, data=request.content, allow_redirects=False
            )
        except (aiohttp.ClientError, TimeoutError) as error:
            self._log.warning(
                "model_upstream_unreachable", error=f"{type(error).__name__}: {error}"
            )
            return _error(502, "api_error", "the model gateway could not reach the model API")
        async with upstream:
            response = web.StreamResponse(
                status=upstream.status,
                reason=upstream.reason,
                headers=_end_to_end(upstream.headers, frozenset()),
            )
            meter = None
            if metered is not None and self._ledger is not None and upstream.status == 200:
                meter = ResponseMeter(streamed=upstream.content_type == "text/event-stream")
            try:
                await response.prepare(request)
                async for chunk in upstream.content.iter_any():
                    # meter.wants(chunk), inlined: this runs for every chunk of every stream
                    # (bytes.find: half the cost of `in`, which goes through the buffer API).
                    if (
                        meter is not None
                        and (
                            meter.eager
                            or chunk[-1] != NEWLINE
                            or chunk.find(USAGE_KEY, meter.scan_from) >= 0
                        )
                        and meter.feed(chunk)
                    ):
                        self._count(metered, meter)  # before the CLI can see the end
                        meter = None
                    await response.write(chunk)
                await response.write_eof()
            except (aiohttp.ClientError, ConnectionResetError) as error:
                # One side broke mid-body: end both, so the CLI sees a cut stream, not an end.
                self._log.warning("model_stream_broken", error=type(error).__name__)
                upstream.close()
                if request.transport is not None:
                    request.transport.close()
            except asyncio.CancelledError:  # the CLI hung up
                upstream.close()
                raise
            finally:
                if meter is not None:  # a JSON body, or a stream cut short: count what is known
                    meter.finish()
                    self._count(metered, meter)
        return response

    def _count(self, session_id: str | None, meter: ResponseMeter) -> None:
        if self._ledger is not None and session_id is not None and meter.usage is not None:
            self._ledger.count(session_id, meter.model, meter.usage)
