# Type stub for the Cython extension; it mirrors p2psync/_twin.py exactly.
import socket
from collections.abc import Sequence
from typing import Protocol

from typing_extensions import disjoint_base

__all__ = [
    "MAX_LINE_BYTES",
    "RECV_BUFFER_BYTES",
    "Buffer",
    "LineSplitter",
    "link_new_files",
    "recv_to_file",
    "send_from_file",
]

MAX_LINE_BYTES: int
RECV_BUFFER_BYTES: int

class _Hasher(Protocol):
    def update(self, data: bytes | memoryview, /) -> None: ...

class _Pending(Protocol):
    def take(self, limit: int) -> bytes: ...

@disjoint_base
class LineSplitter:
    max_line: int
    def __init__(self, max_line: int = ...) -> None: ...
    def feed(self, data: bytes | bytearray | memoryview) -> None: ...
    def next_line(self) -> bytes | None: ...
    def lines(self) -> list[bytes]: ...
    def take(self, limit: int) -> bytes: ...
    @property
    def pending(self) -> bytes: ...
    @property
    def pending_bytes(self) -> int: ...

@disjoint_base
class Buffer:
    sock: socket.socket
    size: int
    def __init__(self, sock: socket.socket, size: int = ..., max_line: int = ...) -> None: ...
    @property
    def buffer(self) -> bytes: ...
    @buffer.setter
    def buffer(self, data: bytes) -> None: ...
    def poll_line(self) -> bytes | None: ...
    def read_line(self) -> bytes: ...
    def get_line(self) -> str: ...
    def take(self, limit: int) -> bytes: ...

def recv_to_file(
    sock: socket.socket,
    fd: int,
    nbytes: int,
    pending: _Pending | None = ...,
    hasher: _Hasher | None = ...,
    buffer_size: int = ...,
) -> int: ...
def send_from_file(sock: socket.socket, fd: int, offset: int, nbytes: int) -> int: ...
def link_new_files(
    dir_fd: int, files: Sequence[tuple[bytes, bytes, int] | tuple[bytes, bytes, int, int]]
) -> list[int]: ...
