"""The seven tests of the classic report (../shared/classic-tests.md), on both backends.

Only the import changed from the classic suite; fixed ports became ports from
the OS, and sleeps became waits for the condition.
"""

from __future__ import annotations

import json
import os
import socket
import threading
from pathlib import Path
from unittest import mock

import pytest

from p2psync.peer import (
    Buffer,
    FileSynchronizer,
    get_file_info,
    get_next_available_port,
    get_next_avaliable_port,
)
from p2psync.tracker import Tracker

from .conftest import inside
from .loopback import LOOPBACK, free_port, in_thread, wait_until

pytestmark = pytest.mark.usefixtures("backend")


def two_free_ports() -> int:
    """A port P such that P and P + 1 were both free a moment ago."""
    for _ in range(100):
        port = free_port()
        if port < 65535 and all(_bindable(p) for p in (port, port + 1)):
            return port
    raise AssertionError("no two adjacent free ports")


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a TIME_WAIT leftover is no obstacle
        try:
            s.bind(("", port))
        except OSError:
            return False
    return True


# 1 -------------------------------------------------------------------------


def test_get_file_info(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for sub in ("__pycache__", "tests", "pdfs"):
        (tmp_path / sub).mkdir()
    (tmp_path / "fileSynchronizer.py").write_text("# code")
    (tmp_path / "tracker.py").write_text("# code")
    monkeypatch.chdir(tmp_path)
    assert get_file_info() == []
    (tmp_path / "test.txt").write_text("hello")
    info = get_file_info()
    assert [f["name"] for f in info] == ["test.txt"]
    assert isinstance(info[0]["mtime"], int)
    assert info[0]["mtime"] == int(os.path.getmtime(tmp_path / "test.txt"))


# 2 -------------------------------------------------------------------------


def test_next_available_port() -> None:
    base = two_free_ports()
    tracker = Tracker(base, "0.0.0.0")
    tracker.start()
    try:
        assert get_next_avaliable_port(base) == base + 1
        assert get_next_available_port(base) == base + 1
    finally:
        tracker.exit()


def test_next_available_port_classic_numbers() -> None:
    if not (_bindable(8000) and _bindable(8001)):
        pytest.skip("8000/8001 are in use on this machine; the test above covers the same on free ports")
    tracker = Tracker(8000, "0.0.0.0")
    tracker.start()
    try:
        assert get_next_avaliable_port(8000) == 8001
    finally:
        tracker.exit()


# 3 -------------------------------------------------------------------------


def test_initialization(tmp_path: Path, start_tracker, make_peer) -> None:
    tracker = start_tracker()
    port = free_port()
    peer = make_peer(tmp_path, tracker.port, port)
    assert peer.port == port
    assert peer.host == "127.0.0.1"
    assert peer.trackerhost == "127.0.0.1"
    assert peer.trackerport == tracker.port
    assert peer.BUFFER_SIZE == 8192
    assert peer.client.gettimeout() == 180
    assert peer.msg == b'{"port": %d, "files": []}\n' % port
    peer.start()
    wait_until(lambda: len(tracker.connections) == 1, 5, "the tracker to accept the peer")


def test_construction_does_not_connect(tmp_path: Path, make_peer) -> None:
    peer = make_peer(tmp_path, 9999)  # nothing listens there, and nothing needs to
    assert peer.msg.startswith(b'{"port": ')


# 4 -------------------------------------------------------------------------


def test_serving_a_file(tmp_path: Path, make_peer) -> None:
    (tmp_path / "test.txt").write_text("Hello World")
    peer = make_peer(tmp_path, 9999)
    served = in_thread(lambda: peer.process_message(*peer.server.accept()))
    with socket.create_connection((LOOPBACK, peer.port), timeout=10) as client:
        client.sendall(b"test.txt\n")
        buf = Buffer(client, 8192)
        header = buf.get_line()
        assert header.startswith("Content-Length: ")
        length = int(header.split(":")[1])
        assert length == 11
        data = buf.buffer
        while len(data) < length:
            chunk = client.recv(8192)
            assert chunk, "server closed early"
            data += chunk
        assert data == b"Hello World"
    served()


# 5 -------------------------------------------------------------------------


def test_three_peers(tmp_path: Path, start_tracker, make_peer) -> None:
    tracker = start_tracker()
    folders = []
    for letter in "ABC":
        folder = tmp_path / f"peer{letter}"
        folder.mkdir()
        (folder / f"file{letter}.txt").write_text(f"content of {letter} " * 100)
        folders.append(folder)
    peers = [make_peer(f, tracker.port, interval=0.2, first_delay=0.1) for f in folders]
    for p in peers:
        p.start()
    expected = {f"file{x}.txt": f"content of {x} " * 100 for x in "ABC"}

    def all_synced() -> bool:
        return all({p.name: p.read_text() for p in f.iterdir() if p.suffix == ".txt"} == expected for f in folders)

    wait_until(all_synced, 30, "all three folders to hold all three files")
    for f in folders:
        assert not list(f.glob("*.part"))


# 6 -------------------------------------------------------------------------


def _hand_made_file_server(content: bytes) -> tuple[socket.socket, threading.Thread]:
    server = socket.create_server((LOOPBACK, 0))

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            request = b""
            while not request.endswith(b"\n"):
                request += conn.recv(1024)
            conn.sendall(b"Content-Length: %d\n" % len(content) + content)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return server, thread


def test_overwriting_an_older_file(tmp_path: Path, make_peer) -> None:
    t = 1_700_000_000
    shared = tmp_path / "shared.txt"
    shared.write_text("old version")
    os.utime(shared, (t, t))
    file_server, serving = _hand_made_file_server(b"new version!")
    tracker = socket.create_server((LOOPBACK, 0))
    directory = {"shared.txt": {"ip": LOOPBACK, "port": file_server.getsockname()[1], "mtime": t + 60}}

    def answer_once() -> bytes:
        conn, _ = tracker.accept()
        with conn:
            first = Buffer(conn, 8192).get_line()
            conn.sendall(json.dumps(directory).encode() + b"\n")
            return first.encode()

    with file_server, tracker:
        peer = make_peer(tmp_path, tracker.getsockname()[1])
        answered = in_thread(answer_once)
        peer.client.connect(tracker.getsockname())
        with mock.patch("threading.Timer"):
            peer.sync()
        assert json.loads(answered())["files"][0]["name"] == "shared.txt"
        serving.join(5)
    assert shared.read_text() == "new version!"
    assert int(os.path.getmtime(shared)) == t + 60
    assert not (tmp_path / "shared.txt.part").exists()


# 7 -------------------------------------------------------------------------


def test_short_transfer_leaves_nothing(tmp_path: Path, make_peer) -> None:
    liar = socket.create_server((LOOPBACK, 0))

    def lie() -> None:
        conn, _ = liar.accept()
        with conn:
            conn.recv(1024)
            conn.sendall(b"Content-Length: 20\nHello")

    with liar:
        lying = in_thread(lie)
        peer = make_peer(tmp_path, 9999)
        info = {"ip": LOOPBACK, "port": liar.getsockname()[1], "mtime": 1_700_000_000}
        assert peer.syncfile("broken.txt", info) is False
        lying()
    assert not (tmp_path / "broken.txt").exists()
    assert not (tmp_path / "broken.txt.part").exists()


def test_silent_tracker_calls_fatal_tracker(tmp_path: Path, make_peer) -> None:
    silent = socket.create_server((LOOPBACK, 0))
    read = threading.Event()

    def accept_and_read() -> socket.socket:
        conn, _ = silent.accept()
        conn.recv(1024)
        read.set()
        return conn  # never answers

    with silent:
        accepted = in_thread(accept_and_read)
        peer = make_peer(tmp_path, silent.getsockname()[1])
        peer.client.settimeout(0.2)
        peer.client.connect(silent.getsockname())
        peer.fatal_tracker = mock.Mock(side_effect=RuntimeError("tracker gone"))
        with pytest.raises(RuntimeError, match="tracker gone"):
            peer.sync()
        message = peer.fatal_tracker.call_args[0][0]
        assert "Failed waiting for the tracker to response" in message
        assert read.is_set()
        accepted().close()


def test_constructing_in_a_folder_keeps_serving_it(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("a")
    with inside(tmp_path):
        peer = FileSynchronizer("127.0.0.1", 9999, 0, "127.0.0.1")
    try:
        assert b'"name": "a.txt"' in peer.msg
    finally:
        peer.exit()
