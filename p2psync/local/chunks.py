"""Cutting a file into its content-defined chunks and naming each (issue 14):
the lengths from the core's FastCDC (`_core.Chunker`, no GIL in the
extension), the ids (SHA-256) on a thread pool, a batch of at least
`HASH_BATCH_BYTES` per task: hashlib lets go of the GIL while it hashes, and
one task per 64 KiB chunk would cost more in hand-offs than it gains.

The file is read with `pread`, not mapped: a file truncated while it is read
ends the cut with an error instead of the process with SIGBUS. Never parses a
message; the list's wire form is protocol/chunks.py's.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import os
from collections.abc import Iterator, Sequence

from p2psync._core import Chunker
from p2psync.errors import TransferError
from p2psync.protocol.chunks import ChunkList

from .hashing import BackgroundHasher

__all__ = [
    "HASH_BATCH_BYTES",
    "HASH_WORKERS",
    "chunk_digests",
    "chunk_fd",
    "hash_and_cut",
    "hashing_pool",
    "stretches",
    "submit_checks",
    "verified_prefix",
]

READ_BYTES = 8 * 1024 * 1024  # a read of the file
HASH_BATCH_BYTES = 4 * 1024 * 1024  # a hashing task: whole chunks, at least this many bytes
HASH_WORKERS = min(4, os.cpu_count() or 1)

_pool: concurrent.futures.ThreadPoolExecutor | None = None


def hashing_pool() -> concurrent.futures.ThreadPoolExecutor:
    global _pool  # one pool for the process, made on first use, its threads reused
    if _pool is None:
        _pool = concurrent.futures.ThreadPoolExecutor(HASH_WORKERS, thread_name_prefix="p2psync-hash")
    return _pool


def chunk_digests(data: bytes | memoryview, lengths: Sequence[int]) -> list[bytes]:
    """The SHA-256 of each of the chunks `data` holds back to back, `lengths` long."""
    view, at, out = memoryview(data), 0, []
    for length in lengths:
        out.append(hashlib.sha256(view[at : at + length]).digest())
        at += length
    return out


def hash_and_cut(fd: int, size: int) -> tuple[str, ChunkList]:
    """The SHA-256 of the `size` bytes of `fd` and their chunk list, in one read:
    the whole-file hash on a thread of its own beside the chunk ids on the pool."""
    whole = BackgroundHasher()
    try:
        chunks = chunk_fd(fd, size, whole)
    finally:
        whole.close()
    return whole.hexdigest(), chunks


def chunk_fd(fd: int, size: int, whole: BackgroundHasher | None = None) -> ChunkList:
    """The chunk list of the `size` bytes of the open file `fd` (every byte also fed
    to `whole`, if given). Raises `TransferError` if the file is not `size` bytes
    long while it is read."""
    chunker = Chunker()
    lengths: list[int] = []
    futures: list[concurrent.futures.Future[list[bytes]]] = []
    pending = bytearray()  # bytes read but not yet handed to a hashing batch
    batch: list[int] = []  # lengths of the whole chunks at the front of `pending`
    batch_bytes = 0
    offset = 0

    def hand_over() -> None:
        nonlocal batch, batch_bytes
        futures.append(hashing_pool().submit(chunk_digests, bytes(pending[:batch_bytes]), batch))
        del pending[:batch_bytes]
        batch, batch_bytes = [], 0

    while offset < size:
        block = os.pread(fd, min(READ_BYTES, size - offset), offset)
        if not block:
            raise TransferError(f"the file ended after {offset} of {size} bytes while it was cut into chunks")
        offset += len(block)
        if whole is not None:
            whole.update(block)
        pending += block
        cut = chunker.feed(block) if offset < size else chunker.feed(block) + chunker.finish()
        for length in cut:
            lengths.append(length)
            batch.append(length)
            batch_bytes += length
            if batch_bytes >= HASH_BATCH_BYTES:
                hand_over()
    if os.pread(fd, 1, size):
        raise TransferError(f"the file grew past {size} bytes while it was cut into chunks")
    if batch:
        hand_over()
    digests = [digest for future in futures for digest in future.result()]
    return ChunkList(tuple(lengths), tuple(digests))


def _verify(fd: int, offset: int, lengths: list[int], digests: list[bytes]) -> bool:
    data = os.pread(fd, sum(lengths), offset)
    return chunk_digests(data, lengths) == digests if len(data) == sum(lengths) else False


def stretches(chunks: ChunkList, first: int, end: int, min_bytes: int = HASH_BATCH_BYTES) -> Iterator[tuple[int, int]]:
    """Chunks `first` to `end - 1` in stretches `(i, j)` (chunks i to j - 1) of whole
    chunks, each at least `min_bytes` long (the last may be less); by default
    one hashing task each."""
    i = first
    while i < end:
        j, nbytes = i, 0
        while j < end and (nbytes < min_bytes or j == i):
            nbytes += chunks.lengths[j]
            j += 1
        yield i, j
        i = j


def _submit_verify(fd: int, chunks: ChunkList, offsets: list[int], i: int, j: int) -> concurrent.futures.Future[bool]:
    lengths, digests = list(chunks.lengths[i:j]), list(chunks.digests[i:j])
    return hashing_pool().submit(_verify, fd, offsets[i], lengths, digests)


def submit_checks(
    fd: int, chunks: ChunkList, first: int, count: int, offsets: list[int] | None = None
) -> list[concurrent.futures.Future[bool]]:
    """Start checking, on the pool, that the chunks `first` to `first + count - 1`
    of `chunks` are in `fd` where the list puts them (read and hashed at least
    `HASH_BATCH_BYTES` per task); each future says whether its batch is.
    `offsets`: `chunks.offsets()`, when the caller has it already."""
    offsets = chunks.offsets() if offsets is None else offsets
    return [_submit_verify(fd, chunks, offsets, i, j) for i, j in stretches(chunks, first, first + count)]


def verified_prefix(fd: int, chunks: ChunkList, count: int) -> int:
    """How many of the first `count` chunks of `chunks` are in `fd` where the list
    puts them, up to the first batch that is not: what a kept partial download
    holds (one killed mid-write is whole checked stretches, then zeros or junk).
    Batches of at least `HASH_BATCH_BYTES` are checked on the pool."""
    offsets = chunks.offsets()
    batches = [(i, j, _submit_verify(fd, chunks, offsets, i, j)) for i, j in stretches(chunks, 0, count)]
    good = 0
    for start, end, future in batches:
        if not future.result():  # the first bad batch: its good chunks, one by one
            good = start
            while good < end and _verify(fd, offsets[good], [chunks.lengths[good]], [chunks.digests[good]]):
                good += 1
            break
        good = end
    for *_, future in batches:
        future.cancel()
    return good
