"""A session's workspace files over HTTP (DESIGN §13), black box: round trips, limits,
owners, hibernated and closed sessions, and a hostile path list that includes symlinks
and a FIFO the agent itself made with Bash (the real CLI, sandboxed)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from agent_webkitd.agents import workspace_files as files
from tests.conftest import TOKEN, Daemon, api_for
from tests.standin.fixtures import fake_model_url
from tests.test_sandbox import (
    ALICE_TOKEN,
    BOB_TOKEN,
    TIMEOUT_S,
    Agent,
    start_sandboxed,
    until_hibernated,
)
from tests.wire_client import Api

__all__ = ["fake_model_url"]  # a fixture

TOKENS = {"auth": {"tokens": [{"name": "alice", "env": "ALICE_TOKEN"}, {"name": "bob", "env": "BOB_TOKEN"}]}}
USERS = {"ALICE_TOKEN": ALICE_TOKEN, "BOB_TOKEN": BOB_TOKEN}


async def put(api: Api, session_id: str, path: str, body: bytes, **headers: str) -> tuple[int, Any]:
    status, answer, _ = await api.request("PUT", f"/sessions/{session_id}/files/{path}", raw=body,
                                          headers=headers or None)
    return status, answer


async def get(api: Api, session_id: str, path: str, **headers: str) -> aiohttp.ClientResponse:
    return await api.http.get(f"{api.base_url}/sessions/{session_id}/files/{path}",
                              headers=api.headers(headers or None))


async def raw_request(daemon: Daemon, method: str, target: str, token: str) -> tuple[int, bytes]:
    """One request with its target exactly as given (no client-side normalisation)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", daemon.port)
    writer.write(f"{method} {target} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
                 "Connection: close\r\n\r\n".encode())
    answer = await reader.read()
    writer.close()
    return int(answer.split(b" ", 2)[1]), answer


async def listed(api: Api, session_id: str, path: str | None = None) -> dict[str, Any]:
    query = f"?path={path}" if path else ""
    status, body, _ = await api.request("GET", f"/sessions/{session_id}/files{query}")
    assert status == 200, body
    # The scripted CLI's own log (SCRIPTED_CLI_LOG) is in the workspace too: not ours.
    body["files"] = [f for f in body["files"] if f["path"] != "cli-log.jsonl"]
    return dict(body)


async def test_files_go_in_and_out_of_a_workspace_and_only_its_owner_sees_them(
    start_daemon: Callable[..., Any],
) -> None:
    daemon: Daemon = await start_daemon(TOKENS, env=USERS)
    async with api_for(daemon, ALICE_TOKEN) as alice, api_for(daemon, BOB_TOKEN) as bob, \
            api_for(daemon, TOKEN) as admin:
        session = await alice.create()
        data = bytes(range(256)) * 40
        assert (await put(alice, session, "in/deep/data.bin", data))[0] == 201
        assert (daemon.workspace(session) / "in" / "deep" / "data.bin").read_bytes() == data
        status, body = await put(alice, session, "in/deep/data.bin", b"v2")
        assert (status, body) == (200, {"path": "in/deep/data.bin", "bytes": 2})
        resp = await get(alice, session, "in/deep/data.bin")
        assert resp.status == 200 and await resp.read() == b"v2"
        assert resp.headers["Content-Disposition"] == "attachment; filename*=UTF-8''data.bin"
        etag = resp.headers["ETag"]
        assert (await get(alice, session, "in/deep/data.bin", **{"If-None-Match": etag})).status == 304
        files = (await listed(alice, session))["files"]
        assert [(f["path"], f["type"], f["bytes"]) for f in files] == [
            ("in", "dir", files[0]["bytes"]), ("in/deep", "dir", files[1]["bytes"]),
            ("in/deep/data.bin", "file", 2)]
        assert [f["path"] for f in (await listed(alice, session, "in/deep"))["files"]] == ["in/deep/data.bin"]
        # Bob is told what anyone is told of a session that is not theirs; the admin sees it.
        for status in ((await bob.request("GET", f"/sessions/{session}/files"))[0],
                       (await get(bob, session, "in/deep/data.bin")).status,
                       (await put(bob, session, "x.txt", b"x"))[0],
                       (await bob.request("DELETE", f"/sessions/{session}/files/in"))[0]):
            assert status == 404
        assert not (daemon.workspace(session) / "x.txt").exists()
        assert (await get(admin, session, "in/deep/data.bin")).status == 200
        assert (await alice.request("DELETE", f"/sessions/{session}/files/in"))[0] == 204
        assert (await get(alice, session, "in/deep/data.bin")).status == 404
        assert (await listed(alice, session))["files"] == []
        assert await alice.delete(session) == 204
        assert (await alice.request("GET", f"/sessions/{session}/files"))[0] == 404


