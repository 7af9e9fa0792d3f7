"""The Content-Length transfer over a socket, on the core `_core` chose.

Strategy: the backend is picked once, in `_core`; this module re-exports its
names for the modules that move bytes. `request` and `upload`
are the two halves of the peer-to-peer exchange: the message bytes come from
`protocol`, the copy loops from the core; no file naming or folder logic here.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from ._core import (
    BACKEND,
    MAX_LINE_BYTES,
    RECV_BUFFER_BYTES,
    Buffer,
    LineSplitter,
    link_new_files,
    read_small_file,
    recv_to_file,
    send_from_file,
)
from .errors import TransferError, send_failed
from .local.fileops import write_all
from .net import is_tls
from .protocol import decode_reply, encode_header, encode_request
from .ratelimit import RateLimiter

if TYPE_CHECKING:
    from .protocol.auth import Channel

__all__ = [
    "BACKEND",
    "MAX_LINE_BYTES",
    "RECV_BUFFER_BYTES",
    "Buffer",
    "LineSplitter",
    "link_new_files",
    "receive_body",
    "recv_body",
    "recv_into_exact",
    "recv_to_file",
    "send_from_file",
    "request",
    "body_reply",
    "small_reply",
    "whole_small_reply",
    "transfer_deadline",
    "sealed_reply",
    "upload",
]


class Hasher(Protocol):
    def update(self, data: bytes | memoryview, /) -> None: ...


HEADER_MAX_BYTES = 256  # a Content-Length or Error line is short; anything longer is junk
CHANGE_CHECK_BYTES = 64 * 1024 * 1024  # how often a sender checks that its file is unchanged
SHOWN_STEP_BYTES = 4 * 1024 * 1024  # how often an upload someone watches counts what it sent
SMALL_FILE_BYTES = 64 * 1024  # up to this, a reply is read and sent in one piece
TLS_IO_BYTES = 1024 * 1024  # user-space TLS: file bytes move in writes (and reads) this large
MIN_RATE_BYTES_S = 64 * 1024  # a transfer slower than this on average is cut off ...
BASE_TRANSFER_S = 60.0  # ... after this much grace


def transfer_deadline(nbytes: int) -> float:
    """Seconds allowed for moving `nbytes`, either way: a grace period plus the minimum rate."""
    return BASE_TRANSFER_S + nbytes / MIN_RATE_BYTES_S


def upload(
    sock: socket.socket,
    fd: int,
    st: os.stat_result,
    offset: int = 0,
    limiter: RateLimiter | None = None,
    seal: Callable[[bytes], bytes] | None = None,
    length: int | None = None,
    sent: Callable[[int], None] | None = None,
) -> int:
    """Answer a request: `Content-Length: (size - offset)\n`, then those bytes of `fd`
    (with `length`, only that many from `offset`: a run of chunks). `sent`, if
    given, is told how many body bytes have gone out so far, every few MiB.

    `st` is the file's stat when it was opened. The file is checked between
    chunks, and once more before the last byte goes out: if it changed (size or
    mtime), the transfer stops short, so even a classic receiver, which has no
    hash to check, sees a failed transfer rather than a torn file. Raises
    `TransferError` then, or if the socket fails. With a `limiter`, the bytes
    go out in slices, each taken from its bucket first. With `seal` (members
    only), the header line goes out tagged; the bytes stay as they are.
    """
    size = _end(st, offset, length)
    reply = small_reply(fd, st, offset, length)
    if reply is not None:  # header and body leave in the same segment
        reply = sealed_reply(reply, seal)
        if limiter is not None:
            limiter.take(len(reply))
        _sendall(sock, reply)
        if sent is not None:
            sent(size - offset)
        return size - offset
    header = encode_header(size - offset)
    _sendall(sock, header if seal is None else seal(header.rstrip(b"\n")))
    # TLS in user space: bodies through OpenSSL. A plain socket, or TLS the kernel
    # encrypts (kTLS), keeps the core's zero-copy sendfile.
    send = _send_from_file_tls if is_tls(sock) and not _kernel_sends(sock) else send_from_file
    position = offset
    step = CHANGE_CHECK_BYTES if limiter is None else limiter.slice_bytes
    if sent is not None:
        step = min(step, SHOWN_STEP_BYTES)
    while position < size:
        end = size if position == size - 1 else min(position + step, size - 1)
        if limiter is not None:
            limiter.take(end - position)
        send(sock, fd, position, end - position)
        position = end
        if sent is not None:
            sent(position - offset)
        if position < size:
            _check_unchanged(fd, st, True, position - offset)
    return size - offset


def _kernel_sends(sock: socket.socket) -> bool:
    from .tls import kernel_sends  # loaded already: the socket came from it

    return kernel_sends(sock)


def _send_from_file_tls(sock: socket.socket, fd: int, offset: int, nbytes: int) -> int:
    """`send_from_file` through OpenSSL: `TLS_IO_BYTES` read at a time into one buffer,
    each sent in one call (OpenSSL cuts it into 16 KiB records)."""
    buf = bytearray(min(TLS_IO_BYTES, nbytes))
    view = memoryview(buf)
    done = 0
    while done < nbytes:
        got = os.preadv(fd, [view[: min(len(buf), nbytes - done)]], offset + done)
        if not got:
            raise TransferError(f"file ended after {done} of {nbytes} bytes")
        _sendall(sock, view[:got])
        done += got
    return nbytes


def receive_body(
    sock: socket.socket, fd: int, nbytes: int, pending: Buffer | None = None, hasher: Hasher | None = None
) -> int:
    """`recv_to_file` for a body on any connection: the core's loop on a plain
    socket; on a TLS one, through OpenSSL into a `TLS_IO_BYTES` buffer, written
    (and hashed) a buffer at a time, not a 16 KiB record at a time."""
    if not is_tls(sock):
        return int(recv_to_file(sock, fd, nbytes, pending, hasher))
    done = 0
    if pending is not None and nbytes:
        head = pending.take(nbytes)
        _write_and_hash(fd, memoryview(head), hasher)
        done = len(head)
    buf = bytearray(min(TLS_IO_BYTES, max(nbytes - done, 1)))
    view = memoryview(buf)
    while done < nbytes:
        filled = 0
        want = min(len(buf), nbytes - done)
        while filled < want:
            try:
                got = sock.recv_into(view[filled:want])
            except TimeoutError:
                raise TransferError(f"timed out after {done + filled} of {nbytes} bytes") from None
            except OSError as exc:  # ssl.SSLError included: a record that fails its check
                raise TransferError(f"receive failed after {done + filled} of {nbytes} bytes: {exc}") from None
            if not got:
                raise TransferError(f"connection closed after {done + filled} of {nbytes} bytes")
            filled += got
        _write_and_hash(fd, view[:filled], hasher)
        done += filled
    return nbytes


def _write_and_hash(fd: int, data: memoryview, hasher: Hasher | None) -> None:
    write_all(fd, data)
    if hasher is not None:
        hasher.update(data)


def sealed_reply(reply: bytes, seal: Callable[[bytes], bytes] | None) -> bytes:
    """A whole small reply as it goes out: with `seal` (members only) its header line
    tagged, the body as it is."""
    if seal is None:
        return reply
    header, _, body = reply.partition(b"\n")
    return seal(header) + body


def body_reply(body: bytes) -> bytes:
    """A whole reply carrying `body` (a chunk list, say): header and bytes."""
    return encode_header(len(body)) + body


def _end(st: os.stat_result, offset: int, length: int | None) -> int:
    """Where a reply from `offset` (of `length` bytes, or to the end) stops. Raises
    `TransferError` for bytes outside the file."""
    size = st.st_size
    end = size if length is None else offset + length
    if not 0 <= offset <= end <= size:
        raise TransferError(f"bytes {offset}-{end} are outside the {size}-byte file")
    return end


def small_reply(fd: int, st: os.stat_result, offset: int = 0, length: int | None = None) -> bytes | None:
    """The whole reply to a request for a small file (up to `SMALL_FILE_BYTES`
    from `offset`), header and body, read in one piece and checked unchanged
    against `st`; None for a larger file, which `upload` sends in chunks.
    With `length`, only that many bytes from `offset`. Raises `TransferError`
    for bytes outside the file or a file that changed."""
    end = _end(st, offset, length)
    if end - offset > SMALL_FILE_BYTES:
        return None
    data = os.pread(fd, end - offset, offset)
    _check_unchanged(fd, st, len(data) == end - offset, 0)
    return encode_header(end - offset) + data


def whole_small_reply(dir_fd: int, leaf: bytes) -> tuple[bytes, int, int, int] | None:
    """`small_reply` of a whole file, opened and read by the core in one call:
    `(reply, size, mtime_ns, inode)`, or None for a file larger than
    `SMALL_FILE_BYTES` or not a regular one (see `read_small_file`)."""
    return read_small_file(dir_fd, leaf, SMALL_FILE_BYTES)


def _check_unchanged(fd: int, st: os.stat_result, complete: bool, sent: int) -> None:
    now = os.fstat(fd)
    if not complete or (now.st_size, now.st_mtime_ns) != (st.st_size, st.st_mtime_ns):
        raise TransferError(f"file changed while being sent; stopped after {sent} bytes")


def _sendall(sock: socket.socket, data: bytes | memoryview) -> None:
    try:
        sock.sendall(data)
    except OSError as exc:
        raise send_failed(exc.errno, exc.strerror or str(exc)) from None


def request(
    sock: socket.socket,
    name: str,
    offset: int = 0,
    sha256: str | None = None,
    keep_open: bool = False,
    channel: Channel | None = None,
) -> tuple[int, Buffer]:
    """Ask a holder for `name` (from `offset` of version `sha256`, to resume;
    `keep_open` to send another request on the same connection afterwards).

    Returns the announced length and the reader holding any body bytes that
    came with the header (pass it to `recv_to_file`). Raises `Refused` when the
    holder answers `Error: ...`, `TransferError` when it fails or stays silent
    (the socket's timeout), `ProtocolError` for a malformed reply.
    """
    line = encode_request(name, offset, sha256, keep_open)
    try:
        sock.sendall(line if channel is None else channel.seal(line.rstrip(b"\n")))
    except OSError as exc:
        raise TransferError(f"sending the request failed: {exc.strerror or exc}") from None
    reader = Buffer(sock, 8192, HEADER_MAX_BYTES)
    try:
        header = reader.read_line()
    except TimeoutError:
        raise TransferError("timed out waiting for the Content-Length header") from None
    except OSError as exc:
        raise TransferError(f"receiving the header failed: {exc.strerror or exc}") from None
    return decode_reply(header if channel is None else channel.open(header)), reader


def recv_body(sock: socket.socket, reader: Buffer, nbytes: int) -> bytes:
    """The `nbytes` that follow a header, into memory: for small bodies only
    (a pipeline receives many back to back, mostly already in `reader`).

    Raises `TransferError` if the stream ends early, times out or fails.
    """
    data = reader.take(nbytes)
    if len(data) == nbytes:
        return data
    body = bytearray(nbytes)
    with memoryview(body) as view:
        view[: len(data)] = data
        _recv_rest(sock, view, len(data))
    return bytes(body)


def recv_into_exact(sock: socket.socket, reader: Buffer, view: memoryview) -> None:
    """Fill `view` with the bytes that follow a header (those already in `reader`
    first): a large body into a buffer the caller reuses, never a new allocation.

    Raises `TransferError` if the stream ends early, times out or fails.
    """
    head = reader.take(len(view))
    view[: len(head)] = head
    _recv_rest(sock, view, len(head))


def _recv_rest(sock: socket.socket, view: memoryview, done: int) -> None:
    """Receive into `view` past its first `done` bytes until it is full."""
    nbytes = len(view)
    while done < nbytes:
        try:
            got = sock.recv_into(view[done:])
        except TimeoutError:
            raise TransferError(f"timed out after {done} of {nbytes} bytes") from None
        except OSError as exc:
            raise TransferError(f"receive failed after {done} of {nbytes} bytes: {exc.strerror or exc}") from None
        if not got:
            raise TransferError(f"connection closed after {done} of {nbytes} bytes")
        done += got
