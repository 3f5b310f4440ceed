#!/usr/bin/env python3
"""A scripted stand-in for the Claude Code CLI (2.1.332), started by the real SDK as `cli_path`.

It speaks the SDK's stream-json control protocol on stdin/stdout with the frame shapes
recorded from the real CLI (/work/shared/reference/real-cli-frames/), and answers each
user turn from a scenario. Stdlib only.

Scenario: the JSON file named by $SCRIPTED_CLI_SCENARIO, else ./scenario.json, else echo.

    {"turns": [{"steps": [...]}, ...], "then": "echo" | "repeat_last", "mcp": [...],
     "on_start": {"delay": 0.5, "crash": {"exit_code": 7, "stderr": "..."}, "hang": true}}

Turn i uses turns[i] (a resumed session goes on counting from its transcript's turns);
after that `then` decides (default "echo"). `mcp` (optional) is the initial `mcp_servers`
list of system/init. `on_start` (optional) makes the CLI wait `delay` seconds before it
answers `initialize`, or crash instead, or hang (never answer, ignore stdin's end); it is
read when the CLI starts, so a test can change it between starts. Steps, run in order; when they are done
the turn ends with a `result` (subtype success) and session_state_changed idle:

    {"text": "hi", "delay": 0.05}     one assistant message with one text block; `delay`
                                      (optional) is the pause before each streamed word
    {"tool_use": {"name": "Write", "input": {...}}, "permission": true,
     "result": "custom output", "description": "...", "suggestions": [...]}
                                      a tool call; with `permission` the CLI asks the SDK
                                      through can_use_tool first (not in acceptEdits mode
                                      for edit tools, nor in bypassPermissions mode)
    {"ask": {"questions": [...]}}     an AskUserQuestion call, always asked through
                                      can_use_tool (requires_user_interaction: true)
    {"message": [step, step]}         text/tool_use/ask blocks of one message (one
                                      assistant frame per block, all sharing one id)
    {"sleep": 0.5}                    wait; an interrupt ends it
    {"events": 2000, "text": "x"}     that many one-block assistant messages, no deltas
    {"crash": {"exit_code": 3, "stderr": "boom"}}   write stderr, exit at once
    {"exit_quietly": true}            exit 0 without a result
    {"hang": true}                    stop responding, ignore stdin and its EOF
    {"big_line": 2000000}             one assistant frame about that many bytes long
    {"raw": {...} | "text"}           write that frame (or raw line) verbatim
    {"mcp": [{"name": "srv", "status": "connected"}]}   mcp_servers of the next inits
    {"echo": true}                    reply "echo: <the user's text>"

A tool_use whose name is `mcp__<server>__<tool>` for an SDK server of `--mcp-config` (one
the SDK hosts in-process, `"type": "sdk"`) is called like the real CLI calls it (frames
06): `mcp_message` control requests carrying JSON-RPC, the handshake (initialize,
notifications/initialized, tools/list) before the server's first call, then `tools/call`;
its result is the tool's result (an `isError` one as an is_error text). A tool named in
`--allowedTools` runs without asking through can_use_tool. Unlike the real CLI the
stand-in does not list SDK servers in system/init (the scenario's `mcp` list is what init
reports), and does not defer MCP tools behind ToolSearch.

Tool results: allowed -> "ok: " + json.dumps(updatedInput) (or `result`); AskUserQuestion
-> the real CLI's "Your questions have been answered: ..." text; denied -> is_error with
the deny message; deny with interrupt, or an `interrupt` control request, ends the turn
with result error_during_execution (terminal_reason aborted_tools when a tool was
waiting for permission, else aborted_streaming).

Transcript: the conversation is kept as the real CLI's JSONL transcript entries (user and
assistant entries chained by parentUuid, plus last-prompt and cost-state), saved to
$CLAUDE_CONFIG_DIR/projects/<cwd-key>/<session id>.jsonl, <cwd-key> being the SDK's
project_key_for_directory(cwd). Unlike the real CLI the stand-in never touches ~/.claude:
without CLAUDE_CONFIG_DIR nothing is saved, and mirror frames name the file the real CLI
would write there.
    --session-mirror   (the SDK's session_store) also sends the new entries as
                       {"type": "transcript_mirror", "filePath", "entries"} frames: after each
                       assistant message, before the result, and after it (cost-state)
    --fork-session     with --resume: a new session id (--session-id, else random) whose
                       transcript starts as a copy of the resumed one; the old one is untouched
    --resume[=]<id>    continue the session in $CLAUDE_CONFIG_DIR/projects/*/<id>.jsonl:
                       same session_id, its user and assistant turns are the model's history,
                       its turns count on (turns[i]) and so does its cost (cost-state);
                       with no such file the CLI answers `initialize` with an error result
                       ("No conversation found with session ID: <id>") and exits 1

$SCRIPTED_CLI_LOG (optional) collects JSON lines: {"dir": "argv"|"in"|"out"|"exit", ...},
and for every turn {"dir": "model", "messages": [{"role": "user"|"assistant", "text"}, ...]}:
the conversation the model is given for that turn (earlier turns, resumed ones included,
then the new prompt; text only, tool calls and results left out).
On stdin EOF the CLI finishes the turn in hand (cutting sleeps short) and exits, like the
real one with 1 if the last result was an error, else 0.
"""

from __future__ import annotations

import json
import os
import queue
import re
import sys
import threading
import time
import unicodedata
import uuid
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn, TextIO

Frame = dict[str, Any]

