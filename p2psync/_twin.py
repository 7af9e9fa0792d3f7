"""Pure-Python twin of the `p2psync._speedups` extension: same names, same behaviour.

This module is the readable specification of the accelerated core; the Cython
source in `ext/_speedups.pyx` must behave identically (a property test feeds
both the same streams and demands the same lines, remainders and errors).

Strategy: the line splitter keeps one `bytearray` with a read offset, never
rescans bytes it already searched, and compacts once per `feed`, not per line.
The copy loops move bytes through one reusable buffer (`recv_into` + `os.write`)
and use `sendfile` to send, so the big copy is bound by system calls in both
backends.
"""

from __future__ import annotations

import os
import socket
import stat
from collections.abc import Sequence
from typing import Protocol

from .chunking import AVG_CHUNK, GEAR, MASK_L, MASK_S, MAX_CHUNK, MIN_CHUNK
from .errors import ConnectionClosed, ProtocolError, TransferError, send_failed

__all__ = [
    "MAX_LINE_BYTES",
    "RECV_BUFFER_BYTES",
    "Buffer",
    "Chunker",
    "LineSplitter",
    "chunk_lengths",
    "link_new_files",
    "read_small_file",
    "recv_to_file",
    "send_from_file",
]

MAX_LINE_BYTES = 64 * 1024  # default bound on one line, without its newline
RECV_BUFFER_BYTES = 1024 * 1024  # the one buffer a receive moves bytes through (1 MiB: measured best)
_QUOTED_BYTES = 100  # how much of an overlong line an error quotes
_O_TMPFILE = getattr(os, "O_TMPFILE", 0)


class _Hasher(Protocol):
    def update(self, data: bytes | memoryview, /) -> None: ...


class _Pending(Protocol):
    def take(self, limit: int) -> bytes: ...


def _too_long(data: bytes | bytearray, max_line: int) -> ProtocolError:
    head = bytes(data[:_QUOTED_BYTES])
    return ProtocolError(f"line longer than {max_line} bytes without a newline (starts {head!r})")


