"""Workspace checkpoints, file side (DESIGN §14): a workspace goes into rows and comes back
the same (contents, modes, mtimes, links as links, empty folders), changes are exactly what
changed, and an agent's symlinks, FIFOs, swaps and hard links, or hostile stored rows,
never make the daemon read or write outside the workspace, or hang. Real files, no mocks."""

from __future__ import annotations

import os
import resource
import stat
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from agent_webkitd.agents import checkpoints
from agent_webkitd.agents.checkpoints import BadRow, Entry, Manifest, Row, TooLarge
from agent_webkitd.agents.workspace_files import BadPath, parts_of

EXAMPLES = int(os.environ.get("AGENT_WEBKITD_FUZZ_EXAMPLES", "25"))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, derandomize=EXAMPLES <= 25)
SECRET = b"the-daemon-secret-7f3a"
T = TypeVar("T")


def within(seconds: float, call: Callable[[], T], fifo: Path | None = None) -> T:
    """`call` on a thread; fails (and frees a reader stuck on `fifo`) if it takes longer."""
    result: list[T] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            result.append(call())
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        if fifo is not None:  # a writer lets a blocked open() of the FIFO return
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail(f"still running after {seconds} s: something blocked")
    if errors:
        raise errors[0]
    return result[0]


def checkpoint(root: Path) -> tuple[Manifest, list[Row]]:
    manifest = checkpoints.scan(str(root))
    rows, gone = checkpoints.read(str(root), manifest.values(), max_bytes=None)
    assert gone == []
    return manifest, rows


def file_row(path: str, data: bytes = b"x") -> Row:
    return Entry(path, "file", 0o644, len(data), 1_600_000_000_000_000_000), data


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(SECRET)
    return outside / "secret"


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    root = tmp_path / "ws"
    root.mkdir(mode=0o700)
    return root


def test_a_workspace_comes_back_the_same_on_another_host(ws: Path, tmp_path: Path) -> None:
    (ws / "src/pkg").mkdir(parents=True)
    (ws / "src/pkg/mod.py").write_text("print('hi')\n")
    (ws / "run.sh").write_bytes(b"#!/bin/sh\necho run\n")
    os.chmod(ws / "run.sh", 0o750)
    (ws / "empty").mkdir()
    os.chmod(ws / "empty", 0o755)
    (ws / "locked").mkdir()
    (ws / "locked/f").write_bytes(b"")
    os.chmod(ws / "locked", 0o550)
    (ws / "big.bin").write_bytes(os.urandom(3 << 20))
    os.utime(ws / "big.bin", ns=(1_000_000_000_123_456_789, 1_000_000_000_123_456_789))
    os.symlink("src/pkg/mod.py", ws / "link-in")
    os.symlink("/etc/passwd", ws / "link-out")
    os.symlink("nowhere", ws / "src/dangling")
    before, rows = checkpoint(ws)

    other = tmp_path / "other"
    other.mkdir()
    (other / "stale").write_bytes(b"from an earlier owner")
    restored = checkpoints.restore(str(other), rows)

    assert restored == before == checkpoints.scan(str(other))
    assert not (other / "stale").exists()
    for path, entry in before.items():
        a, b = ws / path, other / path
        if entry.kind == "file":
            assert b.read_bytes() == a.read_bytes()
            assert os.stat(b).st_mtime_ns == os.stat(a).st_mtime_ns
        if entry.kind == "link":
            assert b.is_symlink() and os.readlink(b) == os.readlink(a)
        assert stat.S_IMODE(os.lstat(b).st_mode) == stat.S_IMODE(os.lstat(a).st_mode)
    assert before["locked"].mode == 0o550 and before["empty"] == Entry("empty", "dir", 0o755, 0, 0)
    assert before["link-out"] == Entry("link-out", "link", 0, 0, 0, "/etc/passwd")
    assert checkpoints.total_bytes(before) == (3 << 20) + 12 + 19


