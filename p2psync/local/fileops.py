"""Low-level file operations the folder code shares: open flags that never
follow a symlink, the permission bits that sync, the (size, mtime_ns, inode)
key a file is recognised by, hashing and copying a descriptor."""

from __future__ import annotations

import errno
import functools
import hashlib
import os
from typing import Any

HASH_CHUNK_BYTES = 1 << 20
O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
O_TMPFILE = getattr(os, "O_TMPFILE", 0)
DIR_FLAGS = os.O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC
MODE_BITS = 0o777  # permission bits that sync; never setuid, setgid or sticky
_UMASK = os.umask(0o022)
os.umask(_UMASK)  # read once: the umask can only be read by setting it
DEFAULT_MODE = 0o666 & ~_UMASK  # what a classic holder's file gets: what a new file here would

Key = tuple[int, int, int]  # size, mtime_ns, inode: a file unchanged since it was hashed


class _Any:
    def __repr__(self) -> str:
        return "ANY"


ANY: Any = _Any()  # `expect` for installs under the classic rule: replace only an older file


def file_key(st: os.stat_result) -> Key:
    return st.st_size, st.st_mtime_ns, st.st_ino


def sync_mode(mode: int | None) -> int:
    """The permission bits a file gets: the source's, less setuid, setgid and sticky;
    a classic source's file gets what a new file here would (0666 less the umask)."""
    return DEFAULT_MODE if mode is None else mode & MODE_BITS


_FALLOC_FL_KEEP_SIZE = 1  # linux/falloc.h
_NO_SPACE_RESERVE = (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS)  # the filesystem cannot: write as it comes


@functools.cache  # looked up at the first use: ctypes is ~2 ms of every start otherwise
def _libc_fallocate() -> Any:
    """fallocate(2) from the C library, or None where there is none (os has only
    posix_fallocate, which grows the file)."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
    # fallocate64 takes 64-bit offsets on every ABI (fallocate's off_t is 32-bit on some).
    fallocate = getattr(libc, "fallocate64", None) or getattr(libc, "fallocate", None)
    if fallocate is None:
        return None
    fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    fallocate.restype = ctypes.c_int
    return fallocate


def _ctypes_errno() -> int:
    import ctypes  # loaded by _libc_fallocate already

    return ctypes.get_errno()


def reserve_space(fd: int, offset: int, length: int, keep_size: bool = False) -> None:
    """Allocate `length` bytes of disk from `offset` of `fd` before they are written:
    a full disk fails now rather than midway (`OSError` ENOSPC), and the file is
    laid out in one piece. With `keep_size` the file's size stays what was written
    (a partial killed midway is then exactly its written bytes, the offset to
    resume from); where that cannot be done nothing is reserved. Where the
    filesystem cannot allocate ahead, this does nothing."""
    if keep_size:
        fallocate = _libc_fallocate()
        if fallocate is None:
            return
        if fallocate(fd, _FALLOC_FL_KEEP_SIZE, offset, length) != 0:
            code = _ctypes_errno()
            if code not in _NO_SPACE_RESERVE:
                raise OSError(code, os.strerror(code))
        return
    if hasattr(os, "posix_fallocate"):
        try:
            os.posix_fallocate(fd, offset, length)
        except OSError as exc:
            if exc.errno not in _NO_SPACE_RESERVE:
                raise


def write_all(fd: int, data: bytes | memoryview) -> None:
    with memoryview(data) as view:
        while view:
            view = view[os.write(fd, view) :]


def hash_fd(fd: int) -> str:
    hasher = hashlib.sha256()
    with open(fd, "rb", buffering=0, closefd=False) as file:
        while chunk := file.read(HASH_CHUNK_BYTES):
            hasher.update(chunk)
    return hasher.hexdigest()


def copy_between(src: int, src_offset: int, dst: int, dst_offset: int, size: int) -> None:
    """Copy `size` bytes from `src_offset` of `src` to `dst_offset` of `dst`, in the
    kernel where it can (`copy_file_range`: no copy through this process, shared
    blocks on filesystems with reflinks). Leaves both files' positions alone."""
    done = 0
    copy = getattr(os, "copy_file_range", None)
    while done < size:
        if copy is not None:
            try:
                n = copy(src, dst, size - done, src_offset + done, dst_offset + done)
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
                    raise
                copy = None
                continue
        else:
            chunk = os.pread(src, min(HASH_CHUNK_BYTES, size - done), src_offset + done)
            n = os.pwrite(dst, chunk, dst_offset + done) if chunk else 0
        if n == 0:
            raise OSError(errno.EIO, "source shrank while being copied")
        done += n


def copy_range(src: int, dst: int, size: int) -> None:
    """Copy `size` bytes from the start of `src` to `dst` (see `copy_between`),
    leaving `dst` positioned after them."""
    copy_between(src, 0, dst, 0, size)
    os.lseek(dst, size, os.SEEK_SET)
