"""Building a changed file from what the folder holds, fetching only what it
lacks (issue 14): the moving half of a delta transfer. The plan is
`sync.delta.plan_delta`'s; the chunk list and the range requests are
protocol/requests.py's. Steps are taken in order, so the file is written
front to back and hashed as it is written.

Local bytes are read from the old version (the file being replaced, through
its own descriptor) and fetched runs come over one kept-open connection, up
to `RUNS_IN_FLIGHT` requests ahead, so the holder reads the next run while
this side copies. Every chunk of a fetched run is checked against the list
before any of it is written; the assembled file is checked as a whole (its
SHA-256), or, when the directory vouches for the list, chunk by chunk, before
the caller installs it."""

from __future__ import annotations

import itertools
import os
import socket
from collections.abc import Sequence
from typing import Any

from p2psync.deadlines import Watchdog
from p2psync.errors import TransferError
from p2psync.local.chunks import chunk_digests, verify_chunks
from p2psync.local.fileops import copy_between, write_all
from p2psync.protocol import decode_reply, encode_request
from p2psync.protocol.auth import Channel
from p2psync.protocol.chunks import ChunkList
from p2psync.ratelimit import RateLimiter
from p2psync.sync.delta import Step
from p2psync.transfer import Buffer, recv_body, transfer_deadline

__all__ = ["RUNS_IN_FLIGHT", "BadChunk", "build"]

RUNS_IN_FLIGHT = 8  # range requests sent ahead of the one being received
COPY_BYTES = 4 * 1024 * 1024  # local bytes move in pieces this large


class BadChunk(TransferError):
    """A holder sent a chunk that is not the one its list names: it is dropped for this file."""


def build(
    sock: socket.socket,
    reader: Buffer,
    channel: Channel | None,
    name: str,
    sha256: str,
    wanted: ChunkList,
    steps: Sequence[Step],
    old_fd: int,
    out_fd: int,
    hasher: Any | None,
    watchdog: Watchdog,
    limiter: RateLimiter | None = None,
) -> bool:
    """Write the new version to `out_fd` step by step (fetched runs within
    `limiter`'s rate, if there is one); whether every chunk is the listed one.

    With a `hasher`, every byte written goes through it in order, for the caller
    to check the whole file against the version's SHA-256. Without one (a list
    the directory vouches for: its id is the one the version was listed with),
    local bytes are copied in the kernel and the copied chunks are read back
    from `out_fd` and checked against the list afterwards, in parallel. Fetched
    chunks are checked before they are written either way."""
    runs = _Runs(sock, channel, name, sha256, [step for step in steps if step.source is None])
    for step in steps:
        if step.source is not None:
            if hasher is None:
                copy_between(old_fd, step.source_offset, out_fd, step.offset, step.length)
                os.lseek(out_fd, step.offset + step.length, os.SEEK_SET)  # the progress display reads it
            else:
                _copy(old_fd, out_fd, step, hasher)
            continue
        data = _receive_run(sock, reader, channel, name, step, watchdog, limiter)
        runs.received()
        _check(data, wanted, step, name)
        if hasher is not None:
            hasher.update(data)
        os.lseek(out_fd, step.offset, os.SEEK_SET)
        write_all(out_fd, data)
    if hasher is not None:
        return True  # the caller checks the whole file's hash
    return verify_chunks(out_fd, wanted, [(s.first, s.count) for s in steps if s.source is not None])


class _Runs:
    """The range requests of a build, sent `RUNS_IN_FLIGHT` ahead of the one received."""

    def __init__(self, sock: socket.socket, channel: Channel | None, name: str, sha256: str, runs: list[Step]) -> None:
        self._sock, self._channel, self._name, self._sha256, self._runs = sock, channel, name, sha256, runs
        self._asked = self._received = 0
        self._ask()

    def received(self) -> None:
        self._received += 1
        self._ask()

    def _ask(self) -> None:
        lines = []
        while self._asked < len(self._runs) and self._asked - self._received < RUNS_IN_FLIGHT:
            run = self._runs[self._asked]
            line = encode_request(self._name, run.offset, self._sha256, keep_open=True, length=run.length)
            lines.append(line if self._channel is None else self._channel.seal(line.rstrip(b"\n")))
            self._asked += 1
        if lines:
            self._sock.sendall(b"".join(lines))


def _receive_run(
    sock: socket.socket,
    reader: Buffer,
    channel: Channel | None,
    name: str,
    step: Step,
    watchdog: Watchdog,
    limiter: RateLimiter | None,
) -> bytes:
    with watchdog.limit(sock, transfer_deadline(step.length), f"receiving {step.length} bytes of {name}"):
        header = reader.read_line()
        length = decode_reply(header if channel is None else channel.open(header))
        if length != step.length:
            raise TransferError(f"{name}: the holder offers {length} bytes of a {step.length}-byte run")
        if limiter is not None:
            limiter.take(length)
        return recv_body(sock, reader, length)


def _copy(old_fd: int, out_fd: int, step: Step, hasher: Any) -> None:
    done = 0
    while done < step.length:
        data = os.pread(old_fd, min(COPY_BYTES, step.length - done), step.source_offset + done)
        if not data:
            raise TransferError("the old version shrank while it was read")
        hasher.update(data)
        write_all(out_fd, data)
        done += len(data)


def _check(data: bytes, wanted: ChunkList, step: Step, name: str) -> None:
    lengths = wanted.lengths[step.first : step.first + step.count]
    got = chunk_digests(data, lengths)
    for i, (digest, at) in enumerate(zip(got, itertools.accumulate(lengths, initial=0), strict=False)):
        if digest != wanted.digests[step.first + i]:
            start = step.offset + at
            raise BadChunk(f"{name}: chunk {step.first + i} (bytes {start}-{start + lengths[i]}) is not the listed one")
