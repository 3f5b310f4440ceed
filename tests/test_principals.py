"""Principals and ownership, black box: static tokens and JWTs from a local identity
provider, each trying to read, drive, list and ticket the others' sessions.

A session belongs to the principal that created it. To anyone else who is not an admin
it does not exist: every route answers exactly what an unknown id gets.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import TOKEN, Daemon, api_for
from tests.standin.idp import Idp, idp, jwt_config
from tests.test_pg_store import pg_overrides

__all__ = ["idp"]  # imported for pytest: it is a fixture
from tests.wire_client import Api, StreamRefused

BOT_TOKEN = "bot-token-aaaaaaaaaaaaaaaa"
BOT_TOKEN_NEXT = "bot-token-bbbbbbbbbbbbbbbb"
OPS_TOKEN = "ops-token-cccccccccccccccc"
UNKNOWN_ID = "00000000-0000-4000-8000-000000000000"


def auth_overrides(idp: Idp, **jwt_extra: Any) -> dict[str, dict[str, Any]]:
    return {
        "auth": {
            "stream_ticket_ttl_s": 2,
            "tokens": [
                {"name": "ci-bot", "env": "BOT_TOKEN"},
                {"name": "ci-bot", "env": "BOT_TOKEN_NEXT"},  # rotation: two tokens, one principal
                {"name": "ops", "env": "OPS_TOKEN", "admin": True},
            ],
            "jwt": jwt_config(idp, **jwt_extra),
        }
    }


TICKET_KEY = "ticket-key-dddddddddddddddd"
AUTH_ENV = {
    "BOT_TOKEN": BOT_TOKEN,
    "BOT_TOKEN_NEXT": BOT_TOKEN_NEXT,
    "OPS_TOKEN": OPS_TOKEN,
    "AGENT_WEBKIT_TICKET_KEY": TICKET_KEY,
}


@pytest.fixture
async def users(start_daemon: Callable[..., Any], idp: Idp) -> Daemon:
    daemon: Daemon = await start_daemon(auth_overrides(idp, admin_scope="agents:admin"), AUTH_ENV)
    return daemon


async def every_route(api: Api, session_id: str) -> list[tuple[str, int, Any]]:
    """Each session route as `api`'s principal: (route, status, body)."""
    out = []
    for method, path, body, headers in (
        ("GET", "", None, None),
        ("GET", "/stream", None, None),
        ("GET", "/stream", None, {"Last-Event-ID": "not-a-number"}),  # 400 for the owner
        ("GET", "/stream", None, {"Last-Event-ID": "999999"}),  # 412 for the owner
        ("POST", "/input", {"type": "user_message", "content": "hi"}, None),
        ("POST", "/input", {"type": "permission_response", "correlation_id": "x", "behavior": "allow"}, None),
        ("POST", "/input", {"type": "bogus"}, None),
        ("POST", "/stream-ticket", None, None),
        ("DELETE", "", None, None),
    ):
        status, payload, _ = await api.request(method, f"/sessions/{session_id}{path}", body, headers=headers)
        out.append((f"{method} {path or '/'} {headers or ''}", status, payload))
    return out


def not_found_body(session_id: str) -> dict[str, Any]:
    return {"error": {"code": "not_found", "message": f"no session {session_id!r}"}}


async def test_another_principals_session_is_indistinguishable_from_an_unknown_id(
    users: Daemon, idp: Idp
) -> None:
    async with api_for(users, BOT_TOKEN) as bot, api_for(users, idp.token("alice")) as alice, \
            api_for(users, idp.token("bob", alg="ES256")) as bob:
        session_id = await alice.create()
        for intruder in (bot, bob):
            theirs = await every_route(intruder, session_id)
            unknown = await every_route(intruder, UNKNOWN_ID)
            for (route, status, body), (_, unknown_status, unknown_body) in zip(theirs, unknown, strict=True):
                assert status == unknown_status == 404, (route, status, body)
                assert body == not_found_body(session_id), route
                assert unknown_body == not_found_body(UNKNOWN_ID), route
        # Nothing the intruders did reached the session: it is alive, untouched, alice's.
        status, info, _ = await alice.request("GET", f"/sessions/{session_id}")
        assert status == 200 and info["owner"] == "jwt:alice" and info["last_seq"] <= 2, info
        # The owner gets the real answers on the same routes.
        stream = await alice.open_stream(session_id)
        assert (await stream.next()).name == "session_ready"
        stream.close()
        with pytest.raises(StreamRefused) as refused:
            await alice.open_stream(session_id, last_event_id="not-a-number")
        assert refused.value.status == 400
        with pytest.raises(StreamRefused) as refused:
            await alice.open_stream(session_id, last_event_id=999999)
        assert refused.value.status == 412
        assert await alice.delete(session_id) == 204


