"""A small local stand-in of the Anthropic Messages API with a scripted model.

The real Claude Code CLI is pointed at it with ``ANTHROPIC_BASE_URL`` so that
end-to-end tests run real tools offline; only the model is fake. Replies are
decided from the last user message of each request (see ``script_reply``).

The daemon's artefact tools are MCP tools, which the real CLI offers as deferred
tools: their schemas are sent only after the model has asked for them with
``ToolSearch`` ("select:<name>"). So a keyword that calls one ("make artefact <title>",
"make <n>-byte artefact <title>", "update artefact <id> <text>", "read artefact <id>")
first replies with that
ToolSearch call while the tool is missing from the request's ``tools``, then calls
the tool on the next request.

Run it alone with ``python -m tests.standin.fake_model --port 0``, or in a test
with ``async with run_fake_model() as base_url: ...``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import logging
import re
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

log = logging.getLogger("fake_model")

DEFAULT_MODEL = "claude-opus-5-5"
# "spend <n>" in a user message: every response of that conversation reports n input
# tokens (budgets are tested with known figures). Otherwise each response reports figures
# of its own, from the request's number, so sums say whether every response was counted.
_SPEND_RE = re.compile(r"\bspend (\d+)\b")

ASK_INPUT: dict[str, Any] = {
    "questions": [
        {
            "question": "Which color?",
            "header": "Color",
            "multiSelect": False,
            "options": [
                {"label": "Red", "description": "warm"},
                {"label": "Blue", "description": "cool"},
            ],
        }
    ]
}
SLOW_DELTAS = 40
SLOW_DELAY_S = 0.1

_REMINDER_RE = re.compile(r"<system-reminder>.*?</system-reminder>", re.DOTALL)
# The CLI's environment section (a role "system" message), e.g.
# " - Primary working directory: /tmp/x"; the path runs to the end of the line.
_CWD_RE = re.compile(r"working directory: *(.+?) *$", re.IGNORECASE | re.MULTILINE)
# AskUserQuestion's tool_result text: ... "Which color?"="Blue" ...
_ANSWER_RE = re.compile(r'"([^"]*)"="([^"]*)"')
# "render <component> <json object>": call the generative-UI tool of that component.
_RENDER_RE = re.compile(r"render ([A-Za-z0-9_-]+) (.+)", re.DOTALL)
GENUI_PREFIX = "mcp__genui__render_"
ARTEFACT_TOOL = "mcp__artefacts__{}"
TOOL_SEARCH = "ToolSearch"


@dataclass
class Text:
    text: str
    delay_s: float = 0.0  # pause before each streamed delta


@dataclass
class ToolUse:
    id: str
    name: str
    input: dict[str, Any]


Block = Text | ToolUse


@dataclass
class Reply:
    blocks: list[Block]
    stop_reason: str


@dataclass
class FakeModel:
    """State of one stand-in server: id counter and every request it received."""

    requests: list[dict[str, Any]] = field(default_factory=list)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def next_id(self, prefix: str) -> str:
        # One counter for messages and tool uses, as in the recorded frames
        # (toolu_fake001 then msg_fake002).
        return f"{prefix}_fake{next(self._ids):03d}"


MODEL_KEY = web.AppKey("fake_model", FakeModel)


# --- reading the request -------------------------------------------------------


def _blocks(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if isinstance(content, list):
        return [b for b in content if isinstance(b, dict)]
    return []


def user_text(message: dict[str, Any]) -> str:
    """The text the user typed, without the CLI's injected <system-reminder>s."""
    parts = []
    for block in _blocks(message.get("content")):
        if block.get("type") == "text":
            text = _REMINDER_RE.sub("", str(block.get("text", ""))).strip()
            if text:
                parts.append(text)
    return "\n".join(parts)


def _system_text(body: dict[str, Any]) -> str:
    system = body.get("system")
    if isinstance(system, str):
        return system
    return "\n".join(str(b.get("text", "")) for b in _blocks(system))


def find_cwd(body: dict[str, Any]) -> str | None:
    """The session's cwd as the CLI tells the model (system prompt or messages)."""
    texts = [_system_text(body)]
    for message in body.get("messages", []):
        texts += [str(b.get("text", "")) for b in _blocks(message.get("content"))]
    for text in texts:
        match = _CWD_RE.search(text)
        if match:
            return match.group(1)
    return None


def _tool_name(messages: list[dict[str, Any]], tool_use_id: str) -> str | None:
    for message in messages:
        for block in _blocks(message.get("content")):
            if block.get("type") == "tool_use" and block.get("id") == tool_use_id:
                return str(block.get("name"))
    return None


