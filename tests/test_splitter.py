"""The line splitter and the classic Buffer, on both backends."""

from __future__ import annotations

import socket
import threading
from types import ModuleType

import pytest

from p2psync.errors import ConnectionClosed, ProtocolError, TransferError

from .loopback import tcp_pair

CASES = [
    # (stream, max_line, lines, pending after draining)
    (b"", 10, [], b""),
    (b"\n", 10, [b""], b""),
    (b"a\nbc\n", 10, [b"a", b"bc"], b""),
    (b"a\nbc\nrest", 10, [b"a", b"bc"], b"rest"),
    (b"\n\n\n", 10, [b"", b"", b""], b""),
    (b"0123456789\n", 10, [b"0123456789"], b""),  # exactly the bound
    (b"0123456789", 10, [], b"0123456789"),  # unterminated, at the bound: wait for more
    ("héllo wörld\n".encode(), 64, ["héllo wörld".encode()], b""),
    (b"\x00\xff\r\n", 10, [b"\x00\xff\r"], b""),  # bytes, not text: CR and NUL kept
]


def drain(splitter: object, chunks: list[bytes]) -> list[bytes]:
    lines = []
    for chunk in chunks:
        splitter.feed(chunk)  # type: ignore[attr-defined]
        while (line := splitter.next_line()) is not None:  # type: ignore[attr-defined]
            lines.append(line)
    return lines


def chunkings(data: bytes) -> list[list[bytes]]:
    """Whole, byte by byte, and in uneven pieces."""
    return [[data], [data[i : i + 1] for i in range(len(data))], [data[:3], data[3:7], data[7:]]]


@pytest.mark.parametrize(("stream", "max_line", "expected", "rest"), CASES)
def test_lines_in_any_chunking(impl: ModuleType, stream: bytes, max_line: int, expected: list, rest: bytes) -> None:
    for chunks in chunkings(stream):
        splitter = impl.LineSplitter(max_line=max_line)
        assert drain(splitter, chunks) == expected
        assert splitter.pending == rest


@pytest.mark.parametrize(("stream", "max_line", "expected", "rest"), CASES)
def test_batch_lines_match_next_line(
    impl: ModuleType, stream: bytes, max_line: int, expected: list, rest: bytes
) -> None:
    splitter = impl.LineSplitter(max_line=max_line)
    splitter.feed(stream)
    assert splitter.lines() == expected
    assert splitter.pending == rest
    assert splitter.lines() == []


def test_extra_bytes_stay_pending(impl: ModuleType) -> None:
    splitter = impl.LineSplitter()
    splitter.feed(b"Content-Length: 5\nhel")
    assert splitter.next_line() == b"Content-Length: 5"
    assert splitter.pending == b"hel"
    assert splitter.take(2) == b"he"
    assert splitter.take(100) == b"l"
    assert splitter.pending == b""
    splitter.feed(b"lo\nnext\n")
    assert splitter.lines() == [b"lo", b"next"]


def test_endless_line_is_refused_not_buffered(impl: ModuleType) -> None:
    splitter = impl.LineSplitter(max_line=1024)
    splitter.feed(b"x" * 1024)
    assert splitter.next_line() is None  # at the bound: could still end
    splitter.feed(b"x")
    with pytest.raises(ProtocolError, match=r"longer than 1024 bytes.*starts b'xxxx"):
        splitter.next_line()


def test_overlong_terminated_line_is_refused(impl: ModuleType) -> None:
    splitter = impl.LineSplitter(max_line=4)
    splitter.feed(b"ok\ntoolong\nafter\n")
    assert splitter.next_line() == b"ok"
    with pytest.raises(ProtocolError, match="longer than 4 bytes"):
        splitter.next_line()
    with pytest.raises(ProtocolError):
        splitter.lines()


def test_error_quotes_at_most_100_bytes(impl: ModuleType) -> None:
    splitter = impl.LineSplitter(max_line=200)
    splitter.feed(b"q" * 5000)
    with pytest.raises(ProtocolError) as info:
        splitter.next_line()
    assert str(info.value).count("q") == 100


def test_default_bound_is_64_kib(impl: ModuleType) -> None:
    assert impl.MAX_LINE_BYTES == 64 * 1024
    splitter = impl.LineSplitter()
    splitter.feed(b"z" * (64 * 1024 + 1))
    with pytest.raises(ProtocolError):
        splitter.next_line()


def test_bad_bound_is_refused(impl: ModuleType) -> None:
    with pytest.raises(ValueError, match="positive"):
        impl.LineSplitter(max_line=0)


def test_feed_accepts_any_buffer(impl: ModuleType) -> None:
    splitter = impl.LineSplitter()
    splitter.feed(bytearray(b"a\n"))
    splitter.feed(memoryview(b"b\n"))
    assert splitter.lines() == [b"a", b"b"]


# ------------------------------------------------------------ Buffer(sock, size)


