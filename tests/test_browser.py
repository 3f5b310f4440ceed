"""A real headless Chromium on another origin, against the real daemon hosting the real
bundled CLI (the model is the stand-in; users sign in at a local identity provider).

The page runs @agent-webkit/core 0.2.0 as npm publishes it (tests/browser, installed by
scripts/ensure-test-tools, as is Debian's chromium). Nothing here is skipped: a missing
browser or client fails the run.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from playwright.async_api import Browser, Page, async_playwright

from agent_webkitd.protocol import openapi
from tests.conftest import Daemon, api_for, free_port
from tests.standin.fixtures import fake_model_url
from tests.standin.idp import Idp, idp, jwt_config
from tests.test_daemon_real_cli import start_real_daemon

__all__ = ["fake_model_url", "idp"]  # imported for pytest: they are fixtures

ROOT = Path(__file__).resolve().parent
CHROMIUM = "/usr/lib/chromium/chromium"  # the binary itself, not Debian's /usr/bin wrapper
CORE_DIST = ROOT / "browser" / "node_modules" / "@agent-webkit" / "core" / "dist"
PAGE_JS = ROOT / "browser" / "page.js"
EVENT_NAMES = list(openapi.EVENTS)
TIMEOUT_S = 60
# As this machine's closed network needs: no background traffic, no sandbox (root).
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: run scripts/ensure-test-tools"  # noqa: ASYNC240
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        await chromium.close()


@pytest.fixture
async def site() -> AsyncIterator[int]:
    """The front end's own server: a page and the npm client, on a port of its own."""
    assert (CORE_DIST / "index.js").exists(), "@agent-webkit/core is missing: run scripts/ensure-test-tools"

    async def index(request: web.Request) -> web.Response:
        return web.Response(
            text='<!doctype html><title>front end</title><script type="module" src="/page.js"></script>',
            content_type="text/html",
        )

    async def page_js(request: web.Request) -> web.FileResponse:
        return web.FileResponse(PAGE_JS, headers={"Content-Type": "text/javascript"})

    app = web.Application()
    app.router.add_get("/", index)
    app.router.add_get("/page.js", page_js)
    app.router.add_static("/core/", CORE_DIST)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield port
    await runner.cleanup()


@pytest.fixture
async def daemon(
    start_daemon: Callable[..., Any], fake_model_url: str, tmp_path: Path, idp: Idp, site: int
) -> Daemon:
    """CORS allows the front end's origin (http://127.0.0.1:<site>) and no other."""
    return await start_real_daemon(start_daemon, fake_model_url, tmp_path, {
        "server": {"cors_allowed_origins": [f"http://127.0.0.1:{site}"]},
        "auth": {"jwt": jwt_config(idp)},
        "store": {"backend": "sqlite", "path": str(tmp_path / "sessions.db")},
    })


async def open_page(browser: Browser, origin: str) -> Page:
    page = await browser.new_page()
    page.on("console", lambda msg: print(f"[browser] {msg.text}"))
    await page.goto(origin + "/")
    await page.wait_for_function("window.page !== undefined")
    return page


