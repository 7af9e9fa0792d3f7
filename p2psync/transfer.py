"""The one place that chooses the backend, and the Content-Length transfer over a socket.

Strategy: `p2psync._speedups` (Cython) is used unless `P2PSYNC_NO_EXTENSIONS=1`
is set or it is not built; `p2psync._twin` (pure Python) has the same names and
behaviour. Everything else imports the core from here. `download` and `upload`
are the two halves of the peer-to-peer exchange: the message bytes come from
`protocol`, the copy loops from the core; no file naming or folder logic here.
"""

from __future__ import annotations

import hashlib
import os
import socket
from typing import TYPE_CHECKING

from .errors import TransferError
from .protocol import decode_reply, encode_header, encode_request

__all__ = [
    "BACKEND",
    "MAX_LINE_BYTES",
    "RECV_BUFFER_BYTES",
    "Buffer",
    "LineSplitter",
    "download",
    "recv_to_file",
    "send_from_file",
    "upload",
]

_NO_EXT = os.environ.get("P2PSYNC_NO_EXTENSIONS") == "1"  # only "1"; "0" keeps it on

if TYPE_CHECKING or _NO_EXT:  # mypy reads the typed twin
    from ._twin import MAX_LINE_BYTES, RECV_BUFFER_BYTES, Buffer, LineSplitter, recv_to_file, send_from_file

    BACKEND = "python"
else:
    try:
        from ._speedups import (
            MAX_LINE_BYTES,
            RECV_BUFFER_BYTES,
            Buffer,
            LineSplitter,
            recv_to_file,
            send_from_file,
        )

        BACKEND = "cython"
    except ImportError:  # installed without a compiler: the twin serves
        from ._twin import MAX_LINE_BYTES, RECV_BUFFER_BYTES, Buffer, LineSplitter, recv_to_file, send_from_file

        BACKEND = "python"

HEADER_MAX_BYTES = 256  # a Content-Length or Error line is short; anything longer is junk


def upload(sock: socket.socket, fd: int, size: int) -> int:
    """Answer a request: `Content-Length: size\\n`, then `size` bytes of `fd` from its start.

    Raises `TransferError` if the file ends early or the socket fails.
    """
    try:
        sock.sendall(encode_header(size))
    except OSError as exc:
        raise TransferError(f"send failed: {exc.strerror or exc}") from None
    return send_from_file(sock, fd, 0, size)


def download(
    sock: socket.socket,
    name: str,
    fd: int,
    *,
    max_size: int | None = None,
    expected_size: int | None = None,
    expected_sha256: str | None = None,
) -> int:
    """Request `name` on a connected `sock` and write its bytes to `fd`; returns the size.

    Refuses a `Content-Length` above `max_size`, or different from
    `expected_size` when the directory said the size. When `expected_sha256`
    is given, the bytes are hashed as they arrive (no second pass) and a
    mismatch raises. Raises `TransferError` (refused, short, too big, wrong
    hash, timeout) or `ProtocolError` (a malformed reply); the caller deletes
    what was written to `fd`.
    """
    try:
        sock.sendall(encode_request(name))
    except OSError as exc:
        raise TransferError(f"sending the request failed: {exc.strerror or exc}") from None
    reader = Buffer(sock, 8192, HEADER_MAX_BYTES)
    try:
        header = reader.read_line()
    except TimeoutError:
        raise TransferError("timed out waiting for the Content-Length header") from None
    except OSError as exc:
        raise TransferError(f"receiving the header failed: {exc.strerror or exc}") from None
    size = decode_reply(header)
    if max_size is not None and size > max_size:
        raise TransferError(f"holder offers {size} bytes, more than the {max_size} allowed")
    if expected_size is not None and size != expected_size:
        raise TransferError(f"holder offers {size} bytes, the directory said {expected_size}")
    if expected_sha256 is None:
        return recv_to_file(sock, fd, size, reader)
    hasher = hashlib.sha256()
    recv_to_file(sock, fd, size, reader, hasher)
    if hasher.hexdigest() != expected_sha256:
        raise TransferError(
            f"content hash {hasher.hexdigest()[:16]}... is not the advertised {expected_sha256[:16]}..."
        )
    return size