def test_changes_are_exactly_what_changed(ws: Path) -> None:
    for name in ("same", "edit", "gone", "chmod", "file-to-dir", "file-to-link"):
        (ws / name).write_bytes(b"v1")
    for name in ("dir-to-file", "dir-to-link", "olddir"):
        (ws / name).mkdir()
        (ws / name / "inside").write_bytes(b"in")
    os.symlink("a", ws / "retarget")
    os.symlink("a", ws / "link-to-file")
    before = checkpoints.scan(str(ws))
    assert checkpoints.changes(before, before) == ([], [])

    (ws / "edit").write_bytes(b"version 2")
    (ws / "gone").unlink()
    os.chmod(ws / "chmod", 0o640)  # not what any umask gives
    (ws / "new").write_bytes(b"new")
    (ws / "newdir/deep").mkdir(parents=True)
    (ws / "file-to-dir").unlink()
    (ws / "file-to-dir").mkdir()
    (ws / "file-to-dir/child").write_bytes(b"c")
    (ws / "file-to-link").unlink()
    os.symlink("same", ws / "file-to-link")
    for name in ("dir-to-file", "dir-to-link", "olddir"):
        (ws / name / "inside").unlink()
        (ws / name).rmdir()
    (ws / "dir-to-file").write_bytes(b"now a file")
    os.symlink("same", ws / "dir-to-link")
    (ws / "retarget").unlink()
    os.symlink("b", ws / "retarget")
    (ws / "link-to-file").unlink()
    (ws / "link-to-file").write_bytes(b"f")
    now = checkpoints.scan(str(ws))

    changed, removed = checkpoints.changes(before, now)
    assert [e.path for e in changed] == [
        "chmod", "dir-to-file", "dir-to-link", "edit", "file-to-dir", "file-to-dir/child",
        "file-to-link", "link-to-file", "new", "newdir", "newdir/deep", "retarget",
    ]  # fmt: skip
    assert removed == ["olddir/inside", "olddir", "gone", "dir-to-link/inside", "dir-to-file/inside"]
    kinds = {e.path: e.kind for e in changed}
    assert kinds["file-to-dir"] == "dir" and kinds["dir-to-file"] == "file"
    assert kinds["file-to-link"] == kinds["dir-to-link"] == "link"
    assert {e.path: e.target for e in changed}["retarget"] == "b"


def test_changes_are_what_one_turn_did_and_no_more(ws: Path, tmp_path: Path) -> None:
    for i in range(20):
        (ws / f"f{i}").write_bytes(b"%d" % i)
    stored, rows = checkpoint(ws)
    (ws / "f3").write_bytes(b"three, edited")
    changed, removed = checkpoints.changes(stored, checkpoints.scan(str(ws)))
    rows_now, gone = checkpoints.read(str(ws), changed, max_bytes=None)
    assert [(e.path, data) for e, data in rows_now] == [("f3", b"three, edited")] and gone == []
    # The store applies them; a host that claims the session gets the workspace as it is.
    held = {e.path: (e, data) for e, data in rows if e.path not in removed}
    held.update({e.path: (e, data) for e, data in rows_now})
    other = tmp_path / "other"
    other.mkdir()
    assert checkpoints.restore(str(other), held.values()) == checkpoints.scan(str(ws))


# -- what the agent plants --------------------------------------------------------------------


def test_a_link_to_a_secret_is_stored_as_a_link_and_never_read(ws: Path, secret: Path) -> None:
    os.symlink(secret, ws / "innocent.txt")
    os.symlink(secret.parent, ws / "outside-dir")
    manifest, rows = checkpoint(ws)
    assert set(manifest) == {"innocent.txt", "outside-dir"}  # the linked folder is not entered
    assert manifest["innocent.txt"] == Entry("innocent.txt", "link", 0, 0, 0, str(secret))
    assert all(data is None for _, data in rows)
    assert SECRET not in repr(rows).encode()


def test_a_fifo_is_skipped_and_nothing_blocks(ws: Path, tmp_path: Path) -> None:
    os.mkfifo(ws / "pipe")
    (ws / "d").mkdir()
    os.mkfifo(ws / "d/pipe")
    (ws / "ok").write_bytes(b"ok")
    manifest = within(5, lambda: checkpoints.scan(str(ws)), fifo=ws / "pipe")
    assert set(manifest) == {"d", "ok"}
    # The scan saw a file there; the agent put a FIFO in its place before the read.
    rows, gone = within(
        5,
        lambda: checkpoints.read(str(ws), [Entry("pipe", "file", 0o644, 1, 1)], max_bytes=None),
        fifo=ws / "pipe",
    )
    assert rows == [] and gone == ["pipe"]
    # A restore empties a folder holding FIFOs without opening them.
    within(5, lambda: checkpoints.restore(str(ws), [file_row("ok")]), fifo=ws / "d/pipe")
    assert sorted(os.listdir(ws)) == ["ok"]


def test_a_file_swapped_for_a_link_after_the_scan_is_not_followed(ws: Path, secret: Path) -> None:
    (ws / "notes.txt").write_bytes(b"mine")
    (ws / "folder").mkdir()
    (ws / "folder/inner.txt").write_bytes(b"mine too")
    manifest = checkpoints.scan(str(ws))
    (ws / "notes.txt").unlink()
    os.symlink(secret, ws / "notes.txt")
    os.rename(ws / "folder", ws / "moved")
    os.symlink(secret.parent, ws / "folder")
    os.symlink(secret, secret.parent / "inner.txt")
    rows, gone = checkpoints.read(str(ws), sorted(manifest.values(), key=lambda e: e.path),
                                  max_bytes=None)  # fmt: skip
    assert rows == [] and gone == ["folder", "folder/inner.txt", "notes.txt"]
    assert SECRET not in repr(rows).encode()