VERSION = "2.1.332"
DEFAULT_MODEL = "claude-opus-5-5"
COST_PER_TURN = 0.001
# After stdin EOF, exit even if the main thread is stuck (e.g. writing a line the SDK
# no longer reads); the SDK itself waits 5 s before it sends SIGTERM.
EOF_GRACE_S = 2.0
USAGE = {
    "input_tokens": 12,
    "output_tokens": 1,
    "cache_creation_input_tokens": 0,
    "cache_read_input_tokens": 0,
}
TOOLS = ["Task", "AskUserQuestion", "Bash", "Edit", "Glob", "Grep", "Read", "WebFetch", "Write"]
EDIT_TOOLS = frozenset({"Write", "Edit", "MultiEdit", "NotebookEdit"})
ASK_TOOL = "AskUserQuestion"
REJECTED_TEXT = (
    "The user doesn't want to proceed with this tool use. The tool use was rejected "
    "(eg. if it was a file edit, the new_string was NOT written to the file). STOP what "
    "you are doing and wait for the user to tell you how to proceed."
)
STEP_KINDS = (
    "events",
    "message",
    "tool_use",
    "ask",
    "text",
    "sleep",
    "crash",
    "exit_quietly",
    "hang",
    "big_line",
    "raw",
    "mcp",
    "echo",
)
BLOCK_KINDS = ("tool_use", "ask", "text")
# Longer project keys are cut and get a hash suffix (the SDK's MAX_SANITIZED_LENGTH).
MAX_PROJECT_KEY = 200

BURST_MIRROR_EVERY = 100


class ScenarioError(Exception):
    """The scenario file is not valid; the message names the place."""


class Interrupted(Exception):
    """The turn must end now: an `interrupt` request, a deny with interrupt, or EOF."""

    def __init__(self, request_id: str | None = None, tool: ToolCall | None = None) -> None:
        super().__init__(request_id)
        self.request_id = request_id  # the SDK's interrupt request, to be answered
        self.tool = tool  # a tool denied with interrupt=True


class _Eof:
    """Put on the inbox when stdin ends."""


EOF = _Eof()


@dataclass(frozen=True)
class Scenario:
    turns: list[list[Frame]]
    then: str = "echo"
    mcp: list[Frame] = field(default_factory=list)
    on_start: Frame = field(default_factory=dict)

    def steps(self, turn_index: int) -> list[Frame]:
        if turn_index < len(self.turns):
            return self.turns[turn_index]
        if self.then == "repeat_last" and self.turns:
            return self.turns[-1]
        return [{"echo": True}]


@dataclass
class ToolCall:
    id: str
    name: str
    input: Frame
    permission: bool
    result: str | None = None
    description: str | None = None
    suggestions: list[Frame] | None = None


@dataclass
class McpServer:
    """An SDK MCP server the stand-in talks to through the SDK (mcp_message requests)."""

    name: str
    next_id: int = 0  # JSON-RPC ids count from 0, as the real CLI's do
    ready: bool = False  # the handshake is done


@dataclass
class PendingPermission:
    request_id: str
    tool: ToolCall


@dataclass
class OpenMessage:
    """The assistant message being streamed, so an interrupt can close it like the CLI."""

    id: str
    stop_reason: str  # "tool_use" or "end_turn", for the transcript
    block_index: int | None = None  # the text block being streamed, if any
    partial_text: str = ""


@dataclass
class Turn:
    prompt: str
    started: float = field(default_factory=time.monotonic)
    messages: int = 0
    last_text: str = ""
    denials: list[Frame] = field(default_factory=list)
    open: OpenMessage | None = None
    pending: PendingPermission | None = None


class Log:
    """Appends what the CLI received and sent to $SCRIPTED_CLI_LOG, for tests to assert on."""

    def __init__(self, path: str | None) -> None:
        self._file = open(path, "a", encoding="utf-8") if path else None
        self._lock = threading.Lock()

    def write(self, direction: str, **fields: Any) -> None:
        if self._file is None:
            return
        record = {"dir": direction, "pid": os.getpid(), "t": round(time.time(), 3), **fields}
        with self._lock:
            self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
            self._file.flush()


def load_scenario() -> Scenario:
    path = os.environ.get("SCRIPTED_CLI_SCENARIO")
    if not path and Path("scenario.json").is_file():
        path = "scenario.json"
    if not path:
        return Scenario(turns=[])
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not isinstance(data.get("turns", []), list):
        raise ScenarioError(f"{path}: expected an object with a list 'turns'")
    turns: list[list[Frame]] = []
    for i, turn in enumerate(data.get("turns", [])):
        steps = turn.get("steps") if isinstance(turn, dict) else None
        if not isinstance(steps, list):
            raise ScenarioError(f"{path}: turns[{i}] needs a list 'steps'")
        for j, step in enumerate(steps):
            where = f"{path}: turns[{i}].steps[{j}]"
            kind = step_kind(step, STEP_KINDS, where)
            if kind == "message":
                for k, block in enumerate(step["message"]):
                    step_kind(block, BLOCK_KINDS, f"{where}.message[{k}]")
        turns.append(steps)
    then = data.get("then", "echo")
    if then not in ("echo", "repeat_last"):
        raise ScenarioError(f"{path}: 'then' must be 'echo' or 'repeat_last', not {then!r}")
    on_start = data.get("on_start", {})
    if not isinstance(on_start, dict) or set(on_start) - {"crash", "delay", "hang"}:
        raise ScenarioError(f"{path}: 'on_start' may only hold 'delay', 'crash' and 'hang'")
    return Scenario(turns=turns, then=then, mcp=list(data.get("mcp", [])), on_start=on_start)


def step_kind(step: Any, kinds: tuple[str, ...], where: str) -> str:
    if isinstance(step, dict):
        for kind in kinds:
            if kind in step:
                return kind
    raise ScenarioError(f"{where}: expected an object with one of {', '.join(kinds)}")


def option(argv: list[str], name: str) -> str | None:
    """The value of `--name value` or `--name=value`, as the SDK writes them (a following
    `--flag` is not a value: `--resume` takes its value optionally)."""
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            return argv[i + 1]
        if arg.startswith(name + "="):
            return arg[len(name) + 1 :]
    return None


def sdk_mcp_servers(argv: list[str]) -> list[str]:
    """The names of the in-process (SDK) MCP servers in `--mcp-config`."""
    raw = option(argv, "--mcp-config")
    if not raw:
        return []
    servers = json.loads(raw).get("mcpServers") or {}
    return [name for name, server in servers.items() if server.get("type") == "sdk"]


