"""Differential property tests: the twin and the extension must agree on everything."""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import itertools
import os
import socket
import tempfile
import threading
from types import ModuleType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2psync.errors import P2PSyncError

twin = importlib.import_module("p2psync._twin")
fast = pytest.importorskip("p2psync._speedups")  # under REQUIRE=1 conftest already failed


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c for c in cuts if 0 < c < len(data)})
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges)]


def drain(mod: ModuleType, chunks: list[bytes], max_line: int, batch: bool) -> tuple:
    splitter, lines, error = mod.LineSplitter(max_line=max_line), [], None
    try:
        for chunk in chunks:
            splitter.feed(chunk)
            if batch:
                lines.extend(splitter.lines())
            else:
                while (line := splitter.next_line()) is not None:
                    lines.append(line)
    except P2PSyncError as exc:
        error = (type(exc), str(exc))
    assert splitter.pending_bytes == len(splitter.pending)
    return lines, error, splitter.pending


line_streams = st.lists(st.one_of(st.binary(max_size=80), st.just(b"\n"), st.just(b"\n\n")), max_size=60).map(
    b"".join
) | st.binary(max_size=4096)


@settings(max_examples=400, deadline=None)
@given(line_streams, st.lists(st.integers(0, 4096)), st.integers(1, 512), st.booleans())
def test_splitters_agree(data: bytes, cuts: list[int], max_line: int, batch: bool) -> None:
    chunks = split_at(data, cuts)
    assert drain(fast, chunks, max_line, batch) == drain(twin, chunks, max_line, batch)


@settings(max_examples=200, deadline=None)
@given(line_streams, st.integers(1, 128), st.lists(st.integers(0, 300), max_size=8))
def test_take_and_lines_agree(data: bytes, max_line: int, takes: list[int]) -> None:
    results = []
    for mod in (twin, fast):
        splitter = mod.LineSplitter(max_line=max_line)
        splitter.feed(data)
        seen: list[object] = []
        for n in takes:
            seen.append(splitter.take(n))
            try:
                seen.append(splitter.next_line())
            except P2PSyncError as exc:
                seen.append(str(exc))
        results.append((seen, splitter.pending))
    assert results[0] == results[1]


def _copy_over_socket(mod: ModuleType, data: bytes, chunk_sizes: list[int], nbytes: int) -> tuple:
    """Send `data` in the given chunk sizes, then close; receive `nbytes` with `mod`."""
    a, b = socket.socketpair()

    def send() -> None:
        pos, i = 0, 0
        try:
            while pos < len(data):
                size = chunk_sizes[i % len(chunk_sizes)] if chunk_sizes else len(data)
                b.sendall(data[pos : pos + size])
                pos += size
                i += 1
        finally:
            b.shutdown(socket.SHUT_WR)  # a short stream must end, or the receive would wait

    sender = threading.Thread(target=send)
    sender.start()
    with tempfile.TemporaryFile() as out:
        hasher = hashlib.sha256()
        try:
            got: object = mod.recv_to_file(a, out.fileno(), nbytes, None, hasher, 1000)
        except P2PSyncError as exc:
            got = (type(exc), str(exc))
        sender.join()
        a.close()
        b.close()
        out.seek(0)
        return got, out.read(), hasher.hexdigest()


@settings(max_examples=60, deadline=None)
@given(
    st.binary(max_size=5000),
    st.lists(st.integers(1, 2000), max_size=5),
    st.integers(0, 6000),
)
def test_copy_loops_agree(data: bytes, chunk_sizes: list[int], nbytes: int) -> None:
    assert _copy_over_socket(fast, data, chunk_sizes, nbytes) == _copy_over_socket(twin, data, chunk_sizes, nbytes)


def test_public_names_agree() -> None:
    public = {name for name in dir(twin) if not name.startswith("_")} & set(twin.__all__)
    assert set(twin.__all__) == set(fast.__all__)
    for name in public:
        assert hasattr(fast, name), name
    assert twin.MAX_LINE_BYTES == fast.MAX_LINE_BYTES
    assert twin.RECV_BUFFER_BYTES == fast.RECV_BUFFER_BYTES


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
def test_the_core_leaks_no_file_descriptors(tmp_path) -> None:
    """Whatever the core opens itself (the anonymous files of link_new_files, the
    files read_small_file serves) it closes, on success and on every failure; the
    copy loops open nothing."""
    before = _open_fds()
    for mod in (twin, fast):
        _copy_over_socket(mod, b"abc" * 1000, [7], 3000)
        folder = tmp_path / mod.__name__
        folder.mkdir()
        (folder / "taken").write_bytes(b"x")
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            mod.link_new_files(fd, [(b"new", b"1", 5), (b"taken", b"2", 5), (b"no/dir", b"3", 5)] * 20)
            for name, limit in [(b"new", 10), (b"new", 0), (b"taken", 10), (b"missing", 10), (b".", 10)] * 20:
                with contextlib.suppress(OSError):
                    mod.read_small_file(fd, name, limit)
        finally:
            os.close(fd)
    assert _open_fds() == before


def _link_into(mod: ModuleType, folder: str, files: list[tuple[bytes, bytes, int, int]]) -> tuple:
    """Run `mod.link_new_files` into `folder`; what it returned (inodes as >0) and what is there."""
    os.makedirs(folder)
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        results = mod.link_new_files(fd, files)
    finally:
        os.close(fd)
    made = {}
    for name in sorted(os.listdir(folder)):
        st = os.stat(os.path.join(folder, name))
        with open(os.path.join(folder, name), "rb") as file:
            made[name] = (file.read(), st.st_mtime_ns, st.st_mode & 0o7777)
    return [r if r <= 0 else "inode" for r in results], made