async def test_uploads_over_a_limit_are_refused_whole(start_daemon: Callable[..., Any]) -> None:
    daemon: Daemon = await start_daemon({"agent": {"max_upload_bytes": 6000, "max_workspace_bytes": 10_000}})
    async with api_for(daemon) as api:
        session = await api.create()
        workspace = daemon.workspace(session)
        status, body = await put(api, session, "big.bin", b"x" * 6001)
        assert (status, body["error"]["code"]) == (413, "upload_too_large")

        async def chunks() -> Any:  # no Content-Length: counted as it arrives
            for _ in range(61):
                yield b"y" * 100

        resp = await api.http.put(f"{daemon.base_url}/sessions/{session}/files/streamed.bin",
                                  data=chunks(), headers=api.headers())
        assert resp.status == 413 and (await resp.json())["error"]["code"] == "upload_too_large"
        assert (await put(api, session, "a.bin", b"a" * 5000))[0] == 201
        status, body = await put(api, session, "b.bin", b"b" * 5500)
        assert (status, body["error"]["code"]) == (413, "workspace_full")
        assert (await put(api, session, "a.bin", b"a" * 6000))[0] == 200  # a replacement fits
        left = sorted(p.name for p in workspace.iterdir() if p.name != "cli-log.jsonl")
        assert left == ["a.bin"]  # nothing partial left


def test_a_replacement_is_swapped_in_whole_and_a_folder_put_there_meanwhile_is_kept(tmp_path: Path) -> None:
    (tmp_path / "a.bin").write_bytes(b"old")
    upload = files.Upload(str(tmp_path), "a.bin")
    upload.write([b"new ", b"content"])
    assert upload.commit() is False
    assert (tmp_path / "a.bin").read_bytes() == b"new content"
    assert [p.name for p in tmp_path.iterdir()] == ["a.bin"]  # the old file is gone, no temporary left
    # The agent swaps a folder in between the upload's start and its end: the folder stays.
    upload = files.Upload(str(tmp_path), "a.bin")
    upload.write([b"newer"])
    (tmp_path / "a.bin").unlink()
    (tmp_path / "a.bin").mkdir()
    (tmp_path / "a.bin" / "kept").write_text("mine")
    with pytest.raises(files.BadPath):
        upload.commit()
    assert [p.name for p in tmp_path.iterdir()] == ["a.bin"] and (tmp_path / "a.bin" / "kept").read_text() == "mine"


async def test_a_hibernated_session_is_served_without_waking(start_daemon: Callable[..., Any]) -> None:
    daemon: Daemon = await start_daemon({"sessions": {"hibernate_after_s": 0.5}, "server": {"keepalive_s": 0.4}})
    async with api_for(daemon) as api:
        session = await api.create()
        stream = await api.open_stream(session)
        await until_hibernated(stream)
        assert (await put(api, session, "note.txt", b"while asleep"))[0] == 201
        assert await (await get(api, session, "note.txt")).read() == b"while asleep"
        _, info, _ = await api.request("GET", f"/sessions/{session}")
        assert info["state"] == "hibernated" and daemon.orphans() == []
        stream.close()


HOSTILE = ("..", "../x", "a/../../x", "%2E%2E/%2E%2E/etc/passwd", "a//b", "./a", "a/%00b",
           "a%01b", "x" * 300, "%2Fetc%2Fpasswd")


async def test_hostile_paths_and_what_the_agent_planted_never_lead_out(
    start_daemon: Callable[..., Any], fake_model_url: str, tmp_path: Path,
) -> None:
    daemon = await start_sandboxed(start_daemon, fake_model_url, tmp_path)
    async with asyncio.timeout(TIMEOUT_S), api_for(daemon, BOB_TOKEN) as api:
        bob = await Agent.open(api)
        out = await bob.bash("ln -s /etc/passwd passwd; ln -s / root; mkfifo pipe; mkdir d; ln -s .. d/up; "
                             "ln -s /tmp tmp; echo mine > mine.txt; ls -l")
        assert "passwd ->" in out and "pipe" in out
        kinds = {f["path"]: f["type"] for f in (await listed(api, bob.id))["files"]}
        assert (kinds["passwd"], kinds["root"], kinds["pipe"], kinds["d/up"]) == ("symlink", "symlink", "other", "symlink")
        assert await (await get(api, bob.id, "mine.txt")).read() == b"mine\n"  # control
        for path in ("passwd", "root/etc/passwd", "d/up/mine.txt", "d/up/d/up/passwd", "tmp"):
            resp = await get(api, bob.id, path)
            assert resp.status == 404 and b"root:" not in await resp.read(), path
        started = time.monotonic()
        assert (await get(api, bob.id, "pipe")).status == 404  # refused, never opened
        assert time.monotonic() - started < 2
        for path in HOSTILE:  # sent as written: a client library would normalise them
            status, body = await raw_request(daemon, "GET", f"/sessions/{bob.id}/files/{path}", BOB_TOKEN)
            assert status in (400, 404) and b"root:" not in body, (path, status)
            if status == 400:
                assert b'"bad_path"' in body
        # Writing through a planted link never lands outside.
        for path in ("root/tmp/escaped.txt", "d/up/escaped.txt", "tmp/escaped.txt"):
            status, _ = await put(api, bob.id, path, b"escaped")
            assert status in (400, 404), path
        assert not Path("/tmp/escaped.txt").exists()  # noqa: ASYNC240
        # Replacing a planted link replaces the link, not its target.
        assert (await put(api, bob.id, "passwd", b"mine now"))[0] == 200
        assert "root:" in Path("/etc/passwd").read_text()  # noqa: ASYNC240
        assert (daemon.workspace(bob.id) / "passwd").read_bytes() == b"mine now"
        assert (await api.request("DELETE", f"/sessions/{bob.id}/files/root"))[0] == 204
        assert Path("/etc/passwd").exists() and not (daemon.workspace(bob.id) / "root").exists()  # noqa: ASYNC240
        bob.stream.close()
