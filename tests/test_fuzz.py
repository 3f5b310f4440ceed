"""Hostile input, property-based, against the running daemon: schemathesis generates valid
and invalid requests for every operation from the OpenAPI document; hypothesis generates
raw bytes, odd paths, odd Last-Event-ID values and every shape of Authorization.

Invariants: never a 5xx; every error is JSON `{"error": {"code", "message"}}` with a
stable code; the daemon stays up; a bystander session and its open stream are
untouched; no CLI process is left behind. Example counts are bounded here
(AGENT_WEBKITD_FUZZ_EXAMPLES, default 25); `make fuzz` runs many more.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from agent_webkitd.protocol import openapi
from tests.conftest import TOKEN, Daemon

EXAMPLES = int(os.environ.get("AGENT_WEBKITD_FUZZ_EXAMPLES", "25"))
SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=EXAMPLES <= 25,  # `make test` runs the same examples every time
)
AUTH = {"Authorization": f"Bearer {TOKEN}"}

schema = schemathesis.openapi.from_dict(openapi.document())
schema.config.generation.update(modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE])


class Bystander:
    """A session with a stream kept open on a thread for the whole module."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        created = requests.post(f"{daemon.base_url}/sessions", headers=AUTH, timeout=30)
        created.raise_for_status()
        self.session_id: str = created.json()["session_id"]
        self.ids: list[int] = []
        self.names: list[str] = []
        self.ended = False
        self._conn = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=120)
        self._conn.request("GET", f"/sessions/{self.session_id}/stream", headers={**AUTH, "Last-Event-ID": "0"})
        self._response = self._conn.getresponse()
        assert self._response.status == 200
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for raw in self._response:
                line = raw.decode().rstrip("\n")
                if line.startswith("id: "):
                    self.ids.append(int(line[4:]))
                elif line.startswith("event: "):
                    self.names.append(line[7:])
        except (OSError, ValueError, AttributeError, http.client.HTTPException):
            pass  # closed under the reader at the end
        self.ended = True

    def turn(self, text: str) -> None:
        results = self.names.count("result")
        sent = requests.post(
            f"{self.daemon.base_url}/sessions/{self.session_id}/input",
            json={"type": "user_message", "content": text}, headers=AUTH, timeout=30,
        )
        assert sent.status_code == 204, sent.text
        deadline = time.monotonic() + 20
        while self.names.count("result") == results and time.monotonic() < deadline:
            time.sleep(0.05)
        assert self.names.count("result") > results, "the bystander's turn never ended"

    def close(self) -> None:
        self._conn.close()


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Daemon, Bystander, str]]:
    """A daemon for the whole module (a small session cap, so valid creates cannot pile
    up), a bystander with an open stream, and a target session fuzzed inputs go to."""
    workdir: Path = tmp_path_factory.mktemp("fuzz")
    daemon = Daemon(workdir, {"sessions": {"max_sessions": 12, "hibernate_after_s": 0}}, None)
    asyncio.run(daemon.start())
    bystander = Bystander(daemon)
    bystander.turn("before the fuzz")
    target = requests.post(f"{daemon.base_url}/sessions", headers=AUTH, timeout=30).json()["session_id"]
    yield daemon, bystander, target
    # The invariants that outlive every example.
    assert daemon.proc is not None and daemon.proc.poll() is None, "the daemon died"
    assert not bystander.ended, "the bystander's stream was cut"
    bystander.turn("after the fuzz")
    assert bystander.ids == list(range(1, len(bystander.ids) + 1)), "the bystander lost or repeated an event"
    bystander.close()
    code = asyncio.run(daemon.stop())
    assert code == 0, daemon.logs()[-3000:]
    deadline = time.monotonic() + 10
    while daemon.orphans() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert daemon.orphans() == [], "CLI processes left behind"
    assert '"event": "request_failed"' not in daemon.logs(), "a request ended in an exception"


# 400s about the world, not the request's shape.
SEMANTIC_400 = ("unknown_conversation", "cwd_not_found")


