"""A session's workspace as files a client may list, read, write and delete (DESIGN §13),
never anything outside it.

The agent shares the workspace and can plant symlinks and FIFOs there, so paths are
resolved by the kernel, one component at a time from a directory descriptor with
O_NOFOLLOW (a symlink anywhere on the path is refused, never followed), not by string
checks on a joined path. Only regular files are read; a FIFO, socket or device is refused
before it is opened, so none can hang the daemon. Writes land in a temporary file beside
the target and are renamed into place: a failed or refused upload leaves nothing. A file
that replaces another is swapped in with renameat2(RENAME_EXCHANGE) and the old one
unlinked: a plain rename over an existing file makes ext4 write the new file's data out
first (6-10 ms for 10 MiB here); uploads are not fsynced either way. Every function here
blocks: callers run them in a thread.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil
import stat
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

MAX_NAME_BYTES = 255
MAX_PATH_BYTES = 4096
MAX_LISTED = 10_000
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
UPLOAD_PREFIX = ".upload-"
RENAME_EXCHANGE = 2  # linux/fs.h
_renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)


class BadPath(ValueError):
    """A path that cannot name anything in a workspace (400 bad_path)."""


class NotThere(LookupError):
    """Nothing of that kind at that path, or a path through a symlink (404)."""


@dataclass(frozen=True)
class Entry:
    path: str
    type: str  # file | dir | symlink | other
    bytes: int
    mtime: float

    def describe(self) -> dict[str, object]:
        return {"path": self.path, "type": self.type, "bytes": self.bytes, "mtime": self.mtime}


def parts_of(path: str) -> list[str]:
    """The components of a relative path, or BadPath: no `..`, `.`, empty or absolute
    parts, no control characters, no over-long names."""
    if not path or len(path.encode("utf-8", "surrogatepass")) > MAX_PATH_BYTES:
        raise BadPath("the path is empty or too long")
    if path.startswith("/"):
        raise BadPath("the path must be relative to the workspace")
    parts = path.split("/")
    for part in parts:
        if part in ("", ".", ".."):
            raise BadPath(f"the path may not contain {part or 'an empty'!r} parts")
        if len(part.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
            raise BadPath("a name in the path is longer than 255 bytes")
        if any(ord(c) < 32 or ord(c) == 127 or 0xD800 <= ord(c) <= 0xDFFF for c in part):
            raise BadPath("the path contains control characters")
    return parts


@contextlib.contextmanager
def directory(root: str, parts: list[str], *, create: bool = False) -> Iterator[int]:
    """A descriptor of the directory `parts` names under `root`, each step without
    following a symlink; `create` makes missing ones (0700)."""
    fd = os.open(root, DIR_FLAGS)
    try:
        for part in parts:
            try:
                child = os.open(part, DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise NotThere(part) from None
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, 0o700, dir_fd=fd)
                child = _open_dir(part, fd)
            except OSError as exc:  # a file, or ELOOP: a symlink
                raise NotThere(part) from exc
            os.close(fd)
            fd = child
        yield fd
    finally:
        os.close(fd)


def _open_dir(name: str, parent: int) -> int:
    try:
        return os.open(name, DIR_FLAGS, dir_fd=parent)
    except OSError as exc:
        raise NotThere(name) from exc


def open_for_reading(root: str, path: str) -> tuple[int, os.stat_result]:
    """A regular file's descriptor and its stat; NotThere for anything else."""
    *folders, name = parts_of(path)
    with directory(root, folders) as parent:
        try:
            seen = os.lstat(name, dir_fd=parent)
        except FileNotFoundError:
            raise NotThere(path) from None
        if not stat.S_ISREG(seen.st_mode):  # a FIFO is never opened: it would block
            raise NotThere(path)
        fd = os.open(
            name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=parent
        )
    opened = os.fstat(fd)
    if not stat.S_ISREG(opened.st_mode) or opened.st_ino != seen.st_ino:  # swapped meanwhile
        os.close(fd)
        raise NotThere(path)
    return fd, opened


def listing(root: str, path: str | None) -> tuple[list[Entry], bool]:
    """Everything under `path` (the whole workspace without one), symlinks not followed;
    and whether the list was cut at MAX_LISTED."""
    parts = parts_of(path) if path else []
    prefix = "/".join(parts)
    entries: list[Entry] = []
    with directory(root, parts) as fd:
        for relative, st in _walk(fd, prefix):
            if len(entries) >= MAX_LISTED:
                return entries, True
            entries.append(Entry(relative, _kind(st.st_mode), st.st_size, st.st_mtime))
    return entries, False


