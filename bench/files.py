"""`make bench` phase `files` (ours only; DESIGN.md §13): workspace files over HTTP.

  files  One daemon (the scripted stand-in CLI, auth off, as the other phases) and one session
         in a workspace of its own; beside it, in processes of their own, a plain aiohttp app
         on the same 10 MiB file: downloads from `web.static` (aiohttp's FileResponse: the
         kernel's sendfile), uploads to a naive handler (`request.content.iter_chunked(64 KiB)`,
         each chunk written to the file on the event loop); and the same app with
         AIOHTTP_NOSENDFILE=1 (FileResponse's fallback, 256 KiB reads in the default executor),
         for downloads only, for reference. Every transfer is one `curl` (a process of its
         own: `-T file` for PUT, no `Expect: 100-continue`; `-o /dev/null` for GET), timed by
         curl's `%{time_total}`; the servers' turns interleaved, the order flipped every round,
         a first round not counted:
         - throughput: MiB/s p50 up and down, ours and plain, and ours / plain (target >= 0.8);
           the CPU each server's process spent on a transfer
         - event loop stall: while a 10 MiB upload or download runs, another process sends
           GET /healthz to the daemon back to back on one kept-alive connection; the longest
           gap between two of its responses that overlaps a transfer is that transfer's
           stall (an upper bound: it holds one request's round trip) (target <= 20 ms).
           Against it: the same probe's gaps with the daemon idle, and while the transfer
           goes to the plain server instead (the machine as busy, the daemon's loop free:
           what the probe and the two cores alone cost). The daemon has no loop-lag metric of
           its own, so the probe is the measure.
The uploaded and downloaded bytes are checked (size, and the upload's SHA-256 on disk).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import select
import shutil
import socket
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.sandbox import fmt_ms, log, percentile
from bench.servers import ROOT, Ours, free_port

if TYPE_CHECKING:
    from bench.run import Bench

MIB = 1024 * 1024
SIZE = 10 * MIB
NAIVE_CHUNK = 64 * 1024  # the plain upload handler's iter_chunked size
TARGET_RATIO = 0.8
TARGET_STALL_MS = 20.0
IDLE_S = 2.0  # the probe's idle baseline
SETTLE_S = 0.2  # between the probe's transfers: each one's gaps apart from the next one's
UP_PATH = "bench/upload.bin"  # in the session's workspace
DOWN_PATH = "bench/download.bin"


def cpu_s(pid: int) -> float:
    """The CPU time of all of a process's threads, from their schedstat (nanoseconds; the
    ticks of /proc/<pid>/stat are too coarse for one transfer)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError, ValueError, IndexError):
            total += int((task / "schedstat").read_text().split()[0])
    return total / 1e9


def fmt_rate(x: float | None) -> str:
    return "-" if x is None else f"{x:.0f}"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(MIB):
            digest.update(block)
    return digest.hexdigest()


# --- the plain aiohttp app and the probe (each in a process of its own) ----------------------


def plain_main(port: int, root: Path) -> None:
    """web.static for GET /static/<name>; PUT /upload/<name> the way a naive handler does it."""
    from aiohttp import web

    async def upload(request: web.Request) -> web.Response:
        written = 0
        with open(root / request.match_info["name"], "wb") as f:  # noqa: ASYNC230 - naive on purpose
            async for chunk in request.content.iter_chunked(NAIVE_CHUNK):
                f.write(chunk)
                written += len(chunk)
        return web.json_response({"bytes": written}, status=201)

    async def serve() -> None:
        app = web.Application()
        app.router.add_static("/static/", root)
        app.router.add_put("/upload/{name}", upload)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        print("listening", flush=True)
        await asyncio.Event().wait()  # until terminated

    asyncio.run(serve())


