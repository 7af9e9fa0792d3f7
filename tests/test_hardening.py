"""Hostile input and faults: nothing wrong is installed, the good old file survives,
the peer and tracker keep serving. Both backends."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p2psync import transfer
from p2psync.errors import ProtocolError
from p2psync.local import STATE_DIR
from p2psync.peer import server as server_module
from p2psync.protocol import decode_peer_message
from p2psync.tracker.directory import Directory

from .classic_peer import recv_line
from .holders import Holder, info_for, sha
from .loopback import LOOPBACK, in_thread, wait_until

pytestmark = pytest.mark.usefixtures("backend")


# ------------------------------------------------------------------ resume


def test_a_broken_download_is_resumed_from_where_it_stopped(tmp_path: Path, make_peer) -> None:
    data = os.urandom(3_000_000)
    (tmp_path / "big.bin").write_bytes(b"old good copy")
    os.utime(tmp_path / "big.bin", (1000, 1000))
    peer = make_peer(tmp_path, 9)

    def break_off(conn: socket.socket, line: bytes) -> None:
        conn.sendall(b"Content-Length: %d\n" % len(data) + data[:1_000_000])

    first = Holder(break_off)
    assert peer.syncfile("big.bin", info_for(data, first.port)) is False
    first.close()
    assert (tmp_path / "big.bin").read_bytes() == b"old good copy"  # untouched
    kept = list((tmp_path / STATE_DIR).iterdir())
    assert [p.name for p in kept] == [sha(data) + ".partial"]
    offset = kept[0].stat().st_size
    assert 0 < offset <= 1_000_000

    def serve_from_offset(conn: socket.socket, line: bytes) -> None:
        _name, _, rest = line.partition(b"\x00")
        start = int(rest.partition(b"\x00")[0] or 0)
        conn.sendall(b"Content-Length: %d\n" % (len(data) - start) + data[start:])

    second = Holder(serve_from_offset)
    assert peer.syncfile("big.bin", info_for(data, second.port)) is True
    second.close()
    assert second.requests == [b"big.bin\x00%d\x00%s" % (offset, sha(data).encode())]
    assert (tmp_path / "big.bin").read_bytes() == data
    assert os.path.getmtime(tmp_path / "big.bin") == 2000
    assert not (tmp_path / STATE_DIR).exists()  # nothing kept once installed


def test_a_resume_refused_falls_back_to_the_whole_file(tmp_path: Path, make_peer) -> None:
    data = os.urandom(1_500_000)  # large enough to be kept for a resume
    peer = make_peer(tmp_path, 9)
    first = Holder(lambda conn, line: conn.sendall(b"Content-Length: %d\n" % len(data) + data[:500]))
    assert not peer.syncfile("f.bin", info_for(data, first.port))
    first.close()

    def classic_only(conn: socket.socket, line: bytes) -> None:
        if b"\x00" in line:
            conn.sendall(b"Error: what is this\n")
        else:
            conn.sendall(b"Content-Length: %d\n" % len(data) + data)

    second = Holder(classic_only)
    assert peer.syncfile("f.bin", info_for(data, second.port)) is True
    second.close()
    assert len(second.requests) == 2 and second.requests[1] == b"f.bin"
    assert (tmp_path / "f.bin").read_bytes() == data


def test_a_small_broken_download_is_not_kept(tmp_path: Path, make_peer) -> None:
    data = os.urandom(10_000)
    peer = make_peer(tmp_path, 9)
    holder = Holder(lambda conn, line: conn.sendall(b"Content-Length: %d\n" % len(data) + data[:500]))
    assert not peer.syncfile("small.bin", info_for(data, holder.port))
    holder.close()
    assert list(tmp_path.iterdir()) == []  # refetching it whole costs less than keeping it


def test_a_wrong_resumed_file_is_thrown_away(tmp_path: Path, make_peer) -> None:
    data = os.urandom(1_500_000)
    peer = make_peer(tmp_path, 9)
    first = Holder(lambda conn, line: conn.sendall(b"Content-Length: %d\n" % len(data) + b"X" * 1000))
    assert not peer.syncfile("f.bin", info_for(data, first.port))
    first.close()
    second = Holder(
        lambda conn, line: conn.sendall(b"Content-Length: %d\n" % (len(data) - 1000) + data[1000:])
    )  # the rest is right, the kept start was garbage: the hash says no
    assert not peer.syncfile("f.bin", info_for(data, second.port))
    second.close()
    assert not (tmp_path / "f.bin").exists()
    assert not (tmp_path / STATE_DIR).exists()  # the bad bytes are gone, not kept for another resume


def test_our_server_resumes_and_checks_the_version(tmp_path: Path, make_peer) -> None:
    data = os.urandom(200_000)
    (tmp_path / "f.bin").write_bytes(data)
    peer = make_peer(tmp_path, 9)
    peer.start()
    with socket.create_connection((LOOPBACK, peer.port), timeout=10) as sock:
        sock.sendall(b"f.bin\x00150000\x00%s\n" % sha(data).encode())
        header, body = recv_line(sock)
        while chunk := sock.recv(65536):
            body += chunk
    assert header == b"Content-Length: 50000"
    assert body == data[150_000:]
    with socket.create_connection((LOOPBACK, peer.port), timeout=10) as sock:
        sock.sendall(b"f.bin\x00150000\x00%s\n" % (b"0" * 64))
        header, _ = recv_line(sock)
    assert header.startswith(b"Error: ") and b"version" in header


# ------------------------------------------------------------------ faults


HOLDER_SCRIPT = textwrap.dedent(
    """
    import socket, sys, time
    data = open(sys.argv[1], "rb").read()
    server = socket.create_server(("127.0.0.1", 0))
    print(server.getsockname()[1], flush=True)
    conn, _ = server.accept()
    conn.recv(4096)
    conn.sendall(b"Content-Length: %d\\n" % len(data) + data[: len(data) // 3])
    print("sent", flush=True)
    time.sleep(60)
    """
)


def test_a_holder_killed_mid_transfer(tmp_path: Path, make_peer) -> None:
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "f.bin").write_bytes(b"good old")
    os.utime(folder / "f.bin", (1000, 1000))
    data = os.urandom(2_000_000)
    (tmp_path / "source").write_bytes(data)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER_SCRIPT, str(tmp_path / "source")], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None
        port = int(holder.stdout.readline())
        peer = make_peer(folder, 9)
        fetch = in_thread(lambda: peer.syncfile("f.bin", info_for(data, port)))
        assert holder.stdout.readline().strip() == "sent"
        holder.send_signal(signal.SIGKILL)
        assert fetch() is False
    finally:
        holder.kill()
        holder.wait()
    assert (folder / "f.bin").read_bytes() == b"good old"
    assert sorted(p.name for p in folder.iterdir()) == [STATE_DIR, "f.bin"]  # the start is kept, hidden
    good = Holder(
        lambda conn, line: conn.sendall(
            b"Content-Length: %d\n" % (len(data) - int(line.split(b"\x00")[1])) + data[int(line.split(b"\x00")[1]) :]
        )
    )
    assert peer.syncfile("f.bin", info_for(data, good.port)) is True  # and the peer carries on
    good.close()
    assert (folder / "f.bin").read_bytes() == data


def test_a_file_changing_while_served_is_not_delivered(tmp_path: Path, make_peer) -> None:
    data = os.urandom(32 << 20)  # more than the socket buffers hold: the sender blocks mid-file
    (tmp_path / "moving.bin").write_bytes(data)
    peer = make_peer(tmp_path, 9)
    peer.start()
    with socket.create_connection((LOOPBACK, peer.port), timeout=30) as sock:
        sock.sendall(b"moving.bin\n")
        header, body = recv_line(sock)
        assert header == b"Content-Length: %d" % len(data)
        with open(tmp_path / "moving.bin", "r+b") as f:  # an editor saves in place
            f.seek(100)
            f.write(b"EDITED")
        later = time.time() + 5
        os.utime(tmp_path / "moving.bin", (later, later))
        while chunk := sock.recv(1 << 20):
            body += chunk
    assert len(body) < len(data)  # stopped short: a classic receiver sees a failed transfer too


def test_a_receiver_hanging_up_mid_upload_is_no_warning(
    tmp_path: Path, make_peer, caplog: pytest.LogCaptureFixture
) -> None:
    """A receiver may stop reading (it got the rest from another holder): the
    holder notes it at debug level, warns of nothing, and goes on serving."""
    data = os.urandom(32 << 20)  # more than the socket buffers hold: the sender is mid-file when cut off
    (tmp_path / "big.bin").write_bytes(data)
    (tmp_path / "small.txt").write_bytes(b"small")
    peer = make_peer(tmp_path, 9)
    peer.start()
    with caplog.at_level(logging.DEBUG, logger="p2psync.peer.server"):
        with socket.create_connection((LOOPBACK, peer.port), timeout=30) as sock:
            sock.sendall(b"big.bin\n")
            header, _ = recv_line(sock)
            assert header == b"Content-Length: %d" % len(data)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        wait_until(
            lambda: any("closed the connection during an upload" in r.getMessage() for r in caplog.records),
            20,
            "the holder to see the hang-up",
        )
        with socket.create_connection((LOOPBACK, peer.port), timeout=30) as sock:
            sock.sendall(b"small.txt\n")
            header, body = recv_line(sock)
            while len(body) < 5 and (chunk := sock.recv(10)):
                body += chunk
        assert (header, body) == (b"Content-Length: 5", b"small")
    served = [r for r in caplog.records if r.name == "p2psync.peer.server"]
    assert [r.getMessage() for r in served if r.levelno >= logging.WARNING] == []


def test_a_download_that_does_not_fit_is_refused_before_writing(tmp_path: Path, make_peer, monkeypatch) -> None:
    (tmp_path / "f.bin").write_bytes(b"good old")
    os.utime(tmp_path / "f.bin", (1000, 1000))
    peer = make_peer(tmp_path, 9)
    monkeypatch.setattr(peer.folder, "free_bytes", lambda: 1000)
    data = os.urandom(5000)
    holder = Holder(lambda conn, line: conn.sendall(b"Content-Length: %d\n" % len(data) + data))
    assert peer.syncfile("f.bin", info_for(data, holder.port)) is False
    holder.close()
    assert (tmp_path / "f.bin").read_bytes() == b"good old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]


DISK_FULL_SCRIPT = textwrap.dedent(
    """
    import os, resource, signal, sys
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
    folder, port, size, digest = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    os.chdir(folder)
    from p2psync.peer import FileSynchronizer
    import p2psync.transfer
    peer = FileSynchronizer("127.0.0.1", 9, 0, "127.0.0.1")
    info = {"ip": "127.0.0.1", "port": port, "mtime": 2000, "size": size, "sha256": digest}
    resource.setrlimit(resource.RLIMIT_FSIZE, (size // 2, resource.RLIM_INFINITY))
    print("full:", peer.syncfile("f.bin", info), flush=True)
    resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    print("room:", peer.syncfile("f.bin", info), flush=True)
    print("backend:", p2psync.transfer.BACKEND)
    peer.exit()
    """
)


def test_a_full_disk_keeps_the_old_file(tmp_path: Path, backend: str) -> None:
    (tmp_path / "f.bin").write_bytes(b"good old")
    os.utime(tmp_path / "f.bin", (1000, 1000))
    data = os.urandom(4_000_000)

    def whole_or_rest(conn: socket.socket, line: bytes) -> None:
        start = int(line.split(b"\x00")[1]) if b"\x00" in line else 0
        conn.sendall(b"Content-Length: %d\n" % (len(data) - start) + data[start:])

    holder = Holder(whole_or_rest)
    env = dict(os.environ)
    env.pop("P2PSYNC_NO_EXTENSIONS", None)
    if backend == "python":
        env["P2PSYNC_NO_EXTENSIONS"] = "1"
    result = subprocess.run(
        [sys.executable, "-c", DISK_FULL_SCRIPT, str(tmp_path), str(holder.port), str(len(data)), sha(data)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    holder.close()
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["full: False", "room: True", f"backend: {backend}"], result.stderr
    assert "File too large" in result.stderr  # the one log line says why
    assert (tmp_path / "f.bin").read_bytes() == data


# ------------------------------------------------------------------ slow clients


def test_a_trickling_request_is_cut_off(tmp_path: Path, make_peer, monkeypatch) -> None:
    monkeypatch.setattr(server_module, "REQUEST_TIMEOUT_S", 0.5)
    (tmp_path / "ok.txt").write_text("fine")
    peer = make_peer(tmp_path, 9)
    peer.start()
    with socket.create_connection((LOOPBACK, peer.port), timeout=10) as slow:
        began = time.monotonic()
        with pytest.raises(OSError):  # cut off; the next send or receive notices
            for _ in range(100):
                slow.sendall(b"a")  # one byte at a time, never a newline
                time.sleep(0.05)
                if slow.recv(1, socket.MSG_DONTWAIT | socket.MSG_PEEK) == b"":
                    raise ConnectionResetError
        assert time.monotonic() - began < 5
    with socket.create_connection((LOOPBACK, peer.port), timeout=10) as sock:
        sock.sendall(b"ok.txt\n")
        assert recv_line(sock)[0] == b"Content-Length: 4"


def test_a_trickling_holder_is_cut_off(tmp_path: Path, make_peer, monkeypatch) -> None:
    monkeypatch.setattr(transfer, "BASE_TRANSFER_S", 0.5)
    peer = make_peer(tmp_path, 9)
    data = os.urandom(1000)

    def trickle(conn: socket.socket, line: bytes) -> None:
        conn.sendall(b"Content-Length: %d\n" % len(data))
        for byte in data:
            conn.sendall(bytes([byte]))
            time.sleep(0.1)

    holder = Holder(trickle)
    began = time.monotonic()
    assert peer.syncfile("slow.bin", info_for(data, holder.port)) is False
    assert time.monotonic() - began < 5
    holder.close()


def test_a_flood_of_connections_gets_a_clear_refusal(tmp_path: Path, make_peer, monkeypatch) -> None:
    monkeypatch.setattr(server_module, "WORKERS", 1)
    monkeypatch.setattr(server_module, "MAX_QUEUED", 2)
    (tmp_path / "ok.txt").write_text("fine")
    peer = make_peer(tmp_path, 9)
    peer.start()
    silent = socket.create_connection((LOOPBACK, peer.port), timeout=10)  # holds the one worker
    asking: list[socket.socket] = []
    try:
        replies = []
        for _ in range(4):  # the worker and the queue of 2 are full by the third at the latest
            sock = socket.create_connection((LOOPBACK, peer.port), timeout=2)
            asking.append(sock)
            sock.sendall(b"ok.txt\n")
            try:
                replies.append(recv_line(sock)[0])
                break
            except TimeoutError:
                replies.append(b"(waiting in the queue)")
        assert replies[-1] == b"Error: busy, try again later", replies
        assert len(replies) <= 3
    finally:
        silent.close()
        for sock in asking:
            sock.close()


# ------------------------------------------------------------------ symlinks on the writing side


@pytest.mark.parametrize("anonymous", [True, False], ids=["anonymous-partials", "named-partials"])
def test_a_symlink_in_the_folder_is_replaced_not_followed(tmp_path: Path, make_peer, anonymous: bool) -> None:
    folder = tmp_path / "folder"
    folder.mkdir()
    outside = tmp_path / "outside.txt"
    outside.write_text("must not change")
    os.symlink(outside, folder / "f.txt")
    os.symlink(outside, folder / "g.txt.part")  # a planted partial name, too
    peer = make_peer(folder, 9)
    peer.folder._anonymous_ok = anonymous  # both ways a download can start (O_TMPFILE, or `name.part`)
    data = b"new content"
    holder = Holder(lambda conn, line: conn.sendall(b"Content-Length: %d\n" % len(data) + data))
    assert peer.syncfile("f.txt", {"ip": LOOPBACK, "port": holder.port, "mtime": 5}) is True
    # An anonymous download never opens g.txt.part; a named one refuses to write through it.
    assert peer.syncfile("g.txt", {"ip": LOOPBACK, "port": holder.port, "mtime": 5}) is anonymous
    holder.close()
    assert outside.read_text() == "must not change"
    assert not (folder / "f.txt").is_symlink() and (folder / "f.txt").read_bytes() == data
    assert not (folder / "f.txt.part").exists()
    assert (folder / "g.txt.part").is_symlink()
    if anonymous:
        assert (folder / "g.txt").read_bytes() == data


# ------------------------------------------------------------------ tracker fuzz


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(
        st.binary(max_size=200)
        | st.builds(
            lambda o: json.dumps(o).encode(),
            st.dictionaries(
                st.sampled_from(["port", "files"]),
                st.integers(-5, 70000)
                | st.lists(
                    st.dictionaries(
                        st.sampled_from(["name", "mtime", "size", "sha256"]),
                        st.integers(-1, 5) | st.text(max_size=5),
                        max_size=4,
                    ),
                    max_size=3,
                ),
                max_size=2,
            ),
        ),
        max_size=10,
    )
)
def test_tracker_message_handling_never_fails_otherwise(messages: list[bytes]) -> None:
    directory = Directory()
    for i, line in enumerate(messages):
        try:
            message = decode_peer_message(line)
        except ProtocolError:
            continue
        peer = (f"10.0.0.{i % 3}", message.port)
        if message.files is None:
            directory.join(peer)
        else:
            directory.report(peer, message.files)
        listed = json.loads(directory.encoded())
        assert isinstance(listed, dict)
        assert set(listed) == set(directory.entries())  # every entry it keeps is in the reply, and no other
        for entry in listed.values():
            assert set(entry) >= {"ip", "port", "mtime"}


def test_random_bytes_to_a_live_tracker(start_tracker) -> None:
    tracker = start_tracker()
    rng = random.Random(1234)
    for _ in range(50):
        junk = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300))) + b"\n"
        with socket.create_connection((LOOPBACK, tracker.port), timeout=10) as s:
            s.sendall(junk)
            with contextlib.suppress(ConnectionResetError):
                s.recv(65536)  # an answer or a close, never a hang
    with socket.create_connection((LOOPBACK, tracker.port), timeout=10) as s:
        s.sendall(b'{"port": 8001, "files": [{"name": "ok", "mtime": 1}]}\n')
        assert json.loads(recv_line(s)[0]) == {"ok": {"ip": "127.0.0.1", "port": 8001, "mtime": 1}}
    assert tracker.is_alive()


def test_a_message_listing_too_many_files_is_refused(monkeypatch) -> None:
    from p2psync.protocol import messages as protocol

    monkeypatch.setattr(protocol, "MAX_FILES_PER_MESSAGE", 3)
    files = [{"name": f"f{i}", "mtime": 1} for i in range(4)]
    with pytest.raises(ProtocolError, match="lists 4 files"):
        decode_peer_message(json.dumps({"port": 1, "files": files}).encode())
    with pytest.raises(ProtocolError, match="lists 4 files"):
        protocol.decode_directory(json.dumps({f"f{i}": {"ip": "x", "port": 1, "mtime": 1} for i in range(4)}).encode())


def test_an_unchanged_folder_is_not_read_again(tmp_path: Path, monkeypatch) -> None:
    from p2psync.local import folder as files

    for i in range(20):
        (tmp_path / f"f{i}").write_bytes(os.urandom(1000))
    reads: list[int] = []
    real = files.hash_fd
    monkeypatch.setattr(files, "hash_fd", lambda fd: reads.append(fd) or real(fd))
    folder = files.Folder(tmp_path)
    try:
        first = folder.scan()
        assert len(reads) == 20
        assert folder.scan() == first
        assert len(reads) == 20  # every hash came from the cache
        (tmp_path / "f3").write_bytes(b"changed")
        assert folder.scan()["f3"].sha256 == sha(b"changed")
        assert len(reads) == 21  # only the changed file was read
    finally:
        folder.close()