def render_request(users: list[dict[str, Any]]) -> tuple[str, dict[str, Any]] | None:
    """The (tool name, input) the user's latest typed message asks to render, if it does.

    Messages that carry tool results are not typed ones (the CLI adds a "Tool loaded."
    text to a ToolSearch result)."""
    for message in reversed(users):
        blocks = _blocks(message.get("content"))
        if any(b.get("type") == "tool_result" for b in blocks) or not user_text(message):
            continue
        match = _RENDER_RE.fullmatch(user_text(message))
        if match is None:
            return None
        try:
            arguments = json.loads(match[2])
        except ValueError:
            return None
        return (f"{GENUI_PREFIX}{match[1]}", arguments) if isinstance(arguments, dict) else None
    return None


def _result_text(block: dict[str, Any]) -> str:
    content = block.get("content")
    if isinstance(content, str):
        return content
    return " ".join(str(b.get("text", "")) for b in _blocks(content))


# --- the scripted model --------------------------------------------------------


_SIZED_RE = re.compile(r"make (\d+)-byte artefact (.+)", re.IGNORECASE)


def artefact_call(text: str) -> tuple[str, dict[str, Any]] | None:
    """The artefact tool a user's words ask for, and its input."""
    sized = _SIZED_RE.fullmatch(text)
    if sized:  # code of exactly that many bytes, a newline every 6 (escaped on the wire)
        size, title = int(sized.group(1)), sized.group(2)
        content = ("x = 1\n" * (size // 6 + 1))[:size]
        return "create_artefact", {"title": title, "kind": "text/code", "content": content}
    words = text.split(maxsplit=3)
    if len(words) < 3 or words[1].lower() != "artefact":
        return None
    verb, rest = words[0].lower(), text.split(maxsplit=2)[2]
    if verb == "make":
        content = f"# {rest}\n\nThe first draft.\n"
        return "create_artefact", {
            "title": rest,
            "kind": "text/markdown",
            "content": content,
            "summary": "first draft",
        }
    if verb == "update" and len(words) == 4:
        return "update_artefact", {"artefact_id": words[2], "content": words[3], "summary": "revised"}
    if verb == "read":
        return "read_artefact", {"artefact_id": words[2]}
    return None


def _has_tool_result(message: dict[str, Any]) -> bool:
    return any(b.get("type") == "tool_result" for b in _blocks(message.get("content")))


def _tool_offered(body: dict[str, Any], name: str) -> bool:
    return any(isinstance(t, dict) and t.get("name") == name for t in body.get("tools", []))


def _call_artefact_tool(body: dict[str, Any], model: FakeModel, text: str) -> Reply | None:
    """The artefact tool call `text` asks for; a ToolSearch for it first while the CLI
    has not loaded its schema (it is deferred)."""
    call = artefact_call(text)
    if call is None:
        return None
    name, tool_input = ARTEFACT_TOOL.format(call[0]), call[1]
    if not _tool_offered(body, name):
        search = ToolUse(model.next_id("toolu"), TOOL_SEARCH, {"query": f"select:{name}"})
        return Reply([search], "tool_use")
    return Reply([ToolUse(model.next_id("toolu"), name, tool_input)], "tool_use")


def script_reply(body: dict[str, Any], model: FakeModel) -> Reply:
    """Decide the whole reply from the last user message; deterministic apart from ids."""
    messages: list[dict[str, Any]] = body.get("messages", [])
    # Not simply messages[-1]: the CLI appends a role "system" message (its
    # environment section) after the first user message.
    users = [m for m in messages if m.get("role") == "user"]
    last = users[-1] if users else {}
    results = [b for b in _blocks(last.get("content")) if b.get("type") == "tool_result"]
    if results:
        for result in results:
            tool = _tool_name(messages, str(result.get("tool_use_id")))
            if tool == "AskUserQuestion":
                answers = [a for _, a in _ANSWER_RE.findall(_result_text(result))]
                if answers:
                    return Reply([Text(f"You chose: {', '.join(answers)}.")], "end_turn")
            render = render_request(users)
            if tool == TOOL_SEARCH and render is not None:
                # The render tool's schema is loaded now: call it.
                return Reply([ToolUse(model.next_id("toolu"), *render)], "tool_use")
            if tool == TOOL_SEARCH:  # the schema is loaded now: make the call asked for
                # The prompt, not this message's own text (the CLI adds "Tool loaded.").
                prompts = [user_text(m) for m in users if not _has_tool_result(m)]
                reply = _call_artefact_tool(body, model, prompts[-1] if prompts else "")
                if reply is not None:
                    return reply
            if tool in ("Bash", "Read"):  # what the attacker's probes found
                return Reply([Text(f"{tool} result: {_result_text(result)}")], "end_turn")
            if tool and tool.startswith(ARTEFACT_TOOL.format("")):
                error = "error " if result.get("is_error") else ""
                return Reply([Text(f"Artefact tool {error}result: {_result_text(result)}")], "end_turn")
        return Reply([Text("All done.")], "end_turn")

    text = user_text(last)
    lowered = text.lower()
    if lowered.startswith("render "):
        render = render_request(users)
        if render is None:
            return Reply([Text("fake_model: say render <component> <json>")], "end_turn")
        # The real CLI offers MCP tools as deferred tools (named, without a schema): like
        # a real model, load the tool with ToolSearch first, then call it (above).
        search = {"query": f"select:{render[0]}"}
        return Reply([ToolUse(model.next_id("toolu"), "ToolSearch", search)], "tool_use")
    artefact_reply = _call_artefact_tool(body, model, text)
    if artefact_reply is not None:
        return artefact_reply
    if lowered.startswith("bash: "):  # run a shell command with the Bash tool
        tool = ToolUse(model.next_id("toolu"), "Bash", {"command": text[len("bash: ") :]})
        return Reply([tool], "tool_use")
    if lowered.startswith("read: "):  # read a file with the Read tool
        tool = ToolUse(model.next_id("toolu"), "Read", {"file_path": text[len("read: ") :]})
        return Reply([tool], "tool_use")
    if "write" in lowered:
        cwd = find_cwd(body)
        path = f"{cwd.rstrip('/')}/out.txt" if cwd else "out.txt"
        tool = ToolUse(model.next_id("toolu"), "Write", {"file_path": path, "content": "hello\n"})
        return Reply([Text("I'll write the file now."), tool], "tool_use")
    if "ask" in lowered:
        tool = ToolUse(model.next_id("toolu"), "AskUserQuestion", json.loads(json.dumps(ASK_INPUT)))
        return Reply([tool], "tool_use")
    if "slow" in lowered:
        return Reply([Text("word " * SLOW_DELTAS, delay_s=SLOW_DELAY_S)], "end_turn")
    if "history" in lowered:
        turns = [t for t in map(user_text, users) if t]
        return Reply([Text(f"I see {len(turns)} user messages: {' | '.join(turns)}")], "end_turn")
    return Reply([Text(f"echo: {text}")], "end_turn")


# --- HTTP ----------------------------------------------------------------------


def _chunks(text: str) -> list[str]:
    # Word by word, like the recorded frames ("I'll ", "write ", ...).
    return re.findall(r"\S+\s*|\s+", text) or [text]


def _start_block(block: Block) -> dict[str, Any]:
    if isinstance(block, Text):
        return {"type": "text", "text": ""}
    return {"type": "tool_use", "id": block.id, "name": block.name, "input": {}}


def _deltas(block: Block) -> list[dict[str, Any]]:
    if isinstance(block, Text):
        return [{"type": "text_delta", "text": c} for c in _chunks(block.text)]
    return [{"type": "input_json_delta", "partial_json": json.dumps(block.input)}]


def _final_block(block: Block) -> dict[str, Any]:
    if isinstance(block, Text):
        return {"type": "text", "text": block.text}
    return {"type": "tool_use", "id": block.id, "name": block.name, "input": block.input}


def _error(status: int, kind: str, message: str) -> web.Response:
    body = {"type": "error", "error": {"type": kind, "message": message}}
    return web.json_response(body, status=status)


async def _sse(response: web.StreamResponse, event: dict[str, Any]) -> None:
    data = json.dumps(event, separators=(",", ":"))
    await response.write(f"event: {event['type']}\ndata: {data}\n\n".encode())


def served_usage(body: dict[str, Any], number: int) -> dict[str, int]:
    """The usage one response reports (recorded with its request as "usage")."""
    texts = [user_text(m) for m in body.get("messages", []) if m.get("role") == "user"]
    spend = [int(m.group(1)) for t in texts if (m := _SPEND_RE.search(t))]
    return {
        "input_tokens": spend[-1] if spend else 12 + number,
        "output_tokens": 7 + number % 5,
        "cache_creation_input_tokens": (number % 4) * 5,
        "cache_read_input_tokens": 100 + 3 * number,
    }


async def _stream(
    request: web.Request, reply: Reply, msg_id: str, model_name: str, usage: dict[str, int]
) -> web.StreamResponse:
    headers = {
        "Content-Type": "text/event-stream",
        "Cache-Control": "no-cache",
        "request-id": f"req_{msg_id}",
    }
    response = web.StreamResponse(headers=headers)
    await response.prepare(request)
    message: dict[str, Any] = {
        "id": msg_id,
        "type": "message",
        "role": "assistant",
        "model": model_name,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        # The input side at the start; the output so far is 1 token (as the real API says).
        "usage": {**usage, "output_tokens": 1},
    }
    try:
        await _sse(response, {"type": "message_start", "message": message})
        await _sse(response, {"type": "ping"})
        for index, block in enumerate(reply.blocks):
            start = {
                "type": "content_block_start",
                "index": index,
                "content_block": _start_block(block),
            }
            await _sse(response, start)
            for delta in _deltas(block):
                if isinstance(block, Text) and block.delay_s:
                    await asyncio.sleep(block.delay_s)
                await _sse(
                    response, {"type": "content_block_delta", "index": index, "delta": delta}
                )
            await _sse(response, {"type": "content_block_stop", "index": index})
        await _sse(
            response,
            {
                "type": "message_delta",
                "delta": {"stop_reason": reply.stop_reason, "stop_sequence": None},
                "usage": {"output_tokens": usage["output_tokens"]},
            },
        )
        await _sse(response, {"type": "message_stop"})
        await response.write_eof()
    except ConnectionResetError:
        # The CLI hung up mid-stream (an interrupt): nothing more to send.
        log.info("client went away during %s", msg_id)
    return response


async def messages(request: web.Request) -> web.StreamResponse:
    model: FakeModel = request.app[MODEL_KEY]
    body = await _record(request)
    if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
        return _error(400, "invalid_request_error", "fake_model: body needs a messages list")
    usage = served_usage(body, len(model.requests))
    model.requests[-1]["usage"] = usage  # recorded just now, nothing awaited since
    reply = script_reply(body, model)
    msg_id = model.next_id("msg")
    model_name = str(body.get("model") or DEFAULT_MODEL)
    if body.get("stream"):
        return await _stream(request, reply, msg_id, model_name, usage)
    return web.json_response(
        {
            "id": msg_id,
            "type": "message",
            "role": "assistant",
            "model": model_name,
            "content": [_final_block(b) for b in reply.blocks],
            "stop_reason": reply.stop_reason,
            "stop_sequence": None,
            "usage": usage,
        }
    )


async def hello(request: web.Request) -> web.Response:
    # The CLI's connectivity "preconnect" (HEAD /api/hello); only sent when
    # CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC is not set.
    await _record(request)
    return web.json_response({"message": "hello"})


async def count_tokens(request: web.Request) -> web.Response:
    await _record(request)
    return web.json_response({"input_tokens": 12})


async def get_requests(request: web.Request) -> web.Response:
    return web.json_response(request.app[MODEL_KEY].requests)


async def delete_requests(request: web.Request) -> web.Response:
    request.app[MODEL_KEY].requests.clear()
    return web.json_response({"cleared": True})


async def not_found(request: web.Request) -> web.Response:
    await _record(request)
    log.warning("no route for %s %s", request.method, request.path_qs)
    return _error(
        404, "not_found_error", f"fake_model: no route for {request.method} {request.path}"
    )


async def _record(request: web.Request) -> Any:
    """Keep every request (method, path, parsed body, the credential it came with) for
    GET /_requests."""
    raw = await request.read()
    try:
        body: Any = json.loads(raw) if raw else None
    except ValueError:
        body = raw.decode(errors="replace")
    request.app[MODEL_KEY].requests.append(
        {
            "method": request.method,
            "path": request.path_qs,
            "body": body,
            "x_api_key": request.headers.get("x-api-key"),
            "authorization": request.headers.get("authorization"),
        }
    )
    log.info("%s %s", request.method, request.path_qs)
    return body


def make_app(model: FakeModel | None = None) -> web.Application:
    app = web.Application(client_max_size=64 * 1024**2)  # CLI requests carry big tool schemas
    app[MODEL_KEY] = model or FakeModel()
    app.router.add_post("/v1/messages", messages)
    app.router.add_post("/v1/messages/count_tokens", count_tokens)
    app.router.add_route("*", "/api/hello", hello)
    app.router.add_get("/_requests", get_requests)
    app.router.add_delete("/_requests", delete_requests)
    app.router.add_route("*", "/{tail:.*}", not_found)
    return app


@asynccontextmanager
async def run_fake_model(host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[str]:
    """Serve the stand-in on a (by default free) port; yields its base URL."""
    runner = web.AppRunner(make_app(), access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound_host, bound_port = runner.addresses[0][:2]
        if ":" in bound_host:  # IPv6 literal
            bound_host = f"[{bound_host}]"
        yield f"http://{bound_host}:{bound_port}"
    finally:
        await runner.cleanup()


async def fetch_requests(base_url: str) -> list[dict[str, Any]]:
    """Every request the stand-in received: ``[{"method", "path", "body"}, ...]``."""
    async with aiohttp.ClientSession() as session, session.get(f"{base_url}/_requests") as resp:
        resp.raise_for_status()
        requests: list[dict[str, Any]] = await resp.json()
        return requests


async def _serve(host: str, port: int) -> None:
    async with run_fake_model(host, port) as base_url:
        print(f"listening on {base_url}", flush=True)
        await asyncio.Event().wait()  # until killed


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s: %(message)s")
    try:
        asyncio.run(_serve(args.host, args.port))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