def _walk(fd: int, prefix: str) -> Iterator[tuple[str, os.stat_result]]:
    for name in sorted(os.listdir(fd)):
        if name.startswith(UPLOAD_PREFIX):
            continue
        try:
            st = os.lstat(name, dir_fd=fd)
        except FileNotFoundError:
            continue
        relative = f"{prefix}/{name}" if prefix else name
        yield relative, st
        if stat.S_ISDIR(st.st_mode):
            try:
                child = os.open(name, DIR_FLAGS, dir_fd=fd)
            except OSError:
                continue
            try:
                yield from _walk(child, relative)
            finally:
                os.close(child)


def _kind(mode: int) -> str:
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "dir"
    return "symlink" if stat.S_ISLNK(mode) else "other"


def used_bytes(root: str) -> int:
    """What the workspace holds now (regular files; links not followed)."""
    with directory(root, []) as fd:
        return sum(st.st_size for _, st in _walk(fd, "") if stat.S_ISREG(st.st_mode))


def _exchange(dir_fd: int, a: str, b: str) -> bool:
    """Swap two names in one directory at once; False where the kernel, libc or
    filesystem cannot (or `b` is gone), for the caller to rename instead."""
    if _renameat2 is None:
        return False
    if _renameat2(dir_fd, os.fsencode(a), dir_fd, os.fsencode(b), RENAME_EXCHANGE) == 0:
        return True
    error = ctypes.get_errno()
    if error in (errno.ENOENT, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(error, os.strerror(error), b)


class Upload:
    """One file being written: a temporary file beside the target, renamed into place by
    `commit`, removed by `abort`."""

    def __init__(self, root: str, path: str) -> None:
        *folders, self.name = parts_of(path)
        with directory(root, folders, create=True) as parent:
            self._parent = os.dup(parent)
        try:
            existing = os.lstat(self.name, dir_fd=self._parent)
        except FileNotFoundError:
            existing = None
        if existing is not None and stat.S_ISDIR(existing.st_mode):
            os.close(self._parent)
            raise BadPath(f"{path} is a folder")
        self.replaces = existing.st_size if existing is not None else None
        self._temp = f"{UPLOAD_PREFIX}{uuid.uuid4().hex}"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        self.fd = os.open(self._temp, flags, 0o600, dir_fd=self._parent)
        self.written = 0

    def write(self, chunks: list[bytes]) -> None:
        """Append `chunks` (the caller adds them to `written` as it hands them over: its
        limits count a batch still being written)."""
        for chunk in chunks:
            view = memoryview(chunk)
            while view:
                view = view[os.write(self.fd, view) :]

    def commit(self) -> bool:
        """Into place; True if it created the file (False: it replaced one)."""
        os.close(self.fd)
        try:
            if self.replaces is not None and _exchange(self._parent, self._temp, self.name):
                self._drop_swapped()
            else:
                os.replace(self._temp, self.name, src_dir_fd=self._parent, dst_dir_fd=self._parent)
        finally:
            os.close(self._parent)
        return self.replaces is None

    def _drop_swapped(self) -> None:
        """After the exchange the temporary name holds what was there: remove it. The
        agent may have put a folder there meanwhile: swap back and refuse, as a rename
        over a folder would."""
        try:
            os.unlink(self._temp, dir_fd=self._parent)
        except IsADirectoryError:
            _exchange(self._parent, self._temp, self.name)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._temp, dir_fd=self._parent)
            raise BadPath(f"{self.name} is a folder") from None

    def abort(self) -> None:
        os.close(self.fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._temp, dir_fd=self._parent)
        os.close(self._parent)


def delete(root: str, path: str) -> None:
    """Remove a file, a symlink (not its target) or a folder with everything in it."""
    *folders, name = parts_of(path)
    with directory(root, folders) as parent:
        try:
            st = os.lstat(name, dir_fd=parent)
        except FileNotFoundError:
            raise NotThere(path) from None
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(name, dir_fd=parent)  # follows no symlink
        else:
            os.unlink(name, dir_fd=parent)