async def test_core_client_runs_a_turn_with_a_permission_prompt_using_a_users_jwt(
    browser: Browser, site: int, daemon: Daemon, idp: Idp
) -> None:
    async with asyncio.timeout(TIMEOUT_S):
        page = await open_page(browser, f"http://127.0.0.1:{site}")
        result = await page.evaluate(
            "([base, token]) => window.page.turnWithCore(base, token, 'please write the file')",
            [daemon.base_url, idp.token("alice")],
        )
    names = [e["event"] for e in result["events"]]
    assert names[0] == "session_ready" and names[-1] == "result", names
    assert "permission_request" in names and "permission_resolved" in names
    assert [e["id"] for e in result["events"]] == list(range(1, len(names) + 1))
    request = next(e for e in result["events"] if e["event"] == "permission_request")
    assert request["data"]["tool_name"] == "Write"
    written = daemon.workspace(result["sessionId"]) / "out.txt"  # the session's own workspace
    assert written.read_text() == "hello\n"  # the real CLI ran the approved tool
    # Resuming sends Last-Event-ID, which the browser preflights: it must be allowed.
    async with asyncio.timeout(TIMEOUT_S):
        resumed = await page.evaluate(
            "([base, token, id, after]) => window.page.resumeWithCore(base, token, id, after)",
            [daemon.base_url, idp.token("alice"), result["sessionId"], request["id"]],
        )
    assert resumed == [{"id": e["id"], "event": e["event"]} for e in result["events"][request["id"]:]]
    async with api_for(daemon) as admin:
        status, info, _ = await admin.request("GET", f"/sessions/{result['sessionId']}")
        assert status == 200 and info["owner"] == "jwt:alice"


async def test_event_source_on_a_ticket_reconnects_by_itself_across_a_restart_mid_turn(
    browser: Browser, site: int, daemon: Daemon, idp: Idp
) -> None:
    """The daemon goes down mid-turn (a deploy): its streams end, the browser's
    EventSource reconnects on its own with Last-Event-ID and the same ticket, and the page
    ends with every event exactly once."""
    token = idp.token("alice")
    async with asyncio.timeout(TIMEOUT_S), api_for(daemon, token) as alice:
        session_id = await alice.create()
        page = await open_page(browser, f"http://127.0.0.1:{site}")
        await page.evaluate(
            "([base, token, id, names]) => window.page.watchWithTicket(base, token, id, names)",
            [daemon.base_url, token, session_id, EVENT_NAMES],
        )
        await alice.say(session_id, "please write the file")
        await page.wait_for_function("window.seen.some(e => e.event === 'permission_request')")
        await daemon.stop()  # hurried: the turn is cut while the permission is pending
        await daemon.start()
        await alice.say(session_id, "hello again")  # wakes the session with its history
        await page.wait_for_function(
            "window.seen.filter(e => e.event === 'result').length >= 1"
            " && window.seen.some(e => e.event === 'session_state' && e.data.state === 'idle'"
            " && e.id > window.seen.find(x => x.event === 'session_state' && x.data.state === 'hibernated').id)"
        )
        seen = await page.evaluate("window.seen")
        opened = await page.evaluate("window.opened")
        full = await alice.open_stream(session_id, last_event_id=0)
        truth = [await full.next() for _ in range(len(seen))]
        full.close()
    assert opened >= 2  # it did reconnect
    assert [e["id"] for e in seen] == list(range(1, len(seen) + 1))
    assert [(e["id"], e["event"]) for e in seen] == [(e.id, e.name) for e in truth]
    assert any(e["event"] == "permission_cancelled" for e in seen)
    logs = daemon.logs()
    assert "ticket=" not in logs and token not in logs


async def test_another_users_jwt_gets_404_from_the_browser_too(
    browser: Browser, site: int, daemon: Daemon, idp: Idp
) -> None:
    async with api_for(daemon, idp.token("alice")) as alice:
        session_id = await alice.create()
    page = await open_page(browser, f"http://127.0.0.1:{site}")
    bob = idp.token("bob")
    for method, path, body in (
        ("GET", f"/sessions/{session_id}", None),
        ("POST", f"/sessions/{session_id}/input", {"type": "user_message", "content": "hi"}),
        ("POST", f"/sessions/{session_id}/stream-ticket", None),
        ("DELETE", f"/sessions/{session_id}", None),
    ):
        answer = await page.evaluate(
            "([m, url, token, body]) => window.page.call(m, url, token, body)",
            [method, daemon.base_url + path, bob, body],
        )
        # The page can read why it failed: CORS headers come with errors too.
        assert answer == {"status": 404, "body": {"error": {
            "code": "not_found", "message": f"no session {session_id!r}"}}}, (method, path)
    listed = await page.evaluate(
        "([url, token]) => window.page.call('GET', url, token)", [daemon.base_url + "/sessions", bob]
    )
    assert listed["status"] == 200 and listed["body"]["sessions"] == []