def assert_a_clean_answer(status: int, body: bytes, content_type: str) -> None:
    """Never a 5xx other than the documented 502/503; every error a JSON error body."""
    assert status < 500 or status in (502, 503), f"server error {status}: {body[:300]!r}"
    if status >= 400:
        assert content_type.startswith("application/json"), (status, content_type, body[:200])
        error = json.loads(body)["error"]
        assert isinstance(error["code"], str) and error["code"], error
        assert isinstance(error["message"], str), error


@schema.parametrize()
@SETTINGS
def test_every_operation_answers_hostile_and_valid_requests_cleanly(
    case: schemathesis.Case, fuzzed: tuple[Daemon, Bystander, str]
) -> None:
    daemon, bystander, target = fuzzed
    if case.path_parameters and "session_id" in case.path_parameters:
        if case.path_parameters["session_id"] == bystander.session_id:
            case.path_parameters["session_id"] = "not-the-bystander"
        elif case.method in ("POST", "GET") and case.path.endswith(("/input", "{session_id}")):
            case.path_parameters["session_id"] = target  # real inputs to a real session
    response = case.call(base_url=daemon.base_url, headers=AUTH, timeout=30)
    content_type = (response.headers.get("content-type") or [""])[0]  # lists of values
    negative = case.meta is not None and case.meta.generation.mode == GenerationMode.NEGATIVE
    if negative and response.status_code == 400 and content_type.startswith("text/plain"):
        return  # a request not even HTTP (a broken header): aiohttp's parser refused it
    assert_a_clean_answer(response.status_code, response.content, content_type)
    # The body and status the document promises (schemathesis' own conformance checks);
    # a documented 503 (at capacity) is no server error. A well-formed request may still
    # name what does not exist (a conversation to resume): that 400 is no rejected input.
    excluded = [schemathesis.checks.not_a_server_error]
    if case.method in ("GET", "DELETE"):
        # Without a body, a "negative" case can only break the query (the daemon ignores
        # parameters it does not know) or drop the token (this harness always sends it).
        excluded.append(schemathesis.checks.negative_data_rejection)
    if response.status_code == 400 and json.loads(response.content)["error"]["code"] in SEMANTIC_400:
        excluded.append(schemathesis.checks.positive_data_acceptance)
    case.validate_response(response, excluded_checks=excluded)


# -- hypothesis: raw bytes, paths, cursors and credentials ------------------------------------

JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
INBOUND_KEYS = st.sampled_from(["type", "content", "correlation_id", "behavior", "mode", "model",
                                "task_id", "answers", "interrupt", "updated_input", "updated_permissions"])
MESSAGES = st.dictionaries(INBOUND_KEYS, JSONISH | st.sampled_from(list(openapi.INBOUND_BY_TYPE)), max_size=5)
RAW_BODIES = st.one_of(
    st.binary(max_size=2000),
    JSONISH.map(lambda v: json.dumps(v).encode()),
    MESSAGES.map(lambda v: json.dumps(v).encode()),
    st.text().map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.integers(1, 200).map(lambda n: b"[" * n * 10 + b"]" * n * 10),
)


@SETTINGS
@given(body=RAW_BODIES, where=st.sampled_from(["/sessions", "/input"]))
def test_raw_bodies_never_get_a_server_error(
    fuzzed: tuple[Daemon, Bystander, str], body: bytes, where: str
) -> None:
    daemon, _, target = fuzzed
    path = "/sessions" if where == "/sessions" else f"/sessions/{target}/input"
    if where == "/sessions" and body.strip().startswith(b"{") and b"cwd" not in body:
        body = b"[]"  # a valid create would start a CLI per example; creates are fuzzed above
    response = requests.post(daemon.base_url + path, data=body, headers=AUTH, timeout=30)
    assert_a_clean_answer(response.status_code, response.content, response.headers.get("Content-Type", ""))


