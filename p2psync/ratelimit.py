"""A bandwidth limit: a token bucket shared by every transfer of one direction.

With no limit nothing here is used, and transfers keep their zero-copy path
(`sendfile`, one receive loop in the core). With one, transfers move in
slices and each slice first takes its bytes from the bucket, waiting when it
is empty; the bucket holds at most a tenth of a second's worth, so a pause
never turns into a burst over the rate.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

__all__ = ["RateLimiter"]

MIN_SLICE_BYTES = 16 * 1024


class RateLimiter:
    """At most `rate` bytes per second over all callers of `take`."""

    def __init__(
        self,
        rate: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate <= 0:
            raise ValueError(f"a rate must be positive, got {rate}")
        self.rate = float(rate)
        self.burst = max(self.rate / 10, MIN_SLICE_BYTES)
        self._clock, self._sleep = clock, sleep
        self._lock = threading.Lock()
        self._tokens = self.burst
        self._stamp = clock()

    @property
    def slice_bytes(self) -> int:
        """How much one transfer should move between two `take`s."""
        return int(self.burst)

    def take(self, nbytes: int) -> None:
        """Wait until `nbytes` may move. More than a burst at once is allowed
        (the bucket goes into debt), so a large pipelined body never waits forever."""
        with self._lock:
            now = self._clock()
            self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now
            self._tokens -= nbytes
            wait = -self._tokens / self.rate if self._tokens < 0 else 0.0
        if wait > 0:
            self._sleep(wait)
