"""A workspace as rows a store keeps, and back (DESIGN §14, workspaces follow their
session): `scan` describes it, `changes` says what a turn changed, `read` takes those
entries' content, `restore` makes another host's folder hold exactly the stored rows.

The agent shares the workspace and is untrusted: it plants symlinks to anything, FIFOs,
sockets, hard links and huge files, and swaps a file for a link between scan and read. So
no link is ever followed: paths are walked from directory descriptors with O_NOFOLLOW
(workspace_files), a link is stored as its target text, FIFOs, sockets and devices are
skipped unopened, files are read only through open_for_reading. Stored rows are hostile
too: restore checks them all before touching the folder, and creates files, never opens
one, so no planted link or hard link is written through. (A hard link is read as the file
it is: the agent can read it there anyway.) Everything blocks: call it in a thread.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from collections.abc import Iterable
from dataclasses import dataclass

from agent_webkitd.agents.workspace_files import (
    DIR_FLAGS,
    MAX_NAME_BYTES,
    MAX_PATH_BYTES,
    UPLOAD_PREFIX,
    BadPath,
    NotThere,
    directory,
    open_for_reading,
    parts_of,
)

MAX_ENTRIES = 100_000
MAX_DEPTH = 128  # names in a path; also bounds the descriptors a scan holds
MODE_BITS = 0o777  # set-id and sticky bits are neither kept nor restored
KINDS = ("file", "dir", "link")
# What a path that vanished, or became a link or something unreadable, raises on the way.
VANISHED = {errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.EACCES, errno.EPERM, errno.ENXIO}
UNNAMEABLE = re.compile("[\x00-\x1f\x7f\ud800-\udfff]")  # as parts_of: control, not UTF-8


class TooLarge(Exception):
    """More entries, folders deep or bytes than a checkpoint may hold."""


class BadRow(ValueError):
    """A stored row that cannot describe anything in a workspace."""


@dataclass(frozen=True, slots=True)
class Entry:
    path: str  # relative, '/'-separated, valid per workspace_files.parts_of
    kind: str  # "file" | "dir" | "link"
    mode: int  # permission bits (MODE_BITS); 0 for links
    size: int  # bytes (files); 0 otherwise
    mtime_ns: int  # files: st_mtime_ns, which tells a change; 0 for dirs and links
    target: str | None = None  # a link's target as readlink gives it, never followed


Manifest = dict[str, Entry]
Row = tuple[Entry, bytes | None]


def scan(root: str, *, max_entries: int = MAX_ENTRIES) -> Manifest:
    """Every file, folder and symlink under `root` (lstat only; a symlinked folder is not
    entered). Names a path cannot carry (control characters, bytes that are not UTF-8, over
    long) and upload temporaries are left out; TooLarge past `max_entries` or MAX_DEPTH."""
    manifest: Manifest = {}
    fd = os.open(root, DIR_FLAGS)
    try:
        _scan(fd, "", 0, manifest, max_entries)
    finally:
        os.close(fd)
    return manifest


def _scan(fd: int, prefix: str, depth: int, out: Manifest, max_entries: int) -> None:
    names = os.listdir(fd)
    if names and depth >= MAX_DEPTH:
        raise TooLarge(f"the workspace is more than {MAX_DEPTH} folders deep")
    for name in names:
        path = f"{prefix}/{name}" if prefix else name
        if name.startswith(UPLOAD_PREFIX) or not _nameable(name, path):
            continue
        entry = _describe(fd, name, path)
        if entry is None:
            continue
        if len(out) >= max_entries:
            raise TooLarge(f"the workspace holds more than {max_entries} entries")
        out[path] = entry
        if entry.kind != "dir":
            continue
        try:
            child = os.open(name, DIR_FLAGS, dir_fd=fd)
        except OSError as exc:
            if exc.errno not in VANISHED:
                raise
            if exc.errno != errno.EACCES:  # swapped since the lstat (EACCES: kept, empty)
                del out[path]
            continue
        try:
            _scan(child, path, depth + 1, out, max_entries)
        finally:
            os.close(child)


def _nameable(name: str, path: str) -> bool:  # parts_of's rules at regex speed (tests agree)
    return (
        UNNAMEABLE.search(name) is None
        and len(name.encode("utf-8", "surrogatepass")) <= MAX_NAME_BYTES
        and len(path.encode("utf-8", "surrogatepass")) <= MAX_PATH_BYTES
    )


def _describe(fd: int, name: str, path: str) -> Entry | None:
    """What lstat sees, as an Entry; None for nothing, FIFOs, sockets, devices, and links
    whose target a row cannot hold."""
    try:
        st = os.lstat(name, dir_fd=fd)
        target = os.readlink(name, dir_fd=fd) if stat.S_ISLNK(st.st_mode) else None
    except OSError as exc:  # gone, or swapped since the lstat
        if exc.errno not in VANISHED and exc.errno != errno.EINVAL:
            raise
        return None
    if stat.S_ISREG(st.st_mode):
        return Entry(path, "file", st.st_mode & MODE_BITS, st.st_size, st.st_mtime_ns)
    if stat.S_ISDIR(st.st_mode):
        return Entry(path, "dir", st.st_mode & MODE_BITS, 0, 0)
    if target is None or not _storable(target):
        return None
    return Entry(path, "link", 0, 0, 0, target)


def _storable(target: str) -> bool:
    """A link target a row can hold: UTF-8 text, no NUL, shorter than PATH_MAX."""
    try:
        return 0 < len(target.encode("utf-8")) < MAX_PATH_BYTES and "\0" not in target
    except UnicodeEncodeError:
        return False


def changes(before: Manifest, now: Manifest) -> tuple[list[Entry], list[str]]:
    """What is new or different in `now`, folders before what they hold, and the paths no
    longer there, deepest first. To apply: the removals, then the entries."""
    changed = sorted((e for p, e in now.items() if before.get(p) != e), key=lambda e: e.path)
    removed = sorted((p for p in before if p not in now), reverse=True)
    return changed, removed


def total_bytes(manifest: Manifest) -> int:
    return sum(e.size for e in manifest.values() if e.kind == "file")


def read(
    root: str, entries: Iterable[Entry], *, max_bytes: int | None
) -> tuple[list[Row], list[str]]:
    """The rows to store for `entries` (from a scan), each described by what is there now:
    a file's content with the size and mtime of the descriptor read, a link's target, a
    folder's mode; and the paths that vanished or changed kind since the scan, to store as
    removed (a folder turned file must not be stored above the entries it held). TooLarge
    when the files, as opened, add up past `max_bytes`: a file may grow after the scan."""
    os.close(os.open(root, DIR_FLAGS))  # no workspace at all is not "every file vanished"
    rows: list[Row] = []
    gone: list[str] = []
    spent = 0
    for entry in entries:
        if entry.kind != "file":
            now = _lookup(root, entry.path)
            if now is None or now.kind != entry.kind:
                gone.append(entry.path)
            else:
                rows.append((now, None))
            continue
        try:
            fd, st = open_for_reading(root, entry.path)
        except (NotThere, OSError) as exc:
            if isinstance(exc, OSError) and exc.errno not in VANISHED:
                raise
            gone.append(entry.path)
            continue
        try:
            spent += st.st_size
            if max_bytes is not None and spent > max_bytes:
                raise TooLarge(f"the changed files hold more than {max_bytes} bytes")
            data = _read_all(fd, st.st_size)
        finally:
            os.close(fd)
        mode = st.st_mode & MODE_BITS
        rows.append((Entry(entry.path, "file", mode, len(data), st.st_mtime_ns), data))
    return rows, gone


def _lookup(root: str, path: str) -> Entry | None:
    *folders, name = parts_of(path)
    try:
        with directory(root, folders) as parent:
            return _describe(parent, name, path)
    except NotThere:
        return None


def _read_all(fd: int, size: int) -> bytes:
    """At most `size` bytes: a file still growing is not followed."""
    chunks: list[bytes] = []
    while size > 0 and (chunk := os.read(fd, size)):
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def restore(root: str, rows: Iterable[Row]) -> Manifest:
    """Make `root` hold exactly `rows` (BadPath or BadRow before anything is touched if one
    cannot be stored), and return its manifest. Folders a row needs but no row names are
    made (0700)."""
    checked = _checked(rows)
    fd = os.open(root, DIR_FLAGS)
    try:
        _empty(fd)
    finally:
        os.close(fd)
    folders: list[tuple[list[str], int]] = []
    for entry, parts, data in checked:
        with directory(root, parts[:-1], create=True) as parent:
            name, mode = parts[-1], entry.mode & MODE_BITS
            if entry.kind == "dir":
                os.mkdir(name, 0o700, dir_fd=parent)  # its mode once its entries are in
                folders.append((parts, mode))
            elif entry.kind == "link":
                assert entry.target is not None
                os.symlink(entry.target, name, dir_fd=parent)
            else:
                assert data is not None
                _write(parent, name, data, mode, entry.mtime_ns)
    for parts, mode in reversed(folders):  # deepest first: a 0500 folder takes no entries
        with directory(root, parts) as folder:
            os.fchmod(folder, mode)
    return scan(root)


def _checked(rows: Iterable[Row]) -> list[tuple[Entry, list[str], bytes | None]]:
    """The rows in path order (a folder before its entries), each valid, no path twice,
    nothing under a file or a link."""
    kinds: dict[str, str] = {}
    checked: list[tuple[Entry, list[str], bytes | None]] = []
    for entry, data in rows:
        parts = parts_of(entry.path)
        if len(parts) > MAX_DEPTH or any(p.startswith(UPLOAD_PREFIX) for p in parts):
            raise BadPath(f"{entry.path!r}: too deep, or an upload's temporary file")
        if entry.path in kinds:
            raise BadPath(f"{entry.path!r}: named twice")
        if entry.kind not in KINDS or (entry.kind == "file") != isinstance(data, bytes):
            raise BadRow(f"{entry.path!r}: kind {entry.kind!r}, with content for files only")
        if (entry.kind == "link") != (entry.target is not None and _storable(entry.target)):
            raise BadRow(f"{entry.path!r}: a target for links only, that a link can hold")
        if not (isinstance(entry.mode, int) and isinstance(entry.mtime_ns, int)) or not (
            -(2**62) < entry.mtime_ns < 2**62
        ):
            raise BadRow(f"{entry.path!r}: mode or mtime_ns out of range")
        if len(checked) >= MAX_ENTRIES:
            raise TooLarge(f"more than {MAX_ENTRIES} entries")
        kinds[entry.path] = entry.kind
        checked.append((entry, parts, data))
    checked.sort(key=lambda row: row[0].path)  # a folder sorts before the paths it begins
    for entry, parts, _ in checked:
        for depth in range(1, len(parts)):
            above = "/".join(parts[:depth])
            if kinds.get(above, "dir") != "dir":
                raise BadPath(f"{entry.path!r} lies under the {kinds[above]} {above!r}")
    return checked


def _write(parent: int, name: str, data: bytes, mode: int, mtime_ns: int) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(name, flags, 0o600, dir_fd=parent)  # never through what is there
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fchmod(fd, mode)
        os.utime(fd, ns=(mtime_ns, mtime_ns))
    finally:
        os.close(fd)


def _empty(root: int) -> None:
    """Remove everything in a folder. Unlinks what is not a folder (a FIFO is never
    opened), enters folders only with O_NOFOLLOW, and holds two descriptors however deep
    the tree: it climbs back through '..', checked to be the folder it left."""
    fd = os.dup(root)
    above: list[tuple[tuple[int, int], str, list[str]]] = []
    try:
        names = os.listdir(fd)
        while True:
            while names:
                name = names.pop()
                try:
                    os.unlink(name, dir_fd=fd)
                    continue
                except FileNotFoundError:
                    continue
                except IsADirectoryError:
                    pass
                here = os.fstat(fd)
                child = os.open(name, DIR_FLAGS, dir_fd=fd)
                above.append(((here.st_dev, here.st_ino), name, names))
                os.close(fd)
                fd = child
                os.fchmod(fd, 0o700)  # a folder the agent made 0500 still empties
                names = os.listdir(fd)
            if not above:
                return
            identity, name, names = above.pop()
            parent = os.open("..", DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = parent
            here = os.fstat(fd)
            if (here.st_dev, here.st_ino) != identity:
                raise OSError(errno.EBUSY, "the workspace moved while it was emptied")
            os.rmdir(name, dir_fd=fd)
    finally:
        os.close(fd)
