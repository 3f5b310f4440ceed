"""Raw-socket SSE subscribers, run in a few worker processes so the client side stays cheap.

Each worker is a process with its own asyncio loop; every subscriber is an
`asyncio.Protocol` on a plain socket (no HTTP client library): it sends one
`GET .../stream`, parses the status line and headers, decodes chunked transfer encoding,
and scans complete SSE frames with two regular expressions (their `id:` lines, and the
`id:` of an `event: result` frame). Per subscriber it keeps the count of events, the ids
it expected but never saw (`missing`: a gap in the sequence), duplicates, the time the
turn's `result` arrived, the longest silence while a turn was running (`max_gap_s`),
`error` frames (an `evicted` one included), and why it stopped.

The same code drives both servers. Times are `time.monotonic()`, which on Linux is one
clock for every process, so the orchestrator compares them with the time it sent the
user message.

Protocol between the orchestrator and a worker (multiprocessing pipe):
    -> ("job", spec)      spec: {host, port, timeout_s, connect_timeout_s, subs: [sub, ...]}
                          sub:  {path, last_event_id (str|None), stop ("result" | int:
                                 that many events), linger_s, pause_after, pause_s, rcvbuf}
    <- ("ready", info)    every subscriber has its response headers (or failed)
    -> ("t0", t)          the turn starts now (gaps are measured from here on)
    -> ("abort",)         stop every subscriber now
    <- ("done", results)  one dict per sub, in order
    -> ("exit",)
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import multiprocessing.connection
import re
import signal
import socket
import time
from typing import Any

ID_RE = re.compile(rb"(?m)^id: ?(\d+)$")
RESULT_RE = re.compile(rb"(?m)^id: ?(\d+)\nevent: ?result$")
ERROR_RE = re.compile(rb"(?m)^event: ?error\ndata: ?(.*)$")
MAX_ERRORS_KEPT = 5


class Shared:
    """What all subscribers of one worker's job share."""

    def __init__(self) -> None:
        self.t0: float | None = None
        self.pending = 0
        self.all_done = asyncio.Event()