async def test_listing_shows_your_own_sessions_and_admins_see_all(users: Daemon, idp: Idp) -> None:
    async with api_for(users, BOT_TOKEN) as bot, api_for(users, BOT_TOKEN_NEXT) as bot_next, \
            api_for(users, idp.token("alice")) as alice, api_for(users) as admin, \
            api_for(users, OPS_TOKEN) as ops, \
            api_for(users, idp.token("carol", scope="openid agents:admin")) as carol:
        mine = {await alice.create() for _ in range(2)}
        bots = {await bot.create(), await bot_next.create()}  # either token: one principal

        async def listed(api: Api, query: str = "") -> tuple[set[str], dict[str, Any]]:
            status, body, _ = await api.request("GET", f"/sessions{query}")
            assert status == 200, body
            return {s["session_id"] for s in body["sessions"]}, body

        ids, body = await listed(alice)
        assert ids == mine and "live_sessions" not in body  # no host-wide counts for users
        assert {s["owner"] for s in body["sessions"]} == {"jwt:alice"}
        assert (await listed(bot))[0] == bots == (await listed(bot_next))[0]
        assert (await listed(alice, "?owner=token:ci-bot"))[0] == mine  # ignored for a user
        for an_admin in (admin, ops, carol):  # the admin token, an admin token, an admin JWT
            ids, body = await listed(an_admin)
            assert ids == mine | bots and body["live_sessions"] == 4
            assert (await listed(an_admin, "?owner=token:ci-bot"))[0] == bots
            assert (await listed(an_admin, "?owner=jwt:alice"))[0] == mine
        # An admin may drive any session; the session stays its owner's.
        some = next(iter(mine))
        status, info, _ = await carol.request("GET", f"/sessions/{some}")
        assert status == 200 and info["owner"] == "jwt:alice"
        assert await ops.delete(some) == 204
        assert (await listed(alice))[0] == mine - {some}
    metrics = await scrape(users)
    assert 'agent_webkit_sessions_created_total{principal="jwt:alice"} 2' in metrics
    assert 'agent_webkit_sessions_created_total{principal="token:ci-bot"} 2' in metrics


async def scrape(daemon: Daemon) -> str:
    async with aiohttp.ClientSession() as http, http.get(daemon.base_url + "/metrics") as resp:
        return await resp.text()


def bad_tokens(idp: Idp) -> dict[str, str]:
    hidden_kid = idp.add_key("RS256", publish=False)  # a key the provider never published
    good = idp.token("mallory")
    return {
        "expired": idp.token("mallory", exp_in=-5),
        "wrong issuer": idp.token("mallory", iss="https://evil.test/"),
        "wrong audience": idp.token("mallory", aud="another-service"),
        "alg none": idp.unsigned("mallory"),
        "HS256 signed with the public key": idp.hs256_with_public_key("mallory"),
        "unknown kid": idp.token("mallory", kid=hidden_kid),
        "jku pointing at the attacker's key": idp.token(
            "mallory", kid=hidden_kid, headers={"jku": f"{idp.url}/evil.json"}
        ),
        "no kid": idp.token("mallory", drop=("kid",)),
        "no exp": idp.token("mallory", drop=("exp",)),
        "no sub": idp.token("mallory", drop=("sub",)),
        "no aud": idp.token("mallory", drop=("aud",)),
        "no iss": idp.token("mallory", drop=("iss",)),
        "bad signature": good[:-8] + ("AAAAAAAA" if not good.endswith("AAAAAAAA") else "BBBBBBBB"),
        "a stream ticket as a bearer token": "",  # filled in by the test
        "Basic scheme": "",
    }


