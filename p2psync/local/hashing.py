"""SHA-256 of a download, computed beside the receive instead of after each chunk.

Strategy: the receive loop hands every chunk to `hasher.update` and reuses
its buffer at once, so hashing in line costs as much time as receiving (on a
fast link SHA-256 is the slower of the two). `BackgroundHasher` copies each
chunk into a small bounded queue and hashes on its own thread; hashlib
releases the GIL for large updates, so receiving and hashing overlap on two
cores with either backend. Memory stays bounded by the queue.
"""

from __future__ import annotations

import hashlib
import queue
import threading

__all__ = ["BACKGROUND_MIN_BYTES", "BackgroundHasher", "new_hasher"]

BACKGROUND_MIN_BYTES = 8 * 1024 * 1024  # below this a thread costs more than it saves
_QUEUED_CHUNKS = 4  # chunks copied ahead of the hashing thread (4 x 1 MiB at most)


class BackgroundHasher:
    """A SHA-256 whose `update` returns after a copy; `hexdigest` waits for the rest."""

    def __init__(self) -> None:
        self._hasher = hashlib.sha256()
        self._chunks: queue.Queue[bytes | None] = queue.Queue(_QUEUED_CHUNKS)
        self._thread = threading.Thread(target=self._run, name="p2psync-hash", daemon=True)
        self._thread.start()
        self._finished = False

    def _run(self) -> None:
        while (chunk := self._chunks.get()) is not None:
            self._hasher.update(chunk)

    def update(self, data: bytes | bytearray | memoryview, /) -> None:
        self._chunks.put(bytes(data))  # a copy: the caller reuses its buffer at once

    def close(self) -> None:
        """Stop the thread (idempotent); `hexdigest` does this too."""
        if not self._finished:
            self._finished = True
            self._chunks.put(None)
            self._thread.join()

    def hexdigest(self) -> str:
        self.close()
        return self._hasher.hexdigest()


def new_hasher(expected_bytes: int) -> BackgroundHasher | hashlib._Hash:
    """A SHA-256 for a download of `expected_bytes`: in the background when that pays."""
    return BackgroundHasher() if expected_bytes >= BACKGROUND_MIN_BYTES else hashlib.sha256()
