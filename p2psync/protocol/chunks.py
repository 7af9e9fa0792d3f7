"""A version's chunk list, as one peer sends it to another (issue 14): the
lengths and SHA-256 ids of the content-defined chunks (`p2psync.chunking`) a
file's bytes are cut into. Sans-IO.

On the wire, the body of the reply to a chunk-list request: for each chunk in
order, its length (4 bytes, big-endian) then its id (the 32-byte SHA-256 of
its bytes). A 1 GiB file has about 16,000 chunks: ~590 kB, asked for peer to
peer, never carried by the tracker. A list's own id (`list_id`) is the SHA-256
of the label `p2psync-chunks-v1` and that encoding.

A receiver trusts a list only as far as the version's SHA-256 (from the
directory) vouches for it: every chunk it fetches is checked against the
list before it is written, and the file as assembled against the version's
SHA-256 before it is installed.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

from p2psync.chunking import MAX_CHUNK, MIN_CHUNK
from p2psync.errors import ProtocolError

__all__ = ["ENTRY_BYTES", "ChunkList", "decode_chunk_list", "max_list_bytes"]

ENTRY_BYTES = 4 + 32
_ENTRY = struct.Struct(">I32s")
_LABEL = b"p2psync-chunks-v1"


@dataclass(frozen=True)
class ChunkList:
    """The chunks of one version of a file, in order."""

    lengths: tuple[int, ...]
    digests: tuple[bytes, ...]  # the SHA-256 of each chunk's bytes

    @property
    def size(self) -> int:
        return sum(self.lengths)

    def offsets(self) -> list[int]:
        """Where each chunk starts."""
        offsets, at = [], 0
        for length in self.lengths:
            offsets.append(at)
            at += length
        return offsets

    def encode(self) -> bytes:
        return b"".join(_ENTRY.pack(n, d) for n, d in zip(self.lengths, self.digests, strict=True))

    def list_id(self) -> str:
        return hashlib.sha256(_LABEL + self.encode()).hexdigest()


def max_list_bytes(size: int) -> int:
    """The longest list a `size`-byte file can have (every chunk but the last is at
    least `MIN_CHUNK`): what a receiver accepts at most."""
    return ENTRY_BYTES * (size // MIN_CHUNK + 1)


def decode_chunk_list(body: bytes, size: int) -> ChunkList:
    """The list in a reply body, for a version of `size` bytes. Raises
    `ProtocolError` unless it is a whole number of entries, every chunk within
    the bounds, the chunks adding up to `size`."""
    if len(body) % ENTRY_BYTES or len(body) > max_list_bytes(size) or (size and not body):
        raise ProtocolError(f"a chunk list of {len(body)} bytes cannot describe a {size}-byte file")
    lengths, digests = [], []
    for length, digest in _ENTRY.iter_unpack(body):
        if not 0 < length <= MAX_CHUNK:
            raise ProtocolError(f"a chunk list names a chunk of {length} bytes")
        lengths.append(length)
        digests.append(digest)
    if sum(lengths) != size or any(n < MIN_CHUNK for n in lengths[:-1]):
        raise ProtocolError(f"a chunk list does not cut a {size}-byte file into valid chunks")
    return ChunkList(tuple(lengths), tuple(digests))