def probe_main(host: str, port: int) -> None:
    """GET /healthz back to back on one kept-alive connection until a line (or EOF) on stdin;
    then the monotonic time of every complete response, as a JSON list on stdout."""
    sock = socket.create_connection((host, port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    request = f"GET /healthz HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()
    stamps: list[float] = []
    buf = b""
    print("ready", flush=True)
    while not select.select([sys.stdin], [], [], 0)[0]:
        sock.sendall(request)
        while b"\r\n\r\n" not in buf:
            buf += sock.recv(65536)
        head, _, buf = buf.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(buf) < length:
            buf += sock.recv(65536)
        if not head.startswith(b"HTTP/1.1 200"):
            raise SystemExit(f"probe: {head.splitlines()[0]!r}")
        buf = buf[length:]
        stamps.append(time.monotonic())
    sock.close()
    print(json.dumps(stamps), flush=True)


@contextlib.asynccontextmanager
async def child(
    args: list[str], ready: str, env: dict[str, str] | None = None
) -> AsyncIterator[Any]:
    """`python -m bench.files ARGS` until the block ends; yields the process once it printed
    `ready`."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.files",
        *args,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode().strip()
        if line != ready:
            raise RuntimeError(f"bench.files {args[0]} did not start: {line!r}")
        yield proc
    finally:
        if proc.returncode is None:
            proc.terminate()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 10)
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


class Probe:
    """The /healthz prober against one server, as a context: `stamps` once it has ended."""

    def __init__(self, host: str, port: int) -> None:
        self.args = ["probe", "--host", host, "--port", str(port)]
        self.stamps: list[float] = []

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Probe]:
        async with child(self.args, "ready") as proc:
            yield self
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.write(b"stop\n")
            await proc.stdin.drain()
            self.stamps = json.loads(await asyncio.wait_for(proc.stdout.read(), 30))

    def gaps_in(self, t0: float, t1: float) -> list[float]:
        """The gaps (ms) between consecutive responses that overlap [t0, t1]."""
        s = self.stamps
        return [(s[i] - s[i - 1]) * 1000 for i in range(1, len(s)) if s[i] > t0 and s[i - 1] < t1]


# --- the transfers --------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    name: str
    pid: int
    up_url: str | None
    down_url: str


async def curl(url: str, upload: Path | None = None) -> dict[str, Any]:
    """One transfer by curl; its time_total, HTTP status and byte counts, and the monotonic
    window around the whole curl process."""
    cmd = [
        "curl",
        "-sS",
        "--noproxy",
        "*",
        "-o",
        "/dev/null",
        "-w",
        "%{time_total} %{http_code} %{size_download} %{size_upload}",
    ]
    if upload is not None:
        cmd += ["-T", str(upload), "-H", "Expect:"]
    t0 = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        *cmd, url, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await proc.communicate()
    t1 = time.monotonic()
    if proc.returncode != 0:
        raise RuntimeError(
            f"curl {url}: exit {proc.returncode} {err.decode(errors='replace')[:300]}"
        )
    total, code, down, up = out.decode().split()
    return {
        "s": float(total),
        "status": int(code),
        "down": int(float(down)),
        "up": int(float(up)),
        "t0": t0,
        "t1": t1,
    }


async def transfer(target: Target, direction: str, source: Path) -> dict[str, Any]:
    """One 10 MiB transfer, checked; with its MiB/s and the server's CPU for it."""
    c0 = cpu_s(target.pid)
    if direction == "up":
        assert target.up_url is not None
        r = await curl(target.up_url, source)
        ok = r["status"] in (200, 201) and r["up"] == SIZE
    else:
        r = await curl(target.down_url)
        ok = r["status"] == 200 and r["down"] == SIZE
    r["cpu_ms"] = (cpu_s(target.pid) - c0) * 1000
    if not ok:
        raise RuntimeError(
            f"{target.name} {direction}: HTTP {r['status']}, {r['up']} up, {r['down']} down"
        )
    r["mib_s"] = SIZE / MIB / r["s"]
    return r


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    rates = [r["mib_s"] for r in runs]
    return {
        "n": len(runs),
        "mib_s": rates,
        "p50_mib_s": percentile(rates, 50),
        "min_mib_s": min(rates, default=None),
        "max_mib_s": max(rates, default=None),
        "p50_ms": percentile([r["s"] * 1000 for r in runs], 50),
        "cpu_ms_p50": percentile([r["cpu_ms"] for r in runs], 50),
    }


async def throughput(targets: list[Target], source: Path, reps: int) -> dict[str, Any]:
    """`reps` rounds (after one not counted) of every target, up then down, the order flipped
    every round."""
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {
        t.name: {"up": [], "down": []} for t in targets
    }
    for rep in range(reps + 1):
        for target in targets if rep % 2 == 0 else targets[::-1]:
            for direction in ("up", "down"):
                if direction == "up" and target.up_url is None:
                    continue
                r = await transfer(target, direction, source)
                if rep:
                    runs[target.name][direction].append(r)
    out: dict[str, Any] = {
        name: {d: summary(rs) for d, rs in by.items() if rs} for name, by in runs.items()
    }
    for d in ("up", "down"):
        ours, plain = out["ours"][d]["p50_mib_s"], out["plain"][d]["p50_mib_s"]
        out[f"{d}_ratio"] = ours / plain if ours and plain else None
    nosf = out.get("plain_nosendfile", {}).get("down", {}).get("p50_mib_s")
    ours_down = out["ours"]["down"]["p50_mib_s"]
    out["down_ratio_nosendfile"] = ours_down / nosf if ours_down and nosf else None
    return out


async def stalls(
    ours: Target, plain: Target, source: Path, host: str, port: int, n: int
) -> dict[str, Any]:
    """The probe's gaps: idle, then n uploads and n downloads to ours, then n of each to the
    plain app (the control), each transfer apart from the next by SETTLE_S."""
    probe = Probe(host, port)
    windows: list[tuple[str, str, dict[str, Any]]] = []
    async with probe.running():
        await asyncio.sleep(0.3)  # the probe's connection and first requests
        idle = (time.monotonic(), 0.0)
        await asyncio.sleep(IDLE_S)
        idle = (idle[0], time.monotonic())
        for target in (ours, plain):
            for i in range(n):
                for direction in ("up", "down") if i % 2 == 0 else ("down", "up"):
                    await asyncio.sleep(SETTLE_S)
                    windows.append(
                        (target.name, direction, await transfer(target, direction, source))
                    )
        await asyncio.sleep(SETTLE_S)
    idle_gaps = probe.gaps_in(*idle)
    out: dict[str, Any] = {
        "idle": {
            "s": IDLE_S,
            "responses": len(idle_gaps),
            "max_ms": max(idle_gaps, default=None),
            "p99_ms": percentile(idle_gaps, 99),
            "p50_ms": percentile(idle_gaps, 50),
        },
        "probe_responses": len(probe.stamps),
    }
    for name in (ours.name, plain.name):
        part: dict[str, Any] = {}
        for direction in ("up", "down"):
            per = []
            for who, d, r in windows:
                if who == name and d == direction:
                    gaps = probe.gaps_in(r["t0"], r["t1"])
                    per.append(
                        {
                            "max_ms": max(gaps, default=None),
                            "responses": len(gaps),
                            "mib_s": r["mib_s"],
                            "window_ms": (r["t1"] - r["t0"]) * 1000,
                        }
                    )
            maxima = [p["max_ms"] for p in per if p["max_ms"] is not None]
            part[direction] = {
                "transfers": per,
                "max_ms": max(maxima, default=None),
                "p50_of_max_ms": percentile(maxima, 50),
                "mib_s_p50": percentile([p["mib_s"] for p in per], 50),
            }
        out[name] = part
    out["ours_max_ms"] = max((out["ours"][d]["max_ms"] or 0.0) for d in ("up", "down"))
    return out


async def phase_files(bench: Bench) -> dict[str, Any]:
    a = bench.args
    reps = 6 if a.quick else 20
    n_stall = 3 if a.quick else 5
    log(
        f"\n== files (ours only): a {SIZE // MIB} MiB file up (PUT) and down (GET) with curl, ours vs a plain"
        f" aiohttp app (web.static; a naive iter_chunked({NAIVE_CHUNK // 1024} KiB) upload), {reps} rounds"
        f" interleaved; then the daemon's longest event loop stall ({n_stall} transfers each way, a /healthz"
        f" probe from another process)"
    )
    if shutil.which("curl") is None:
        raise RuntimeError("files: curl is not installed")
    out: dict[str, Any] = bench.results.setdefault("files", {"size_bytes": SIZE})
    source = bench.tmp / "files-source.bin"
    source.write_bytes(os.urandom(SIZE))
    digest = sha256(source)
    plain_root = bench.tmp / "files-plain"
    plain_root.mkdir()
    shutil.copyfile(source, plain_root / "download.bin")
    # The files routes never reach the agent: unconfined, so bubblewrap is not needed.
    ours = await bench.start(Ours(bench.tmp, "ours-files", agent={"sandbox": "none"}))
    try:
        workspace = ours.session_dir(
            {"turns": [{"steps": [{"text": "done"}]}], "then": "repeat_last"}
        )
        status, body = await ours.call("POST", "/sessions", {"cwd": str(workspace)})
        if status != 200:
            raise RuntimeError(f"files: create -> {status} {str(body)[:300]}")
        sid = body["session_id"]
        base = f"http://{ours.host}:{ours.port}/sessions/{sid}/files"
        assert ours.proc is not None
        mine = Target("ours", ours.proc.pid, f"{base}/{UP_PATH}", f"{base}/{DOWN_PATH}")
        setup = await curl(f"{base}/{DOWN_PATH}", source)
        if setup["status"] != 201:
            raise RuntimeError(f"files: the first upload -> {setup['status']}")
        plain_port, nosf_port = free_port(), free_port()
        async with (
            child(
                ["plain", "--port", str(plain_port), "--root", str(plain_root)], "listening"
            ) as p1,
            child(
                ["plain", "--port", str(nosf_port), "--root", str(plain_root)],
                "listening",
                {"AIOHTTP_NOSENDFILE": "1"},
            ) as p2,
        ):
            plain = Target(
                "plain",
                p1.pid,
                f"http://127.0.0.1:{plain_port}/upload/upload.bin",
                f"http://127.0.0.1:{plain_port}/static/download.bin",
            )
            nosf = Target(
                "plain_nosendfile",
                p2.pid,
                None,
                f"http://127.0.0.1:{nosf_port}/static/download.bin",
            )
            out["throughput"] = tp = await throughput([mine, plain, nosf], source, reps)
            for name, label in (
                ("ours", "ours"),
                ("plain", "plain aiohttp"),
                ("plain_nosendfile", "plain, no sendfile"),
            ):
                log(
                    f"  {label:<18}: "
                    + "; ".join(
                        f"{d} p50 {fmt_rate(s['p50_mib_s'])} MiB/s (min {fmt_rate(s['min_mib_s'])},"
                        f" max {fmt_rate(s['max_mib_s'])}), {fmt_ms(s['p50_ms'])} ms, server CPU"
                        f" {fmt_ms(s['cpu_ms_p50'])} ms"
                        for d, s in tp[name].items()
                    )
                )
            log(
                f"  ours / plain, MiB/s p50: up {tp['up_ratio']:.2f}x, down {tp['down_ratio']:.2f}x"
                f" (target >= {TARGET_RATIO}); down vs no sendfile {tp['down_ratio_nosendfile']:.2f}x"
            )
            out["stall"] = st = await stalls(mine, plain, source, ours.host, ours.port, n_stall)
        idle = st["idle"]
        log(
            f"  /healthz probe, idle {IDLE_S:g} s: {idle['responses']} responses, gap p50 {fmt_ms(idle['p50_ms'])} ms,"
            f" p99 {fmt_ms(idle['p99_ms'])} ms, max {fmt_ms(idle['max_ms'])} ms"
        )
        for name, label in (("ours", "transfers to ours"), ("plain", "to plain (control)")):
            log(
                f"  longest gap, {label:<18}: "
                + "; ".join(
                    f"{d} max {fmt_ms(st[name][d]['max_ms'])} ms (p50 of per-transfer max"
                    f" {fmt_ms(st[name][d]['p50_of_max_ms'])} ms, {fmt_rate(st[name][d]['mib_s_p50'])} MiB/s)"
                    for d in ("up", "down")
                )
            )
        log(
            f"  the daemon's longest stall in a 10 MiB transfer: {fmt_ms(st['ours_max_ms'])} ms"
            f" (target <= {TARGET_STALL_MS:g})"
        )
        landed = workspace / UP_PATH
        out["upload_intact"] = landed.stat().st_size == SIZE and sha256(landed) == digest
        plain_landed = plain_root / "upload.bin"
        out["plain_upload_intact"] = (
            plain_landed.stat().st_size == SIZE and sha256(plain_landed) == digest
        )
        if not (out["upload_intact"] and out["plain_upload_intact"]):
            raise RuntimeError(
                f"files: an upload did not arrive intact (ours {out['upload_intact']},"
                f" plain {out['plain_upload_intact']})"
            )
    finally:
        out["stop"] = await bench.stop(ours)
    return out


def rows(results: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """Ours / plain aiohttp in our column, the ratio against its target."""
    f = results.get("files") or {}
    out: list[tuple[str, str, str, str]] = []
    tp = f.get("throughput")
    if tp:
        o, p, n = tp["ours"], tp["plain"], tp["plain_nosendfile"]
        out.append(
            (
                "files: 10 MiB upload (curl PUT), MiB/s p50, ours / plain aiohttp",
                f"{fmt_rate(o['up']['p50_mib_s'])} / {fmt_rate(p['up']['p50_mib_s'])}",
                "(not run)",
                f"{tp['up_ratio']:.2f}x (>= {TARGET_RATIO})",
            )
        )
        out.append(
            (
                "files: 10 MiB download (curl GET), MiB/s p50, ours / web.static",
                f"{fmt_rate(o['down']['p50_mib_s'])} / {fmt_rate(p['down']['p50_mib_s'])}",
                "(not run)",
                f"{tp['down_ratio']:.2f}x (>= {TARGET_RATIO})",
            )
        )
        out.append(
            (
                "  web.static without sendfile, MiB/s p50; ours / it",
                fmt_rate(n["down"]["p50_mib_s"]),
                "",
                f"{tp['down_ratio_nosendfile']:.2f}x",
            )
        )
        out.append(
            (
                "  server CPU per 10 MiB (ms), up / down: ours; plain",
                f"{fmt_ms(o['up']['cpu_ms_p50'])} / {fmt_ms(o['down']['cpu_ms_p50'])};"
                f" {fmt_ms(p['up']['cpu_ms_p50'])} / {fmt_ms(p['down']['cpu_ms_p50'])}",
                "",
                "",
            )
        )
    st = f.get("stall")
    if st:
        out.append(
            (
                "files: longest event loop stall in a 10 MiB transfer (ms), up / down",
                f"{fmt_ms(st['ours']['up']['max_ms'])} / {fmt_ms(st['ours']['down']['max_ms'])}",
                "(not run)",
                f"<= {TARGET_STALL_MS:g}",
            )
        )
        out.append(
            (
                "  /healthz probe gap (ms): idle p99 / max; transfers to plain, max up / down",
                f"{fmt_ms(st['idle']['p99_ms'])} / {fmt_ms(st['idle']['max_ms'])};"
                f" {fmt_ms(st['plain']['up']['max_ms'])} / {fmt_ms(st['plain']['down']['max_ms'])}",
                "",
                "",
            )
        )
    return out


def main() -> None:
    p = argparse.ArgumentParser(description="the files phase's helper processes")
    sub = p.add_subparsers(dest="what", required=True)
    plain = sub.add_parser("plain", help="the plain aiohttp app")
    plain.add_argument("--port", type=int, required=True)
    plain.add_argument("--root", type=Path, required=True)
    probe = sub.add_parser("probe", help="the /healthz prober")
    probe.add_argument("--host", default="127.0.0.1")
    probe.add_argument("--port", type=int, required=True)
    args = p.parse_args()
    if args.what == "plain":
        plain_main(args.port, args.root)
    else:
        probe_main(args.host, args.port)


if __name__ == "__main__":
    main()
