"""Peer <-> peer: `name\\n` -> `Content-Length: N\\n` + N bytes, or one refusal
line; p2psync's extended request (offset, version, keep-open) rides after NULs
that a classic name never holds. Bytes in, values out; no socket here."""

from __future__ import annotations

import re
from dataclasses import dataclass

from p2psync.errors import ProtocolError, Refused
from p2psync.paths import safe_path
from p2psync.records import quick_frozen

from .common import _SHA256_HEX, _SHOWN_BYTES, _shown

CONTENT_LENGTH = b"Content-Length:"


@quick_frozen
@dataclass(frozen=True)
class FileRequest:
    """A request for a file: classic, or extended (a version, an offset, keep-open)."""

    name: str
    offset: int = 0
    sha256: str | None = None  # the version asked for; always set in the extended form
    keep_open: bool = False  # after the reply, the connection stays open for another request
    length: int | None = None  # only this many bytes from `offset` (a run of chunks); None: to the end
    chunks: bool = False  # the version's chunk list (protocol/chunks.py) instead of its bytes


KEEP_OPEN = b"keep-open"
CHUNKS = b"chunks"
LENGTH = b"length="
# What a pipelining p2psync asker sends for every small file: read in one match
# (a holder answers thousands a second); any other form takes the full check.
_PIPELINED = re.compile(rb"([0-9]{1,20})\x00([0-9a-f]{64})\x00keep-open")


def encode_request(
    name: str,
    offset: int = 0,
    sha256: str | None = None,
    keep_open: bool = False,
    length: int | None = None,
    chunks: bool = False,
) -> bytes:
    """A file request: classic `name\\n`, or the extended form
    `name NUL offset NUL sha256 [NUL length=N] [NUL chunks] [NUL keep-open] \\n`
    (from `offset` of the version `sha256`, only N bytes of it, or its chunk
    list; keep the connection for more requests). The extended form only goes
    to p2psync holders, those that advertise a hash; one too old for `length`
    or `chunks` refuses them as malformed, and the asker falls back.
    Raises `UnsafeName` for a name we would never send.
    """
    head = safe_path(name).encode("utf-8")
    if not offset and not keep_open and length is None and not chunks:
        return head + b"\n"
    if offset < 0 or sha256 is None or not _SHA256_HEX.match(sha256) or (length is not None and length < 0):
        raise ValueError("an extended request needs the version's sha256, an offset >= 0 and a length >= 0")
    tail = b"\x00%s%d" % (LENGTH, length) if length is not None else b""
    tail += b"\x00" + CHUNKS if chunks else b""
    tail += b"\x00" + KEEP_OPEN if keep_open else b""
    return b"%s\x00%d\x00%s%s\n" % (head, offset, sha256.encode("ascii"), tail)


def decode_request(line: bytes) -> FileRequest:
    """The request in a request line (without its `\\n`).

    Raises `ProtocolError` for bytes that are not UTF-8 or a malformed
    extended request, and `UnsafeName` for a name that is not a plain file of
    the folder.
    """
    head, extended, tail = line.partition(b"\x00")
    try:
        name = head.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError(f"request is not UTF-8: {_shown(line)}") from None
    # Tolerate a CRLF client (telnet, netcat -C); CR is never part of a safe name.
    name = safe_path(name.removesuffix("\r"))
    if not extended:
        return FileRequest(name)
    common = _PIPELINED.fullmatch(tail)
    if common is not None:
        return FileRequest(name, int(common[1]), common[2].decode("ascii"), True)
    fields = tail.split(b"\x00")
    flags = fields[2:]
    lengths = [f[len(LENGTH) :] for f in flags if f.startswith(LENGTH)]
    if (
        len(fields) < 2
        or not fields[0].isdigit()
        or len(fields[0]) > 20
        or not _SHA256_HEX.match(fields[1].decode("ascii", "replace"))
        or len(set(flags)) != len(flags)
        or any(f not in (KEEP_OPEN, CHUNKS) and not f.startswith(LENGTH) for f in flags)
        or len(lengths) > 1
        or any(not n.isdigit() or len(n) > 20 for n in lengths)
    ):
        raise ProtocolError(
            "bad extended request (want name NUL offset NUL sha256 [NUL length=N] [NUL chunks] [NUL keep-open]): "
            + _shown(line)
        )
    length = int(lengths[0]) if lengths else None
    return FileRequest(name, int(fields[0]), fields[1].decode("ascii"), KEEP_OPEN in flags, length, CHUNKS in flags)


def encode_header(size: int) -> bytes:
    """`Content-Length: N\\n`, the reply that precedes exactly N bytes."""
    if size < 0:
        raise ValueError(f"negative Content-Length {size}")
    return b"Content-Length: %d\n" % size


def encode_refusal(reason: str) -> bytes:
    """`Error: reason\\n`: one line that a classic client never mistakes for a header."""
    flat = " ".join(reason.split())  # one line, whatever the reason held
    return b"Error: " + flat.encode("utf-8", "replace")[:1000] + b"\n"


def decode_reply(line: bytes) -> int:
    """The N of a `Content-Length: N` reply line (without its `\\n`).

    Raises `Refused` (a `TransferError`) when the holder refused (any line
    that is not a header) and `ProtocolError` for a header whose length is not a number.
    """
    if not line.startswith(CONTENT_LENGTH):
        text = line.decode("utf-8", "replace").strip()
        raise Refused(f"holder refused: {text[:_SHOWN_BYTES]!r}")
    value = line[len(CONTENT_LENGTH) :].strip()
    if not value.isdigit() or len(value) > 20:
        raise ProtocolError(f"bad Content-Length header: {_shown(line)}")
    return int(value)
