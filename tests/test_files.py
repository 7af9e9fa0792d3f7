"""Installing downloads into the folder: new names, taken names, planted symlinks,
both ways a download can start (an anonymous O_TMPFILE, or `name.part`)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from p2psync.errors import UnsafeName
from p2psync.files import Folder

from .holders import sha

STYLES = pytest.mark.parametrize("anonymous", [True, False], ids=["anonymous-partials", "named-partials"])


@pytest.fixture
def folder(tmp_path: Path):
    (tmp_path / "dst").mkdir()
    made = Folder(tmp_path / "dst")
    yield made
    made.close()


def _names(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir())


@STYLES
def test_install_bytes_of_a_new_file(folder: Folder, tmp_path: Path, anonymous: bool) -> None:
    folder._anonymous_ok = anonymous
    assert folder.install_bytes("new.txt", b"hello", 1234, sha(b"hello")) is True
    assert (tmp_path / "dst" / "new.txt").read_bytes() == b"hello"
    assert os.stat(tmp_path / "dst" / "new.txt").st_mtime == 1234
    assert _names(tmp_path / "dst") == ["new.txt"]
    # the verified hash is remembered: the next scan reads nothing
    assert folder.scan()["new.txt"].sha256 == sha(b"hello")


@STYLES
@pytest.mark.parametrize(("local_mtime", "replaced"), [(1000, True), (1234, False), (2000, False)])
def test_install_bytes_over_an_existing_file(
    folder: Folder, tmp_path: Path, anonymous: bool, local_mtime: int, replaced: bool
) -> None:
    folder._anonymous_ok = anonymous
    target = tmp_path / "dst" / "f.txt"
    target.write_bytes(b"local")
    os.utime(target, (local_mtime, local_mtime))
    assert folder.install_bytes("f.txt", b"remote", 1234) is replaced
    assert target.read_bytes() == (b"remote" if replaced else b"local")
    assert _names(tmp_path / "dst") == ["f.txt"]  # no partial left either way


@STYLES
def test_install_bytes_replaces_a_symlink_without_following_it(folder: Folder, tmp_path: Path, anonymous: bool) -> None:
    folder._anonymous_ok = anonymous
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"must not change")
    os.symlink(outside, tmp_path / "dst" / "f.txt")
    assert folder.install_bytes("f.txt", b"remote", 1234) is True
    assert outside.read_bytes() == b"must not change"
    assert not (tmp_path / "dst" / "f.txt").is_symlink()
    assert (tmp_path / "dst" / "f.txt").read_bytes() == b"remote"


@pytest.mark.parametrize("name", ["../escape.txt", "sub/inner.txt", "code.py", "x.part", ""])
def test_install_bytes_refuses_names_it_may_not_write(folder: Folder, tmp_path: Path, name: str) -> None:
    with pytest.raises(UnsafeName):
        folder.install_bytes(name, b"x", 1234)
    assert _names(tmp_path / "dst") == []
    assert _names(tmp_path) == ["dst"]
