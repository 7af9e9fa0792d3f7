"""Fetching one version of one file from whichever holder can deliver it, verified.

Strategy: the directory names a version (mtime, and from p2psync peers its
size and SHA-256) and every live holder of it. Holders are tried in turn; a
download is hashed as it arrives and installed only on a match. A download
of a hashed version that breaks off is kept, hidden, and the next attempt
asks only for the rest (a resume request, sent only to holders that
advertised a hash, which classic peers never do). Whatever fails, the file
under the real name is the old good one or the new verified one.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import logging
import socket
import threading
import time
from collections.abc import Iterator, Sequence

from .errors import P2PSyncError, Refused, TransferError
from .files import Folder, PartialFile
from .protocol import DirectoryEntry
from .server import transfer_deadline
from .transfer import recv_to_file, request
from .watchdog import Watchdog

__all__ = ["CONNECT_TIMEOUT_S", "HEADER_TIMEOUT_S", "Fetcher"]

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 10.0
HEADER_TIMEOUT_S = 30.0  # from the request to the Content-Length line
RECV_TIMEOUT_S = 60.0  # one receive that gets nothing for this long ends the transfer
PARALLEL_FETCHES = 8  # transfers in flight while a round fetches many files
RESUME_MIN_BYTES = 1 << 20  # smaller downloads are refetched whole rather than kept for a resume


class _ResumeRefused(Refused):
    """The holder refused a resume; it may still serve the whole file."""


class Fetcher:
    """Downloads into a folder; `abort_all()` ends the downloads in flight (at exit)."""

    def __init__(
        self,
        folder: Folder,
        watchdog: Watchdog,
        own_address: tuple[str, int],
        max_file_size: int | None = None,
    ) -> None:
        self.folder = folder
        self.watchdog = watchdog
        self.own_address = own_address
        self.max_file_size = max_file_size
        self._in_flight: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._aborted = False

    def fetch(self, name: str, entry: DirectoryEntry) -> bool:
        """Fetch `name` at `entry`'s version from its holders in turn; whether it was installed."""
        for ip, port in entry.holders():
            if self._is_me(ip, port):
                continue
            try:
                try:
                    installed = self._fetch_from(name, entry, ip, port, resume=True)
                except _ResumeRefused as exc:
                    log.info("%s: %s:%d would not resume (%s); fetching it whole", name, ip, port, exc)
                    installed = self._fetch_from(name, entry, ip, port, resume=False)
            except (P2PSyncError, OSError) as exc:
                log.warning("fetching %s from %s:%d failed: %s", name, ip, port, exc)
                if self._aborted:
                    return False
                continue  # this holder failed: try the next
            if installed:
                log.info("fetched %s (%s bytes) from %s:%d", name, entry.size or "?", ip, port)
            return installed
        return False

    def _is_me(self, ip: str, port: int) -> bool:
        own_ip, own_port = self.own_address
        return port == own_port and ip in ("127.0.0.1", "::1", own_ip)

    def _fetch_from(self, name: str, entry: DirectoryEntry, ip: str, port: int, resume: bool) -> bool:
        with (
            socket.create_connection((ip, port), timeout=CONNECT_TIMEOUT_S) as sock,
            self._tracked(sock),
        ):
            return self._exchange(sock, name, entry, resume=resume, keep_open=False)

    def _exchange(self, sock: socket.socket, name: str, entry: DirectoryEntry, resume: bool, keep_open: bool) -> bool:
        """One request and its reply on a connected socket, into a partial file,
        verified, then installed. Raises on any failure (the partial is removed,
        or kept for a resume when it is a large hashed version)."""
        resumable = entry.sha256 if entry.size is None or entry.size >= RESUME_MIN_BYTES else None
        with self.folder.partial(name, resumable) as part:
            if not resume and part.offset:
                part.restart()
            hasher = hashlib.sha256() if entry.sha256 else None
            if hasher is not None and part.offset:
                part.feed_prefix(hasher)
            sock.settimeout(HEADER_TIMEOUT_S)
            extended = bool(part.offset) or keep_open
            with self.watchdog.limit(sock, HEADER_TIMEOUT_S, "waiting for the reply header"):
                try:
                    length, reader = request(
                        sock, name, part.offset, entry.sha256 if extended else None, keep_open=keep_open
                    )
                except Refused as exc:
                    if part.offset:
                        raise _ResumeRefused(str(exc)) from None
                    raise
            self._check_length(part, entry, length)
            sock.settimeout(RECV_TIMEOUT_S)
            with self.watchdog.limit(sock, transfer_deadline(length), f"receiving {length} bytes"):
                recv_to_file(sock, part.fd, length, reader, hasher)
            if hasher is not None and hasher.hexdigest() != entry.sha256:
                part.abandon()
                raise TransferError(f"content does not match the advertised SHA-256 {entry.sha256}")
            return part.commit(entry.mtime)

    def fetch_all(self, wanted: Sequence[tuple[str, DirectoryEntry]], workers: int = PARALLEL_FETCHES) -> int:
        """Fetch many files with up to `workers` transfers in flight; how many were installed.

        Files from p2psync holders go over kept-open connections, one per
        worker and holder, several requests each (the keep-open extension),
        so a folder of small files does not pay a connection per file; any
        failure there falls back to `fetch`, holder by holder.
        """
        if len(wanted) < 2 or workers < 2:
            return sum(self.fetch(name, entry) for name, entry in wanted)
        todo = collections.deque(wanted)
        installed = 0
        count_lock = threading.Lock()

        def work() -> None:
            nonlocal installed
            kept: dict[tuple[str, int], socket.socket] = {}
            try:
                while not self._aborted:
                    try:
                        name, entry = todo.popleft()
                    except IndexError:
                        return
                    if self._fetch_over_kept(kept, name, entry) or self.fetch(name, entry):
                        with count_lock:
                            installed += 1
            finally:
                for sock in kept.values():
                    self._untrack(sock)
                    sock.close()

        threads = [threading.Thread(target=work, name=f"p2psync-fetch-{i}", daemon=True) for i in range(workers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return installed

    def _fetch_over_kept(self, kept: dict[tuple[str, int], socket.socket], name: str, entry: DirectoryEntry) -> bool:
        """Try `name` over this worker's kept-open connection to its primary holder.
        False (never raises) when it did not install, so the caller falls back."""
        holder = (entry.ip, entry.port)
        if entry.sha256 is None or self._is_me(*holder):
            return False  # a classic holder: one request per connection
        try:
            sock = kept.get(holder)
            if sock is None:
                sock = kept[holder] = socket.create_connection(holder, timeout=CONNECT_TIMEOUT_S)
                self._track(sock)
            installed = self._exchange(sock, name, entry, resume=True, keep_open=True)
        except (P2PSyncError, OSError) as exc:
            log.debug("fetching %s over a kept connection to %s:%d failed (%s); retrying alone", name, *holder, exc)
            dead = kept.pop(holder, None)
            if dead is not None:
                self._untrack(dead)
                dead.close()
            return False
        if installed:
            log.info("fetched %s (%s bytes) from %s:%d", name, entry.size, *holder)
        return installed

    def _check_length(self, part: PartialFile, entry: DirectoryEntry, length: int) -> None:
        if entry.size is not None and part.offset + length != entry.size:
            part.abandon()
            raise TransferError(f"holder offers {length} bytes from {part.offset}, the directory says {entry.size}")
        free = self.folder.free_bytes()
        if length > free:
            raise TransferError(f"holder offers {length} bytes; only {free} are free on disk")
        if self.max_file_size is not None and part.offset + length > self.max_file_size:
            part.abandon()
            raise TransferError(f"holder offers {part.offset + length} bytes, over the {self.max_file_size} allowed")

    @contextlib.contextmanager
    def _tracked(self, sock: socket.socket) -> Iterator[None]:
        self._track(sock)
        try:
            yield
        finally:
            self._untrack(sock)

    def _track(self, sock: socket.socket) -> None:
        with self._lock:
            if self._aborted:
                raise TransferError("peer is stopping")
            self._in_flight.add(sock)

    def _untrack(self, sock: socket.socket) -> None:
        with self._lock:
            self._in_flight.discard(sock)
            self._idle.notify_all()

    def abort_all(self, timeout: float) -> bool:
        """End every download in flight and refuse new ones; wait up to `timeout`
        seconds for them to clean up. Returns whether none is left."""
        with self._lock:
            self._aborted = True
            for sock in self._in_flight:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            deadline = time.monotonic() + timeout
            return self._idle.wait_for(lambda: not self._in_flight, max(0.0, deadline - time.monotonic()))
