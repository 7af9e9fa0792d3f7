"""Installing downloads into the folder: new names, taken names, planted symlinks,
both ways a download can start (an anonymous O_TMPFILE, or `name.part`)."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from p2psync.errors import UnsafeName
from p2psync.ignore import IgnoreRules
from p2psync.local import Folder, OpenFolders
from p2psync.local.fileops import reserve_space

from .holders import sha

pytestmark = pytest.mark.usefixtures("backend")  # new names are created by the core's link_new_files

STYLES = pytest.mark.parametrize("anonymous", [True, False], ids=["anonymous-partials", "named-partials"])


@pytest.fixture
def folder(tmp_path: Path):
    (tmp_path / "dst").mkdir()
    made = Folder(tmp_path / "dst")
    yield made
    made.close()


def _install_one(folder: Folder, name: str, data: bytes, mtime: int, sha256: str | None = None) -> bool:
    """Whether `install_many` installed this one download."""
    return folder.install_many([(name, data, mtime, sha256)]) == [True]


def _names(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir())


@STYLES
def test_installing_of_a_new_file(folder: Folder, tmp_path: Path, anonymous: bool) -> None:
    folder._anonymous_ok = anonymous
    assert _install_one(folder, "new.txt", b"hello", 1234, sha(b"hello")) is True
    assert (tmp_path / "dst" / "new.txt").read_bytes() == b"hello"
    assert os.stat(tmp_path / "dst" / "new.txt").st_mtime == 1234
    assert _names(tmp_path / "dst") == ["new.txt"]
    # the verified hash is remembered: the next scan reads nothing
    assert folder.scan()["new.txt"].sha256 == sha(b"hello")


@STYLES
@pytest.mark.parametrize(("local_mtime", "replaced"), [(1000, True), (1234, False), (2000, False)])
def test_installing_over_an_existing_file(
    folder: Folder, tmp_path: Path, anonymous: bool, local_mtime: int, replaced: bool
) -> None:
    folder._anonymous_ok = anonymous
    target = tmp_path / "dst" / "f.txt"
    target.write_bytes(b"local")
    os.utime(target, (local_mtime, local_mtime))
    assert _install_one(folder, "f.txt", b"remote", 1234) is replaced
    assert target.read_bytes() == (b"remote" if replaced else b"local")
    assert _names(tmp_path / "dst") == ["f.txt"]  # no partial left either way


@STYLES
def test_installing_replaces_a_symlink_without_following_it(folder: Folder, tmp_path: Path, anonymous: bool) -> None:
    folder._anonymous_ok = anonymous
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"must not change")
    os.symlink(outside, tmp_path / "dst" / "f.txt")
    assert _install_one(folder, "f.txt", b"remote", 1234) is True
    assert outside.read_bytes() == b"must not change"
    assert not (tmp_path / "dst" / "f.txt").is_symlink()
    assert (tmp_path / "dst" / "f.txt").read_bytes() == b"remote"


@pytest.mark.parametrize("name", ["../escape.txt", "sub/inner.txt", "code.py", "x.part", ""])
def test_installing_refuses_names_it_may_not_write(folder: Folder, tmp_path: Path, name: str) -> None:
    with pytest.raises(UnsafeName):
        _install_one(folder, name, b"x", 1234)
    assert _names(tmp_path / "dst") == []
    assert _names(tmp_path) == ["dst"]


def test_install_many_installs_what_it_can_and_counts_it(folder: Folder, tmp_path: Path) -> None:
    dst = tmp_path / "dst"
    (dst / "newer.txt").write_bytes(b"local")
    os.utime(dst / "newer.txt", (5000, 5000))
    downloads = [(f"n{i}.txt", b"%d" % i, 1000 + i, sha(b"%d" % i)) for i in range(50)]
    downloads.insert(10, ("newer.txt", b"remote", 1234, None))  # a newer local file stays
    assert sum(folder.install_many(downloads)) == 50
    assert (dst / "newer.txt").read_bytes() == b"local"
    for i in range(50):
        assert (dst / f"n{i}.txt").read_bytes() == b"%d" % i
        assert os.stat(dst / f"n{i}.txt").st_mtime == 1000 + i
    scanned = folder.scan()
    assert all(scanned[f"n{i}.txt"].sha256 == sha(b"%d" % i) for i in range(50))


# ------------------------------------------------------------------ the core's half: link_new_files


def _dir(path: Path) -> int:
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY)


def test_link_new_files_creates_each_complete_with_its_mtime(impl, tmp_path: Path) -> None:
    fd = _dir(tmp_path)
    try:
        files = [(b"a.bin", os.urandom(5000), 1000), (b"empty", b"", 2000), (b"b.bin", b"x" * 70000, 3000)]
        inodes = impl.link_new_files(fd, files)
    finally:
        os.close(fd)
    assert [os.stat(tmp_path / n.decode()).st_ino for n, _, _ in files] == inodes
    for name, data, mtime in files:
        assert (tmp_path / name.decode()).read_bytes() == data
        assert os.stat(tmp_path / name.decode()).st_mtime_ns == mtime * 1_000_000_000


def test_link_new_files_gives_each_its_mode_whatever_the_umask(impl, tmp_path: Path) -> None:
    """Created with its mode, chmodded only where the umask took bits off: the
    result is the mode asked for either way, and 0666 less the umask without one."""
    old = os.umask(0o027)
    fd = _dir(tmp_path)
    try:
        files = [(b"open", b"1", 1, 0o666), (b"kept", b"2", 1, 0o640), (b"bare", b"3", 1, 0), (b"none", b"4", 1, -1)]
        assert all(n > 0 for n in impl.link_new_files(fd, files))
    finally:
        os.close(fd)
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    assert modes == {"open": 0o666, "kept": 0o640, "bare": 0, "none": 0o640}


def test_link_new_files_never_replaces_and_leaves_nothing(impl, tmp_path: Path) -> None:
    (tmp_path / "taken").write_bytes(b"old")
    os.symlink(tmp_path / "nowhere", tmp_path / "dangling")
    fd = _dir(tmp_path)
    try:
        results = impl.link_new_files(fd, [(b"taken", b"new", 1), (b"dangling", b"new", 1), (b"free", b"new", 1)])
    finally:
        os.close(fd)
    assert results[:2] == [0, 0] and results[2] > 0
    assert (tmp_path / "taken").read_bytes() == b"old"
    assert not (tmp_path / "nowhere").exists()  # the symlink was not followed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dangling", "free", "taken"]


def test_link_new_files_stops_at_the_first_failure(impl, tmp_path: Path) -> None:
    fd = _dir(tmp_path)
    try:
        results = impl.link_new_files(fd, [(b"one", b"1", 1), (b"no/such/dir", b"2", 1), (b"three", b"3", 1)])
        assert impl.link_new_files(fd, []) == []
    finally:
        os.close(fd)
    assert results[0] > 0 and results[1] == -errno.ENOENT and len(results) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one"]
    assert impl.link_new_files(-1, [(b"x", b"", 1)]) == [-errno.EBADF]


# ------------------------------------------------------------------ the core's half of serving: read_small_file


def test_read_small_file_gives_the_whole_reply_and_the_files_key(impl, tmp_path: Path) -> None:
    data = os.urandom(5000)
    (tmp_path / "a.bin").write_bytes(data)
    (tmp_path / "empty").write_bytes(b"")
    fd = _dir(tmp_path)
    try:
        got = impl.read_small_file(fd, b"a.bin", 5000)
        empty = impl.read_small_file(fd, b"empty", 0)
    finally:
        os.close(fd)
    st = os.stat(tmp_path / "a.bin")
    assert got == (b"Content-Length: 5000\n" + data, 5000, st.st_mtime_ns, st.st_ino)
    assert empty is not None and empty[:2] == (b"Content-Length: 0\n", 0)


def test_read_small_file_leaves_large_files_folders_and_fifos_to_the_slower_way(impl, tmp_path: Path) -> None:
    (tmp_path / "big").write_bytes(b"x" * 101)
    (tmp_path / "sub").mkdir()
    os.mkfifo(tmp_path / "fifo")  # opened without waiting for a writer, then seen not to be a file
    fd = _dir(tmp_path)
    try:
        assert [impl.read_small_file(fd, name, 100) for name in (b"big", b"sub", b"fifo")] == [None, None, None]
        assert impl.read_small_file(fd, b"big", 101) is not None
    finally:
        os.close(fd)


def test_read_small_file_never_follows_a_symlink_and_says_what_is_missing(impl, tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("outside")
    os.symlink(tmp_path / "secret", tmp_path / "link")
    fd = _dir(tmp_path)
    try:
        with pytest.raises(OSError) as followed:
            impl.read_small_file(fd, b"link", 100)
        with pytest.raises(FileNotFoundError):
            impl.read_small_file(fd, b"missing", 100)
    finally:
        os.close(fd)
    assert followed.value.errno == errno.ELOOP
    with pytest.raises(OSError) as bad_fd:
        impl.read_small_file(-1, b"secret", 100)
    assert bad_fd.value.errno == errno.EBADF


def test_paths_through_missing_folders_files_and_symlinks_leak_or_close_no_descriptor(
    folder: Folder, tmp_path: Path
) -> None:
    """Every way a path can fail to resolve (a folder missing, a file or a symlink
    where a folder should be) closes what it opened, once: closing a descriptor
    twice would close whatever reused its number."""
    dst = tmp_path / "dst"
    (dst / "real").mkdir()
    (dst / "real/file.txt").write_text("x")
    (dst / "afile").write_text("x")
    os.symlink(tmp_path, dst / "link")
    before = sorted(os.listdir("/proc/self/fd"))
    for path in ("missing/a/b.txt", "real/missing/b.txt", "afile/b.txt", "link/b.txt", "real/file.txt/x"):
        assert folder.stat(path) is None
        with pytest.raises((OSError, UnsafeName)):
            folder.open_for_serving(path)
    assert folder.stat("real/file.txt") is not None
    assert sorted(os.listdir("/proc/self/fd")) == before


def test_folders_kept_open_for_a_burst_refuse_symlinks_and_close_everything(tmp_path: Path) -> None:
    """A server keeps subfolder descriptors for a burst of requests: every way a path
    can fail still fails, a folder swapped for a symlink is not followed by the
    next burst, and closing the burst closes every descriptor it opened, once."""
    dst = tmp_path / "dst"
    (dst / "real").mkdir(parents=True)
    (dst / "real/a.txt").write_text("a")
    (dst / "real/b.txt").write_text("b")
    (dst / "afile").write_text("x")
    os.symlink(tmp_path, dst / "link")
    (tmp_path / "b.txt").write_text("outside the folder")
    tree_folder = Folder(dst, IgnoreRules.tree())
    before = sorted(os.listdir("/proc/self/fd"))
    burst = OpenFolders(tree_folder)
    try:
        for name, body in (("real/a.txt", b"a"), ("real/b.txt", b"b")):
            fd, _ = tree_folder.open_for_serving(name, burst)
            assert os.pread(fd, 10, 0) == body
            os.close(fd)
        for path in ("missing/a/b.txt", "real/missing/b.txt", "afile/b.txt", "link/b.txt", "real/a.txt/x"):
            with pytest.raises((OSError, UnsafeName)):
                tree_folder.open_for_serving(path, burst)
        burst.close()
        os.rename(dst / "real", tmp_path / "moved")  # between two bursts: a symlink out of the folder
        os.symlink(tmp_path, dst / "real")
        with pytest.raises(UnsafeName, match="not a folder here"):
            tree_folder.open_for_serving("real/b.txt", burst)
        burst.close()
        assert sorted(os.listdir("/proc/self/fd")) == before
    finally:
        tree_folder.close()


def test_a_conflict_copy_never_replaces_another(folder: Folder, tmp_path: Path) -> None:
    dst = tmp_path / "dst"
    (dst / "d").mkdir()
    (dst / "d/f.txt").write_text("second loser")
    (dst / "d/f.conflict-0").write_text("first loser, kept earlier")
    got = folder.keep_aside("d/f.txt", lambda n: f"d/f.conflict-{n}")
    assert got == "d/f.conflict-1"
    assert (dst / "d/f.conflict-0").read_text() == "first loser, kept earlier"
    assert (dst / "d/f.conflict-1").read_text() == "second loser"
    assert not (dst / "d/f.txt").exists()


def test_a_conflict_copy_cut_off_by_a_kill_is_finished_not_made_twice(folder: Folder, tmp_path: Path) -> None:
    dst = tmp_path / "dst"
    (dst / "f.txt").write_text("the losing edit")
    os.link(dst / "f.txt", dst / "f.conflict-0")  # linked aside, then killed before the unlink
    assert folder.keep_aside("f.txt", lambda n: f"f.conflict-{n}") == "f.conflict-0"
    assert _names(dst) == ["f.conflict-0"] and (dst / "f.conflict-0").read_text() == "the losing edit"


def test_space_reserved_for_a_kept_partial_leaves_its_size_at_what_was_written(tmp_path: Path) -> None:
    path = tmp_path / "x.partial"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.write(fd, b"written")
        reserve_space(fd, 7, 8 << 20, keep_size=True)
        assert os.fstat(fd).st_size == 7  # a kill now leaves exactly the written bytes
        reserve_space(fd, 7, 8 << 20)
        assert os.fstat(fd).st_size == 7 + (8 << 20)  # without keep_size the file grows (posix_fallocate)
    finally:
        os.close(fd)
    assert path.read_bytes()[:7] == b"written"