class Sub(asyncio.Protocol):
    def __init__(self, spec: dict[str, Any], host: str, port: int, shared: Shared) -> None:
        self.spec, self.host, self.port, self.shared = spec, host, port, shared
        self.stop = spec.get("stop", "result")
        self.linger_s = float(spec.get("linger_s", 0))
        self.pause_after = spec.get("pause_after")
        self.pause_s = float(spec.get("pause_s", 0))
        last = spec.get("last_event_id")
        self.cursor: str | None = None if last in (None, "") else str(last)
        self.expected: int | None = int(last) + 1 if self.cursor is not None else None
        self.reconnects_left = int(spec.get("reconnect", 0))
        self.reconnects: list[float] = []  # when each reconnect was made
        self.reconnecting: asyncio.Task[None] | None = None
        self.transport: asyncio.Transport | None = None
        self.reset_http()
        self.headers_ready = asyncio.get_running_loop().create_future()
        # results
        self.status = 0
        self.http_error = ""
        self.x_replay_from: str | None = None
        self.count = 0
        self.first_id: int | None = None
        self.last_id: int | None = None
        self.max_id = 0
        self.missing = 0
        self.dups = 0
        self.result_id: int | None = None
        self.result_t: float | None = None
        self.stop_t: float | None = None
        self.connect_t = time.monotonic()
        self.headers_t: float | None = None
        self.first_event_t: float | None = None
        self.last_t: float | None = None
        self.max_gap_s = 0.0
        self.gap_start_t: float | None = None
        self.gap_at_count = 0
        self.paused_at: float | None = None
        self.resumed_at: float | None = None
        self.pause_count = 0
        self.errors: list[str] = []
        self.evicted = False
        self.bytes = 0
        self.reads = 0
        self.reason = ""  # why it stopped: result, count, closed, timeout, http_error, ...
        self.done = False
        self.lingering = False

    def reset_http(self) -> None:
        self.head = bytearray()
        self.in_body = False
        self.chunked = False
        self.raw = bytearray()  # body bytes not yet de-chunked
        self.chunk_left = 0
        self.chunk_crlf = 0  # bytes of a chunk's trailing CRLF still to skip
        self.sse = bytearray()  # de-chunked bytes not yet parsed into frames

    async def connect(self) -> bool:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        if self.spec.get("rcvbuf"):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, int(self.spec["rcvbuf"]))
        try:
            await loop.sock_connect(sock, (self.host, self.port))
            await loop.create_connection(lambda: self, sock=sock)
        except OSError as exc:
            sock.close()
            self.http_error, self.reason = f"connect: {exc}", "connect_error"
            self.finish(close=False)
            return False
        return True

    async def reconnect(self) -> None:
        """Like EventSource after the server ended the stream: again, from the last id seen
        (at once: the client's retry delay is not what is measured)."""
        self.reconnects_left -= 1
        self.reconnects.append(time.monotonic())
        if self.last_id is not None:
            self.cursor = str(max(self.last_id, self.max_id))
        self.reset_http()
        self.transport = None
        await self.connect()

    # --- asyncio.Protocol ---------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        lines = [
            f"GET {self.spec['path']} HTTP/1.1",
            f"Host: {self.host}:{self.port}",
            "Accept: text/event-stream",
            "Cache-Control: no-cache",
        ]
        if self.cursor is not None:
            lines.append(f"Last-Event-ID: {self.cursor}")
        transport.write(("\r\n".join(lines) + "\r\n\r\n").encode())

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        self.bytes += len(data)
        self.reads += 1
        if not self.in_body:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            self.parse_head(bytes(self.head[:end]), now)
            data = bytes(self.head[end + 4 :])
            self.head.clear()
            if self.done:
                return
        t0 = self.shared.t0
        if t0 is not None and not self.lingering and self.last_t is not None:
            since = max(self.last_t, t0)
            if self.resumed_at is not None:
                since = max(since, self.resumed_at)
            if now - since > self.max_gap_s:
                self.max_gap_s, self.gap_start_t, self.gap_at_count = now - since, since, self.count
        if data:
            self.last_t = now
            if self.chunked:
                self.feed_chunked(data)
            else:
                self.sse += data
            self.scan(now)

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.headers_ready.done():
            self.headers_ready.set_result(None)
        if self.done:
            return
        if self.reconnects_left > 0 and self.status == 200:
            self.reconnecting = asyncio.get_running_loop().create_task(self.reconnect())
            return
        self.reason = self.reason or ("closed" if exc is None else f"lost: {exc}")
        self.finish(close=False)

    # --- parsing ------------------------------------------------------------------

    def parse_head(self, head: bytes, now: float) -> None:
        status_line, *lines = head.decode("latin-1").split("\r\n")
        self.status = int(status_line.split()[1])
        self.headers_t = now
        self.in_body = True
        for line in lines:
            key, _, value = line.partition(":")
            key, value = key.strip().lower(), value.strip()
            if key == "transfer-encoding" and "chunked" in value.lower():
                self.chunked = True
            elif key == "x-replay-from":
                self.x_replay_from = value
        if not self.headers_ready.done():
            self.headers_ready.set_result(None)
        if self.status != 200:
            self.http_error = f"HTTP {self.status}"
            self.reason = "http_error"
            self.finish()

    def feed_chunked(self, data: bytes) -> None:
        raw = self.raw
        raw += data
        pos, n = 0, len(raw)
        while pos < n:
            if self.chunk_crlf:
                take = min(self.chunk_crlf, n - pos)
                self.chunk_crlf -= take
                pos += take
            elif self.chunk_left:
                take = min(self.chunk_left, n - pos)
                self.sse += raw[pos : pos + take]
                self.chunk_left -= take
                pos += take
                if not self.chunk_left:
                    self.chunk_crlf = 2
            else:
                eol = raw.find(b"\r\n", pos)
                if eol < 0:
                    break
                size = int(bytes(raw[pos:eol]).split(b";")[0], 16)
                pos = eol + 2
                if size == 0:  # the last chunk: the server ended the stream
                    pos = n
                    if self.transport is not None:
                        self.transport.close()  # -> connection_lost: reconnect or finish
                    break
                self.chunk_left = size
        del raw[:pos]

    def scan(self, now: float) -> None:
        """Account for every complete frame in the buffer."""
        end = self.sse.rfind(b"\n\n")
        if end < 0:
            return
        block = bytes(self.sse[: end + 2])
        del self.sse[: end + 2]
        if b"event: error" in block or b"event:error" in block:
            for m in ERROR_RE.finditer(block):
                text = m.group(1).decode(errors="replace")
                if '"evicted"' in text:
                    self.evicted = True
                if len(self.errors) < MAX_ERRORS_KEPT:
                    self.errors.append(text[:300])
        found = ID_RE.findall(block)
        if not found:
            return
        ids = list(map(int, found))
        if ids[-1] > self.max_id:
            self.max_id = ids[-1]
        if self.lingering:
            return
        stop_here = False
        if self.stop == "result" and b"result" in block:
            m = RESULT_RE.search(block)
            if m is not None:
                self.result_id = int(m.group(1))
                self.result_t = now
                ids = [i for i in ids if i <= self.result_id]
                stop_here = True
        if self.first_event_t is None:
            self.first_event_t = now
        self.account(ids)
        if isinstance(self.stop, int) and self.count >= self.stop:
            stop_here = True
        if stop_here:
            self.stop_t = now
            self.reason = "result" if self.stop == "result" else "count"
            if self.linger_s > 0:  # keep reading (only max_id) a while, then finish
                self.lingering = True
                asyncio.get_running_loop().call_later(self.linger_s, self.finish)
            else:
                self.finish()
            return
        if self.pause_after is not None and self.paused_at is None and self.count >= self.pause_after:
            assert self.transport is not None
            self.transport.pause_reading()
            self.paused_at, self.pause_count = now, self.count
            asyncio.get_running_loop().call_later(self.pause_s, self.resume)

    def account(self, ids: list[int]) -> None:
        if not ids:
            return
        if self.first_id is None:
            self.first_id = ids[0]
            if self.expected is None:  # no cursor: the stream starts wherever the server says
                self.expected = ids[0]
        expected = self.expected
        assert expected is not None
        if ids[0] == expected and ids == list(range(expected, expected + len(ids))):
            self.count += len(ids)
            self.expected = ids[-1] + 1
        else:
            for i in ids:
                if i == expected:
                    expected += 1
                elif i > expected:
                    self.missing += i - expected
                    expected = i + 1
                else:
                    self.dups += 1
                    continue
                self.count += 1
            self.expected = expected
        self.last_id = ids[-1]

    def resume(self) -> None:
        if self.transport is not None and not self.done:
            self.resumed_at = time.monotonic()
            self.transport.resume_reading()

    # --- ending ---------------------------------------------------------------------

    def mark_done(self) -> None:
        if not self.done:
            self.done = True
            self.shared.pending -= 1
            if self.shared.pending <= 0:
                self.shared.all_done.set()

    def finish(self, close: bool = True) -> None:
        self.lingering = False
        self.mark_done()
        if close and self.transport is not None:
            self.transport.close()

    def result(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "http_error": self.http_error,
            "x_replay_from": self.x_replay_from,
            "reason": self.reason,
            "count": self.count,
            "first_id": self.first_id,
            "last_id": self.last_id,
            "max_id": self.max_id,
            "missing": self.missing,
            "dups": self.dups,
            "result_id": self.result_id,
            "result_t": self.result_t,
            "stop_t": self.stop_t,
            "connect_t": self.connect_t,
            "headers_t": self.headers_t,
            "first_event_t": self.first_event_t,
            "last_t": self.last_t,
            "max_gap_s": self.max_gap_s,
            "gap_start_t": self.gap_start_t,
            "gap_at_count": self.gap_at_count,
            "paused_at": self.paused_at,
            "resumed_at": self.resumed_at,
            "pause_count": self.pause_count,
            "errors": self.errors,
            "reconnects": self.reconnects,
            "evicted": self.evicted,
            "bytes": self.bytes,
            "reads": self.reads,
        }


