"""Helpers for tests that move real bytes over loopback TCP (ports from the OS)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

LOOPBACK = "127.0.0.1"


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    """A connected (client, server-side) pair of TCP sockets on 127.0.0.1."""
    with socket.create_server((LOOPBACK, 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
    return client, server


def in_thread(fn: Callable[[], T]) -> Callable[[], T]:
    """Run `fn` in a thread now; the returned callable joins it and returns or raises its result."""
    box: dict[str, object] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # re-raised in the joining thread
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()

    def join(timeout: float = 60.0) -> T:
        thread.join(timeout)
        assert not thread.is_alive(), "worker thread did not finish"
        if "error" in box:
            raise box["error"]  # type: ignore[misc]
        return box["value"]  # type: ignore[return-value]

    return join


def wait_until(condition: Callable[[], object], timeout: float = 30.0, what: str = "condition") -> None:
    """Poll `condition` until it is true; fail the test with `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for APIs that need a number)."""
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


class Relay:
    """A TCP relay on 127.0.0.1 in front of `target`: a man in the middle for tests.
    It records what goes each way (`up`: client to server, `down`: back) and can
    change it on the way: `rewrite(direction, offset, data)` returns the bytes
    to forward for `data`, which starts `offset` bytes into that direction."""

    def __init__(self, target: tuple[str, int], rewrite: Callable[[str, int, bytes], bytes] | None = None) -> None:
        self.target = target
        self.rewrite = rewrite
        self.up = bytearray()
        self.down = bytearray()
        self._lock = threading.Lock()
        self._listener = socket.create_server((LOOPBACK, 0))
        self.port = int(self._listener.getsockname()[1])
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            self._sockets += [client, server]
            threading.Thread(target=self._pump, args=(client, server, "up"), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, "down"), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, direction: str) -> None:
        record = self.up if direction == "up" else self.down
        try:
            while data := source.recv(65536):
                with self._lock:
                    offset = len(record)
                    record += data
                sink.sendall(self.rewrite(direction, offset, data) if self.rewrite else data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        """End the connections relayed so far, as a vanished holder would (the relay still accepts new ones)."""
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # wakes the pump blocked in recv; a close alone would not

    def close(self) -> None:
        self._listener.close()
        self.cut()
        for sock in self._sockets:
            sock.close()