async def test_a_page_from_an_origin_not_on_the_list_is_blocked_by_the_browser(
    browser: Browser, site: int, daemon: Daemon, idp: Idp
) -> None:
    # localhost is another origin than 127.0.0.1, though the same server.
    page = await open_page(browser, f"http://localhost:{site}")
    token = idp.token("alice")
    async with api_for(daemon) as admin:
        before = (await admin.request("GET", "/sessions"))[1]["live_sessions"]
        for method, path in (("POST", "/sessions"), ("GET", "/sessions")):
            answer = await page.evaluate(
                "([m, url, token]) => window.page.call(m, url, token, m === 'POST' ? {} : undefined)",
                [method, daemon.base_url + path, token],
            )
            assert "blocked" in answer and "Failed to fetch" in answer["blocked"], answer
        session_id = await admin.create()
        status, ticket, _ = await admin.request("POST", f"/sessions/{session_id}/stream-ticket")
        assert status == 200
        opened = await page.evaluate(
            "url => window.page.tryEventSource(url)",
            f"{daemon.base_url}/sessions/{session_id}/stream?ticket={ticket['ticket']}",
        )
        assert opened == "error"
        # The preflight failed, so the create never reached the daemon.
        assert (await admin.request("GET", "/sessions"))[1]["live_sessions"] == before + 1
    assert json.dumps(ticket["ticket"]) not in daemon.logs()


async def test_a_page_uploads_a_file_to_the_workspace_and_downloads_the_agents_copy(
    browser: Browser, site: int, daemon: Daemon, idp: Idp
) -> None:
    """Workspace files from another origin (DESIGN §13): a File from the page goes in with
    PUT, the CLI copies it with Bash, the page takes the copy away as a Blob."""
    token = idp.token("alice")
    async with api_for(daemon, token) as api:
        session_id = await api.create()
        page = await open_page(browser, f"http://127.0.0.1:{site}")
        async with asyncio.timeout(TIMEOUT_S):
            uploaded = await page.evaluate(
                """async ([base, token, id]) => {
                    const file = new File(["héllo from the page\\n"], "note.txt", {type: "text/plain"});
                    const put = await fetch(`${base}/sessions/${id}/files/in/${file.name}`,
                        {method: "PUT", body: file, headers: {Authorization: `Bearer ${token}`}});
                    return [put.status, await put.json()];
                }""",
                [daemon.base_url, token, session_id],
            )
        assert uploaded == [201, {"path": "in/note.txt", "bytes": len("héllo from the page\n".encode())}]
        assert (daemon.workspace(session_id) / "in" / "note.txt").read_text() == "héllo from the page\n"
        stream = await api.open_stream(session_id)
        await api.say(session_id, "bash: mkdir -p out && cp in/note.txt out/copy.txt")
        request = await stream.until("permission_request", TIMEOUT_S)
        allow = {"type": "permission_response", "correlation_id": request.data["correlation_id"], "behavior": "allow"}
        assert await api.send(session_id, allow) == (204, "")
        await stream.until("result", TIMEOUT_S)
        stream.close()
        async with asyncio.timeout(TIMEOUT_S):
            downloaded = await page.evaluate(
                """async ([base, token, id]) => {
                    const got = await fetch(`${base}/sessions/${id}/files/out/copy.txt`,
                        {headers: {Authorization: `Bearer ${token}`}});
                    const blob = await got.blob();
                    return [got.status, await blob.text(), got.headers.get("Content-Disposition"),
                            got.headers.get("ETag") !== null];
                }""",
                [daemon.base_url, token, session_id],
            )
        assert downloaded == [200, "héllo from the page\n", "attachment; filename*=UTF-8''copy.txt", True]