_NAMES = st.sampled_from([b"a", b"b", b"c", b"sub/x", b"taken"])


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            _NAMES, st.binary(max_size=3000), st.integers(0, 2**31), st.sampled_from([-1, 0o600, 0o755, 0o4755 & 0o777])
        ),
        max_size=8,
    )
)
def test_link_new_files_agree(files: list[tuple[bytes, bytes, int, int]]) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        results = []
        for mod in (twin, fast):
            folder = os.path.join(scratch, mod.__name__)
            results.append(_link_into(mod, folder, files))
        assert results[0] == results[1]


def _read_small(mod: ModuleType, folder: str, kind: str, data: bytes, limit: int) -> object:
    """`mod.read_small_file` of one `kind` of thing at `folder/x`: what it returned
    (the inode as "inode") or what it raised."""
    os.makedirs(folder)
    path = os.path.join(folder, "x")
    if kind == "file":
        with open(path, "wb") as file:
            file.write(data)
    elif kind == "folder":
        os.mkdir(path)
    elif kind == "symlink":
        os.symlink(os.path.join(folder, "elsewhere"), path)
    elif kind == "fifo":
        os.mkfifo(path)
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        got = mod.read_small_file(fd, b"x", limit)
    except OSError as exc:
        return type(exc), exc.errno
    finally:
        os.close(fd)
    if got is None:
        return None
    reply, size, mtime_ns, inode = got
    st = os.stat(path)
    return reply, size, mtime_ns == st.st_mtime_ns, inode == st.st_ino


@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from(["file", "folder", "symlink", "fifo", "missing"]),
    st.binary(max_size=5000),
    st.integers(0, 6000),
)
def test_read_small_file_agree(kind: str, data: bytes, limit: int) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        results = [_read_small(mod, os.path.join(scratch, mod.__name__), kind, data, limit) for mod in (twin, fast)]
    assert results[0] == results[1]


def _send_over_socket(mod: ModuleType, data: bytes, offset: int, nbytes: int) -> tuple:
    """`mod.send_from_file` of `nbytes` from `offset` of a file holding `data`: what it
    returned (or raised), and what the other end received."""
    a, b = socket.socketpair()
    received = bytearray()

    def receive() -> None:
        while chunk := b.recv(65536):
            received.extend(chunk)

    reader = threading.Thread(target=receive)
    reader.start()
    with tempfile.TemporaryFile() as source:
        source.write(data)
        source.flush()
        try:
            got: object = mod.send_from_file(a, source.fileno(), offset, nbytes)
        except (P2PSyncError, ValueError) as exc:
            got = (type(exc), str(exc))
        finally:
            a.shutdown(socket.SHUT_WR)
            reader.join()
            a.close()
            b.close()
    return got, bytes(received)


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=200_000), st.integers(-1, 210_000), st.integers(-1, 210_000))
def test_send_from_file_agree(data: bytes, offset: int, nbytes: int) -> None:
    assert _send_over_socket(fast, data, offset, nbytes) == _send_over_socket(twin, data, offset, nbytes)


def _replies_over_socket(mod: ModuleType, stream: bytes, sizes: list[int], reader_size: int, cut: int) -> tuple:
    """Send `stream` (in two pieces, cut at `cut`), then close; read `sizes` replies with `mod`."""
    a, b = socket.socketpair()
    with a, b:
        sender = threading.Thread(target=lambda: (b.sendall(stream[:cut]), b.sendall(stream[cut:]), b.close()))
        sender.start()
        reader, bodies = mod.Buffer(a, reader_size), []
        try:
            got: object = reader.read_replies(sizes, bodies)
        except P2PSyncError as exc:
            got = (type(exc), str(exc))
        sender.join()
        rest = reader.buffer  # how much of it was received yet is timing: compare the whole rest of the stream
        while data := a.recv(65536):
            rest += data
        return got, bodies, rest


@st.composite
def replies_and_sizes(draw: st.DrawFn) -> tuple[bytes, list[int]]:
    """A stream of replies and the sizes asked for: mostly what the stream holds,
    sometimes another size, a refusal, a header only `decode_reply` reads, junk,
    or a stream that stops early."""
    stream, sizes = b"", []
    for _ in range(draw(st.integers(0, 8))):
        body = draw(st.binary(max_size=300))
        kind = draw(st.sampled_from(["plain"] * 6 + ["other size", "refusal", "odd header", "junk"]))
        if kind == "plain":
            stream += b"Content-Length: %d\n" % len(body) + body
        elif kind == "other size":
            stream += b"Content-Length: %d\n" % (len(body) + 1) + body
        elif kind == "refusal":
            stream += b"Error: busy\n"
        elif kind == "odd header":
            stream += b"Content-Length:  %d \n" % len(body) + body
        else:
            stream += draw(st.binary(max_size=40))
        sizes.append(len(body))
    if draw(st.booleans()):
        stream = stream[: draw(st.integers(0, len(stream)))]  # the holder vanished midway
    return stream, sizes + draw(st.lists(st.integers(0, 300), max_size=2))


@settings(max_examples=300, deadline=None)
@given(replies_and_sizes(), st.integers(1, 512), st.integers(0, 3000))
def test_read_replies_agree(case: tuple[bytes, list[int]], reader_size: int, cut: int) -> None:
    stream, sizes = case
    assert _replies_over_socket(fast, stream, sizes, reader_size, cut) == _replies_over_socket(
        twin, stream, sizes, reader_size, cut
    )
