"""Deadlines for whole exchanges, enforced by one thread for every connection.

Strategy: a socket timeout bounds each receive, not an exchange, so a peer
sending one byte a minute would hold a thread forever. Here each exchange
registers its socket with an overall deadline; one thread sleeps until the
nearest deadline and shuts that socket down, which wakes whatever call is
blocked on it (in either backend, with or without the GIL). The exchange then
reports a clear `TransferError` instead of the short read it saw.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import socket
import threading
import time
from collections.abc import Iterator

from .errors import P2PSyncError, TransferError

__all__ = ["Deadline", "Watchdog"]


class Deadline:
    """One registered exchange; `expired` says whether the watchdog cut it."""

    __slots__ = ("expired", "seconds", "sock", "what")

    def __init__(self, sock: socket.socket, seconds: float, what: str) -> None:
        self.sock = sock
        self.seconds = seconds
        self.what = what
        self.expired = False


class Watchdog:
    """Shuts down sockets whose exchange outlived its deadline."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Deadline]] = []
        self._live: set[Deadline] = set()
        self._counter = itertools.count()
        self._wakeup = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False

    @contextlib.contextmanager
    def limit(self, sock: socket.socket, seconds: float, what: str) -> Iterator[Deadline]:
        """Cut `sock` if the block takes longer than `seconds`; then raise
        `TransferError` naming `what`, whatever error the cut caused inside."""
        deadline = Deadline(sock, seconds, what)
        with self._wakeup:
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(target=self._run, name="p2psync-watchdog", daemon=True)
                self._thread.start()
            heapq.heappush(self._heap, (time.monotonic() + seconds, next(self._counter), deadline))
            self._live.add(deadline)
            self._wakeup.notify()
        try:
            yield deadline
        except (P2PSyncError, OSError) as exc:
            if deadline.expired:
                raise TransferError(f"{what} took longer than {seconds:g} s") from exc
            raise
        finally:
            with self._wakeup:
                self._live.discard(deadline)  # the heap entry is skipped when it comes up

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
