"""Helpers shared by the benchmark suites: loopback ports and waiting for services."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

from p2psync.protocol import encode_header


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for servers started by number)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def listening(port: int) -> bool:
    """Whether something accepts connections on 127.0.0.1:`port`."""
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def wait_until(condition: Callable[[], object], timeout: float, what: str) -> None:
    """Poll `condition`; raise `RuntimeError` naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


MiB = 1 << 20


def write_source(path: Path, size: int) -> str:
    """Write `size` bytes (a random MiB, repeated) to `path`; returns their SHA-256."""
    hasher = hashlib.sha256()
    block = os.urandom(MiB)
    with open(path, "wb") as out:
        for _ in range(size // MiB):
            out.write(block)
            hasher.update(block)
    return hasher.hexdigest()


def _serve_file(listener: socket.socket, path: str, protocol: bool) -> None:
    fd = os.open(path, os.O_RDONLY)
    size = os.fstat(fd).st_size
    while True:
        conn, _ = listener.accept()
        with conn:
            if protocol:  # read the request line, answer the header first
                request = b""
                while not request.endswith(b"\n"):
                    request += conn.recv(4096)
                conn.sendall(encode_header(size))
            offset = 0
            while offset < size:
                offset += os.sendfile(conn.fileno(), fd, offset, size - offset)


def sendfile_server(path: Path, protocol: bool) -> tuple[multiprocessing.Process, socket.socket]:
    """A process that answers every connection with the whole file by `sendfile`
    (after a `Content-Length` header when `protocol`); the caller kills it and
    closes the listener."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=16)
    process = multiprocessing.get_context("fork").Process(
        target=_serve_file, args=(listener, str(path), protocol), daemon=True
    )
    process.start()
    return process, listener