class LineSplitter:
    """Splits a byte stream into `\\n`-terminated lines, sans-IO.

    `feed(data)` appends received bytes; `next_line()` returns the next complete
    line without its `\\n`, or None when no full line is buffered yet. A line
    longer than `max_line` bytes (or unterminated data past that bound) raises
    `ProtocolError` from `next_line()` instead of growing without end; the
    splitter is then left as it was, to be thrown away with its connection.
    """

    __slots__ = ("_buf", "_scan", "_start", "max_line")

    def __init__(self, max_line: int = MAX_LINE_BYTES) -> None:
        if max_line < 1:
            raise ValueError(f"max_line must be positive, got {max_line}")
        self.max_line = max_line
        self._buf = bytearray()
        self._start = 0  # first byte not yet returned
        self._scan = 0  # bytes before this index hold no newline past _start

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Append received bytes (compacting consumed ones first, once per feed)."""
        if self._start:
            del self._buf[: self._start]
            self._scan -= self._start
            self._start = 0
        self._buf += data

    def next_line(self) -> bytes | None:
        """The next complete line without its `\\n`, or None if none is buffered.

        Raises `ProtocolError` for a line over `max_line` bytes.
        """
        buf = self._buf
        end = buf.find(b"\n", self._scan)
        if end < 0:
            self._scan = len(buf)
            if len(buf) - self._start > self.max_line:
                raise _too_long(buf[self._start : self._start + _QUOTED_BYTES], self.max_line)
            return None
        start = self._start
        if end - start > self.max_line:
            raise _too_long(buf[start : min(end, start + _QUOTED_BYTES)], self.max_line)
        self._start = self._scan = end + 1
        return bytes(buf[start:end])

    def lines(self) -> list[bytes]:
        """Every complete line buffered now: what calling `next_line()` until it
        returns None would give. Raises what `next_line()` raises, at the same
        point (lines before a too-long one are consumed and lost with it).
        """
        buf = self._buf
        start = self._start
        last = buf.rfind(b"\n", self._scan)
        if last < 0:
            self.next_line()  # no full line: only the bound check is left to do
            return []
        with memoryview(buf) as view:
            found = bytes(view[start:last]).split(b"\n")  # one copy, one C call
        # The lines' bytes add up to (last - start) minus the newlines; when that
        # is within the bound, so is every line, and none needs measuring.
        if (last - start) - (len(found) - 1) > self.max_line and max(map(len, found)) > self.max_line:
            out = []  # a line is too long: the line-by-line path finds which, and raises there
            while (line := self.next_line()) is not None:
                out.append(line)
            return out
        self._start = last + 1
        self._scan = len(buf)  # rfind already searched the tail
        if len(buf) - self._start > self.max_line:
            raise _too_long(buf[self._start : self._start + _QUOTED_BYTES], self.max_line)
        return found

    def take(self, limit: int) -> bytes:
        """Remove and return up to `limit` buffered bytes not yet returned as lines."""
        start = self._start
        chunk = bytes(self._buf[start : start + limit])
        self._start += len(chunk)
        self._scan = max(self._scan, self._start)
        return chunk

    @property
    def pending(self) -> bytes:
        """Bytes received but not yet returned as a line."""
        return bytes(self._buf[self._start :])

    @property
    def pending_bytes(self) -> int:
        """How many bytes `pending` holds, without copying them."""
        return len(self._buf) - self._start


class Buffer:
    """The classic `Buffer(sock, size)`: lines read from a socket.

    `get_line()` returns the next line as `str` without its `\\n`, receiving
    `size` bytes at a time as needed; `buffer` holds the bytes received past
    that line. Raises `ConnectionClosed` when the peer closes between lines,
    `ProtocolError` when it closes mid-line or a line passes `max_line`; socket
    errors and timeouts propagate as `OSError`.
    """

    __slots__ = ("_splitter", "size", "sock")

    def __init__(self, sock: socket.socket, size: int = 8192, max_line: int = MAX_LINE_BYTES) -> None:
        self.sock = sock
        self.size = size
        self._splitter = LineSplitter(max_line)

    @property
    def buffer(self) -> bytes:
        """Bytes received past the last line returned."""
        return self._splitter.pending

    @buffer.setter
    def buffer(self, data: bytes) -> None:
        max_line = self._splitter.max_line
        self._splitter = LineSplitter(max_line)
        self._splitter.feed(data)

    def poll_line(self) -> bytes | None:
        """The next line if it is already received, else None; never touches the
        socket (a server answering pipelined requests sends its replies together
        when the client has asked for nothing more yet). Raises `ProtocolError`
        for a line over `max_line`."""
        return self._splitter.next_line()

    def read_line(self) -> bytes:
        """The next line as bytes, without its `\\n`."""
        splitter = self._splitter
        while (line := splitter.next_line()) is None:
            data = self.sock.recv(self.size)
            if not data:
                held = len(splitter.pending)
                if held:
                    raise ProtocolError(f"connection closed in the middle of a line ({held} bytes without a newline)")
                raise ConnectionClosed("connection closed by the other side")
            splitter.feed(data)
        return line

    def get_line(self) -> str:
        """The next line as `str`, without its `\\n`. Raises `ProtocolError` if not UTF-8."""
        line = self.read_line()
        try:
            return line.decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError(f"line is not UTF-8: {line[:_QUOTED_BYTES]!r}") from None

    def take(self, limit: int) -> bytes:
        """Remove and return up to `limit` bytes received past the last line."""
        return self._splitter.take(limit)

    def read_replies(self, sizes: Sequence[int], bodies: list[bytes]) -> bytes | None:
        """Read pipelined replies, one for each of `sizes` in turn, while each is
        exactly `Content-Length: N` (N the size expected) and its N bytes; each
        body is appended to `bodies` as soon as it is whole. Returns None when
        all arrived, or the first reply line that is not that header (consumed:
        a refusal, another size, or a spelling only `decode_reply` reads).

        Raises what `read_line` raises while waiting for a header, and
        `TransferError` when the stream ends, times out or fails inside a body;
        `bodies` keeps those that came whole before.
        """
        splitter = self._splitter
        for size in sizes:
            if size < 0:
                raise ValueError(f"negative reply size {size}")
            line = self.read_line()
            if line != b"Content-Length: %d" % size:
                return line
            while (held := splitter.pending_bytes) < size:
                try:
                    data = self.sock.recv(max(self.size, size - held))
                except TimeoutError:
                    raise TransferError(f"timed out after {held} of {size} bytes") from None
                except OSError as exc:
                    raise TransferError(f"receive failed after {held} of {size} bytes: {exc.strerror or exc}") from None
                if not data:
                    raise TransferError(f"connection closed after {held} of {size} bytes")
                splitter.feed(data)
            bodies.append(splitter.take(size))
        return None


def _write_all(fd: int, view: memoryview) -> None:
    while view:
        written = os.write(fd, view)
        view = view[written:]


def recv_to_file(
    sock: socket.socket,
    fd: int,
    nbytes: int,
    pending: _Pending | None = None,
    hasher: _Hasher | None = None,
    buffer_size: int = RECV_BUFFER_BYTES,
) -> int:
    """Receive exactly `nbytes` from `sock` and write them to file descriptor `fd`.

    Bytes already buffered in `pending` (a `Buffer` or `LineSplitter`, e.g. the
    one that read the `Content-Length` header) are used first. Every byte also
    goes to `hasher.update` if given. Returns `nbytes`.

    Raises `TransferError` if the stream ends early, times out (the socket's own
    timeout, per receive) or fails; `OSError` if writing the file fails (the
    caller removes its partial file either way).
    """
    if nbytes < 0:
        raise ValueError(f"negative byte count {nbytes}")
    done = 0
    if pending is not None and nbytes:
        head = pending.take(nbytes)
        if head:
            _write_all(fd, memoryview(head))
            if hasher is not None:
                hasher.update(head)
            done = len(head)
    if done == nbytes:
        return nbytes
    buf = bytearray(min(buffer_size, nbytes - done))
    view = memoryview(buf)
    while done < nbytes:
        want = nbytes - done
        target = view if want >= len(view) else view[:want]
        try:
            got = sock.recv_into(target)
        except TimeoutError:
            raise TransferError(f"timed out after {done} of {nbytes} bytes") from None
        except OSError as exc:
            raise TransferError(f"receive failed after {done} of {nbytes} bytes: {exc.strerror or exc}") from None
        if not got:
            raise TransferError(f"connection closed after {done} of {nbytes} bytes")
        chunk = target if got == len(target) else view[:got]
        _write_all(fd, chunk)
        if hasher is not None:
            hasher.update(chunk)
        done += got
    return nbytes


def send_from_file(sock: socket.socket, fd: int, offset: int, nbytes: int) -> int:
    """Send exactly `nbytes` of file descriptor `fd`, from `offset`, to `sock`.

    Uses `sendfile` where the platform has it. Returns `nbytes`. Raises
    `TransferError` if the file ends before `nbytes` (it shrank while being
    served) or the socket fails or times out.
    """
    if nbytes < 0 or offset < 0:
        raise ValueError(f"negative offset {offset} or byte count {nbytes}")
    if not nbytes:
        return 0
    # socket.sendfile wants a file object; it handles timeouts and falls back
    # to send() where there is no sendfile.
    with open(fd, "rb", buffering=0, closefd=False) as file:
        try:
            sent = sock.sendfile(file, offset, nbytes)
        except TimeoutError:
            raise TransferError(f"timed out sending {nbytes} bytes") from None
        except OSError as exc:
            raise send_failed(exc.errno, exc.strerror or str(exc)) from None
    if sent != nbytes:
        raise TransferError(f"file ended after {sent} of {nbytes} bytes (changed while being sent?)")
    return nbytes


def link_new_files(dir_fd: int, files: Sequence[tuple[bytes, bytes, int] | tuple[bytes, bytes, int, int]]) -> list[int]:
    """Create each `(name, data, mtime[, mode])` in the folder `dir_fd` complete or
    not at all: written as an anonymous file (`O_TMPFILE`, created with `mode`
    when one is given and not -1, and chmodded to it if the umask took bits
    off; else 0666 less the umask), stamped with `mtime`
    (whole seconds), then linked under `name`, which never replaces anything.

    Returns one number per file, in order: its inode when created; 0 when
    `name` was taken (nothing is left behind); `-errno` when it failed, and
    then the list ends there (later files were not tried). Linux only; the
    caller checks names and has verified the data. The hot half of installing
    a pipeline's small downloads: the extension does a whole batch without the GIL.
    """
    results: list[int] = []
    for item in files:
        name, data, mtime = item[0], item[1], item[2]
        mode = item[3] if len(item) > 3 else -1
        try:
            fd = os.open(".", os.O_RDWR | _O_TMPFILE | os.O_CLOEXEC, mode if mode >= 0 else 0o666, dir_fd=dir_fd)
        except OSError as exc:
            results.append(-(exc.errno or 1))
            break
        try:
            _write_all(fd, memoryview(data))
            os.utime(fd, (mtime, mtime))
            st = os.fstat(fd)
            inode = st.st_ino
            if mode >= 0 and stat.S_IMODE(st.st_mode) != mode:  # created with it, less the umask
                os.fchmod(fd, mode)
            os.link(f"/proc/self/fd/{fd}", name, dst_dir_fd=dir_fd, follow_symlinks=True)
        except FileExistsError:
            results.append(0)
        except OSError as exc:
            results.append(-(exc.errno or 1))
            break
        else:
            results.append(inode)
        finally:
            os.close(fd)
    return results


def read_small_file(dir_fd: int, name: bytes, max_bytes: int) -> tuple[bytes, int, int, int] | None:
    """The whole reply to a request for the file `name` in the folder `dir_fd`,
    header and body, read in one piece: `(b"Content-Length: N\\n" + its N bytes,
    N, mtime_ns, inode)`. The hot half of serving a pipeline's small files.

    Opened never through a symlink (`O_NOFOLLOW`: ELOOP) and never waiting on
    a FIFO; read with one `pread`, then checked unchanged (size and mtime).
    None, with nothing read, when it is not a regular file or is over
    `max_bytes` (the caller's slower way says why, or sends it in pieces).
    Raises `OSError` when it cannot be opened or read (`FileNotFoundError` for
    one that is not there), `TransferError` when it changed while read.
    """
    fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > max_bytes:
            return None
        data = os.pread(fd, st.st_size, 0)
        now = os.fstat(fd)
        if len(data) != st.st_size or (now.st_size, now.st_mtime_ns) != (st.st_size, st.st_mtime_ns):
            raise TransferError("file changed while being sent; stopped after 0 bytes")
        return b"Content-Length: %d\n" % st.st_size + data, st.st_size, st.st_mtime_ns, st.st_ino
    finally:
        os.close(fd)


# ---------------------------------------------------------------- chunking

_U64 = (1 << 64) - 1
_GEAR_LS = tuple((g << 1) & _U64 for g in GEAR)  # two bytes a step: the first one's entry pre-shifted
_MASK_S_LS, _MASK_L_LS = (MASK_S << 1) & _U64, (MASK_L << 1) & _U64


def _cut(data: bytes | bytearray | memoryview, start: int, end: int) -> int:
    """The length of the chunk of `data` starting at `start`, given the bytes up to
    `end` (`p2psync.chunking` says how it is cut)."""
    remaining = min(end - start, MAX_CHUNK)
    if remaining <= MIN_CHUNK:
        return remaining
    center = min(AVG_CHUNK, remaining)
    h = 0
    gear, gear_ls = GEAR, _GEAR_LS
    pos = start + MIN_CHUNK // 2 * 2
    for limit, mask, mask_ls in (
        (start + center // 2 * 2, MASK_S, _MASK_S_LS),
        (start + remaining // 2 * 2, MASK_L, _MASK_L_LS),
    ):
        while pos < limit:
            h = ((h << 2) + gear_ls[data[pos]]) & _U64
            if not h & mask_ls:
                return pos - start
            h = (h + gear[data[pos + 1]]) & _U64
            if not h & mask:
                return pos + 1 - start
            pos += 2
    return remaining


def chunk_lengths(data: bytes | bytearray | memoryview) -> list[int]:
    """The lengths of the chunks `data` is cut into, as a whole (its end is the end)."""
    view = memoryview(data).cast("B")
    lengths, start, end = [], 0, len(view)
    while start < end:
        length = _cut(view, start, end)
        lengths.append(length)
        start += length
    return lengths


class Chunker:
    """Cuts a stream fed in pieces exactly as `chunk_lengths` cuts it whole: `feed`
    returns the lengths of the chunks its bytes completed, `finish` the rest.
    Holds at most `MAX_CHUNK` bytes plus one piece (a chunk is decided only
    once `MAX_CHUNK` bytes of it are here, or at the end)."""

    def __init__(self) -> None:
        self._pending = bytearray()

    def feed(self, data: bytes | bytearray | memoryview) -> list[int]:
        self._pending += data
        lengths, start, end = [], 0, len(self._pending)
        while end - start >= MAX_CHUNK:
            length = _cut(self._pending, start, end)
            lengths.append(length)
            start += length
        del self._pending[:start]
        return lengths

    def finish(self) -> list[int]:
        lengths = chunk_lengths(self._pending)
        self._pending.clear()
        return lengths