async def test_bad_tokens_get_401_and_reach_nothing(users: Daemon, idp: Idp) -> None:
    async with api_for(users, idp.token("alice")) as alice:
        session_id = await alice.create()
        status, ticket, _ = await alice.request("POST", f"/sessions/{session_id}/stream-ticket")
        assert status == 200
    tokens = bad_tokens(idp)
    tokens["a stream ticket as a bearer token"] = ticket["ticket"]
    for name, token in tokens.items():
        async with api_for(users, token or None) as mallory:
            for method, path in (
                ("POST", "/sessions"), ("GET", "/sessions"), ("GET", f"/sessions/{session_id}"),
                ("GET", f"/sessions/{session_id}/stream"), ("DELETE", f"/sessions/{session_id}"),
            ):
                headers = {"Authorization": "Basic YWxpY2U6cGFzcw=="} if name == "Basic scheme" else None
                status, body, answer = await mallory.request(method, path, headers=headers)
                assert status == 401, (name, method, path, body)
                assert body["error"]["code"] == "unauthorized", name
                assert answer["WWW-Authenticate"] == "Bearer", name
    async with api_for(users, idp.token("alice")) as alice:  # untouched
        status, info, _ = await alice.request("GET", f"/sessions/{session_id}")
        assert status == 200 and info["state"] == "idle"
    assert "mallory" not in users.logs()
    metrics = await scrape(users)
    for reason in ("expired", "invalid", "algorithm", "unknown_key", "no_kid", "bad_token"):
        assert f'agent_webkit_auth_failures_total{{reason="{reason}"}}' in metrics, reason


async def test_jwks_is_refetched_for_an_unknown_kid_at_most_every_30_s_and_cached_keys_never_wait(
    users: Daemon, idp: Idp
) -> None:
    async with api_for(users, idp.token("alice")) as alice:
        assert (await alice.request("GET", "/sessions"))[0] == 200
    fetches = idp.fetches
    # A key the daemon has not seen: one refetch, then it is known.
    rotated = idp.rotate()
    async with api_for(users, idp.token("alice", kid=rotated)) as alice:
        assert (await alice.request("GET", "/sessions"))[0] == 200
    assert idp.fetches == fetches + 1
    # Unknown kids in a burst: no more fetches within 30 s of the last one.
    hidden = idp.add_key("RS256", publish=False)
    async with api_for(users, idp.token("mallory", kid=hidden)) as mallory:
        answers = await asyncio.gather(*(mallory.request("GET", "/sessions") for _ in range(20)))
    assert {status for status, _, _ in answers} == {401}
    assert idp.fetches == fetches + 1
    # The provider hangs: a token whose key is cached is answered at once.
    idp.mode = "hang"
    async with api_for(users, idp.token("alice", alg="ES256")) as alice:
        started = time.monotonic()
        for _ in range(20):
            assert (await alice.request("GET", "/sessions"))[0] == 200
        assert time.monotonic() - started < 2.0


async def test_last_good_keys_are_kept_while_the_provider_is_down(
    start_daemon: Callable[..., Any], idp: Idp
) -> None:
    daemon: Daemon = await start_daemon(auth_overrides(idp), AUTH_ENV)
    async with api_for(daemon, idp.token("alice")) as alice:
        assert (await alice.request("GET", "/sessions"))[0] == 200
        idp.mode = "error"
        hidden = idp.add_key("RS256", publish=False)
        async with api_for(daemon, idp.token("mallory", kid=hidden)) as mallory:
            assert (await mallory.request("GET", "/sessions"))[0] == 401  # triggers a failed fetch
        assert (await alice.request("GET", "/sessions"))[0] == 200
        async with api_for(daemon, idp.token("dave", alg="ES256")) as dave:  # cached key, new user
            assert (await dave.request("GET", "/sessions"))[0] == 200
    assert '"event": "jwks_fetch_failed"' in daemon.logs()


