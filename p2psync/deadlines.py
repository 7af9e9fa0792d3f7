"""Deadlines for whole exchanges, enforced by one thread for every connection.

Strategy: a socket timeout bounds each receive, not an exchange, so a peer
sending one byte a minute would hold a thread forever. Here each exchange
registers its socket with an overall deadline; one thread sleeps until the
nearest deadline and shuts that socket down, which wakes whatever call is
blocked on it (in either backend, with or without the GIL). The exchange then
reports a clear `TransferError` instead of the short read it saw. Registering
is cheap (a heap push; the thread is woken only for a deadline earlier than
all others), since a folder of small files registers one per file.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import socket
import threading
import time
from types import TracebackType

from .errors import P2PSyncError, TransferError

_COMPACT_SLACK = 1024  # ended deadlines tolerated in the heap beyond twice the live ones

__all__ = ["Deadline", "Watchdog"]


class Deadline:
    """One exchange under a deadline: a context manager from `Watchdog.limit`.

    On leaving with an error after the watchdog cut the socket, raises
    `TransferError` naming `what` instead; `expired` says whether it was cut.
    """

    __slots__ = ("_watchdog", "expired", "seconds", "sock", "what")

    def __init__(self, watchdog: Watchdog, sock: socket.socket, seconds: float, what: str) -> None:
        self._watchdog = watchdog
        self.sock = sock
        self.seconds = seconds
        self.what = what
        self.expired = False

    def __enter__(self) -> Deadline:
        self._watchdog._add(self)
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._watchdog._remove(self)
        if self.expired and isinstance(exc, P2PSyncError | OSError):
            raise TransferError(f"{self.what} took longer than {self.seconds:g} s") from exc


class Watchdog:
    """Shuts down sockets whose exchange outlived its deadline."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Deadline]] = []
        self._live: set[Deadline] = set()
        self._counter = itertools.count()
        self._wakeup = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False

    def limit(self, sock: socket.socket, seconds: float, what: str) -> Deadline:
        """`with watchdog.limit(sock, seconds, what):` cuts `sock` if the block runs
        longer than `seconds`, and then raises `TransferError` naming `what`."""
        return Deadline(self, sock, seconds, what)

    def _add(self, deadline: Deadline) -> None:
        when = time.monotonic() + deadline.seconds
        with self._wakeup:
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(target=self._run, name="p2psync-watchdog", daemon=True)
                self._thread.start()
            earliest = not self._heap or when < self._heap[0][0]
            heapq.heappush(self._heap, (when, next(self._counter), deadline))
            self._live.add(deadline)
            if earliest:  # otherwise the thread already wakes up in time
                self._wakeup.notify()

    def _remove(self, deadline: Deadline) -> None:
        with self._wakeup:  # its heap entry is skipped when it comes up ...
            self._live.discard(deadline)
            # ... unless ended entries pile up (thousands a second on a busy
            # server, each waiting out its minute): then the heap is rebuilt.
            if len(self._heap) > 2 * len(self._live) + _COMPACT_SLACK:
                self._heap = [item for item in self._heap if item[2] in self._live]
                heapq.heapify(self._heap)

    def close(self) -> None:
        with self._wakeup:
            self._closed = True
            self._wakeup.notify()

    def _run(self) -> None:
        with self._wakeup:
            while not self._closed:
                now = time.monotonic()
                while self._heap and (self._heap[0][2] not in self._live or self._heap[0][0] <= now):
                    _, _, deadline = heapq.heappop(self._heap)
                    if deadline in self._live:
                        deadline.expired = True
                        with contextlib.suppress(OSError):
                            deadline.sock.shutdown(socket.SHUT_RDWR)
                timeout = self._heap[0][0] - now if self._heap else None
                self._wakeup.wait(timeout)
