"""Building one large version from its chunks (issue 14): the chunks this side
already holds copied in the kernel, the missing runs fetched from every
holder of the version at once. The plan is `sync.delta.plan_delta`'s; the
chunk list and the range requests are protocol/requests.py's.

Every holder gets a thread and one kept-open connection, with up to
`RUNS_PER_HOLDER` run requests in flight on it. Runs are handed out in file
order to whichever holder has room, so a fast holder takes more than a slow
one (the least busy first). When no run is left to hand out, a holder with
room asks for a run still in flight elsewhere (the endgame: at most
`ENDGAME_ASKS` holders per run); whichever copy checks out first is written,
the other is read and dropped.

A received run is checked chunk by chunk against the list and written at its
offset on the hashing pool, while its holder's thread already receives the
next one: with a list the directory vouches for, that and the same check of
each copied stretch, read back on the pool while the next is copied, are the
whole verification, done in parallel (no single SHA-256 stream). A holder that
sends one bad chunk is dropped for this file; its runs go to the others.
The first contiguous stretch of written bytes is kept as the file's
position, so a partial kept for a resume holds only checked bytes.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import itertools
import logging
import os
import queue
import socket
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from p2psync.deadlines import Watchdog
from p2psync.errors import P2PSyncError, TransferError
from p2psync.local.chunks import chunk_digests, hashing_pool, stretches, submit_checks
from p2psync.local.fileops import copy_between
from p2psync.protocol import decode_reply, encode_request
from p2psync.protocol.auth import Channel
from p2psync.protocol.chunks import ChunkList
from p2psync.ratelimit import RateLimiter
from p2psync.sync.delta import RUN_MAX_BYTES, Step
from p2psync.transfer import Buffer, recv_into_exact, transfer_deadline

__all__ = ["ENDGAME_ASKS", "RUNS_PER_HOLDER", "BadChunk", "Build", "Link"]

log = logging.getLogger(__name__)

COPY_STRETCH_BYTES = 16 * 1024 * 1024  # copied, then checked on the pool while the next is copied
RUNS_PER_HOLDER = 4  # run requests in flight per holder: 16 MiB, enough to keep one busy
BUFFERS_PER_HOLDER = 3  # one being received, two being checked and written
ENDGAME_ASKS = 2  # at the end, a run still in flight is asked of at most this many holders
WAIT_S = 0.5  # a holder with nothing to ask looks again this often (or when woken)

Connection = tuple[socket.socket, Buffer, "Channel | None"]


class BadChunk(TransferError):
    """A holder sent a chunk that is not the one its list names: it is dropped for this file."""


@dataclass(eq=False)
class Link:
    """One holder of the version: `connect(stack)` opens (or hands over) a connection
    whose clean-up goes on `stack`. After the build: how many runs it delivered,
    and why it was dropped, if it was."""

    holder: tuple[str, int]
    connect: Callable[[contextlib.ExitStack], Connection]
    delivered: int = 0
    received: int = 0  # bytes of runs received, checked or not (for the progress display)
    failure: BaseException | None = field(default=None)


class Build:
    """The new version written into `out_fd` from `steps`: copies from files here
    (none, when every step is fetched) and runs fetched from the links."""

    def __init__(
        self,
        name: str,
        sha256: str,
        wanted: ChunkList,
        steps: Sequence[Step],
        out_fd: int,
        watchdog: Watchdog,
        limiter: RateLimiter | None = None,
        check_copies: bool = False,
    ) -> None:
        self.name, self.sha256, self.wanted, self.out_fd = name, sha256, wanted, out_fd
        self.check_copies = check_copies  # read each copied stretch back and check its chunks
        self.copies_checked: bool | None = None  # after `run`, with `check_copies`: whether all were right
        self.watchdog, self.limiter = watchdog, limiter
        self.steps = list(steps)
        self._runs = [i for i, step in enumerate(self.steps) if step.source is None]
        self._cond = threading.Condition()
        self._done = [False] * len(self.steps)
        self._asked: dict[int, set[Link]] = {i: set() for i in self._runs}
        self._pending = collections.deque(self._runs)
        self._left = len(self._runs)
        self._fatal: BaseException | None = None  # not a holder's fault (a full disk): the build ends
        self._sockets: set[socket.socket] = set()  # the holders' connections, cut when the build is done
        self._prefix = 0  # steps 0 .. _prefix - 1 are written
        self.copied = 0  # bytes copied from the old version
        self.fetched = 0  # bytes of runs written (what crossed the network, less duplicates)
        self._links: Sequence[Link] = ()
        self._total = sum(step.length for step in self.steps)

    # ------------------------------------------------------------- the caller

    def run(self, links: Sequence[Link], sources: Sequence[int]) -> None:
        """Copy the local steps from `sources` (the open files the plan's source
        numbers name) and fetch the runs from `links`, all at once. Raises
        `TransferError` when some run could not be had from any holder, or what
        stopped the writing. With `check_copies`, each copied stretch is read
        back and checked on the pool while the next one is copied, and
        `copies_checked` says whether every one was right."""
        self._links = links
        threads = [
            threading.Thread(target=self._work, args=(link,), name=f"p2psync-run-{i}", daemon=True)
            for i, link in enumerate(links)
        ]
        for thread in threads:
            thread.start()
        offsets = self.wanted.offsets()
        checks: list[concurrent.futures.Future[bool]] = []
        try:
            for i, step in enumerate(self.steps):
                if step.source is None:
                    continue
                # Stretch by stretch, so the pool checks one while the kernel copies the next.
                for first, end in stretches(self.wanted, step.first, step.first + step.count, COPY_STRETCH_BYTES):
                    at = offsets[first]
                    length = offsets[end - 1] + self.wanted.lengths[end - 1] - at
                    copy_between(sources[step.source], step.source_offset + at - step.offset, self.out_fd, at, length)
                    if self.check_copies:
                        checks += submit_checks(self.out_fd, self.wanted, first, end - first, offsets)
                    with self._cond:
                        self.copied += length
                self._finish(i, step.length, fetched=False)
        except BaseException as exc:
            self._stop(exc)
            for check in checks:
                check.cancel()  # the build failed: checks not started need not run
            raise
        finally:
            for thread in threads:
                thread.join()
            concurrent.futures.wait(checks)  # none may read `out_fd` once the caller closes it
        if self.check_copies:
            self.copies_checked = all(check.result() for check in checks)
        if self._fatal is not None:
            raise self._fatal
        if self._left:
            why = "; ".join(f"{ip}:{port}: {link.failure}" for link in links for ip, port in [link.holder])
            raise TransferError(f"{self.name}: {self._left} runs could not be fetched ({why or 'no holder'})")

    def progress(self) -> int:
        """Bytes copied or received so far (a run is counted as it arrives, before it is checked)."""
        return min(self._total, self.copied + sum(link.received for link in self._links))

    # ------------------------------------------------------------ bookkeeping

    def _finish(self, i: int, nbytes: int, fetched: bool, link: Link | None = None) -> None:
        """Step `i` is written (a second copy of it counts for nothing)."""
        with self._cond:
            if self._done[i]:
                return
            self._done[i] = True
            if fetched:
                self._left -= 1
                self.fetched += nbytes
                if link is not None:
                    link.delivered += 1
                if not self._left:
                    self._cut()  # holders still sending endgame copies, or stalled: nothing more is wanted
            while self._prefix < len(self.steps) and self._done[self._prefix]:
                self._prefix += 1
            end = self.steps[self._prefix - 1] if self._prefix else None
            if end is not None:  # the position marks what is checked and written, for a kept partial
                os.lseek(self.out_fd, end.offset + end.length, os.SEEK_SET)
            self._cond.notify_all()

    def _stop(self, exc: BaseException) -> None:
        with self._cond:
            if self._fatal is None:
                self._fatal = exc
            self._cut()
            self._cond.notify_all()

    def _cut(self) -> None:
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def _connected(self, sock: socket.socket) -> None:
        with self._cond:
            self._sockets.add(sock)
            if not self._left or self._fatal is not None:
                self._cut()

    def _claim(self, link: Link, room: int) -> list[int]:
        """Up to `room` runs for `link` to ask for: the next ones no one has, else
        (the endgame) runs in flight elsewhere that are not yet asked twice."""
        out: list[int] = []
        with self._cond:
            while room > len(out) and self._pending:
                i = self._pending.popleft()
                if not self._done[i]:
                    self._asked[i].add(link)
                    out.append(i)
            if room > len(out) and not out:
                for i in self._runs:
                    asked = self._asked[i]
                    if not self._done[i] and link not in asked and 0 < len(asked) < ENDGAME_ASKS:
                        asked.add(link)
                        out.append(i)
                        if len(out) == room:
                            break
        return out

    def _give_back(self, link: Link, runs: Sequence[int]) -> None:
        """`link` will not deliver `runs`: those no one else is asked for go back."""
        with self._cond:
            for i in sorted(runs, reverse=True):
                asked = self._asked[i]
                asked.discard(link)
                if not self._done[i] and not asked:
                    self._pending.appendleft(i)
            self._cond.notify_all()

    def _idle(self) -> bool:
        """Wait a little for work (a run given back, the build done); whether to go on."""
        with self._cond:
            if self._left == 0 or self._fatal is not None:
                return False
            self._cond.wait(WAIT_S)
            return self._left > 0 and self._fatal is None

    # ---------------------------------------------------------- one holder

    def _work(self, link: Link) -> None:
        window: collections.deque[int] = collections.deque()  # asked of this holder, in order
        checking: set[int] = set()  # received, being checked and written on the pool
        buffers: queue.Queue[bytearray] = queue.Queue()
        with contextlib.ExitStack() as stack:
            try:
                sock, reader, channel = link.connect(stack)
                self._connected(sock)
                for _ in range(BUFFERS_PER_HOLDER):
                    buffers.put(bytearray(RUN_MAX_BYTES))
                while self._fatal is None and link.failure is None:
                    new = self._claim(link, RUNS_PER_HOLDER - len(window))
                    if new:
                        self._ask(sock, channel, new)
                        window.extend(new)
                    if not window:
                        if self._idle():
                            continue
                        break
                    i = window[0]
                    buffer = buffers.get()  # waits while both others are being checked
                    try:
                        view = memoryview(buffer)[: self.steps[i].length]
                        self._receive(sock, reader, channel, link, view)
                    except BaseException:
                        buffers.put(buffer)
                        raise
                    window.popleft()
                    if self._done[i]:  # a faster holder's copy was written first
                        buffers.put(buffer)
                        self._give_back(link, [i])
                        continue
                    with self._cond:
                        checking.add(i)
                    hashing_pool().submit(self._check_and_write, link, i, view, buffer, buffers, checking)
            except (P2PSyncError, OSError) as exc:
                if self._left and self._fatal is None:  # else: cut because the build is over
                    if link.failure is None:
                        link.failure = exc
                    log.info("%s: %s:%d dropped for this file: %s", self.name, *link.holder, exc)
            except BaseException as exc:
                self._stop(exc)
            finally:
                self._wait_checked(checking)
                self._give_back(link, list(window))

    def _wait_checked(self, checking: set[int]) -> None:
        with self._cond:
            while checking:
                self._cond.wait(WAIT_S)

    def _ask(self, sock: socket.socket, channel: Channel | None, runs: Sequence[int]) -> None:
        lines = []
        for i in runs:
            step = self.steps[i]
            line = encode_request(self.name, step.offset, self.sha256, keep_open=True, length=step.length)
            lines.append(line if channel is None else channel.seal(line.rstrip(b"\n")))
        sock.sendall(b"".join(lines))

    def _receive(
        self, sock: socket.socket, reader: Buffer, channel: Channel | None, link: Link, view: memoryview
    ) -> None:
        """The next reply on `sock`, into `view`: within the rate limit, if there is one, a slice at a time."""
        length = len(view)
        with self.watchdog.limit(sock, transfer_deadline(length), f"receiving {length} bytes of {self.name}"):
            header = reader.read_line()
            offered = decode_reply(header if channel is None else channel.open(header))
            if offered != length:
                raise TransferError(f"{self.name}: the holder offers {offered} bytes of a {length}-byte run")
            piece = length if self.limiter is None else self.limiter.slice_bytes
            for at in range(0, length, piece):
                part = view[at : at + piece]
                if self.limiter is not None:
                    self.limiter.take(len(part))
                recv_into_exact(sock, reader, part)
                link.received += len(part)

    def _check_and_write(
        self,
        link: Link,
        i: int,
        view: memoryview,
        buffer: bytearray,
        buffers: queue.Queue[bytearray],
        checking: set[int],
    ) -> None:
        """On the pool: check run `i`'s chunks, then write them (unless another copy was)."""
        try:
            if not self._done[i]:
                step = self.steps[i]
                _check(view, self.wanted, step, self.name)
                _pwrite_all(self.out_fd, view, step.offset)
                self._finish(i, step.length, fetched=True, link=link)
        except BadChunk as exc:
            link.failure = exc
            log.warning("%s", exc)
            self._give_back(link, [i])
        except BaseException as exc:
            self._stop(exc)
        finally:
            view.release()
            buffers.put(buffer)
            with self._cond:
                checking.discard(i)
                self._asked[i].discard(link)
                self._cond.notify_all()


def _pwrite_all(fd: int, view: memoryview, offset: int) -> None:
    done = 0
    while done < len(view):
        done += os.pwrite(fd, view[done:], offset + done)


def _check(data: memoryview, wanted: ChunkList, step: Step, name: str) -> None:
    lengths = wanted.lengths[step.first : step.first + step.count]
    got = chunk_digests(data, lengths)
    for i, (digest, at) in enumerate(zip(got, itertools.accumulate(lengths, initial=0), strict=False)):
        if digest != wanted.digests[step.first + i]:
            start = step.offset + at
            raise BadChunk(f"{name}: chunk {step.first + i} (bytes {start}-{start + lengths[i]}) is not the listed one")