async def open_sub(spec: dict[str, Any], host: str, port: int, shared: Shared, gate: asyncio.Semaphore) -> Sub:
    sub = Sub(spec, host, port, shared)
    async with gate:
        if await sub.connect():
            await sub.headers_ready
    return sub


async def run_job(spec: dict[str, Any], inbox: asyncio.Queue[Any], outbox: Any) -> None:
    cpu0 = time.process_time()
    shared = Shared()
    shared.pending = len(spec["subs"])
    if not spec["subs"]:
        shared.all_done.set()
    gate = asyncio.Semaphore(int(spec.get("connect_parallel", 64)))
    host, port = spec["host"], int(spec["port"])
    opening = asyncio.gather(*(open_sub(s, host, port, shared, gate) for s in spec["subs"]))
    subs: list[Sub] = []
    try:
        async with asyncio.timeout(float(spec.get("connect_timeout_s", 30))):
            subs = await opening
    except TimeoutError:
        outbox.send(("done", [{"reason": "connect_timeout", "status": 0, "count": 0}] * len(spec["subs"]), 0.0))
        return
    ok = sum(1 for s in subs if s.status == 200)
    outbox.send(("ready", {"ok": ok, "failed": len(subs) - ok, "t": time.monotonic()}))
    deadline = time.monotonic() + float(spec["timeout_s"])
    while not shared.all_done.is_set():
        get = asyncio.ensure_future(inbox.get())
        done_wait = asyncio.ensure_future(shared.all_done.wait())
        finished, _ = await asyncio.wait(
            {get, done_wait}, timeout=max(0.0, deadline - time.monotonic()),
            return_when=asyncio.FIRST_COMPLETED,
        )
        done_wait.cancel()
        if get in finished:
            msg = get.result()
            if msg[0] == "t0":
                shared.t0 = float(msg[1])
            elif msg[0] == "abort":
                for s in subs:
                    if not s.done:
                        s.reason = "aborted"
                break
        else:
            get.cancel()
        if not finished:  # the deadline passed
            for s in subs:
                if not s.done:
                    s.reason = "timeout"
            break
    for s in subs:
        if not s.done or s.lingering:
            s.finish()
    await asyncio.sleep(0)
    outbox.send(("done", [s.result() for s in subs], time.process_time() - cpu0))