async def test_a_stream_ticket_opens_that_sessions_stream_only_until_it_expires(
    users: Daemon, idp: Idp
) -> None:
    async with api_for(users, idp.token("alice")) as alice, api_for(users, None) as anonymous:
        session_id = await alice.create()
        other_id = await alice.create()
        status, body, headers = await alice.request("POST", f"/sessions/{session_id}/stream-ticket")
        assert status == 200 and body["expires_in"] == 2
        assert headers["Cache-Control"] == "no-store" and headers["Referrer-Policy"] == "no-referrer"
        ticket = body["ticket"]
        query = f"?ticket={ticket}"
        # Reusable (EventSource reconnects with Last-Event-ID), read only, no header needed.
        for cursor in (None, 1):
            stream = await anonymous.open_stream(session_id, last_event_id=cursor, query=query)
            assert stream.response.headers["Cache-Control"] == "no-store"
            assert stream.response.headers["Referrer-Policy"] == "no-referrer"
            if cursor is None:
                assert (await stream.next()).name == "session_ready"
            stream.close()
        await alice.say(session_id, "hello")
        for method, path, body in (
            ("GET", f"/sessions/{other_id}/stream", None),  # another session of the same owner
            ("GET", f"/sessions/{session_id}", None),
            ("POST", f"/sessions/{session_id}/input", {"type": "interrupt"}),
            ("POST", f"/sessions/{session_id}/stream-ticket", None),
            ("DELETE", f"/sessions/{session_id}", None),
            ("GET", "/sessions", None),
        ):
            status, answer, headers = await anonymous.request(method, path + query, body)
            assert status == 401, (method, path, answer)
            assert headers["Cache-Control"] == "no-store"
        # A forged one (signed with another key) and, after 2 s, the real one: 401.
        forged = ticket[: ticket.rindex(".")] + ".AAAA"
        with pytest.raises(StreamRefused) as refused:
            await anonymous.open_stream(session_id, query=f"?ticket={forged}")
        assert refused.value.status == 401
        await asyncio.sleep(2.5)
        with pytest.raises(StreamRefused) as refused:
            await anonymous.open_stream(session_id, query=query)
        assert refused.value.status == 401
        # A ticket for a session you may not see is never issued.
        async with api_for(users, idp.token("bob")) as bob:
            status, _, _ = await bob.request("POST", f"/sessions/{session_id}/stream-ticket")
            assert status == 404
    logs = users.logs()
    assert ticket not in logs and "ticket=" not in logs
    assert '"principal": "jwt:alice"' in logs


async def test_logs_carry_principals_and_never_tokens(users: Daemon, idp: Idp) -> None:
    jwt_token = idp.token("alice")
    async with api_for(users, jwt_token) as alice, api_for(users, BOT_TOKEN) as bot, \
            api_for(users, "wrong-token-zzzzzzzz") as wrong:
        session_id = await alice.create()
        await alice.say(session_id, "hello")
        await bot.create()
        assert (await wrong.request("GET", "/sessions"))[0] == 401
    logs = users.logs()
    for secret in (jwt_token, BOT_TOKEN, BOT_TOKEN_NEXT, OPS_TOKEN, "wrong-token-zzzzzzzz", jwt_token.split(".")[2]):
        assert secret not in logs
    created = [json.loads(line) for line in logs.splitlines() if '"session_created"' in line]
    assert {c["owner"] for c in created} == {"jwt:alice", "token:ci-bot"}
    # The CLI processes (and the tools they run) never see a token or the ticket key.
    pids = users.orphans()  # the live CLI processes
    assert len(pids) == 2
    for pid in pids:
        environ = Path(f"/proc/{pid}/environ").read_bytes()  # noqa: ASYNC240
        for secret in (BOT_TOKEN, BOT_TOKEN_NEXT, OPS_TOKEN, TOKEN, TICKET_KEY):
            assert secret.encode() not in environ


