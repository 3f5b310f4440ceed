"""Usage and budgets per principal (DESIGN §13), black box: the real CLI, sandboxed, reaches
the stand-in model through the daemon's gateway; the stand-in reports different figures
in every response (and records them), so the daemon's sums can be checked against what
was actually served, per session, per principal per day, and in the metrics. Budgets are
crossed mid-turn (a tool-using turn of two model requests, the second refused) and at
input; totals and blocks survive a restart; other principals are untouched."""

from __future__ import annotations

import asyncio
import datetime
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent_webkitd.usage.ledger import REFRESH_S
from tests.conftest import TOKEN, Daemon, api_for, processes_with_mark
from tests.standin.fake_model import fetch_requests
from tests.standin.fixtures import fake_model_url
from tests.test_sandbox import ALICE_TOKEN, BOB_TOKEN, REAL_KEY, TIMEOUT_S, Agent, sandboxed_config
from tests.wire_client import Api

__all__ = ["fake_model_url"]  # a fixture

KINDS = ("input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
PRICES = {"claude": {"input": 3.0, "output": 15.0, "cache_write": 3.75, "cache_read": 0.3}}


async def start_metered(start_daemon: Callable[..., Any], model_url: str, tmp_path: Path,
                        name: str = "daemon0", **sections: Any) -> Daemon:
    """The product's defaults (SQLite, sandbox, gateway) with alice and bob, plus `sections`."""
    workdir = tmp_path / name
    (workdir / "run").mkdir(parents=True, exist_ok=True)
    config = sandboxed_config(model_url, workdir)
    for section, values in sections.items():
        config[section] = {**config.get(section, {}), **values} if isinstance(values, dict) else values
    env = {"ANTHROPIC_API_KEY": REAL_KEY, "ALICE_TOKEN": ALICE_TOKEN, "BOB_TOKEN": BOB_TOKEN,
           "RUNTIME_DIRECTORY": str(workdir / "run")}
    daemon: Daemon = await start_daemon(config, env=env)
    return daemon


def served(requests: list[dict[str, Any]]) -> dict[str, int]:
    """What the stand-in reported over these requests: the four counts and requests."""
    answered = [r for r in requests if r["path"].startswith("/v1/messages?") and "usage" in r]
    totals = {kind: sum(r["usage"][kind] for r in answered) for kind in KINDS}
    return {**totals, "requests": len(answered)}


def counts(usage: dict[str, Any]) -> dict[str, int]:
    return {k: usage[k] for k in (*KINDS, "requests")}


def usd(usage: dict[str, int]) -> float:
    price = PRICES["claude"]
    return (usage["input_tokens"] * price["input"] + usage["output_tokens"] * price["output"]
            + usage["cache_creation_input_tokens"] * price["cache_write"]
            + usage["cache_read_input_tokens"] * price["cache_read"]) / 1e6


async def usage_rows(api: Api, query: str = "") -> list[dict[str, Any]]:
    status, body, _ = await api.request("GET", f"/usage{query}")
    assert status == 200, body
    rows: list[dict[str, Any]] = body["usage"]
    return rows


async def session_usage(api: Api, session_id: str) -> dict[str, Any]:
    status, body, _ = await api.request("GET", f"/sessions/{session_id}")
    assert status == 200, body
    usage: dict[str, Any] = body["usage"]
    return usage


def metric(text: str, name: str, **labels: str) -> float:
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    total = 0.0
    for line in text.splitlines():
        match = re.match(rf"{name}{{(.*)}} (\S+)$", line)
        if match and ",".join(sorted(match.group(1).split(","))) == wanted:
            total += float(match.group(2))
    return total


async def test_usage_is_what_the_model_served_per_session_and_per_principal_and_survives_a_restart(
    start_daemon: Callable[..., Any], fake_model_url: str, tmp_path: Path,
) -> None:
    daemon = await start_metered(start_daemon, fake_model_url, tmp_path, usage={"prices": PRICES})
    today = datetime.datetime.now(datetime.UTC).date().isoformat()
    async with asyncio.timeout(TIMEOUT_S), api_for(daemon, ALICE_TOKEN) as alice_api, \
            api_for(daemon, BOB_TOKEN) as bob_api, api_for(daemon, TOKEN) as admin:
        alice = await Agent.open(alice_api)
        await alice.turn("hello there")
        first = await alice.stream.until("usage", 10)  # right after the turn's result
        assert alice.stream.events[-2].name == "result"
        after_first = served(await fetch_requests(fake_model_url))
        assert after_first["requests"] >= 1
        assert counts(first.data) == after_first
        await alice.bash("echo tool turn")  # two model requests: the tool call, the answer
        second = await alice.stream.until("usage", 10)
        alice_served = served(await fetch_requests(fake_model_url))
        assert alice_served["requests"] >= after_first["requests"] + 2
        assert counts(second.data) == alice_served
        assert abs(second.data["usd"] - usd(alice_served)) < 1e-6

        bob = await Agent.open(bob_api)
        await bob.turn("bob says hi")
        everything = served(await fetch_requests(fake_model_url))
        bob_served = {k: everything[k] - alice_served[k] for k in everything}

        assert counts(await session_usage(alice_api, alice.id)) == alice_served
        assert counts(await session_usage(bob_api, bob.id)) == bob_served
        [alice_day] = await usage_rows(alice_api)
        assert (alice_day["principal"], alice_day["day"]) == ("token:alice", today)
        assert counts(alice_day) == alice_served
        assert [r["principal"] for r in await usage_rows(bob_api)] == ["token:bob"]
        status, body, _ = await bob_api.request("GET", "/usage?principal=token:alice")
        assert (status, body["error"]["code"]) == (403, "forbidden")
        assert {r["principal"] for r in await usage_rows(admin)} == {"token:alice", "token:bob"}
        [only] = await usage_rows(admin, "?principal=token:bob")
        assert counts(only) == bob_served
        assert await usage_rows(admin, "?since=2020-01-01&until=2020-01-31") == []
        assert await usage_rows(admin, "?since=2026-02-01&until=2026-01-01") == []
        for bad in ("?since=yesterday", "?since=2026-13-01", "?until=12/05/2026"):
            status, body, _ = await admin.request("GET", f"/usage{bad}")
            assert (status, body["error"]["code"]) == (400, "bad_date"), bad

        metrics = await (await admin.http.get(daemon.base_url + "/metrics", headers=admin.headers())).text()
        assert metric(metrics, "agent_webkit_model_tokens_total", principal="token:alice",
                      kind="cache_read") == alice_served["cache_read_input_tokens"]
        assert metric(metrics, "agent_webkit_model_tokens_total", principal="token:bob",
                      kind="input") == bob_served["input_tokens"]
        assert metric(metrics, "agent_webkit_model_requests_total", status="200") >= everything["requests"]

    assert await daemon.stop() == 0
    await daemon.start()
    async with asyncio.timeout(TIMEOUT_S), api_for(daemon, ALICE_TOKEN) as alice_api:
        assert counts(await session_usage(alice_api, alice.id)) == alice_served
        [alice_day] = await usage_rows(alice_api)
        assert counts(alice_day) == alice_served
        assert abs(alice_day["usd"] - usd(alice_served)) < 1e-6


async def state_of(api: Api, session_id: str) -> str:
    status, body, _ = await api.request("GET", f"/sessions/{session_id}")
    assert status == 200, body
    return str(body["state"])


async def until_state(api: Api, session_id: str, state: str) -> None:
    while await state_of(api, session_id) != state:  # noqa: ASYNC110 - polling a remote server
        await asyncio.sleep(0.1)


async def cli_processes(daemon: Daemon, expected: int) -> None:
    """Wait until exactly `expected` CLI processes of this daemon run (counted in /proc)."""
    while len(processes_with_mark(daemon.mark)) != expected:  # noqa: ASYNC110 - polling /proc
        await asyncio.sleep(0.1)


async def test_a_principal_at_its_share_of_live_agents_hibernates_its_own_and_waits_for_its_own(
    start_daemon: Callable[..., Any], fake_model_url: str, tmp_path: Path,
) -> None:
    daemon = await start_metered(start_daemon, fake_model_url, tmp_path,
                                 sessions={"max_live_agents_per_principal": 2, "hibernate_after_s": 0})
    async with asyncio.timeout(TIMEOUT_S), api_for(daemon, ALICE_TOKEN) as alice_api, \
            api_for(daemon, BOB_TOKEN) as bob_api, api_for(daemon, TOKEN) as admin:
        a1, a2 = await Agent.open(alice_api), await Agent.open(alice_api)
        b1 = await Agent.open(bob_api)
        await cli_processes(daemon, 3)
        a3 = await Agent.open(alice_api)  # at her share: her least recently used one goes
        await until_state(alice_api, a1.id, "hibernated")
        await cli_processes(daemon, 3)
        assert [await state_of(alice_api, a.id) for a in (a2, a3)] == ["idle", "idle"]
        assert await state_of(bob_api, b1.id) == "idle"
        listing = (await admin.request("GET", "/sessions"))[1]
        assert listing["agents_by_principal"] == {
            "token:alice": {"live_agents": 2, "waiting_for_agent": 0},
            "token:bob": {"live_agents": 1, "waiting_for_agent": 0}}

        # Her wake waits for her own share: a2, her least recently used, hibernates for it.
        await a1.turn("wake up")
        assert await state_of(alice_api, a2.id) == "hibernated"
        assert await state_of(bob_api, b1.id) == "idle"
        await cli_processes(daemon, 3)

        # Both of her CLIs busy: a create of hers is 429, bob's goes through.
        await alice_api.say(a1.id, "slow one")
        await alice_api.say(a3.id, "slow two")
        await until_state(alice_api, a1.id, "running")
        await until_state(alice_api, a3.id, "running")
        status, body, headers = await alice_api.request("POST", "/sessions", {})
        assert (status, body["error"]["code"], headers["Retry-After"]) == (429, "principal_at_capacity", "2")
        b2 = await Agent.open(bob_api)
        await cli_processes(daemon, 4)
        for agent in (a1, a3):
            await agent.stream.until("result", 30)
        assert await state_of(bob_api, b2.id) == "idle"
        await Agent.open(alice_api)  # her turns are over: one of hers makes room again


BUDGET = [{"principal": "token:alice", "tokens_per_day": 1000}]


def seconds_to_midnight() -> float:
    now = datetime.datetime.now(datetime.UTC)
    midnight = datetime.datetime.combine(now.date() + datetime.timedelta(days=1), datetime.time(),
                                         datetime.UTC)
    return (midnight - now).total_seconds()


async def refused_input(api: Api, session_id: str) -> dict[str, Any]:
    status, body, headers = await api.request(
        "POST", f"/sessions/{session_id}/input", {"type": "user_message", "content": "more please"})
    assert (status, body["error"]["code"]) == (429, "budget_exceeded"), body
    assert abs(int(headers["Retry-After"]) - seconds_to_midnight()) < 30
    tomorrow = datetime.datetime.now(datetime.UTC).date() + datetime.timedelta(days=1)
    assert body["error"]["resets_at"] == f"{tomorrow.isoformat()}T00:00:00+00:00"
    error: dict[str, Any] = body["error"]
    return error


async def test_a_turn_crossing_its_budget_ends_after_the_request_in_flight_and_input_is_refused(
    start_daemon: Callable[..., Any], fake_model_url: str, tmp_path: Path,
) -> None:
    daemon = await start_metered(start_daemon, fake_model_url, tmp_path, budgets=BUDGET)
    async with asyncio.timeout(TIMEOUT_S), api_for(daemon, ALICE_TOKEN) as alice_api, \
            api_for(daemon, BOB_TOKEN) as bob_api, api_for(daemon, TOKEN) as admin:
        alice = await Agent.open(alice_api)
        await alice.turn("hello, spend 300")  # under budget: 300 input + the rest
        # A tool-using turn: its first model request (1,000+ tokens) crosses the line, the
        # tool runs, the next model request is refused by the gateway and the turn ends.
        await alice.api.say(alice.id, "bash: echo crossed # spend 1000")
        await alice.api.say(alice.id, "queued behind the crossing turn")  # accepted: not over yet
        tool_results = []
        while (event := await alice.stream.next(60)).name != "result":
            if event.name == "permission_request":
                allow = {"type": "permission_response", "behavior": "allow",
                         "correlation_id": event.data["correlation_id"]}
                assert await alice_api.send(alice.id, allow) == (204, "")
            elif event.name == "tool_result":
                tool_results.append(event.data)
        assert "crossed" in str(tool_results[0]["output"])
        # The CLI ends the turn with its own error result, which says why.
        assert event.data["is_error"] and "budget_exceeded" in event.data["result"]
        names = [e.name for e in alice.stream.events]
        [error] = [e.data for e in alice.stream.events if e.name == "error"]
        assert error["code"] == "budget_exceeded" and error["limit"] == "tokens_per_day"
        tomorrow = datetime.datetime.now(datetime.UTC).date() + datetime.timedelta(days=1)
        assert error["resets_at"] == f"{tomorrow.isoformat()}T00:00:00+00:00"
        [discarded] = [e.data for e in alice.stream.events if e.name == "input_discarded"]
        assert discarded == {"messages": [{"content": "queued behind the crossing turn"}]}
        assert names.index("error") < len(names) - 1  # then the CLI's own end of the turn
        await alice.stream.until("usage", 10)

        # The refused request never reached the model, and the CLI did not retry it.
        await asyncio.sleep(3)
        requests = await fetch_requests(fake_model_url)
        crossing = [r for r in requests if r["path"].startswith("/v1/messages?")
                    and "spend 1000" in str(r["body"])]
        assert len(crossing) == 1, [r["path"] for r in crossing]
        assert daemon.logs().count('"model_request_refused"') == 1
        assert "queued behind" not in str(requests)
        metrics = await (await admin.http.get(daemon.base_url + "/metrics", headers=admin.headers())).text()
        assert metric(metrics, "agent_webkit_model_requests_total", status="429") == 1

        # Over budget: input is refused with nothing queued; the overshoot is one request.
        before = len(alice.stream.events)
        await refused_input(alice_api, alice.id)
        [day] = await usage_rows(alice_api)
        assert 1000 <= day["input_tokens"] + day["output_tokens"] + day["cache_creation_input_tokens"] \
            + day["cache_read_input_tokens"] < 1000 + 300 + 2 * 1300
        await asyncio.sleep(0.5)
        assert [e.name for e in alice.stream.events[before:]] == []
        assert (await alice_api.request("POST", "/sessions", {}))[0] == 200  # a create spends nothing

        # Bob has no budget: untouched.
        bob = await Agent.open(bob_api)
        await bob.bash("echo bob works")

    assert await daemon.stop() == 0
    await daemon.start()
    async with asyncio.timeout(TIMEOUT_S), api_for(daemon, ALICE_TOKEN) as alice_api:
        await refused_input(alice_api, alice.id)  # the block outlives the process


async def test_postgres_keeps_usage_and_budgets_across_a_failover(
    start_daemon: Callable[..., Any], fake_model_url: str, tmp_path: Path, pg_dsn: str,
) -> None:
    store = {"backend": "postgres", "dsn": pg_dsn, "lease_s": 60}  # the port refuses: claimed at once
    first = await start_metered(start_daemon, fake_model_url, tmp_path, "host-a", store=store,
                                budgets=BUDGET)
    second = await start_metered(start_daemon, fake_model_url, tmp_path, "host-b", store=store,
                                 budgets=BUDGET)
    async with asyncio.timeout(TIMEOUT_S), api_for(first, ALICE_TOKEN) as on_a, \
            api_for(second, ALICE_TOKEN) as on_b, api_for(second, BOB_TOKEN) as bob_on_b:
        alice = await Agent.open(on_a)
        await alice.turn("hello from host a, spend 1000")  # over her budget after this one
        await alice.stream.until("usage", 10)
        spent = served(await fetch_requests(fake_model_url))
        assert counts(await session_usage(on_a, alice.id)) == spent
        first.kill()
        await asyncio.sleep(REFRESH_S + 1)  # host b re-reads the month's spending meanwhile

        assert counts(await session_usage(on_b, alice.id)) == spent  # claimed with its totals
        [day] = await usage_rows(on_b)
        assert counts(day) == spent
        await refused_input(on_b, alice.id)  # spent on host a, refused on host b
        bob = await Agent.open(bob_on_b)
        await bob.turn("bob on host b")