async def worker_main(conn: multiprocessing.connection.Connection) -> None:
    loop = asyncio.get_running_loop()
    inbox: asyncio.Queue[Any] = asyncio.Queue()

    def readable() -> None:
        try:
            inbox.put_nowait(conn.recv())
        except EOFError:
            loop.remove_reader(conn.fileno())
            inbox.put_nowait(("exit",))

    loop.add_reader(conn.fileno(), readable)
    while True:
        msg = await inbox.get()
        if msg[0] == "exit":
            return
        if msg[0] == "job":
            await run_job(msg[1], inbox, conn)
        # a stray t0/abort between jobs is ignored


def worker_entry(conn: multiprocessing.connection.Connection) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the orchestrator ends the workers
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(worker_main(conn))


class JobError(Exception):
    pass


class Pool:
    """A few worker processes; a job's subscribers are spread over them round-robin."""

    def __init__(self, workers: int = 2) -> None:
        self.size = workers
        self.ctx = multiprocessing.get_context("spawn")
        self.procs: list[Any] = []
        self.conns: list[multiprocessing.connection.Connection] = []
        self.queues: list[asyncio.Queue[Any]] = []
        self.loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        for _ in range(self.size):
            self._spawn()

    def _spawn(self) -> None:
        assert self.loop is not None
        parent, child = self.ctx.Pipe()
        proc = self.ctx.Process(target=worker_entry, args=(child,), daemon=True)
        proc.start()
        child.close()
        queue: asyncio.Queue[Any] = asyncio.Queue()

        def readable(conn: multiprocessing.connection.Connection = parent, q: asyncio.Queue[Any] = queue) -> None:
            try:
                q.put_nowait(conn.recv())
            except (EOFError, OSError):
                assert self.loop is not None
                self.loop.remove_reader(conn.fileno())
                q.put_nowait(("dead",))

        self.loop.add_reader(parent.fileno(), readable)
        self.procs.append(proc)
        self.conns.append(parent)
        self.queues.append(queue)

    def restart(self) -> None:
        self.close()
        self.procs, self.conns, self.queues = [], [], []
        for _ in range(self.size):
            self._spawn()

    def close(self) -> None:
        for conn in self.conns:
            with contextlib.suppress(Exception):
                conn.send(("exit",))
        for proc in self.procs:
            proc.join(timeout=3)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=3)
        for conn in self.conns:
            with contextlib.suppress(Exception):
                assert self.loop is not None
                self.loop.remove_reader(conn.fileno())
                conn.close()

    def job(self, host: str, port: int, subs: list[dict[str, Any]], timeout_s: float,
            connect_timeout_s: float = 30.0) -> Job:
        return Job(self, host, port, subs, timeout_s, connect_timeout_s)