def test_a_file_that_changed_after_the_scan_is_stored_as_read(ws: Path) -> None:
    (ws / "log").write_bytes(b"short")
    os.chmod(ws / "log", 0o644)
    (ws / "d").mkdir()
    os.chmod(ws / "d", 0o755)
    (ws / "was-a-folder").mkdir()
    (ws / "was-a-folder/inside").write_bytes(b"in")
    (ws / "was-a-file").write_bytes(b"f")
    manifest = checkpoints.scan(str(ws))
    (ws / "log").write_bytes(b"much longer now")
    os.utime(ws / "log", ns=(5, 5))
    os.chmod(ws / "d", 0o700)
    (ws / "was-a-folder/inside").unlink()
    (ws / "was-a-folder").rmdir()
    (ws / "was-a-folder").write_bytes(b"a file now")
    (ws / "was-a-file").unlink()
    (ws / "was-a-file").mkdir()
    entries = sorted(manifest.values(), key=lambda e: e.path)
    rows, gone = checkpoints.read(str(ws), entries, max_bytes=None)
    assert rows == [
        (Entry("d", "dir", 0o700, 0, 0), None),
        (Entry("log", "file", 0o644, 15, 5), b"much longer now"),
    ]
    # Changed kind: stored as removed (a folder stored as a file would sit above its
    # entries); the next checkpoint sees them as new.
    assert gone == ["was-a-file", "was-a-folder", "was-a-folder/inside"]


def test_a_file_that_grew_past_the_limit_after_the_scan_is_too_large(ws: Path) -> None:
    (ws / "grows").write_bytes(b"small")
    manifest = checkpoints.scan(str(ws))
    (ws / "grows").write_bytes(b"x" * 10_000)
    with pytest.raises(TooLarge):
        checkpoints.read(str(ws), manifest.values(), max_bytes=5_000)


def test_too_many_entries_or_folders_too_deep_are_too_large(ws: Path) -> None:
    for i in range(11):
        (ws / f"f{i}").touch()
    with pytest.raises(TooLarge):
        checkpoints.scan(str(ws), max_entries=10)
    deep = ws / "/".join(["d"] * (checkpoints.MAX_DEPTH + 1))
    deep.mkdir(parents=True)
    with pytest.raises(TooLarge):
        checkpoints.scan(str(ws))


def test_names_a_path_cannot_carry_are_left_out(ws: Path) -> None:
    (ws / "line\nbreak").write_bytes(b"x")
    os.mkdir(os.path.join(os.fsencode(ws), b"latin1-\xe9"))
    os.symlink(b"\xff", os.path.join(os.fsencode(ws), b"bad-target"))
    (ws / ".upload-0123").write_bytes(b"an upload in flight")
    (ws / "fine").write_bytes(b"x")
    assert list(checkpoints.scan(str(ws))) == ["fine"]


@SETTINGS
@given(st.text(min_size=1, max_size=300))
def test_the_scan_keeps_exactly_the_names_a_path_can_carry(name: str) -> None:
    assume("/" not in name and name not in (".", ".."))
    try:
        carried = bool(parts_of(name))
    except BadPath:
        carried = False
    assert checkpoints._nameable(name, name) == carried


# -- hostile rows -----------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["../x", "/etc/x", "a/../b", "x\x00y", "a//b", "./a", "", "a/"])
def test_restore_refuses_a_row_that_names_no_path_in_the_workspace(
    ws: Path, tmp_path: Path, path: str
) -> None:
    (ws / "kept").write_bytes(b"kept")
    with pytest.raises(BadPath):
        checkpoints.restore(str(ws), [file_row("fine"), file_row(path)])
    assert os.listdir(ws) == ["kept"]  # refused before anything was touched
    assert sorted(os.listdir(tmp_path)) == ["ws"]


@pytest.mark.parametrize(
    "rows",
    [
        [(Entry("a", "link", 0, 0, 0, "/tmp"), None), file_row("a/b")],
        [file_row("a"), file_row("a/b")],
        [(Entry("a", "link", 0, 0, 0, "/tmp"), None), (Entry("a/b/c", "dir", 0o700, 0, 0), None)],
        [file_row("a/b"), file_row("a/b", b"twice")],
    ],
)
def test_restore_refuses_rows_under_a_link_or_a_file_or_twice(ws: Path, rows: list[Row]) -> None:
    with pytest.raises(BadPath):
        checkpoints.restore(str(ws), rows)
    assert os.listdir(ws) == []