@SETTINGS
@given(
    path=st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=60),
    cursor=st.one_of(st.none(), st.text(max_size=30), st.integers().map(str)),
    authorization=st.one_of(
        st.none(),
        st.text(max_size=60),
        st.sampled_from(["Bearer", "Bearer ", "bearer " + TOKEN, "Basic " + TOKEN, "Bearer  " + TOKEN,
                         "Bearer " + TOKEN + "x", "Bearer " + TOKEN[:-1], TOKEN, "Bearer \x00"]),
    ),
)
def test_odd_paths_cursors_and_credentials_never_get_a_server_error(
    fuzzed: tuple[Daemon, Bystander, str], path: str, cursor: str | None, authorization: str | None
) -> None:
    daemon, _, target = fuzzed
    headers: dict[str, str] = {}
    safe = lambda value: "".join(c for c in value if 32 <= ord(c) < 127)  # noqa: E731 - headers are latin-1
    if authorization is not None:
        headers["Authorization"] = safe(authorization)
    if cursor is not None:
        headers["Last-Event-ID"] = safe(cursor)
    quoted = requests.utils.quote(path, safe="")
    query = requests.utils.quote(cursor or "", safe="")
    for url in (f"/sessions/{quoted}", f"/sessions/{quoted}/input", f"/{quoted}",
                f"/sessions/{target}/stream?last_event_id={query}"):
        method = "POST" if url.endswith("/input") else "GET"
        conn = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=30)
        conn.request(method, url, body=b"{}" if method == "POST" else None, headers=headers)
        response = conn.getresponse()
        content_type = response.getheader("Content-Type") or ""
        if response.status == 200 and content_type.startswith("text/event-stream"):
            conn.close()  # a valid cursor: the stream would go on forever
            continue
        assert_a_clean_answer(response.status, response.read(), content_type)
        conn.close()


def raw_request(port: int, path: str, framing: bytes, body: bytes) -> tuple[int, bytes, str] | None:
    """Send a request with hand-written framing headers; the status, body and content type
    of the answer, or None if the server (rightly) hung up without one."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: {AUTH['Authorization']}\r\n".encode()
            + framing + b"Connection: close\r\n\r\n" + body
        )
        data = b""
        try:
            while chunk := sock.recv(65536):
                data += chunk
        except TimeoutError:
            pass
    if not data:
        return None
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(b":") for line in lines[1:])}
    if headers.get(b"transfer-encoding") == b"chunked":
        size, _, rest = rest.partition(b"\r\n")
        rest = rest[: int(size, 16)]
    return int(lines[0].split(b" ")[1]), rest, headers.get(b"content-type", b"").decode()


def test_lying_and_oversized_content_lengths_and_chunked_bodies(fuzzed: tuple[Daemon, Bystander, str]) -> None:
    daemon, _, target = fuzzed
    path = f"/sessions/{target}/input"
    cases = {
        "larger than max_body_bytes": (b"Content-Length: 5000000\r\n", b"{}"),
        "says more than it sends": (b"Content-Length: 10\r\n", b"{}"),
        "says less than it sends": (b"Content-Length: 2\r\n", b'{"type": "interrupt"}'),
        "chunked": (b"Transfer-Encoding: chunked\r\n", b'15\r\n{"type": "interrupt"}\r\n0\r\n\r\n'),
        "chunked, garbage sizes": (b"Transfer-Encoding: chunked\r\n", b"zz\r\n{}\r\n0\r\n\r\n"),
        "both": (b"Content-Length: 2\r\nTransfer-Encoding: chunked\r\n", b"2\r\n{}\r\n0\r\n\r\n"),
    }
    answers = {name: raw_request(daemon.port, path, *framing) for name, framing in cases.items()}
    # Framing that is not HTTP never reaches the app: aiohttp's parser answers a plain-text
    # 400 and closes the connection (or the client gives up first). Never a 5xx.
    not_http = ("says less than it sends", "chunked, garbage sizes", "both")
    for name, answer in answers.items():
        if answer is not None and name in not_http:
            assert answer[0] == 400, (name, answer)
        elif answer is not None:
            assert_a_clean_answer(*answer)
    assert answers["larger than max_body_bytes"] is not None
    assert answers["larger than max_body_bytes"][0] == 413
    assert answers["chunked"] is not None and answers["chunked"][0] == 204
