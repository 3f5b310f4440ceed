"""A session's workspace files over HTTP (DESIGN §13): list, download, upload, delete.

Owner or admin only, with the same 404 as every session route for anyone else; a
hibernated session is served without waking its CLI. Paths are resolved by
agents/workspace_files.py, never outside the workspace. Bodies stream through: an upload
is written to disk as it arrives (a thread does the writing), a download goes out by
sendfile (or read by a thread where sendfile cannot), so a 10 MiB file never sits in
memory or stalls the event loop.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

from aiohttp import web

from ..agents import workspace_files as files
from ..config import AgentConfig
from ..errors import ApiError, bad_request, not_found
from ..sessions.session import Session

CHUNK_BYTES = 1024 * 1024  # per thread hop: smaller chunks cost more in hops than in memory
FindSession = Callable[[web.Request], Awaitable[Session]]


async def _sendfile(request: web.Request, fd: int, size: int) -> bool:
    """The file handed to the kernel to copy to the socket, as web.static does (on a 2-core
    Xeon, 1.6x the MiB/s of reading it in a thread); False where it cannot (no socket of
    its own, e.g. TLS terminated in aiohttp), and nothing was sent."""
    transport = request.transport
    if transport is None:
        raise ConnectionResetError("the client went away")
    with os.fdopen(os.dup(fd), "rb") as file:  # the caller closes fd itself
        try:
            await asyncio.get_running_loop().sendfile(transport, file, 0, size, fallback=False)
        except (NotImplementedError, asyncio.SendfileNotAvailableError):
            return False
    return True


class WorkspaceFiles:
    def __init__(self, find: FindSession, agent: AgentConfig) -> None:
        self._find = find
        self._max_upload = agent.max_upload_bytes
        self._max_workspace = agent.max_workspace_bytes

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/sessions/{session_id}/files", self.list)
        app.router.add_get("/sessions/{session_id}/files/{path:.+}", self.download)
        app.router.add_put("/sessions/{session_id}/files/{path:.+}", self.upload)
        app.router.add_delete("/sessions/{session_id}/files/{path:.+}", self.delete)

    async def _workspace(self, request: web.Request) -> tuple[Session, str]:
        session = await self._find(request)
        if not session.spec.cwd:
            raise not_found(session.id)
        return session, session.spec.cwd

    async def list(self, request: web.Request) -> web.StreamResponse:
        session, root = await self._workspace(request)
        path = request.query.get("path") or None
        entries, truncated = await _files(files.listing, root, path)
        body = {
            "session_id": session.id,
            "path": path or "",
            "files": [e.describe() for e in entries],
            "truncated": truncated,
        }
        return _json(body)

    async def download(self, request: web.Request) -> web.StreamResponse:
        _, root = await self._workspace(request)
        path = request.match_info["path"]
        fd, st = await _files(files.open_for_reading, root, path)
        try:
            etag = f'"{st.st_ino:x}-{st.st_size:x}-{st.st_mtime_ns:x}"'
            if request.headers.get("If-None-Match") == etag:
                return web.Response(status=304, headers={"ETag": etag})
            name = quote(path.rsplit("/", 1)[-1])
            response = web.StreamResponse(
                headers={
                    "Content-Type": "application/octet-stream",
                    "Content-Disposition": f"attachment; filename*=UTF-8''{name}",
                    "ETag": etag,
                    "Content-Length": str(st.st_size),
                }
            )
            await response.prepare(request)  # a StreamResponse: the headers go out now
            if not await _sendfile(request, fd, st.st_size):
                while chunk := await asyncio.to_thread(os.read, fd, CHUNK_BYTES):
                    await response.write(chunk)
            await response.write_eof()
            return response
        finally:
            os.close(fd)

    async def upload(self, request: web.Request) -> web.StreamResponse:
        """The raw body, streamed to a file beside the target and renamed into place:
        201 created, 200 replaced; over a limit 413 and nothing is left behind."""
        session, root = await self._workspace(request)
        path = request.match_info["path"]
        declared = request.content_length
        if declared is not None and declared > self._max_upload:
            raise _too_large(self._max_upload)
        upload = await _files(files.Upload, root, path)
        writing: asyncio.Future[None] | None = None  # the last batch, still being written
        try:
            room = float("inf")
            if self._max_workspace:  # 0: no limit of its own
                used = await asyncio.to_thread(files.used_bytes, root)
                room = self._max_workspace - used + (upload.replaces or 0)
            if declared is not None and declared > room:
                raise _workspace_full(self._max_workspace)
            # The socket gives 64-256 KiB at a time: CHUNK_BYTES go to the disk in one
            # thread hop, while the next batch is read (awaiting each write would stall
            # the reading: the socket is paused while a write is awaited).
            held: list[bytes] = []
            size = 0
            async for chunk in request.content.iter_any():
                size += len(chunk)
                if upload.written + size > self._max_upload:
                    raise _too_large(self._max_upload)
                if upload.written + size > room:
                    raise _workspace_full(self._max_workspace)
                held.append(chunk)
                if size >= CHUNK_BYTES:
                    if writing is not None:
                        await writing
                    upload.written += size
                    writing = asyncio.ensure_future(asyncio.to_thread(upload.write, held))
                    held, size = [], 0
            if writing is not None:
                await writing
            if held:
                upload.written += size
                await asyncio.to_thread(upload.write, held)
        except BaseException:
            if writing is not None:  # the file stays open until its last write is done
                await asyncio.shield(asyncio.gather(writing, return_exceptions=True))
            await asyncio.shield(asyncio.to_thread(upload.abort))
            raise
        created = await asyncio.to_thread(upload.commit)
        await _saved(session, root)
        return _json({"path": path, "bytes": upload.written}, 201 if created else 200)

    async def delete(self, request: web.Request) -> web.StreamResponse:
        session, root = await self._workspace(request)
        await _files(files.delete, root, request.match_info["path"])
        await _saved(session, root)
        return web.Response(status=204)


async def _saved(session: Session, root: str) -> None:
    """With a shared store: the change follows the session to other hosts before the
    client hears it is done (agents/workspace_sync.py)."""
    if session.spec.sync is not None:
        await asyncio.shield(session.spec.sync.checkpoint(session.id, root))


async def _files(call: Callable[..., Any], *args: Any) -> Any:
    """Run a workspace_files call in a thread, its refusals as the API's errors."""
    try:
        return await asyncio.to_thread(call, *args)
    except files.BadPath as exc:
        raise bad_request("bad_path", str(exc)) from None
    except files.NotThere:
        raise ApiError(404, "file_not_found", "no such file or folder in the workspace") from None


def _too_large(limit: int) -> ApiError:
    return ApiError(413, "upload_too_large", f"a file may have at most {limit} bytes")


def _workspace_full(limit: int) -> ApiError:
    return ApiError(413, "workspace_full", f"a workspace may hold at most {limit} bytes")


def _json(body: dict[str, Any], status: int = 200) -> web.Response:
    return web.Response(
        body=json.dumps(body, separators=(",", ":")).encode(),
        status=status,
        content_type="application/json",
    )
