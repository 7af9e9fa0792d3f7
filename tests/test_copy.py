"""The copy loops of the transfer path over real loopback TCP, on both backends."""

from __future__ import annotations

import hashlib
import os
import socket
import threading
from pathlib import Path
from types import ModuleType

import pytest

from p2psync import transfer
from p2psync.errors import PeerHungUp, TransferError

from .loopback import in_thread, tcp_pair

BUF = 1024 * 1024  # the backends' receive buffer
SIZES = [0, 1, BUF - 1, BUF, BUF + 1, 3 * BUF + 17]


def pattern(size: int) -> bytes:
    """Bytes that differ at every offset, so a misplaced chunk shows."""
    block = hashlib.sha256(b"p2psync").digest() * 2048
    return (block * (size // len(block) + 1))[:size]


def write_file(path: Path, data: bytes) -> int:
    path.write_bytes(data)
    return os.open(path, os.O_RDONLY)


@pytest.mark.parametrize("size", SIZES, ids=lambda n: f"{n}B")
def test_recv_exactly_n_bytes(impl: ModuleType, tmp_path: Path, size: int) -> None:
    data = pattern(size)
    client, server = tcp_pair()
    with client, server:
        sender = in_thread(lambda: server.sendall(data + b"NOT PART OF THE FILE"))
        fd = os.open(tmp_path / "out", os.O_WRONLY | os.O_CREAT)
        try:
            assert impl.recv_to_file(client, fd, size) == size
        finally:
            os.close(fd)
        sender()
    assert (tmp_path / "out").read_bytes() == data


def test_recv_uses_bytes_the_splitter_already_holds(impl: ModuleType, tmp_path: Path) -> None:
    client, server = tcp_pair()
    with client, server:
        server.sendall(b"Content-Length: 11\nHello World")
        reader = impl.Buffer(client, 8192)
        assert reader.get_line() == "Content-Length: 11"
        hasher = hashlib.sha256()
        with open(tmp_path / "out", "wb") as out:
            assert impl.recv_to_file(client, out.fileno(), 11, reader, hasher) == 11
    assert (tmp_path / "out").read_bytes() == b"Hello World"
    assert hasher.hexdigest() == hashlib.sha256(b"Hello World").hexdigest()


def test_recv_leaves_bytes_past_n_in_the_splitter(impl: ModuleType, tmp_path: Path) -> None:
    splitter = impl.LineSplitter()
    splitter.feed(b"abcdefNEXT\n")
    client, server = tcp_pair()
    with client, server, open(tmp_path / "out", "wb") as out:
        assert impl.recv_to_file(client, out.fileno(), 6, splitter) == 6
    assert splitter.next_line() == b"NEXT"
    assert (tmp_path / "out").read_bytes() == b"abcdef"


@pytest.mark.parametrize("size", [1, BUF + 1, 5 * BUF], ids=lambda n: f"{n}B")
def test_recv_hashes_as_it_goes(impl: ModuleType, tmp_path: Path, size: int) -> None:
    data = pattern(size)
    client, server = tcp_pair()
    with client, server, open(tmp_path / "out", "wb") as out:
        sender = in_thread(lambda: server.sendall(data))
        hasher = hashlib.sha256()
        impl.recv_to_file(client, out.fileno(), size, None, hasher, 4096)
        sender()
    assert hasher.digest() == hashlib.sha256(data).digest()


def test_short_stream_is_a_transfer_error(impl: ModuleType, tmp_path: Path) -> None:
    client, server = tcp_pair()
    with client, server, open(tmp_path / "out", "wb") as out:
        server.sendall(b"12345")
        server.close()
        with pytest.raises(TransferError, match="connection closed after 5 of 20 bytes"):
            impl.recv_to_file(client, out.fileno(), 20)
    # The caller can clean up: what arrived is in the file, nothing more.
    assert (tmp_path / "out").read_bytes() == b"12345"


def test_silent_sender_times_out(impl: ModuleType, tmp_path: Path) -> None:
    client, server = tcp_pair()
    with client, server, open(tmp_path / "out", "wb") as out:
        client.settimeout(0.1)
        server.sendall(b"abc")
        with pytest.raises(TransferError, match="timed out after 3 of 10 bytes"):
            impl.recv_to_file(client, out.fileno(), 10)


def test_reset_connection_is_a_transfer_error(impl: ModuleType, tmp_path: Path) -> None:
    client, server = tcp_pair()
    with client, open(tmp_path / "out", "wb") as out:
        # SO_LINGER 0: close sends RST, as a killed peer's kernel may.
        server.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        server.close()
        with pytest.raises(TransferError):
            impl.recv_to_file(client, out.fileno(), 10)


def test_write_failure_is_an_os_error(impl: ModuleType) -> None:
    client, server = tcp_pair()
    with client, server:
        server.sendall(b"data")
        read_only = os.open(os.devnull, os.O_RDONLY)
        try:
            with pytest.raises(OSError) as info:
                impl.recv_to_file(client, read_only, 4)
            assert not isinstance(info.value, TransferError)
        finally:
            os.close(read_only)


def test_negative_count_is_refused(impl: ModuleType, tmp_path: Path) -> None:
    client, server = tcp_pair()
    with client, server, open(tmp_path / "out", "wb") as out:
        with pytest.raises(ValueError, match="negative byte count -1"):  # the guard's own words
            impl.recv_to_file(client, out.fileno(), -1)
        with pytest.raises(ValueError, match="negative offset -1"):
            impl.send_from_file(client, out.fileno(), -1, 1)
    assert (tmp_path / "out").read_bytes() == b""  # refused before touching anything


@pytest.mark.parametrize("size", SIZES, ids=lambda n: f"{n}B")
def test_send_file(impl: ModuleType, tmp_path: Path, size: int) -> None:
    data = pattern(size)
    fd = write_file(tmp_path / "src", data)
    client, server = tcp_pair()
    try:
        with client, server:
            receiver = in_thread(lambda: _read_all(client))
            assert impl.send_from_file(server, fd, 0, size) == size
            server.shutdown(socket.SHUT_WR)
            assert receiver() == data
    finally:
        os.close(fd)


def test_send_a_range(impl: ModuleType, tmp_path: Path) -> None:
    data = pattern(100_000)
    fd = write_file(tmp_path / "src", data)
    client, server = tcp_pair()
    try:
        with client, server:
            receiver = in_thread(lambda: _read_all(client))
            server.settimeout(10)  # the non-blocking, polling path
            assert impl.send_from_file(server, fd, 1234, 50_000) == 50_000
            server.shutdown(socket.SHUT_WR)
            assert receiver() == data[1234:51234]
    finally:
        os.close(fd)


def test_send_more_than_the_file_holds(impl: ModuleType, tmp_path: Path) -> None:
    fd = write_file(tmp_path / "src", b"short")
    client, server = tcp_pair()
    try:
        with client, server, pytest.raises(TransferError, match="file ended after 5 of 10 bytes"):
            impl.send_from_file(server, fd, 0, 10)
    finally:
        os.close(fd)


def test_send_to_a_vanished_peer(impl: ModuleType, tmp_path: Path) -> None:
    fd = write_file(tmp_path / "src", pattern(8 << 20))
    client, server = tcp_pair()
    try:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        client.close()
        with server, pytest.raises(PeerHungUp, match="the other side closed the connection"):
            impl.send_from_file(server, fd, 0, 8 << 20)
    finally:
        os.close(fd)


@pytest.mark.slow
def test_64_mib_round_trip(impl: ModuleType, tmp_path: Path) -> None:
    size = 64 << 20
    data = pattern(size)
    src = write_file(tmp_path / "src", data)
    client, server = tcp_pair()
    try:
        with client, server, open(tmp_path / "dst", "wb") as out:
            sender = in_thread(lambda: impl.send_from_file(server, src, 0, size))
            hasher = hashlib.sha256()
            assert impl.recv_to_file(client, out.fileno(), size, None, hasher) == size
            assert sender() == size
    finally:
        os.close(src)
    assert hasher.digest() == hashlib.sha256(data).digest()
    assert (tmp_path / "dst").stat().st_size == size


def test_two_transfers_run_in_parallel(impl: ModuleType, tmp_path: Path) -> None:
    """A receive blocked in one thread must not hold the GIL: another thread's
    transfer completes while the first still waits for its bytes."""
    slow_client, slow_server = tcp_pair()
    fast_client, fast_server = tcp_pair()
    slow_done = threading.Event()
    with slow_client, slow_server, fast_client, fast_server, open(tmp_path / "slow", "wb") as slow_out:

        def slow_receive() -> int:
            try:
                return impl.recv_to_file(slow_client, slow_out.fileno(), 4)
            finally:
                slow_done.set()

        slow = in_thread(slow_receive)
        data = pattern(BUF * 4)
        sender = in_thread(lambda: fast_server.sendall(data))
        with open(tmp_path / "fast", "wb") as fast_out:
            impl.recv_to_file(fast_client, fast_out.fileno(), len(data))
        sender()
        # The fast transfer ended while the slow one was still blocked waiting for bytes.
        assert not slow_done.is_set()
        slow_server.sendall(b"done")
        assert slow() == 4
    assert (tmp_path / "fast").read_bytes() == data
    assert (tmp_path / "slow").read_bytes() == b"done"


def _read_all(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


# ------------------------------------------------------------------ recv_body (small replies into memory)


@pytest.mark.parametrize("reader_size", [8, 64 * 1024], ids=["body-mostly-unread", "body-already-buffered"])
def test_recv_body_takes_buffered_bytes_then_receives_the_rest(impl: ModuleType, reader_size: int) -> None:
    body = pattern(5000)
    client, server = tcp_pair()
    with client, server:
        server.sendall(b"Content-Length: 5000\n" + body + b"Content-Length: 1\nz")
        reader = impl.Buffer(client, reader_size)
        assert reader.read_line() == b"Content-Length: 5000"
        assert transfer.recv_body(client, reader, 5000) == body
        assert reader.read_line() == b"Content-Length: 1"  # the next reply is intact
        assert transfer.recv_body(client, reader, 1) == b"z"


def test_recv_body_of_a_stream_that_ends_early(impl: ModuleType) -> None:
    client, server = tcp_pair()
    with client:
        server.sendall(b"Content-Length: 100\n" + b"x" * 40)
        server.close()
        reader = impl.Buffer(client, 16)
        reader.read_line()
        with pytest.raises(TransferError, match="closed after 40 of 100 bytes"):
            transfer.recv_body(client, reader, 100)


def test_recv_body_times_out(impl: ModuleType) -> None:
    client, server = tcp_pair()
    with client, server:
        client.settimeout(0.2)
        server.sendall(b"Content-Length: 100\n" + b"x" * 10)
        reader = impl.Buffer(client, 64)
        reader.read_line()
        with pytest.raises(TransferError, match="timed out after 10 of 100 bytes"):
            transfer.recv_body(client, reader, 100)
