"""A download in progress: written where no one sees it, installed in one step
with its mtime and mode set, and only over the file the decision looked at."""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from typing import TYPE_CHECKING, Any

from p2psync.ignore import STATE_DIR
from p2psync.paths import PART_SUFFIX
from p2psync.sync.versions import Vector

from .fileops import ANY, HASH_CHUNK_BYTES, O_CLOEXEC, O_NOFOLLOW, file_key, reserve_space, sync_mode

if TYPE_CHECKING:
    from .folder import Folder

PARTIAL_SUFFIX = ".partial"  # a kept partial download in the state folder: SHA256.partial
_RESERVE_MIN_BYTES = 1 << 20  # below this, allocating ahead costs a syscall and saves nothing


class PartialFile:
    """A download in progress: write at `fd` (positioned at `offset`), then `commit(mtime)`."""

    def __init__(self, folder: Folder, name: str, state_fd: int | None, sha256: str | None, expect: Any) -> None:
        self.folder = folder
        self.name = name
        self.sha256 = sha256
        self.expect = expect
        self._state_fd = state_fd
        self._anonymous = False  # an O_TMPFILE with no name yet: named only by `commit`
        self._done = False
        self.fd = -1
        # The folder the file goes in, held open: the path cannot be swapped under it.
        with folder._parent(name, create=True) as (parent_fd, self.leaf):
            self._parent_fd = os.dup(parent_fd)
        try:
            if state_fd is not None and sha256 is not None:
                self._dir_fd, self.part_name, self._keep = state_fd, sha256 + PARTIAL_SUFFIX, True
                self.fd = os.open(
                    self.part_name, os.O_RDWR | os.O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0o600, dir_fd=state_fd
                )
                self.offset = os.lseek(self.fd, 0, os.SEEK_END)
            else:
                self._dir_fd, self.part_name, self._keep = self._parent_fd, self.leaf + PART_SUFFIX, False
                self.fd = folder._open_anonymous(self._parent_fd)
                self._anonymous = self.fd >= 0
                if not self._anonymous:
                    flags = os.O_RDWR | os.O_CREAT | os.O_TRUNC | O_NOFOLLOW | O_CLOEXEC
                    self.fd = os.open(self.part_name, flags, 0o666, dir_fd=self._parent_fd)
                self.offset = 0
        except BaseException:
            os.close(self._parent_fd)
            raise

    def feed_prefix(self, hasher: Any) -> None:
        """Hash the `offset` bytes already on disk (before resuming after them)."""
        position = 0
        while position < self.offset:
            chunk = os.pread(self.fd, min(HASH_CHUNK_BYTES, self.offset - position), position)
            if not chunk:
                raise OSError(errno.EIO, "partial download shrank while being resumed")
            hasher.update(chunk)
            position += len(chunk)

    def reserve(self, nbytes: int, at: int | None = None) -> None:
        """Allocate the disk space for `nbytes` more (from `at`, by default the
        offset), before they arrive: a full disk fails now rather than midway,
        and the file is laid out in one piece (measured: ~1.3x faster large
        receives here). A kept partial keeps its size at what was written, so
        one left by a kill -9 resumes after its bytes. Skipped for small files
        and where the filesystem cannot do it."""
        if nbytes >= _RESERVE_MIN_BYTES:
            reserve_space(self.fd, self.offset if at is None else at, nbytes, keep_size=self._keep)

    def restart(self, keep: int = 0) -> None:
        """Throw away what was kept past its first `keep` bytes (by default all of
        it) and go on from there."""
        os.ftruncate(self.fd, keep)
        os.lseek(self.fd, keep, os.SEEK_SET)
        self.offset = keep

    def abandon(self) -> None:
        """These bytes are wrong (bad hash or size): delete them, never resume them."""
        self._keep = False

    def commit(self, mtime: int, mode: int | None = None, vector: Vector = ()) -> bool:
        """Install the download as `name` with `mtime` and `mode` (see `sync_mode`),
        atomically. The caller has verified the bytes against `sha256`, when there is one.

        Returns False (and installs nothing) when the file under the name is not
        the one `expect` allows replacing: a local edit made since the decision
        (or, under the classic rule, a local file as new as `mtime`) is never
        overwritten.
        """
        os.fchmod(self.fd, sync_mode(mode))  # a kept partial was made 0600; a classic source's gets the default
        os.utime(self.fd, (mtime, mtime))  # before the rename: no moment with a wrong mtime
        installed = os.fstat(self.fd)  # the rename keeps inode and mtime: the scan's cache key
        if self._anonymous and self.expect in (ANY, None) and self._link_as(self.leaf):
            self._done = True  # the usual case, a file new here: one link, which cannot replace anything
        else:
            if self._anonymous:  # the name is taken: name the download `name.part`, then as below
                self._link_as(self.part_name, replace=True)
                self._anonymous = False
            os.close(self.fd)
            self.fd = -1
            if not self._may_replace(mtime):
                self._keep = False
                return False
            os.replace(self.part_name, self.leaf, src_dir_fd=self._dir_fd, dst_dir_fd=self._parent_fd)
            self._done = True
        self.folder._installed([(self.name, file_key(installed), sync_mode(mode), self.sha256, mtime, vector)])
        return True

    def _may_replace(self, mtime: int) -> bool:
        """Whether what is under the name now may be replaced (see `commit`)."""
        try:
            current: os.stat_result | None = os.stat(self.leaf, dir_fd=self._parent_fd, follow_symlinks=False)
        except FileNotFoundError:
            current = None
        if self.expect is ANY:  # the classic rule: never over a local file as new
            return current is None or not stat.S_ISREG(current.st_mode) or current.st_mtime_ns // 10**9 < mtime
        if current is None or not stat.S_ISREG(current.st_mode):
            # Absent, or a symlink or other non-file, which is replaced, never followed: fine
            # where nothing was expected; where a file was, the user moved it meanwhile.
            return self.expect is None
        return bool(file_key(current) == self.expect)

    def _link_as(self, name: str, replace: bool = False) -> bool:
        """Give the anonymous download the name `name`; False if it is taken
        (with `replace`, whatever holds a `.part` name is removed first: a leftover,
        or a planted symlink, which is unlinked, never followed)."""
        path = f"/proc/self/fd/{self.fd}"
        try:
            os.link(path, name, dst_dir_fd=self._parent_fd, follow_symlinks=True)
        except FileExistsError:
            if not replace:
                return False
            os.unlink(name, dir_fd=self._parent_fd)
            os.link(path, name, dst_dir_fd=self._parent_fd, follow_symlinks=True)
        return True

    def close(self) -> None:
        """Close; remove the partial unless committed or kept for a resume."""
        if self.fd >= 0:
            size = os.lseek(self.fd, 0, os.SEEK_CUR)  # what was written, whatever `reserve` allocated
            if self._keep and not self._done and size:
                os.ftruncate(self.fd, size)  # a kept partial's size is the offset to resume from
            os.close(self.fd)
            self.fd = -1
            if self._keep and size > 0:
                self._done = True  # kept: a later fetch of this version resumes it
        if not self._done and not self._anonymous:  # an anonymous file vanishes with its fd
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.part_name, dir_fd=self._dir_fd)
            self._done = True
        if self._parent_fd >= 0:
            os.close(self._parent_fd)
            self._parent_fd = -1
        if self._state_fd is not None:
            os.close(self._state_fd)
            self._state_fd = None
            with contextlib.suppress(OSError):  # leave no empty state folder behind
                os.rmdir(STATE_DIR, dir_fd=self.folder._dir_fd)