def test_buffer_get_line_over_a_socket(impl: ModuleType) -> None:
    client, server = tcp_pair()
    with client, server:
        server.sendall(b"Content-Length: 11\nHello World")
        buf = impl.Buffer(client, 8192)
        assert buf.get_line() == "Content-Length: 11"
        got = buf.buffer
        while len(got) < 11:
            got += client.recv(8192)
        assert got == b"Hello World"


def test_buffer_reads_small_pieces(impl: ModuleType) -> None:
    client, server = tcp_pair()
    with client, server:
        server.sendall(b"first line\nsecond\nthird")
        server.shutdown(1)
        buf = impl.Buffer(client, 3)
        assert buf.get_line() == "first line"
        assert buf.read_line() == b"second"
        with pytest.raises(ProtocolError, match="closed in the middle of a line"):
            buf.get_line()


def test_buffer_clean_close_between_lines(impl: ModuleType) -> None:
    client, server = tcp_pair()
    with client, server:
        server.sendall(b"only\n")
        server.close()
        buf = impl.Buffer(client, 8192)
        assert buf.get_line() == "only"
        with pytest.raises(ConnectionClosed):
            buf.get_line()


def test_buffer_line_bound_over_a_socket(impl: ModuleType) -> None:
    client, server = tcp_pair()
    with client, server:
        server.sendall(b"a" * 5000)
        buf = impl.Buffer(client, 1024, max_line=4096)
        with pytest.raises(ProtocolError, match="longer than 4096"):
            buf.get_line()


def test_buffer_not_utf8(impl: ModuleType) -> None:
    client, server = tcp_pair()
    with client, server:
        server.sendall(b"\xff\xfe\n")
        with pytest.raises(ProtocolError, match="not UTF-8"):
            impl.Buffer(client, 8192).get_line()


def test_buffer_timeout_propagates(impl: ModuleType) -> None:
    client, server = tcp_pair()
    with client, server:
        client.settimeout(0.05)
        with pytest.raises(TimeoutError):
            impl.Buffer(client, 8192).get_line()


def test_buffer_attribute_can_be_replaced(impl: ModuleType) -> None:
    client, server = tcp_pair()
    with client, server:
        buf = impl.Buffer(client, 8192)
        buf.buffer = b"preloaded\nrest"
        assert buf.get_line() == "preloaded"
        assert buf.buffer == b"rest"


# ------------------------------------------------------------ Buffer.read_replies (pipelined small files)


def test_read_replies_takes_each_body_after_its_exact_header(impl: ModuleType) -> None:
    client, server = tcp_pair()
    with client, server:
        bodies = [b"one", b"", b"x" * 70_000, b"last\n"]  # one far past the reader's buffer size
        stream = b"".join(b"Content-Length: %d\n" % len(body) + body for body in bodies)
        sender = threading.Thread(target=server.sendall, args=(stream,))
        sender.start()
        got: list[bytes] = []
        assert impl.Buffer(client, 1024).read_replies([len(body) for body in bodies], got) is None
        sender.join()
        assert got == bodies


def test_read_replies_stops_at_the_first_other_line(impl: ModuleType) -> None:
    client, server = tcp_pair()
    with client, server:
        server.sendall(b"Content-Length: 2\nabContent-Length:  3\nxyzError: no such file\n")
        reader = impl.Buffer(client, 8192)
        got: list[bytes] = []
        # The second header is spelled with two spaces (decode_reply reads it; the core leaves it):
        assert reader.read_replies([2, 3, 4], got) == b"Content-Length:  3"
        assert got == [b"ab"]
        assert reader.take(3) == b"xyz"  # what follows the line it returned is left as it was
        assert reader.read_replies([4], got) == b"Error: no such file"
        got.clear()
        server.sendall(b"Content-Length: 5\nhello")
        assert reader.read_replies([4], got) == b"Content-Length: 5"  # another size: the caller's to judge
        assert got == []


def test_read_replies_keeps_the_whole_bodies_when_the_stream_ends_midway(impl: ModuleType) -> None:
    client, server = tcp_pair()
    with client, server:
        server.sendall(b"Content-Length: 3\nabcContent-Length: 10\nshort")
        server.shutdown(socket.SHUT_WR)
        got: list[bytes] = []
        with pytest.raises(TransferError, match="connection closed after 5 of 10 bytes"):
            impl.Buffer(client, 4).read_replies([3, 10], got)
        assert got == [b"abc"]


def test_read_replies_times_out_inside_a_body_as_a_transfer_error(impl: ModuleType) -> None:
    client, server = tcp_pair()
    with client, server:
        server.sendall(b"Content-Length: 10\nabc")
        client.settimeout(0.05)
        got: list[bytes] = []
        with pytest.raises(TransferError, match="timed out after 3 of 10 bytes"):
            impl.Buffer(client, 8192).read_replies([10], got)
        assert got == []


def test_read_replies_refuses_a_negative_size(impl: ModuleType) -> None:
    client, server = tcp_pair()
    with client, server, pytest.raises(ValueError, match="negative"):
        impl.Buffer(client, 8192).read_replies([-1], [])