class Job:
    def __init__(self, pool: Pool, host: str, port: int, subs: list[dict[str, Any]],
                 timeout_s: float, connect_timeout_s: float) -> None:
        self.pool, self.timeout_s, self.connect_timeout_s = pool, timeout_s, connect_timeout_s
        self.n = len(subs)
        self.parts: list[list[int]] = [list(range(w, self.n, pool.size)) for w in range(pool.size)]
        for w, idxs in enumerate(self.parts):
            spec = {
                "host": host, "port": port, "timeout_s": timeout_s,
                "connect_timeout_s": connect_timeout_s, "subs": [subs[i] for i in idxs],
            }
            pool.conns[w].send(("job", spec))
        self.early: dict[int, list[dict[str, Any]]] = {}
        self.cpu_s = 0.0  # CPU time the workers spent on this job

    async def _next(self, w: int, timeout: float) -> Any:
        try:
            async with asyncio.timeout(timeout):
                msg = await self.pool.queues[w].get()
        except TimeoutError:
            self.pool.restart()
            raise JobError(f"worker {w} did not answer within {timeout:.0f} s") from None
        if msg[0] == "dead":
            self.pool.restart()
            raise JobError(f"worker {w} died")
        return msg

    async def ready(self) -> dict[str, int]:
        ok = failed = 0
        for w in range(self.pool.size):
            msg = await self._next(w, self.connect_timeout_s + 10)
            if msg[0] == "done":  # connecting timed out
                self.early[w] = msg[1]
                self.cpu_s += msg[2]
                failed += len(self.parts[w])
                continue
            ok, failed = ok + msg[1]["ok"], failed + msg[1]["failed"]
        return {"ok": ok, "failed": failed}

    def mark_t0(self, t0: float) -> None:
        for conn in self.pool.conns:
            conn.send(("t0", t0))

    def abort(self) -> None:
        for conn in self.pool.conns:
            conn.send(("abort",))

    async def results(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = [{}] * self.n
        for w in range(self.pool.size):
            if w in self.early:
                part = self.early[w]
            else:
                msg = await self._next(w, self.timeout_s + 15)
                part = msg[1]
                self.cpu_s += msg[2]
            for i, r in zip(self.parts[w], part, strict=True):
                out[i] = r
        return out