def user_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    parts = []
    for block in content if isinstance(content, list) else []:
        if isinstance(block, dict) and block.get("type") == "text":
            parts.append(str(block.get("text", "")))
        elif isinstance(block, dict) and block.get("type") == "image":
            parts.append("[image]")
    return " ".join(parts)


def answers_text(answers: Any) -> str:
    pairs = ", ".join(f'"{q}"="{a}"' for q, a in (answers or {}).items())
    return (
        f"Your questions have been answered: {pairs}. "
        "You can now continue with these answers in mind."
    )


def words(text: str) -> list[str]:
    """Split text into the word-sized deltas the real stream uses ("I'll ", "write ")."""
    return re.findall(r"\S+\s*|\s+", text)


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def new_id(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:24]}"


# --- the transcript ------------------------------------------------------------------


def project_key(directory: str) -> str:
    """The projects/ folder of a directory: claude_agent_sdk.project_key_for_directory."""
    path = unicodedata.normalize("NFC", os.path.realpath(directory))
    key = re.sub(r"[^a-zA-Z0-9]", "-", path)
    if len(key) <= MAX_PROJECT_KEY:
        return key
    return f"{key[:MAX_PROJECT_KEY]}-{simple_hash(path)}"


def simple_hash(text: str) -> str:
    """The JS 32-bit string hash in base 36 that suffixes long project keys."""
    h = 0
    for char in text:
        h = ((h << 5) - h + ord(char)) & 0xFFFFFFFF
    if h >= 0x80000000:
        h -= 0x100000000
    h, digits = abs(h), ""
    while True:
        h, digit = divmod(h, 36)
        digits = "0123456789abcdefghijklmnopqrstuvwxyz"[digit] + digits
        if h == 0:
            return digits


def find_transcript(config_dir: str | None, session_id: str) -> Path | None:
    """The saved transcript of a session, in any project, as `--resume` looks for it."""
    if not config_dir or Path(session_id).name != session_id:
        return None
    return next(Path(config_dir, "projects").glob(f"*/{session_id}.jsonl"), None)


class Transcript:
    """The session's conversation as the CLI keeps it: JSONL entries, user and assistant
    ones chained by parentUuid, saved to `path` (if `save`) and queued for
    `transcript_mirror` frames (if `mirror`)."""

    def __init__(self, session_id: str, path: Path, save: bool, mirror: bool) -> None:
        self.session_id = session_id
        self.path = path
        self.save = save
        self.mirror = mirror
        self.entries: list[Frame] = []
        self.pending: list[Frame] = []  # added since the last transcript_mirror frame
        self.leaf: str | None = None  # the last user or assistant entry
        self._file: TextIO | None = None
        if save and path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    self._keep(json.loads(line))

    def add_message(self, role: str, message: Frame, **fields: Any) -> None:
        """Add a user or assistant entry after the current leaf."""
        entry: Frame = {
            "parentUuid": self.leaf,
            "isSidechain": False,
            "type": role,
            "message": message,
            "uuid": str(uuid.uuid4()),
            "timestamp": now_iso(),
            **fields,
            "userType": "external",
            "entrypoint": os.environ.get("CLAUDE_CODE_ENTRYPOINT", "cli"),
            "cwd": os.getcwd(),
            "sessionId": self.session_id,
            "version": VERSION,
        }
        self.add(entry)

    def add_meta(self, kind: str, **fields: Any) -> None:
        """Add a bookkeeping entry (last-prompt, cost-state): no uuid, not in the chain."""
        self.add({"type": kind, **fields, "sessionId": self.session_id})

    def add(self, entry: Frame) -> None:
        self._keep(entry)
        if self.save:
            if self._file is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._file = self.path.open("a", encoding="utf-8")
            self._file.write(json.dumps(entry, ensure_ascii=False, separators=(",", ":")) + "\n")
            self._file.flush()  # the CLI leaves with os._exit
        if self.mirror:
            self.pending.append(entry)

    def _keep(self, entry: Frame) -> None:
        self.entries.append(entry)
        if entry.get("type") in ("user", "assistant") and not entry.get("isSidechain"):
            self.leaf = entry.get("uuid")

    def prompts(self) -> int:
        """How many user turns the conversation has had (tool results are not turns)."""
        return sum(1 for e in self.entries if e.get("type") == "user" and "promptId" in e)

    def total_cost(self) -> float:
        """The session's cost so far, as its last cost-state entry says."""
        costs = [e.get("totalCostUSD") for e in self.entries if e.get("type") == "cost-state"]
        return float(costs[-1]) if costs and isinstance(costs[-1], int | float) else 0.0

    def take_pending(self) -> list[Frame]:
        pending, self.pending = self.pending, []
        return pending

    def history(self) -> list[Frame]:
        """What the model is shown: the chain from the root to the leaf, as role and text
        (assistant blocks of one message joined; tool calls and results left out)."""
        by_uuid = {e["uuid"]: e for e in self.entries if isinstance(e.get("uuid"), str)}
        chain: list[Frame] = []
        entry = by_uuid.get(self.leaf or "")
        while entry is not None and len(chain) <= len(by_uuid):  # a loop cannot hang it
            chain.append(entry)
            entry = by_uuid.get(entry.get("parentUuid") or "")
        messages: list[Frame] = []
        last_id = None  # the API message id of messages[-1], if an assistant's
        for entry in reversed(chain):
            message = entry.get("message") or {}
            text = user_text(message.get("content"))
            if entry.get("type") not in ("user", "assistant") or not text:
                continue
            if message.get("id") is not None and message.get("id") == last_id:
                messages[-1]["text"] += " " + text
            else:
                messages.append({"role": entry["type"], "text": text})
                last_id = message.get("id")
        return messages


