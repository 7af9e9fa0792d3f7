"""The tracker over loopback: classic bytes, many peers, bad input, liveness."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest

from p2psync.tracker import Tracker

from .classic_peer import ClassicPeer, recv_line
from .loopback import LOOPBACK, wait_until

pytestmark = pytest.mark.usefixtures("backend")


def ask(sock: socket.socket, msg: bytes) -> dict:
    sock.sendall(msg)
    line, rest = recv_line(sock)
    assert rest == b""
    return json.loads(line)


def test_init_and_keepalive_get_the_directory(start_tracker) -> None:
    tracker = start_tracker()
    with socket.create_connection((LOOPBACK, tracker.port), timeout=10) as a:
        assert ask(a, b'{"port": 8001, "files": []}\n') == {}
        reply = ask(a, b'{"port": 8001, "files": [{"name": "a.txt", "mtime": 1772047595}]}\n')
        assert reply == {"a.txt": {"ip": "127.0.0.1", "port": 8001, "mtime": 1772047595}}
        assert ask(a, b'{"port": 8001}\n') == reply


def test_the_reply_bytes_are_classic(start_tracker) -> None:
    tracker = start_tracker()
    with socket.create_connection((LOOPBACK, tracker.port), timeout=10) as a:
        a.sendall(b'{"port": 8001, "files": [{"name": "a.txt", "mtime": 1772047595}]}\n')
        line, _ = recv_line(a)
    assert line + b"\n" == b'{"a.txt": {"ip": "127.0.0.1", "port": 8001, "mtime": 1772047595}}\n'


def test_classic_peers_see_each_other(start_tracker, tmp_path: Path) -> None:
    tracker = start_tracker()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "x.txt").write_text("from a")
    a = ClassicPeer(tmp_path / "a", (LOOPBACK, tracker.port))
    b = ClassicPeer(tmp_path / "b", (LOOPBACK, tracker.port))
    try:
        a.report()
        b.sync_once()
        assert (tmp_path / "b" / "x.txt").read_text() == "from a"
        assert b.report(init=False)["x.txt"]["port"] == a.port
    finally:
        a.close()
        b.close()


def test_pipelined_messages_each_get_an_answer(start_tracker) -> None:
    tracker = start_tracker()
    with socket.create_connection((LOOPBACK, tracker.port), timeout=10) as a:
        a.sendall(b'{"port": 8001}\n{"port": 8001}\n{"port": 8001}\n')
        held = b""
        for _ in range(3):
            line, held = recv_line(a, held)
            assert line == b"{}"


@pytest.mark.parametrize(
    "junk",
    [b"not json\n", b'{"port": "x"}\n', b"[]\n", b'{"port": 1, "files": [{"name": 5}]}\n', b"\xff\xfe\n"],
)
def test_a_malformed_message_drops_only_that_connection(start_tracker, junk: bytes) -> None:
    tracker = start_tracker()
    with (
        socket.create_connection((LOOPBACK, tracker.port), timeout=10) as good,
        socket.create_connection((LOOPBACK, tracker.port), timeout=10) as bad,
    ):
        ask(good, b'{"port": 8001, "files": [{"name": "a", "mtime": 1}]}\n')
        bad.sendall(junk)
        assert bad.recv(100) == b""  # closed, no answer
        assert "a" in ask(good, b'{"port": 8001}\n')


def test_an_endless_line_is_cut_off(start_tracker) -> None:
    tracker = start_tracker(max_message=64 * 1024)
    with socket.create_connection((LOOPBACK, tracker.port), timeout=10) as bad:
        with pytest.raises((BrokenPipeError, ConnectionResetError)):
            for _ in range(1000):  # 64 MiB at most; the tracker hangs up long before
                bad.sendall(b"x" * 65536)
        assert tracker.is_alive()


def test_unsafe_names_are_not_listed(start_tracker) -> None:
    tracker = start_tracker()
    with socket.create_connection((LOOPBACK, tracker.port), timeout=10) as a:
        files = [{"name": n, "mtime": 1} for n in ["../up", "/etc/passwd", "ok.txt", "a\\b"]]
        reply = ask(a, json.dumps({"port": 8001, "files": files}).encode() + b"\n")
    assert list(reply) == ["ok.txt"]


def test_closing_drops_the_peers_files(start_tracker) -> None:
    tracker = start_tracker()
    with socket.create_connection((LOOPBACK, tracker.port), timeout=10) as watcher:
        with socket.create_connection((LOOPBACK, tracker.port), timeout=10) as leaver:
            ask(leaver, b'{"port": 8002, "files": [{"name": "gone.txt", "mtime": 1}]}\n')
            assert "gone.txt" in ask(watcher, b'{"port": 8001}\n')
        wait_until(lambda: "gone.txt" not in ask(watcher, b'{"port": 8001}\n'), 10, "the entry to go")


def test_a_silent_peer_is_forgotten(start_tracker) -> None:
    tracker = start_tracker(peer_timeout=0.5)
    with socket.create_connection((LOOPBACK, tracker.port), timeout=10) as silent:
        ask(silent, b'{"port": 8002, "files": [{"name": "f", "mtime": 1}]}\n')
        wait_until(lambda: silent.recv(1) == b"", 10, "the tracker to close the silent connection")
    assert tracker.directory.entries() == {}


def test_a_reconnecting_peer_replaces_its_old_connection(start_tracker) -> None:
    tracker = start_tracker()
    old = socket.create_connection((LOOPBACK, tracker.port), timeout=10)
    ask(old, b'{"port": 8002, "files": [{"name": "f", "mtime": 1}]}\n')
    with old, socket.create_connection((LOOPBACK, tracker.port), timeout=10) as new:
        assert "f" in ask(new, b'{"port": 8002, "files": [{"name": "f", "mtime": 1}]}\n')
        assert old.recv(10) == b""  # the stale one is closed
        assert "f" in ask(new, b'{"port": 8002}\n')  # and the peer is still known


def test_exit_is_quick_and_frees_the_port() -> None:
    tracker = Tracker(0, "127.0.0.1")
    tracker.start()
    clients = [socket.create_connection((LOOPBACK, tracker.port)) for _ in range(5)]
    wait_until(lambda: len(tracker.connections) == 5, 5, "five connections")
    began = time.monotonic()
    tracker.exit()
    assert not tracker.is_alive()
    assert time.monotonic() - began < 1.5  # the contract is 1 s; a margin for a loaded machine
    for c in clients:
        assert c.recv(1) == b""
        c.close()
    again = Tracker(tracker.port, "127.0.0.1")  # the port is free again
    again.exit()


def test_many_peers_at_once(start_tracker) -> None:
    tracker = start_tracker()
    socks = [socket.create_connection((LOOPBACK, tracker.port), timeout=10) for _ in range(200)]
    try:
        for i, s in enumerate(socks):
            s.sendall(json.dumps({"port": 10000 + i, "files": [{"name": f"f{i}", "mtime": i}]}).encode() + b"\n")
        for s in socks:
            recv_line(s)
        final = ask(socks[0], b'{"port": 10000}\n')
        assert len(final) == 200
        assert final["f199"] == {"ip": "127.0.0.1", "port": 10199, "mtime": 199}
    finally:
        for s in socks:
            s.close()


def test_unfinished_messages_share_one_memory_budget(start_tracker) -> None:
    tracker = start_tracker(max_message=1 << 20, max_buffered=100_000)
    with (
        socket.create_connection((LOOPBACK, tracker.port), timeout=10) as good,
        socket.create_connection((LOOPBACK, tracker.port), timeout=10) as small,
        socket.create_connection((LOOPBACK, tracker.port), timeout=10) as big,
    ):
        ask(good, b'{"port": 8001, "files": [{"name": "a", "mtime": 1}]}\n')
        small.sendall(b'{"port": 8002, "files": [' + b" " * 30_000)  # unfinished, within its own limit
        wait_until(lambda: tracker._buffered >= 30_000, 10, "the first unfinished message to be held")
        big.sendall(b'{"port": 8003, "files": [' + b" " * 80_000)  # together past the budget
        wait_until(lambda: big.recv(1) == b"", 10, "the biggest holder to be dropped")
        small.sendall(b"]}\n")  # the smaller one was kept and completes normally
        assert json.loads(recv_line(small)[0]) == {"a": {"ip": "127.0.0.1", "port": 8001, "mtime": 1}}
        assert "a" in ask(good, b'{"port": 8001}\n')


# ------------------------------------------------------------------ long polls (a p2psync extension)


def _no_reply_yet(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""  # b"" would be a close: not a reply either
    except BlockingIOError:
        return True
    finally:
        sock.setblocking(True)


def test_a_long_poll_is_answered_when_the_directory_changes(start_tracker) -> None:
    tracker = start_tracker()
    with (
        socket.create_connection((LOOPBACK, tracker.port), timeout=10) as watcher,
        socket.create_connection((LOOPBACK, tracker.port), timeout=10) as other,
    ):
        assert ask(watcher, b'{"port": 8001, "wait": 30}\n') == {}  # a first message: answered at once
        watcher.sendall(b'{"port": 8001, "wait": 30}\n')  # this one it has seen: held
        assert ask(other, b'{"port": 8002}\n') == {}  # a KeepAlive changes nothing ...
        assert _no_reply_yet(watcher)
        ask(other, b'{"port": 8002, "files": [{"name": "new.txt", "mtime": 5}]}\n')  # ... a report does
        line, rest = recv_line(watcher)
        assert rest == b""
        assert json.loads(line) == {"new.txt": {"ip": "127.0.0.1", "port": 8002, "mtime": 5}}


def test_a_long_poll_is_answered_at_its_time(start_tracker) -> None:
    tracker = start_tracker()
    with socket.create_connection((LOOPBACK, tracker.port), timeout=10) as watcher:
        ask(watcher, b'{"port": 8001, "files": []}\n')
        began = time.monotonic()
        assert ask(watcher, b'{"port": 8001, "wait": 0.3}\n') == {}  # nothing changes: the time runs out
        assert time.monotonic() - began >= 0.3


def test_a_message_behind_a_long_poll_ends_it_and_replies_stay_in_order(start_tracker) -> None:
    tracker = start_tracker()
    with socket.create_connection((LOOPBACK, tracker.port), timeout=10) as watcher:
        ask(watcher, b'{"port": 8001, "files": []}\n')
        watcher.sendall(b'{"port": 8001, "wait": 30}\n')
        wait_until(lambda: len(tracker._held) == 1, 10, "the poll to be held")
        watcher.sendall(b'{"port": 8001, "files": [{"name": "mine.txt", "mtime": 7}]}\n')
        first, held = recv_line(watcher)
        second, rest = recv_line(watcher, held)
        assert rest == b""
        assert json.loads(first) == {}  # the poll's answer: the directory before the report
        assert json.loads(second) == {"mine.txt": {"ip": "127.0.0.1", "port": 8001, "mtime": 7}}
        assert not tracker._held


@pytest.mark.parametrize("wait", [b"-1", b"61", b'"soon"', b"true", b"NaN"])
def test_a_bad_wait_is_a_malformed_message(start_tracker, wait: bytes) -> None:
    tracker = start_tracker()
    with socket.create_connection((LOOPBACK, tracker.port), timeout=10) as peer:
        peer.sendall(b'{"port": 8001, "wait": ' + wait + b"}\n")
        assert peer.recv(1) == b""  # dropped, as any malformed message
    with socket.create_connection((LOOPBACK, tracker.port), timeout=10) as fine:
        assert ask(fine, b'{"port": 8001}\n') == {}  # and the tracker goes on