@pytest.mark.parametrize(
    "row",
    [
        (Entry("a", "fifo", 0o644, 0, 0), None),
        (Entry("a", "file", 0o644, 0, 0), None),
        (Entry("a", "dir", 0o755, 0, 0), b"content"),
        (Entry("a", "link", 0, 0, 0, None), None),
        (Entry("a", "link", 0, 0, 0, "x\x00y"), None),
        (Entry("a", "file", 0o644, 0, 10**30), b""),
    ],
)
def test_restore_refuses_a_row_that_describes_nothing(ws: Path, row: Row) -> None:
    with pytest.raises(BadRow):
        checkpoints.restore(str(ws), [row])


def test_restore_over_a_planted_link_writes_inside_the_root(ws: Path, secret: Path) -> None:
    outside = secret.parent
    os.symlink(outside, ws / "a")
    os.symlink(secret, ws / "s")
    os.link(secret, ws / "h")
    manifest = checkpoints.restore(str(ws), [file_row("a/b", b"b"), file_row("s"), file_row("h")])
    assert sorted(os.listdir(outside)) == ["secret"] and secret.read_bytes() == SECRET
    assert (ws / "a").is_dir() and not (ws / "a").is_symlink() and (ws / "a/b").read_bytes() == b"b"
    assert not (ws / "s").is_symlink() and os.stat(ws / "h").st_ino != os.stat(secret).st_ino
    assert sorted(manifest) == ["a", "a/b", "h", "s"]


def test_restore_refuses_a_root_that_is_a_link(tmp_path: Path, secret: Path) -> None:
    os.symlink(secret.parent, tmp_path / "root")
    with pytest.raises(OSError):
        checkpoints.restore(str(tmp_path / "root"), [file_row("x")])
    assert sorted(os.listdir(secret.parent)) == ["secret"]


def test_restore_empties_a_tree_deeper_than_descriptors_would_allow(ws: Path) -> None:
    name = "d" * 20
    fd = os.open(ws, os.O_RDONLY)
    for _ in range(300):  # 6 KB of path, deeper than PATH_MAX: built one level at a time
        os.mkdir(name, dir_fd=fd)
        os.symlink("/", "up", dir_fd=fd)
        child = os.open(name, os.O_RDONLY, dir_fd=fd)
        os.close(fd)
        fd = child
    os.close(fd)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 30, hard))
    try:
        manifest = checkpoints.restore(str(ws), [file_row("only")])
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert list(manifest) == os.listdir(ws) == ["only"]


# -- random trees -----------------------------------------------------------------------------

NAMES = st.sampled_from(["a", "b", "c.txt", "É", "with space", ".hidden", "-x"])
FILE = st.tuples(
    st.just("file"),
    st.binary(max_size=64),
    st.sampled_from([0o600, 0o644, 0o755, 0o700]),
    st.integers(min_value=0, max_value=2_000_000_000_000_000_000),
)
LINK = st.tuples(st.just("link"), st.sampled_from(["a", "../a", "/etc/passwd", "b/c", "É"]))
TREE = st.recursive(
    st.one_of(FILE, LINK),
    lambda inner: st.tuples(
        st.just("dir"), st.sampled_from([0o700, 0o755, 0o750]), st.dictionaries(NAMES, inner, max_size=4)
    ),
    max_leaves=12,
)


def build(folder: Path, children: dict[str, tuple[object, ...]]) -> None:
    for name, node in children.items():
        path = folder / name
        if node[0] == "file":
            _, data, mode, mtime = node
            assert isinstance(data, bytes) and isinstance(mode, int) and isinstance(mtime, int)
            path.write_bytes(data)
            os.chmod(path, mode)
            os.utime(path, ns=(mtime, mtime))
        elif node[0] == "link":
            os.symlink(str(node[1]), path)
        else:
            _, mode, inner = node
            path.mkdir()
            assert isinstance(inner, dict) and isinstance(mode, int)
            build(path, inner)
            os.chmod(path, mode)


@SETTINGS
@given(st.dictionaries(NAMES, TREE, max_size=5))
def test_scan_restore_scan_is_stable_for_any_tree(tree: dict[str, tuple[object, ...]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        source, copy = Path(tmp, "source"), Path(tmp, "copy")
        source.mkdir()
        copy.mkdir()
        build(source, tree)
        manifest, rows = checkpoint(source)
        assert all(parts_of(path) for path in manifest)
        assert checkpoints.restore(str(copy), rows) == manifest == checkpoints.scan(str(copy))
        again, rows_again = checkpoint(copy)
        assert sorted(rows_again, key=lambda r: r[0].path) == sorted(rows, key=lambda r: r[0].path)
        assert checkpoints.changes(manifest, again) == ([], [])