async def test_with_postgres_ownership_holds_after_failover_and_tickets_work_on_any_host(
    pg_dsn: str, start_daemon: Callable[..., Any], tmp_path: Path, idp: Idp
) -> None:
    """The owner is stored with the session: a host that takes it over after its host died
    shows it to the owner only, and a ticket signed by the dead host opens it there."""
    overrides = pg_overrides(pg_dsn, tmp_path, store={"lease_s": 60}, **auth_overrides(idp))
    first: Daemon = await start_daemon(overrides, AUTH_ENV)
    second: Daemon = await start_daemon(overrides, AUTH_ENV)
    async with api_for(first, idp.token("alice")) as alice_a, \
            api_for(second, idp.token("alice")) as alice_b, \
            api_for(second, idp.token("bob")) as bob_b, api_for(second, None) as anonymous_b:
        session_id = await alice_a.create()
        seen = await alice_a.open_stream(session_id)
        await alice_a.say(session_id, "remember the word teapot")
        await seen.until("result")  # committed: the first host published it
        seen.close()
        status, ticket, _ = await alice_a.request("POST", f"/sessions/{session_id}/stream-ticket")
        assert status == 200
        first.kill()
        # Bob's requests must not even move the session: still 404, and nothing claimed.
        for _ in range(2):
            status, body, _ = await bob_b.request("GET", f"/sessions/{session_id}")
            assert (status, body) == (404, not_found_body(session_id))
        claims = [line for line in (await scrape(second)).splitlines()
                  if line.startswith("agent_webkit_sessions_claimed_total")]
        assert claims == [] or claims == ["agent_webkit_sessions_claimed_total 0"], claims
        # The first host's ticket opens the stream on the second (one key, in the environment).
        stream = await anonymous_b.open_stream(session_id, last_event_id=0, query=f"?ticket={ticket['ticket']}")
        replayed = await stream.until("result")
        assert [e.id for e in stream.events] == list(range(1, replayed.id + 1))
        assert stream.events[0].name == "session_ready"
        stream.close()
        status, info, _ = await alice_b.request("GET", f"/sessions/{session_id}")
        assert status == 200 and info["owner"] == "jwt:alice"
        assert [s["session_id"] for s in (await alice_b.request("GET", "/sessions"))[1]["sessions"]] == [session_id]
        assert (await bob_b.request("GET", f"/sessions/{session_id}"))[0] == 404


SHARE_TOKENS = {"auth": {"tokens": [{"name": "alice", "env": "ALICE_TOKEN"}, {"name": "bob", "env": "BOB_TOKEN"}]}}


async def test_a_principal_at_its_share_of_sessions_gets_429_and_nobody_else_does(start_daemon: Any) -> None:
    """[sessions] max_sessions_per_principal (DESIGN §13): concurrent creates count too."""
    daemon = await start_daemon({"sessions": {"max_sessions_per_principal": 2}, **SHARE_TOKENS},
                                env={"ALICE_TOKEN": "alice-share-token", "BOB_TOKEN": "bob-share-token"})
    async with api_for(daemon, "alice-share-token") as alice, api_for(daemon, "bob-share-token") as bob:
        answers = await asyncio.gather(*(alice.request("POST", "/sessions", {}) for _ in range(4)))
        statuses = sorted(status for status, _, _ in answers)
        assert statuses == [200, 200, 429, 429], answers
        refused = next((body, headers) for status, body, headers in answers if status == 429)
        assert refused[0]["error"]["code"] == "principal_at_capacity" and refused[1]["Retry-After"] == "5"
        assert (await bob.request("POST", "/sessions", {}))[0] == 200  # bob has a share of his own
        mine = next(body["session_id"] for status, body, _ in answers if status == 200)
        assert await alice.delete(mine) == 204
        assert (await alice.request("POST", "/sessions", {}))[0] == 200  # room again


async def test_a_shelved_session_is_404_to_others_on_every_route_and_stays_shelved(
    start_daemon: Callable[..., Any], idp: Idp, tmp_path: Path
) -> None:
    # A shelved session is judged from its index entry: another principal's request is
    # refused before anything is loaded from the store (it stays shelved, nothing reaches it).
    from tests.test_shelf import SHELVING, healthz, until_shelved
    from tests.test_sqlite_store import sqlite_overrides

    overrides = {**sqlite_overrides(tmp_path / "sessions.db", **SHELVING), **auth_overrides(idp)}
    daemon = await start_daemon(overrides, AUTH_ENV)
    async with api_for(daemon, OPS_TOKEN) as ops, api_for(daemon, idp.token("alice")) as alice, \
            api_for(daemon, BOT_TOKEN) as bot:
        session_id = await alice.create()
        await until_shelved(ops, 1)
        theirs = await every_route(bot, session_id)
        unknown = await every_route(bot, UNKNOWN_ID)
        for (route, status, body), (_, unknown_status, _) in zip(theirs, unknown, strict=True):
            assert status == unknown_status == 404, (route, status, body)
            assert body == not_found_body(session_id), route
        assert (await healthz(ops))["shelved_sessions"] == 1, "an intruder's request loaded it"
        status, info, _ = await alice.request("GET", f"/sessions/{session_id}")
        assert status == 200 and info["owner"] == "jwt:alice", info