class ScriptedCli:
    def __init__(self, argv: list[str], scenario: Scenario, log: Log) -> None:
        self.argv = argv
        self.scenario = scenario
        self.log = log
        self.partial = "--include-partial-messages" in argv
        self.can_prompt = option(argv, "--permission-prompt-tool") is not None
        config_dir = os.environ.get("CLAUDE_CONFIG_DIR")
        resume = option(argv, "--resume")
        resumed = find_transcript(config_dir, resume) if resume else None
        self.refused_resume = resume is not None and resumed is None
        fork = resumed is not None and "--fork-session" in argv
        self.session_id = (
            resume if resume and not fork else option(argv, "--session-id") or str(uuid.uuid4())
        )
        path = resumed if resumed and not fork else Path(
            config_dir or Path.home() / ".claude",
            "projects",
            project_key(os.getcwd()),
            f"{self.session_id}.jsonl",
        )
        self.transcript = Transcript(
            self.session_id, path, save=bool(config_dir), mirror="--session-mirror" in argv
        )
        if fork and resumed is not None:  # a new session that starts with a copy of the old one
            for line in resumed.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    self.transcript.add({**json.loads(line), "sessionId": self.session_id})
        self.model = option(argv, "--model") or DEFAULT_MODEL
        self.permission_mode = option(argv, "--permission-mode") or "default"
        self.mcp_servers: list[Frame] = scenario.mcp
        self.sdk_servers = {name: McpServer(name) for name in sdk_mcp_servers(argv)}
        self.allowed_tools = set(filter(None, (option(argv, "--allowedTools") or "").split(",")))
        self.inbox: queue.Queue[Frame | _Eof] = queue.Queue()
        self.queued_turns: deque[Frame] = deque()
        self.replies: dict[str, Frame] = {}
        # A resumed session goes on where its transcript ends.
        self.turns_started = self.transcript.prompts()
        self.base_cost = self.transcript.total_cost()
        self.results_sent = 0
        self.last_result_is_error = False
        self.eof = False
        self.hanging = False
        self.turn: Turn | None = None

    # --- main loop -------------------------------------------------------------------

    def run(self) -> NoReturn:
        threading.Thread(target=self._read_stdin, name="stdin", daemon=True).start()
        while True:
            if self.queued_turns:
                self.run_turn(self.queued_turns.popleft())
            elif self.eof:
                self.exit(self.exit_code())
            else:
                self.handle(self.inbox.get())

    def _read_stdin(self) -> None:
        """Feed stdin lines to the inbox, so the main thread can notice an interrupt at any time."""
        for raw in sys.stdin.buffer:
            line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
            if not line.strip():
                continue
            self.log.write("in", line=line)
            try:
                self.inbox.put(json.loads(line))
            except json.JSONDecodeError:
                print(
                    f"scripted-cli: ignoring a non-JSON stdin line: {line[:200]}", file=sys.stderr
                )
        self.inbox.put(EOF)
        timer = threading.Timer(EOF_GRACE_S, self._exit_unless_hanging)
        timer.daemon = True
        timer.start()

    def _exit_unless_hanging(self) -> None:
        if not self.hanging:
            self.exit(self.exit_code())

    def exit_code(self) -> int:
        # The real CLI exits 1 after an error result (for shell scripts); the SDK then
        # raises ResultError instead of a bare ProcessError when it is still reading.
        return 1 if self.last_result_is_error else 0

    def hang(self) -> NoReturn:
        """Stop responding: ignore stdin and its end, as a wedged CLI would."""
        self.hanging = True
        while True:
            time.sleep(3600)

    def crash(self, crash: Frame) -> NoReturn:
        sys.stderr.write(str(crash.get("stderr", "")) + "\n")
        self.exit(int(crash.get("exit_code", 1)))

    def exit(self, code: int) -> NoReturn:
        self.log.write("exit", code=code)
        sys.stderr.flush()
        os._exit(code)

    def handle(self, item: Frame | _Eof) -> None:
        """Act on one stdin frame; raises Interrupted for an interrupt during a turn."""
        if isinstance(item, _Eof):
            self.eof = True
        elif item.get("type") == "user":
            self.queued_turns.append(item)  # the CLI queues prompts sent during a turn
        elif item.get("type") == "control_response":
            response = item.get("response") or {}
            self.replies[str(response.get("request_id"))] = response
        elif item.get("type") == "control_request":
            self.handle_control_request(str(item.get("request_id")), item.get("request") or {})

    def handle_control_request(self, request_id: str, request: Frame) -> None:
        subtype = request.get("subtype")
        if subtype == "initialize":
            time.sleep(float(self.scenario.on_start.get("delay", 0)))
            if self.scenario.on_start.get("hang"):
                self.hang()
            if "crash" in self.scenario.on_start:
                self.crash(self.scenario.on_start["crash"])
            if self.refused_resume:
                self.refuse_resume()
            self.respond(request_id, self.initialize_response())
        elif subtype == "interrupt":
            if self.turn is not None:
                raise Interrupted(request_id)
            self.respond(request_id, {"still_queued": []})
        elif subtype == "set_permission_mode":
            self.permission_mode = str(request.get("mode"))
            self.respond(request_id, {"mode": self.permission_mode})
            self.system("status", status=None, permissionMode=self.permission_mode)
        elif subtype == "set_model":
            self.model = request.get("model") or DEFAULT_MODEL
            self.send(
                self.user_frame(
                    f"<local-command-stdout>Set model to `{self.model}`</local-command-stdout>",
                    isReplay=True,
                )
            )
            self.respond(request_id, {"model": request.get("model")})
        elif subtype == "stop_task":
            self.respond(request_id, {})
        elif subtype == "mcp_status":
            self.respond(request_id, {"mcpServers": self.mcp_servers})
        else:
            self.send(
                {
                    "type": "control_response",
                    "response": {
                        "subtype": "error",
                        "request_id": request_id,
                        "error": f"Unsupported control request subtype: {subtype}",
                    },
                }
            )

    def poll(self) -> None:
        """Handle whatever arrived meanwhile, without waiting."""
        while True:
            try:
                item = self.inbox.get_nowait()
            except queue.Empty:
                return
            self.handle(item)

    def wait(self, seconds: float) -> None:
        """Sleep, handling stdin meanwhile; an interrupt or EOF ends the wait early."""
        deadline = time.monotonic() + seconds
        while not self.eof and (remaining := deadline - time.monotonic()) > 0:
            try:
                item = self.inbox.get(timeout=remaining)
            except queue.Empty:
                return
            self.handle(item)

    def await_reply(self, request_id: str) -> Frame:
        while request_id not in self.replies:
            if self.eof:
                raise Interrupted()  # nobody is left to answer
            self.handle(self.inbox.get())
        return self.replies.pop(request_id)

    # --- a turn ----------------------------------------------------------------------

    def run_turn(self, user: Frame) -> None:
        steps = self.scenario.steps(self.turns_started)
        self.turns_started += 1
        content = (user.get("message") or {}).get("content")
        turn = self.turn = Turn(prompt=user_text(content))
        self.transcript.add_message(
            "user",
            {"role": "user", "content": content},
            promptId=str(uuid.uuid4()),
            permissionMode=self.permission_mode,
            promptSource="sdk",
        )
        self.log.write("model", messages=self.transcript.history())
        self.session_state("running")
        self.send(self.init_frame())
        try:
            for step in steps:
                self.run_step(step)
            self.finish(turn, "success")
        except Interrupted as stop:
            self.abort(turn, stop)
        finally:
            self.turn = None

    def run_step(self, step: Frame) -> None:
        turn = self.current_turn()
        kind = step_kind(step, STEP_KINDS, "step")
        if kind == "events":
            self.burst(int(step["events"]), str(step.get("text", "x")))
        elif kind == "message":
            self.run_message(step["message"])
        elif kind in BLOCK_KINDS:
            self.run_message([step])
        elif kind == "echo":
            self.run_message([{"text": f"echo: {turn.prompt}"}])
        elif kind == "sleep":
            self.wait(float(step["sleep"]))
        elif kind == "crash":
            self.crash(step["crash"])
        elif kind == "exit_quietly":
            self.exit(0)
        elif kind == "hang":
            self.hang()
        elif kind == "big_line":
            turn.messages += 1
            self.assistant(new_id("msg_"), {"type": "text", "text": "x" * int(step["big_line"])})
        elif kind == "raw":
            raw = step["raw"]
            self.write_line(raw if isinstance(raw, str) else json.dumps(raw))
        elif kind == "mcp":
            self.mcp_servers = list(step["mcp"])

    def run_message(self, blocks: list[Frame]) -> None:
        turn = self.current_turn()
        has_tools = any("tool_use" in block or "ask" in block for block in blocks)
        message = turn.open = OpenMessage(new_id("msg_"), "tool_use" if has_tools else "end_turn")
        turn.messages += 1
        if self.partial:
            self.system("status", status="requesting")
            self.stream(
                message.id,
                {
                    "type": "message_start",
                    "message": {
                        "id": message.id,
                        "type": "message",
                        "role": "assistant",
                        "model": self.model,
                        "content": [],
                        "stop_reason": None,
                        "stop_sequence": None,
                        "usage": USAGE,
                    },
                },
                ttft_ms=5,
            )
        tools: list[ToolCall] = []
        for index, block in enumerate(blocks):
            if "tool_use" in block or "ask" in block:
                tools.append(self.tool_block(message, index, block))
            else:
                self.text_block(message, index, str(block["text"]), float(block.get("delay", 0)))
        if self.partial:
            self.end_stream(message.id, message.stop_reason)
        turn.open = None
        self.mirror()
        for tool in tools:
            self.run_tool(tool)

    def text_block(self, message: OpenMessage, index: int, text: str, delay: float) -> None:
        message.block_index, message.partial_text = index, ""
        if self.partial:
            start = {"type": "content_block_start", "index": index}
            self.stream(message.id, {**start, "content_block": {"type": "text", "text": ""}})
        for word in words(text):
            if delay:
                self.wait(delay)
            else:
                self.poll()
            message.partial_text += word
            if self.partial:
                self.stream(
                    message.id,
                    {
                        "type": "content_block_delta",
                        "index": index,
                        "delta": {"type": "text_delta", "text": word},
                    },
                )
        self.assistant(message.id, {"type": "text", "text": text}, message.stop_reason)
        message.block_index = None
        if self.partial:
            self.stream(message.id, {"type": "content_block_stop", "index": index})
        self.current_turn().last_text = text

    def tool_block(self, message: OpenMessage, index: int, block: Frame) -> ToolCall:
        self.poll()
        if "ask" in block:
            tool = ToolCall(new_id("toolu_"), ASK_TOOL, dict(block["ask"]), permission=True)
        else:
            spec = block["tool_use"]
            tool = ToolCall(
                id=new_id("toolu_"),
                name=str(spec["name"]),
                input=dict(spec.get("input", {})),
                permission=bool(block.get("permission", False)),
                result=block.get("result"),
                description=block.get("description"),
                suggestions=block.get("suggestions"),
            )
        tool_use = {"type": "tool_use", "id": tool.id, "name": tool.name, "input": tool.input}
        if self.partial:
            self.stream(
                message.id,
                {
                    "type": "content_block_start",
                    "index": index,
                    "content_block": {**tool_use, "input": {}},
                },
            )
            self.stream(
                message.id,
                {
                    "type": "content_block_delta",
                    "index": index,
                    "delta": {"type": "input_json_delta", "partial_json": json.dumps(tool.input)},
                },
            )
        self.assistant(message.id, tool_use, message.stop_reason)
        if self.partial:
            self.stream(message.id, {"type": "content_block_stop", "index": index})
        return tool

    def needs_prompt(self, tool: ToolCall) -> bool:
        if tool.name == ASK_TOOL:
            return True
        if tool.name in self.allowed_tools:
            return False
        if not tool.permission or self.permission_mode == "bypassPermissions":
            return False
        return not (self.permission_mode == "acceptEdits" and tool.name in EDIT_TOOLS)

    def run_tool(self, tool: ToolCall) -> None:
        turn = self.current_turn()
        if not self.needs_prompt(tool):
            reason = "rule" if tool.name in self.allowed_tools else "mode"
            source = {"decision": "accept", "source": "config", "reason_type": reason}
            self.tool_result(tool, self.tool_output(tool, tool.input), source)
            return
        if not self.can_prompt:
            # Without --permission-prompt-tool the real CLI denies what it would ask about.
            decision: Frame = {
                "behavior": "deny",
                "message": f"Claude requested permissions to use {tool.name}, "
                "but you haven't granted it yet.",
            }
        else:
            decision = self.ask_permission(tool)
        if decision.get("behavior") == "allow":
            updated_input = decision.get("updatedInput") or tool.input
            for update in decision.get("updatedPermissions") or []:
                if update.get("type") == "setMode" and update.get("destination") == "session":
                    self.permission_mode = str(update.get("mode"))
            source = {"decision": "accept", "source": "user_temporary"}
            self.tool_result(tool, self.tool_output(tool, updated_input), source)
            return
        turn.denials.append(
            {"tool_name": tool.name, "tool_use_id": tool.id, "tool_input": tool.input}
        )
        if decision.get("interrupt"):
            raise Interrupted(tool=tool)
        message = str(decision.get("message", ""))
        self.user(
            [{"type": "tool_result", "content": message, "is_error": True, "tool_use_id": tool.id}],
            tool_use_result=f"Error: {message}",
            tool_result_meta=[
                {
                    "id": tool.id,
                    "non_execution_kind": "permission-rule",
                    "permission_decision": {"decision": "reject", "source": "user_reject"},
                }
            ],
        )

    def tool_output(self, tool: ToolCall, updated_input: Frame) -> tuple[Any, Any, bool]:
        """The tool_result content, the frame's `tool_use_result` and whether it is an
        error, for an allowed call."""
        if tool.name == ASK_TOOL:
            return answers_text(updated_input.get("answers")), updated_input, False
        server, _, name = tool.name.removeprefix("mcp__").partition("__")
        if tool.name.startswith("mcp__") and server in self.sdk_servers:
            return self.call_mcp_tool(self.sdk_servers[server], name, tool.id, updated_input)
        text = tool.result if tool.result is not None else "ok: " + json.dumps(updated_input)
        return text, text, False

    def tool_result(self, tool: ToolCall, output: tuple[Any, Any, bool], decision: Frame) -> None:
        content, structured, is_error = output
        block: Frame = {"tool_use_id": tool.id, "type": "tool_result", "content": content}
        if is_error:  # as the real CLI words an error result (frames 06)
            block = {"type": "tool_result", "content": content, "is_error": True, "tool_use_id": tool.id}
        self.user(
            [block],
            tool_use_result=structured,
            tool_result_meta=[{"id": tool.id, "permission_decision": decision}],
        )

    # --- SDK MCP servers: JSON-RPC through mcp_message control requests ----------------

    def call_mcp_tool(
        self, server: McpServer, name: str, tool_use_id: str, arguments: Frame
    ) -> tuple[Any, Any, bool]:
        if not server.ready:
            self.mcp_handshake(server)
        request_id = server.next_id
        response = self.mcp_request(
            server,
            "tools/call",
            {
                "name": name,
                "arguments": arguments,
                "_meta": {"claudecode/toolUseId": tool_use_id, "progressToken": request_id},
            },
        )
        result = response.get("result")
        if not isinstance(result, dict):
            error = response.get("error") or {}
            message = str(error.get("message", "no result"))
            return message, f"Error: {message}", True
        content = result.get("content") or []
        if result.get("isError"):
            text = "\n".join(str(b.get("text", "")) for b in content if isinstance(b, dict))
            return text, f"Error: {text}", True
        return content, content, False

    def mcp_handshake(self, server: McpServer) -> None:
        """What the real CLI sends a server before using it (frames 06)."""
        self.mcp_request(
            server,
            "initialize",
            {
                "protocolVersion": "2025-11-25",
                "capabilities": {},
                "clientInfo": {
                    "name": "claude-code",
                    "title": "Claude Code",
                    "description": "Anthropic's agentic coding tool",
                    "websiteUrl": "https://claude.com/claude-code",
                    "version": VERSION,
                },
            },
        )
        self.mcp_message(server, {"jsonrpc": "2.0", "method": "notifications/initialized"})
        self.mcp_request(server, "tools/list", None)
        server.ready = True

    def mcp_request(self, server: McpServer, method: str, params: Frame | None) -> Frame:
        """One JSON-RPC request; its response (a `result` or an `error`)."""
        message: Frame = {"method": method}
        if params is not None:
            message["params"] = params
        message |= {"jsonrpc": "2.0", "id": server.next_id}
        server.next_id += 1
        return self.mcp_message(server, message)

    def mcp_message(self, server: McpServer, message: Frame) -> Frame:
        request_id = str(uuid.uuid4())
        request = {"subtype": "mcp_message", "server_name": server.name, "message": message}
        self.send({"type": "control_request", "request_id": request_id, "request": request})
        reply = self.await_reply(request_id)
        if reply.get("subtype") == "error":
            return {"error": {"message": str(reply.get("error", ""))}}
        response = (reply.get("response") or {}).get("mcp_response")
        return response if isinstance(response, dict) else {}

    def ask_permission(self, tool: ToolCall) -> Frame:
        turn = self.current_turn()
        request_id = str(uuid.uuid4())
        request: Frame = {
            "subtype": "can_use_tool",
            "tool_name": tool.name,
            "display_name": tool.name,
            "input": tool.input,
        }
        if tool.name == ASK_TOOL:
            request |= {"tool_use_id": tool.id, "requires_user_interaction": True}
        else:
            file_path = tool.input.get("file_path")
            request |= {
                "description": tool.description
                or (Path(str(file_path)).name if file_path else None)
                or str(tool.input.get("description") or tool.input.get("command") or tool.name),
                "permission_suggestions": tool.suggestions
                if tool.suggestions is not None
                else [{"type": "setMode", "mode": "acceptEdits", "destination": "session"}],
                "tool_use_id": tool.id,
            }
        turn.pending = PendingPermission(request_id, tool)
        self.session_state("requires_action")
        self.send({"type": "control_request", "request_id": request_id, "request": request})
        reply = self.await_reply(request_id)
        turn.pending = None
        self.session_state("running")
        if reply.get("subtype") == "error":  # the SDK's callback raised, or none was given
            return {"behavior": "deny", "message": str(reply.get("error", ""))}
        return dict(reply.get("response") or {})

    def burst(self, count: int, text: str) -> None:
        turn = self.current_turn()
        for i in range(count):
            self.poll()
            turn.messages += 1
            self.assistant(new_id("msg_"), {"type": "text", "text": text})
            if (i + 1) % BURST_MIRROR_EVERY == 0:
                self.mirror()  # the real CLI mirrors in batches; one huge line would pass 1 MiB
        turn.last_text = text

    def abort(self, turn: Turn, stop: Interrupted) -> None:
        """End the turn the way the real CLI does after an interrupt (frames 02, 03, 04)."""
        pending = turn.pending
        if stop.request_id is not None:
            if pending is not None:
                self.send({"type": "control_cancel_request", "request_id": pending.request_id})
            self.respond(stop.request_id, {"still_queued": []})
            if pending is not None:
                self.session_state("running")
        tool = stop.tool or (pending.tool if pending else None)
        if tool is not None:
            self.user(
                [
                    {
                        "type": "tool_result",
                        "content": REJECTED_TEXT,
                        "is_error": True,
                        "tool_use_id": tool.id,
                    }
                ],
                tool_use_result="User rejected tool use",
                tool_result_meta=[{"id": tool.id, "non_execution_kind": "user-rejected"}],
            )
            if not any(d["tool_use_id"] == tool.id for d in turn.denials):
                turn.denials.append(
                    {"tool_name": tool.name, "tool_use_id": tool.id, "tool_input": tool.input}
                )
            self.user([{"type": "text", "text": "[Request interrupted by user for tool use]"}])
            self.finish(turn, "error_during_execution", "aborted_tools", stop_reason="tool_use")
            return
        message = turn.open
        if message is not None and message.block_index is not None and message.partial_text:
            text = {"type": "text", "text": message.partial_text}
            self.assistant(message.id, text, stop_reason=None, aborted=True)
        self.user([{"type": "text", "text": "[Request interrupted by user]"}])
        if message is not None and self.partial:
            if message.block_index is not None:
                self.stream(
                    message.id, {"type": "content_block_stop", "index": message.block_index}
                )
            self.end_stream(message.id, stop_reason=None)
        self.finish(turn, "error_during_execution", "aborted_streaming", stop_reason=None)

    def finish(
        self,
        turn: Turn,
        subtype: str,
        terminal_reason: str = "completed",
        stop_reason: str | None = "end_turn",
    ) -> None:
        self.mirror()  # the turn's messages, then where the conversation stands
        self.transcript.add_meta(
            "last-prompt", lastPrompt=turn.prompt, leafUuid=self.transcript.leaf
        )
        self.mirror()
        self.results_sent += 1
        is_error = subtype != "success"
        duration_ms = int((time.monotonic() - turn.started) * 1000)
        messages = max(turn.messages, 1)
        frame: Frame = {
            "type": "result",
            "subtype": subtype,
            "duration_ms": duration_ms,
            "duration_api_ms": duration_ms,
            "is_error": is_error,
            "num_turns": messages,
            "stop_reason": stop_reason,
            "session_id": self.session_id,
            # Cumulative for the session, like the real CLI.
            "total_cost_usd": round(self.base_cost + self.results_sent * COST_PER_TURN, 6),
            "usage": {
                "input_tokens": 12 * messages,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
                "output_tokens": 7 * messages,
                "server_tool_use": {"web_search_requests": 0, "web_fetch_requests": 0},
                "service_tier": "standard",
            },
            "modelUsage": {
                self.model: {
                    "inputTokens": 12 * messages,
                    "outputTokens": 7 * messages,
                    "cacheReadInputTokens": 0,
                    "cacheCreationInputTokens": 0,
                    "webSearchRequests": 0,
                    "costUSD": COST_PER_TURN,
                }
            },
            "permission_denials": turn.denials,
            "terminal_reason": terminal_reason,
            "uuid": str(uuid.uuid4()),
        }
        if is_error:
            frame["errors"] = [
                f"[ede_diagnostic] result_type=user last_content_type=n/a stop_reason={stop_reason or 'null'}"
            ]
        else:
            frame |= {"api_error_status": None, "result": turn.last_text}
        self.send(frame)
        self.last_result_is_error = is_error
        self.session_state("idle")
        self.transcript.add_meta(
            "cost-state",
            totalCostUSD=frame["total_cost_usd"],
            totalAPIDuration=duration_ms,
            totalDuration=duration_ms,
        )
        self.mirror()

    def refuse_resume(self) -> NoReturn:
        """`--resume` with an id no transcript has: the real CLI's answer to `initialize`
        is this result (no control_response), then exit 1 (frames 05)."""
        self.send(
            {
                "type": "result",
                "subtype": "error_during_execution",
                "duration_ms": 0,
                "duration_api_ms": 0,
                "is_error": True,
                "num_turns": 0,
                "stop_reason": None,
                "session_id": self.session_id,
                "total_cost_usd": 0,
                "usage": {
                    "input_tokens": 0,
                    "cache_creation_input_tokens": 0,
                    "cache_read_input_tokens": 0,
                    "output_tokens": 0,
                    "server_tool_use": {"web_search_requests": 0, "web_fetch_requests": 0},
                    "service_tier": "standard",
                },
                "modelUsage": {},
                "permission_denials": [],
                "uuid": str(uuid.uuid4()),
                "errors": [f"No conversation found with session ID: {self.session_id}"],
            }
        )
        self.exit(1)

    def current_turn(self) -> Turn:
        assert self.turn is not None, "only called during a turn"
        return self.turn

    # --- frames ----------------------------------------------------------------------

    def initialize_response(self) -> Frame:
        # The SDK reads only hook_on_failure_supported (and hooks_applied) itself;
        # the rest is what get_server_info() hands to callers.
        return {
            "commands": [],
            "agents": [],
            "output_style": "default",
            "available_output_styles": ["default"],
            "models": [
                {
                    "value": "default",
                    "resolvedModel": DEFAULT_MODEL,
                    "displayName": "Default (recommended)",
                    "description": "The scripted stand-in's default model",
                }
            ],
            "account": {
                "tokenSource": "none",
                "apiKeySource": "ANTHROPIC_API_KEY",
                "apiProvider": "firstParty",
            },
            "pid": os.getpid(),
            "claude_code_version": VERSION,
            "current_permission_mode": self.permission_mode,
            "hook_on_failure_supported": True,
            "session_state": "idle",
            "capabilities": [],
        }

    def init_frame(self) -> Frame:
        return {
            "type": "system",
            "subtype": "init",
            "cwd": os.getcwd(),
            "session_id": self.session_id,
            "tools": TOOLS,
            "mcp_servers": self.mcp_servers,
            "model": self.model,
            "permissionMode": self.permission_mode,
            "slash_commands": ["compact", "context", "model"],
            "apiKeySource": "ANTHROPIC_API_KEY",
            "claude_code_version": VERSION,
            "output_style": "default",
            "agents": ["general-purpose"],
            "skills": [],
            "plugins": [],
            "uuid": str(uuid.uuid4()),
        }

    def assistant(
        self, message_id: str, block: Frame, stop_reason: str | None = "end_turn", **extra: Any
    ) -> None:
        """Send one content block of a message and keep it in the transcript, where it
        carries the message's final `stop_reason` (the frame's is null)."""
        message: Frame = {
            "id": message_id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [block],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": USAGE,
        }
        frame = {
            "type": "assistant",
            "message": {**message, "context_management": None},
            "parent_tool_use_id": None,
            "session_id": self.session_id,
            "uuid": str(uuid.uuid4()),
            "timestamp": now_iso(),
            **extra,
        }
        self.send(frame)
        self.transcript.add_message(
            "assistant",
            {**message, "stop_reason": stop_reason},
            uuid=frame["uuid"],
            timestamp=frame["timestamp"],
        )

    def user(self, content: list[Frame], **extra: Any) -> None:
        """Send a user frame of the conversation (a tool result, an interrupt note) and
        keep it in the transcript."""
        frame = self.user_frame(content, **extra)
        self.send(frame)
        structured = (
            {"toolUseResult": extra["tool_use_result"]} if "tool_use_result" in extra else {}
        )
        self.transcript.add_message(
            "user", frame["message"], uuid=frame["uuid"], timestamp=frame["timestamp"], **structured
        )

    def mirror(self) -> None:
        """With --session-mirror, send the transcript entries added since the last frame."""
        entries = self.transcript.take_pending()
        if entries:
            self.send(
                {
                    "type": "transcript_mirror",
                    "filePath": str(self.transcript.path),
                    "entries": entries,
                }
            )

    def user_frame(self, content: str | list[Frame], **extra: Any) -> Frame:
        return {
            "type": "user",
            "message": {"role": "user", "content": content},
            "parent_tool_use_id": None,
            "session_id": self.session_id,
            "uuid": str(uuid.uuid4()),
            "timestamp": now_iso(),
            **extra,
        }

    def stream(self, message_id: str, event: Frame, **extra: Any) -> None:
        self.send(
            {
                "type": "stream_event",
                "event": event,
                "session_id": self.session_id,
                "parent_tool_use_id": None,
                "uuid": str(uuid.uuid4()),
                **extra,
                "api_message_id": message_id,
            }
        )

    def end_stream(self, message_id: str, stop_reason: str | None) -> None:
        delta = {"stop_reason": stop_reason, "stop_sequence": None}
        self.stream(
            message_id, {"type": "message_delta", "delta": delta, "usage": {"output_tokens": 7}}
        )
        self.stream(message_id, {"type": "message_stop"})

    def system(self, subtype: str, **fields: Any) -> None:
        self.send(
            {
                "type": "system",
                "subtype": subtype,
                **fields,
                "session_id": self.session_id,
                "uuid": str(uuid.uuid4()),
            }
        )

    def session_state(self, state: str) -> None:
        # The SDK asks for these (CLAUDE_CODE_SDK_READS_SESSION_STATE) and keeps them
        # out of the caller's stream because of sdk_host_only.
        self.system("session_state_changed", state=state, sdk_host_only=True)

    def respond(self, request_id: str, response: Frame) -> None:
        self.send(
            {
                "type": "control_response",
                "response": {"subtype": "success", "request_id": request_id, "response": response},
            }
        )

    def send(self, frame: Frame) -> None:
        self.write_line(json.dumps(frame, ensure_ascii=False, separators=(",", ":")))

    def write_line(self, line: str) -> None:
        self.log.write("out", line=line)
        try:
            sys.stdout.buffer.write(line.encode("utf-8") + b"\n")
            sys.stdout.buffer.flush()
        except BrokenPipeError:
            self.exit(self.exit_code())  # the SDK is gone


def main(argv: list[str]) -> NoReturn:
    if "--version" in argv or "-v" in argv:
        print(f"{VERSION} (Claude Code)")
        sys.exit(0)
    log = Log(os.environ.get("SCRIPTED_CLI_LOG"))
    log.write("argv", argv=argv, cwd=os.getcwd())
    print(f"scripted-cli: started pid={os.getpid()}", file=sys.stderr, flush=True)
    try:
        scenario = load_scenario()
    except (OSError, ValueError, ScenarioError) as e:
        print(f"scripted-cli: bad scenario: {e}", file=sys.stderr, flush=True)
        log.write("exit", code=2)
        sys.exit(2)
    ScriptedCli(argv, scenario, log).run()


if __name__ == "__main__":
    main(sys.argv[1:])
