"""The model gateway (agents/gateway.py) between real sockets: a CLI-like client, the
gateway on a Unix socket (and loopback TCP), and a small recording upstream that stands in
for the Anthropic API. The last tests put the real bundled CLI in front of the gateway.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import os
import stat
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web
from claude_agent_sdk import (
    ClaudeSDKClient,
    PermissionResult,
    ResultMessage,
    ToolPermissionContext,
)
from multidict import CIMultiDict
from structlog.testing import capture_logs

from agent_webkitd.agents.gateway import Credential, ModelGateway, upstream_url
from tests.conftest import free_port
from tests.standin.fake_model import fetch_requests
from tests.standin.fixtures import fake_model_url, real_cli_options

__all__ = ["fake_model_url"]  # imported for pytest: it is a fixture

REAL_KEY = "sk-ant-real-0123456789abcdef"
OAUTH_TOKEN = "sk-ant-oat01-real-oauth-token"
WAIT_S = 5  # bounds every wait, so that a buffering gateway fails instead of hanging
CLI_TIMEOUT_S = 30

Reply = Callable[[web.Request], Awaitable[web.StreamResponse]]


# --- a recording upstream --------------------------------------------------------


@dataclass
class Seen:
    method: str
    path: str  # with its query string
    headers: CIMultiDict[str]
    body: bytes


async def echo(request: web.Request) -> web.StreamResponse:
    return web.json_response({"id": "msg_upstream", "type": "message"})


class Upstream:
    """Records every request (headers included); `reply` decides the response."""

    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self.reply: Reply = echo
        self.cancelled = asyncio.Event()  # a request's handler was cancelled (hang-up)
        self.url = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.read()
            self.seen.append(
                Seen(request.method, request.path_qs, CIMultiDict(request.headers), body)
            )
            return await self.reply(request)
        except asyncio.CancelledError:
            self.cancelled.set()
            raise


@pytest_asyncio.fixture
async def upstream() -> AsyncIterator[Upstream]:
    server = Upstream()
    app = web.Application(client_max_size=64 * 1024**2)
    app.router.add_route("*", "/{tail:.*}", server.handle)
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield server
    await runner.cleanup()


# --- the gateway and a client of it ------------------------------------------------


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    # Not tmp_path: a Unix socket's path must stay under ~108 bytes.
    with tempfile.TemporaryDirectory(prefix="gw-") as folder:
        yield Path(folder)


@asynccontextmanager
async def running_gateway(
    upstream: str, socket_dir: Path, credential: Credential | None = None
) -> AsyncIterator[ModelGateway]:
    gateway = ModelGateway(
        upstream, credential or Credential("x-api-key", REAL_KEY), socket_dir / "gw.sock", tcp=True
    )
    await gateway.start()
    try:
        yield gateway
    finally:
        await gateway.stop()


@pytest_asyncio.fixture
async def gateway(upstream: Upstream, socket_dir: Path) -> AsyncIterator[ModelGateway]:
    async with running_gateway(upstream.url, socket_dir) as gateway:
        yield gateway


@pytest_asyncio.fixture
async def client(gateway: ModelGateway) -> AsyncIterator[aiohttp.ClientSession]:
    """A client of the gateway's Unix socket, as the CLI's bridge inside a sandbox is."""
    connector = aiohttp.UnixConnector(path=str(gateway.socket_path))
    async with aiohttp.ClientSession(
        "http://gateway", connector=connector, auto_decompress=False
    ) as session:
        yield session


def cli_headers(key: str, **extra: str) -> dict[str, str]:
    """Headers like the ones the CLI sends with its model requests."""
    return {
        "x-api-key": key,
        "anthropic-version": "2023-06-01",
        "anthropic-beta": "claude-code-20250219,interleaved-thinking-2025-05-14",
        "content-type": "application/json",
        "accept": "application/json",
        "user-agent": "claude-cli/2.1.332 (external, sdk-py)",
        "x-stainless-lang": "js",
        "x-app": "cli",
        **extra,
    }


MESSAGE = json.dumps({"model": "claude-opus-5-5", "max_tokens": 16, "messages": []})


async def raw_status(socket_path: Path, method: str, target: str, key: str) -> int:
    """Send a request line exactly as written (no client-side normalising) and read the status."""
    reader, writer = await asyncio.open_unix_connection(str(socket_path))
    writer.write(
        f"{method} {target} HTTP/1.1\r\nHost: gateway\r\nx-api-key: {key}\r\n"
        "Content-Length: 2\r\nConnection: close\r\n\r\n{}".encode()
    )
    await writer.drain()
    status_line = await reader.readline()
    writer.close()
    await writer.wait_closed()
    return int(status_line.split()[1])


def assert_anthropic_error(body: dict[str, Any], kind: str) -> None:
    assert body["type"] == "error"
    assert body["error"]["type"] == kind
    assert isinstance(body["error"]["message"], str)


# --- credentials and where they go ----------------------------------------------------


async def test_upstream_gets_the_real_key_and_never_the_session_key(
    gateway: ModelGateway, client: aiohttp.ClientSession, upstream: Upstream
) -> None:
    key = gateway.issue_key()
    headers = cli_headers(key, authorization=f"Bearer {key}")
    async with client.post("/v1/messages?beta=true", data=MESSAGE, headers=headers) as resp:
        assert resp.status == 200
        assert await resp.json() == {"id": "msg_upstream", "type": "message"}

    [seen] = upstream.seen
    assert (seen.method, seen.path, seen.body) == (
        "POST",
        "/v1/messages?beta=true",
        MESSAGE.encode(),
    )
    assert seen.headers.getall("x-api-key") == [REAL_KEY]
    assert "authorization" not in seen.headers
    assert all(key not in value for value in seen.headers.values())
    for name in ("anthropic-version", "anthropic-beta", "content-type", "accept", "user-agent",
                 "x-stainless-lang", "x-app"):  # fmt: skip
        assert seen.headers[name] == headers[name], name
    assert seen.headers["host"] == upstream.url.removeprefix("http://")
    assert seen.headers["content-length"] == str(len(MESSAGE))


async def test_a_bearer_session_key_is_accepted_too(
    gateway: ModelGateway, client: aiohttp.ClientSession, upstream: Upstream
) -> None:
    headers = {"authorization": f"Bearer {gateway.issue_key()}", "content-type": "application/json"}
    async with client.post("/v1/messages", data=MESSAGE, headers=headers) as resp:
        assert resp.status == 200
    assert upstream.seen[0].headers.getall("x-api-key") == [REAL_KEY]


async def test_an_oauth_credential_goes_upstream_as_a_bearer(
    upstream: Upstream, socket_dir: Path
) -> None:
    credential = Credential.from_environment({"CLAUDE_CODE_OAUTH_TOKEN": OAUTH_TOKEN})
    async with running_gateway(upstream.url, socket_dir, credential) as gateway:
        key = gateway.issue_key()
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"{gateway.tcp_url}/v1/messages/count_tokens?beta=true",
                data=MESSAGE,
                headers=cli_headers(key, authorization=f"Bearer {key}"),
            ) as resp,
        ):
            assert resp.status == 200

    [seen] = upstream.seen
    assert seen.path == "/v1/messages/count_tokens?beta=true"
    assert seen.headers.getall("authorization") == [f"Bearer {OAUTH_TOKEN}"]
    assert "x-api-key" not in seen.headers


def test_credential_comes_from_the_api_key_then_the_oauth_token_then_the_auth_token() -> None:
    both = {"ANTHROPIC_API_KEY": REAL_KEY, "CLAUDE_CODE_OAUTH_TOKEN": OAUTH_TOKEN}
    assert Credential.from_environment(both) == Credential("x-api-key", REAL_KEY)
    oauth = {
        "ANTHROPIC_API_KEY": "",
        "CLAUDE_CODE_OAUTH_TOKEN": OAUTH_TOKEN,
        "ANTHROPIC_AUTH_TOKEN": "t",
    }
    assert Credential.from_environment(oauth) == Credential(
        "authorization", f"Bearer {OAUTH_TOKEN}"
    )
    auth = {"ANTHROPIC_AUTH_TOKEN": "tok"}
    assert Credential.from_environment(auth) == Credential("authorization", "Bearer tok")
    assert Credential.from_environment({"ANTHROPIC_API_KEY": ""}) is None


def test_upstream_is_the_configured_url_then_the_base_url_then_the_public_api() -> None:
    env = {"ANTHROPIC_BASE_URL": "http://proxy.internal:8080/"}
    assert (
        upstream_url("https://models.example/anthropic/", env) == "https://models.example/anthropic"
    )
    assert upstream_url("", env) == "http://proxy.internal:8080"
    assert upstream_url("", {}) == "https://api.anthropic.com"


async def test_repr_and_str_never_show_the_secret(gateway: ModelGateway) -> None:
    for credential in (
        Credential("x-api-key", REAL_KEY),
        Credential("authorization", f"Bearer {OAUTH_TOKEN}"),
    ):
        for text in (repr(credential), str(credential), f"{credential}", repr([credential])):
            assert credential.value not in text and "hidden" in text
    key = gateway.issue_key()
    assert REAL_KEY not in repr(gateway) and key not in repr(gateway)
    assert REAL_KEY not in str(gateway) and key not in str(gateway)


async def test_logs_never_show_a_key_or_the_credential(
    gateway: ModelGateway, client: aiohttp.ClientSession
) -> None:
    key = gateway.issue_key()
    with capture_logs() as logs:
        for headers in (cli_headers(key), cli_headers("awk-session-forged")):
            async with client.post("/v1/messages?beta=true", data=MESSAGE, headers=headers):
                pass
    assert [(e["path"], e["status"]) for e in logs if e["event"] == "model_request"] == [
        ("/v1/messages", 200),
        ("/v1/messages", 401),
    ]
    text = repr(logs)
    assert REAL_KEY not in text and key not in text and "forged" not in text


# --- session keys ---------------------------------------------------------------------


@pytest.mark.parametrize("which", ["missing", "unknown", "revoked", "empty bearer"])
async def test_a_request_without_a_live_session_key_gets_401(
    which: str, gateway: ModelGateway, client: aiohttp.ClientSession, upstream: Upstream
) -> None:
    key = gateway.issue_key()
    headers = cli_headers(key)
    if which == "missing":
        del headers["x-api-key"]
    elif which == "unknown":
        headers["x-api-key"] = "awk-session-" + "x" * 43
    elif which == "revoked":
        gateway.revoke(key)
        gateway.revoke(key)  # idempotent
    else:
        del headers["x-api-key"]
        headers["authorization"] = "Bearer "
    async with client.post("/v1/messages?beta=true", data=MESSAGE, headers=headers) as resp:
        assert resp.status == 401
        assert_anthropic_error(await resp.json(), "authentication_error")
    assert upstream.seen == []


async def test_keys_are_fresh_and_counted_until_revoked(gateway: ModelGateway) -> None:
    first, second = gateway.issue_key(), gateway.issue_key()
    assert first != second and first.startswith("awk-session-") and len(first) > 40
    assert gateway.live_keys == 2
    gateway.revoke(first)
    gateway.revoke(first)
    gateway.revoke("never issued")
    assert gateway.live_keys == 1


# --- what is forwarded ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/models"),
        ("GET", "/v1/messages"),
        ("POST", "/v1/messages/"),
        ("POST", "/v1/messages/batches"),
        ("POST", "/v1/complete"),
        ("HEAD", "/api/hello"),
        ("GET", "/admin"),
        ("POST", "/sessions"),
    ],
)
async def test_other_paths_get_404_without_any_upstream_request(
    method: str, path: str, gateway: ModelGateway, client: aiohttp.ClientSession, upstream: Upstream
) -> None:
    async with client.request(
        method, path, data=MESSAGE, headers=cli_headers(gateway.issue_key())
    ) as resp:
        assert resp.status == 404
        if method != "HEAD":
            assert_anthropic_error(await resp.json(), "not_found_error")
    assert upstream.seen == []


@pytest.mark.parametrize(
    "target",
    [
        "/v1/messages/../x",
        "/v1/messages/count_tokens/../../../admin",
        "/v1/x/../messages",  # normalises to /v1/messages: refused as written
        "/v1/messages/%2e%2e/x",
        "/v1/./messages",
        "/v1/messages%2Fcount_tokens",
        "//v1/messages",
        "http://evil.example/v1/messages",
    ],
)
async def test_path_tricks_get_404_without_any_upstream_request(
    target: str, gateway: ModelGateway, upstream: Upstream
) -> None:
    assert await raw_status(gateway.socket_path, "POST", target, gateway.issue_key()) == 404
    assert upstream.seen == []


async def test_the_key_is_checked_before_the_path(
    gateway: ModelGateway, client: aiohttp.ClientSession, upstream: Upstream
) -> None:
    async with client.get("/admin") as resp:
        assert resp.status == 401
    assert await raw_status(gateway.socket_path, "POST", "/v1/messages/../x", "wrong") == 401
    assert upstream.seen == []


# --- streaming -----------------------------------------------------------------------


async def test_the_first_sse_delta_reaches_the_client_while_upstream_holds_the_rest(
    gateway: ModelGateway, client: aiohttp.ClientSession, upstream: Upstream
) -> None:
    client_saw_first = asyncio.Event()
    upstream_finished = False

    async def slow_stream(request: web.Request) -> web.StreamResponse:
        nonlocal upstream_finished
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b'event: content_block_delta\ndata: {"text":"one"}\n\n')
        await asyncio.wait_for(client_saw_first.wait(), WAIT_S)
        await response.write(b'event: content_block_delta\ndata: {"text":"two"}\n\n')
        await response.write(b"event: message_stop\ndata: {}\n\n")
        await response.write_eof()
        upstream_finished = True
        return response

    upstream.reply = slow_stream
    body = json.dumps({"stream": True, "messages": []})
    async with (
        asyncio.timeout(WAIT_S),
        client.post(
            "/v1/messages?beta=true", data=body, headers=cli_headers(gateway.issue_key())
        ) as resp,
    ):
        assert resp.status == 200
        assert resp.headers["content-type"] == "text/event-stream"
        first = await resp.content.readuntil(b"\n\n")
        assert b'"one"' in first and not upstream_finished
        client_saw_first.set()
        rest = await resp.content.read()
    assert upstream_finished
    assert (
        rest
        == b'event: content_block_delta\ndata: {"text":"two"}\n\nevent: message_stop\ndata: {}\n\n'
    )


async def test_a_large_request_body_streams_through_intact(
    gateway: ModelGateway, client: aiohttp.ClientSession, upstream: Upstream
) -> None:
    body = os.urandom(5 * 1024 * 1024)

    async def digest(request: web.Request) -> web.StreamResponse:
        return web.json_response({"sha256": hashlib.sha256(upstream.seen[-1].body).hexdigest()})

    upstream.reply = digest
    async with client.post(
        "/v1/messages", data=body, headers=cli_headers(gateway.issue_key())
    ) as resp:
        assert resp.status == 200
        assert (await resp.json())["sha256"] == hashlib.sha256(body).hexdigest()
    [seen] = upstream.seen
    assert seen.body == body
    assert seen.headers["content-length"] == str(len(body))


async def test_a_large_response_body_streams_back_intact(
    gateway: ModelGateway, client: aiohttp.ClientSession, upstream: Upstream
) -> None:
    body = os.urandom(3 * 1024 * 1024)

    async def big(request: web.Request) -> web.StreamResponse:
        return web.Response(body=body, content_type="application/octet-stream")

    upstream.reply = big
    async with client.post(
        "/v1/messages", data=MESSAGE, headers=cli_headers(gateway.issue_key())
    ) as resp:
        assert resp.status == 200
        assert await resp.read() == body


async def test_a_client_hangup_mid_stream_closes_the_upstream_request(
    gateway: ModelGateway, client: aiohttp.ClientSession, upstream: Upstream
) -> None:
    async def endless(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b"event: ping\ndata: {}\n\n")
        await asyncio.Event().wait()  # until the gateway hangs up
        return response

    upstream.reply = endless
    async with client.post(
        "/v1/messages", data=MESSAGE, headers=cli_headers(gateway.issue_key())
    ) as resp:
        assert await resp.content.readuntil(b"\n\n") == b"event: ping\ndata: {}\n\n"
        resp.close()  # the CLI goes away (an interrupt, a crash)
    await asyncio.wait_for(upstream.cancelled.wait(), WAIT_S)


async def test_a_client_hangup_before_the_response_closes_the_upstream_request(
    gateway: ModelGateway, client: aiohttp.ClientSession, upstream: Upstream
) -> None:
    arrived = asyncio.Event()

    async def never(request: web.Request) -> web.StreamResponse:
        arrived.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    upstream.reply = never
    request = asyncio.ensure_future(
        client.post("/v1/messages", data=MESSAGE, headers=cli_headers(gateway.issue_key()))
    )
    await asyncio.wait_for(arrived.wait(), WAIT_S)
    request.cancel()
    await asyncio.wait_for(upstream.cancelled.wait(), WAIT_S)


async def test_an_upstream_that_breaks_mid_stream_cuts_the_clients_stream(
    gateway: ModelGateway, client: aiohttp.ClientSession, upstream: Upstream
) -> None:
    async def broken(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b"event: ping\ndata: {}\n\n")
        assert request.transport is not None
        request.transport.close()
        return response

    upstream.reply = broken
    async with client.post(
        "/v1/messages", data=MESSAGE, headers=cli_headers(gateway.issue_key())
    ) as resp:
        assert resp.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()  # a cut stream, never a clean end


# --- upstream statuses and failures ----------------------------------------------------


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, "invalid_request_error"),
        (429, "rate_limit_error"),
        (529, "overloaded_error"),
        (500, "api_error"),
    ],
)
async def test_upstream_errors_pass_through_unchanged(
    status: int, kind: str, gateway: ModelGateway, client: aiohttp.ClientSession, upstream: Upstream
) -> None:
    body = json.dumps(
        {"type": "error", "error": {"type": kind, "message": "from upstream"}}
    ).encode()

    async def fail(request: web.Request) -> web.StreamResponse:
        headers = {"retry-after": "7", "request-id": "req_upstream", "x-should-retry": "true"}
        return web.Response(
            status=status, body=body, content_type="application/json", headers=headers
        )

    upstream.reply = fail
    async with client.post(
        "/v1/messages", data=MESSAGE, headers=cli_headers(gateway.issue_key())
    ) as resp:
        assert resp.status == status
        assert await resp.read() == body
        assert resp.headers["retry-after"] == "7"
        assert resp.headers["request-id"] == "req_upstream"
        assert resp.headers["x-should-retry"] == "true"
    assert len(upstream.seen) == 1  # no retries of its own


async def test_a_compressed_response_passes_byte_for_byte(
    gateway: ModelGateway, client: aiohttp.ClientSession, upstream: Upstream
) -> None:
    compressed = gzip.compress(b'{"id":"msg_gz"}')

    async def gzipped(request: web.Request) -> web.StreamResponse:
        headers = {"content-encoding": "gzip", "content-type": "application/json"}
        return web.Response(body=compressed, headers=headers)

    upstream.reply = gzipped
    headers = cli_headers(gateway.issue_key(), **{"accept-encoding": "gzip"})
    async with client.post("/v1/messages", data=MESSAGE, headers=headers) as resp:
        assert resp.headers["content-encoding"] == "gzip"
        assert await resp.read() == compressed
    assert upstream.seen[0].headers["accept-encoding"] == "gzip"


async def test_an_unreachable_upstream_gets_502(socket_dir: Path) -> None:
    async with running_gateway(f"http://127.0.0.1:{free_port()}", socket_dir) as gateway:
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"{gateway.tcp_url}/v1/messages",
                data=MESSAGE,
                headers=cli_headers(gateway.issue_key()),
            ) as resp,
        ):
            assert resp.status == 502
            assert_anthropic_error(await resp.json(), "api_error")


# --- listeners ---------------------------------------------------------------------------


async def test_tcp_listener_is_on_loopback(gateway: ModelGateway, upstream: Upstream) -> None:
    assert gateway.tcp_url is not None and gateway.tcp_url.startswith("http://127.0.0.1:")
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{gateway.tcp_url}/v1/messages?beta=true",
            data=MESSAGE,
            headers=cli_headers(gateway.issue_key()),
        ) as resp,
    ):
        assert resp.status == 200
    assert upstream.seen[0].path == "/v1/messages?beta=true"


async def test_the_socket_is_private_and_replaces_a_stale_one(
    upstream: Upstream, socket_dir: Path
) -> None:
    path = socket_dir / "gw.sock"
    path.write_text("left over from a crash")
    gateway = ModelGateway(upstream.url, None, path, tcp=False)
    await gateway.start()
    try:
        mode = path.stat().st_mode
        assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
        assert gateway.tcp_url is None
    finally:
        await gateway.stop()
    assert not path.exists()


# --- the real CLI through the gateway ----------------------------------------------------


async def never_asked(
    name: str, tool_input: dict[str, Any], context: ToolPermissionContext
) -> PermissionResult:
    raise AssertionError(f"no tool expected, got {name}")


async def one_turn(options: Any, prompt: str) -> ResultMessage:
    async with asyncio.timeout(CLI_TIMEOUT_S), ClaudeSDKClient(options) as cli:
        await cli.query(prompt)
        messages = [message async for message in cli.receive_response()]
    assert isinstance(messages[-1], ResultMessage), messages[-1]
    return messages[-1]


async def test_the_real_cli_talks_to_the_model_through_the_gateway(
    fake_model_url: str, socket_dir: Path, tmp_path: Path
) -> None:
    async with running_gateway(fake_model_url, socket_dir) as gateway:
        assert gateway.tcp_url is not None
        options = real_cli_options(gateway.tcp_url, tmp_path, never_asked)
        key = gateway.issue_key()
        options.env["ANTHROPIC_API_KEY"] = key
        result = await one_turn(options, "hello gateway")
        assert (result.is_error, result.result) == (False, "echo: hello gateway")

        gateway.revoke(key)  # the CLI stopped: its key is dead
        refused = await one_turn(options, "hello again")
        assert refused.is_error

    calls = await fetch_requests(fake_model_url)
    assert [c["path"] for c in calls] == ["/v1/messages?beta=true"]


async def test_a_redirect_goes_back_to_the_client_not_onwards(
    gateway: ModelGateway, client: aiohttp.ClientSession, upstream: Upstream
) -> None:
    async def redirect(request: web.Request) -> web.StreamResponse:
        return web.Response(status=307, headers={"location": f"{upstream.url}/elsewhere"})

    upstream.reply = redirect
    async with client.post(
        "/v1/messages",
        data=MESSAGE,
        headers=cli_headers(gateway.issue_key()),
        allow_redirects=False,
    ) as resp:
        assert resp.status == 307
        assert resp.headers["location"] == f"{upstream.url}/elsewhere"
    assert [seen.path for seen in upstream.seen] == ["/v1/messages"]


async def test_the_gateway_adds_no_headers_of_its_own(
    gateway: ModelGateway, upstream: Upstream
) -> None:
    connector = aiohttp.UnixConnector(path=str(gateway.socket_path))
    bare = ("Accept", "Accept-Encoding", "User-Agent", "Content-Type")
    async with aiohttp.ClientSession(connector=connector, skip_auto_headers=bare) as session:
        headers = {"x-api-key": gateway.issue_key()}
        async with session.post("http://gateway/v1/messages", data=b"{}", headers=headers) as resp:
            assert resp.status == 200
    assert sorted(k.lower() for k in upstream.seen[0].headers) == [
        "content-length",
        "host",
        "x-api-key",
    ]
