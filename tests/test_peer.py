"""Peers over loopback: syncing, interop with classic programs, bad input, failures."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import struct
import threading
from pathlib import Path

import pytest

from p2psync.local import STATE_DIR
from p2psync.peer import Buffer, FileSynchronizer
from p2psync.tracker import Tracker

from .classic_peer import ClassicPeer, recv_line
from .conftest import inside
from .holders import Holder, info_for
from .loopback import LOOPBACK, in_thread, wait_until

pytestmark = pytest.mark.usefixtures("backend")

FAST = {"interval": 0.2, "first_delay": 0.05, "max_backoff": 0.5}


def request(port: int, line: bytes) -> tuple[bytes, bytes]:
    """Send one request line; (first reply line, the bytes after it until close)."""
    with socket.create_connection((LOOPBACK, port), timeout=10) as sock:
        sock.sendall(line)
        first, rest = recv_line(sock)
        while chunk := sock.recv(65536):
            rest += chunk
    return first, rest


def folders(tmp_path: Path, *names: str) -> list[Path]:
    made = []
    for name in names:
        (tmp_path / name).mkdir()
        made.append(tmp_path / name)
    return made


# ------------------------------------------------------------------ syncing


def test_changes_between_rounds_propagate(tmp_path: Path, start_tracker, make_peer) -> None:
    tracker = start_tracker()
    a, b = folders(tmp_path, "a", "b")
    (a / "doc.txt").write_text("v1")
    peers = [make_peer(f, tracker.port, **FAST) for f in (a, b)]
    for p in peers:
        p.start()
    wait_until(lambda: (b / "doc.txt").exists() and (b / "doc.txt").read_text() == "v1", 20, "v1 at b")
    # edit at b (newer mtime): a gets it back; a new file at a reaches b
    (b / "doc.txt").write_text("v2 from b")
    later = int(os.path.getmtime(a / "doc.txt")) + 10
    os.utime(b / "doc.txt", (later, later))
    (a / "new.bin").write_bytes(os.urandom(300_000))
    wait_until(lambda: (a / "doc.txt").read_text() == "v2 from b", 20, "v2 at a")
    wait_until(lambda: (b / "new.bin").exists() and (b / "new.bin").read_bytes() == (a / "new.bin").read_bytes(), 20)
    assert int(os.path.getmtime(a / "doc.txt")) == later
    for f in (a, b):
        assert not list(f.glob("*.part"))


def test_peers_carry_on_when_the_tracker_restarts(tmp_path: Path, start_tracker, make_peer) -> None:
    tracker = start_tracker()
    port = tracker.port
    a, b = folders(tmp_path, "a", "b")
    (a / "before.txt").write_text("before")
    peers = [make_peer(f, port, **FAST) for f in (a, b)]
    for p in peers:
        p.start()
    wait_until(lambda: (b / "before.txt").exists(), 20, "the first file")
    tracker.exit()
    (a / "after.txt").write_text("after the restart")
    wait_until(lambda: all(p._backoff > 0 for p in peers), 20, "both peers to notice the tracker is gone")
    start_tracker(port)
    wait_until(lambda: (b / "after.txt").exists() and (b / "after.txt").read_text() == "after the restart", 30)


def test_a_classic_peer_and_ours_sync_both_ways(tmp_path: Path, start_tracker, make_peer) -> None:
    tracker = start_tracker()
    ours_dir, classic_dir = folders(tmp_path, "ours", "classic")
    (ours_dir / "ours.txt").write_text("written by p2psync's folder")
    (classic_dir / "classic.txt").write_text("written by the classic folder")
    ours = make_peer(ours_dir, tracker.port, **FAST)
    classic = ClassicPeer(classic_dir, (LOOPBACK, tracker.port))
    try:
        ours.start()
        classic.report()  # the tracker learns the classic peer's file
        wait_until(lambda: (ours_dir / "classic.txt").exists(), 20, "our peer to fetch from the classic one")
        wait_until(lambda: "ours.txt" in classic.report(), 20, "the tracker to list our file")
        classic.sync_once()  # the classic peer fetches from ours
        assert (classic_dir / "ours.txt").read_text() == "written by p2psync's folder"
        assert (ours_dir / "classic.txt").read_text() == "written by the classic folder"
        assert int((ours_dir / "classic.txt").stat().st_mtime) == int((classic_dir / "classic.txt").stat().st_mtime)
        # what the classic peer sent is exactly the classic bytes
        assert classic.sent[0].startswith(b'{"port": %d, "files": [{"name": "classic.txt", "mtime": ' % classic.port)
    finally:
        classic.close()


def _classic_tracker(server: socket.socket, stop: threading.Event, seen: list[bytes] | None = None) -> None:
    """A minimal classic tracker: a thread per peer, newest mtime wins, JSON lines
    (each message it gets is added to `seen`, if given)."""
    directory: dict[str, dict] = {}
    lock = threading.Lock()

    def serve(conn: socket.socket, addr: tuple) -> None:
        held = b""
        with conn:
            while not stop.is_set():
                try:
                    line, held = recv_line(conn, held)
                except (ConnectionError, OSError):
                    return
                if seen is not None:
                    seen.append(line)
                msg = json.loads(line)
                with lock:
                    for f in msg.get("files", []):
                        known = directory.get(f["name"])
                        if known is None or f["mtime"] > known["mtime"]:
                            directory[f["name"]] = {"ip": addr[0], "port": msg["port"], "mtime": f["mtime"]}
                    reply = json.dumps(directory).encode() + b"\n"
                conn.sendall(reply)

    server.settimeout(0.2)
    while not stop.is_set():
        try:
            conn, addr = server.accept()
        except TimeoutError:
            continue
        threading.Thread(target=serve, args=(conn, addr), daemon=True).start()


@pytest.mark.parametrize("watch", [False, True], ids=["polling", "watching"])
def test_our_peers_sync_through_a_classic_tracker(tmp_path: Path, make_peer, watch: bool) -> None:
    """Watching peers send long polls, which a classic tracker answers at once: they
    go on with timed rounds, as polling peers do."""
    if watch:
        pytest.importorskip("watchdog.observers", reason="the watch extra is not installed")
    a, b = folders(tmp_path, "a", "b")
    (a / "x.txt").write_text("x" * 10_000)
    (b / "y.txt").write_text("y" * 10_000)
    stop = threading.Event()
    with socket.create_server((LOOPBACK, 0)) as server:
        tracker = threading.Thread(target=_classic_tracker, args=(server, stop), daemon=True)
        tracker.start()
        try:
            for f in (a, b):
                make_peer(f, server.getsockname()[1], watch=watch, **FAST).start()
            wait_until(lambda: (a / "y.txt").exists() and (b / "x.txt").exists(), 20, "both files everywhere")
            assert (a / "y.txt").read_text() == "y" * 10_000
            assert (b / "x.txt").read_text() == "x" * 10_000
            (a / "later.txt").write_text("after the first rounds")
            wait_until(lambda: (b / "later.txt").exists(), 20, "a later file too")
        finally:
            stop.set()
            tracker.join(5)


# ------------------------------------------------------------------ serving bad requests


@pytest.fixture
def serving(tmp_path: Path, make_peer):
    """A started peer serving `tmp_path/served`, with a secret beside that folder."""
    folder = tmp_path / "served"
    folder.mkdir()
    (folder / "ok.txt").write_text("fine")
    (folder / "sub").mkdir()
    (folder / "code.py").write_text("print('never served')")
    (tmp_path / "secret.txt").write_text("outside the folder")
    os.symlink(tmp_path / "secret.txt", folder / "link.txt")
    peer = make_peer(folder, 9, **FAST)
    peer.start()
    return peer


def test_serves_a_file(serving) -> None:
    assert request(serving.port, b"ok.txt\n") == (b"Content-Length: 4", b"fine")


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b"missing.txt\n", b"no such file"),
        (b"../secret.txt\n", b"is not a file"),  # a path climbing out: its ".." is refused
        (b"/etc/passwd\n", b"is not a file"),  # absolute: its empty first component is refused
        (b"sub\n", b"not a regular file"),
        (b"link.txt\n", b"symbolic link"),
        (b"code.py\n", b"not a synced file"),
        (b"..\n", b"not a file"),
        (b"\xff\n", b"not UTF-8"),
        (b"ok.txt\x00\n", b"bad extended request"),
        (b"ok.txt\x003\x00" + b"0" * 64 + b"\n", b"version"),
    ],
)
def test_refuses_what_it_must_not_serve(serving, line: bytes, reason: bytes) -> None:
    first, rest = request(serving.port, line)
    assert first.startswith(b"Error: ")
    assert reason in first
    assert rest == b""


def _pipelined(name: bytes, digest: bytes) -> bytes:
    return name + b"\x000\x00" + digest + b"\x00keep-open\n"


FINE = hashlib.sha256(b"fine").hexdigest().encode()


@pytest.mark.parametrize(
    ("name", "digest", "reason"),
    [
        (b"missing.txt", FINE, b"no such file"),
        (b"sub", FINE, b"not a regular file"),
        (b"link.txt", FINE, b"symbolic link"),
        (b"code.py", FINE, b"not a synced file"),
        (b"ok.txt", b"0" * 64, b"version"),
    ],
)
def test_a_pipeline_is_refused_what_a_single_request_is(serving, name: bytes, digest: bytes, reason: bytes) -> None:
    """Pipelined requests for small files are read by the core in one call: they
    meet the same refusals, after the replies asked for before them."""
    first, rest = request(serving.port, _pipelined(b"ok.txt", FINE) + _pipelined(name, digest))
    assert first == b"Content-Length: 4"
    assert rest.startswith(b"fine") and reason in rest
    assert rest.endswith(b"\n") and rest.count(b"\n") == 1  # one Error line, then the connection closed


def test_a_pipeline_gets_a_version_rewritten_after_the_scan(serving) -> None:
    """A file rewritten after the scan: until a scan hashes it, its hash is not
    cached, and the slower way hashes it; either way the version asked for is
    served and another refused."""
    (Path(serving.folder.root) / "ok.txt").write_bytes(b"newer")
    newer = hashlib.sha256(b"newer").hexdigest().encode()
    assert request(serving.port, _pipelined(b"ok.txt", newer)) == (b"Content-Length: 5", b"newer")
    first, rest = request(serving.port, _pipelined(b"ok.txt", FINE))
    assert first.startswith(b"Error: ") and b"version" in first and rest == b""


def test_an_endless_request_is_refused(serving) -> None:
    first, rest = request(serving.port, b"a" * 5000)  # no newline within the 4096-byte bound
    assert first.startswith(b"Error: line longer than 4096 bytes")
    assert rest == b""
    assert request(serving.port, b"ok.txt\n") == (b"Content-Length: 4", b"fine")  # still serving


def test_a_client_that_never_asks_does_not_block_others(serving) -> None:
    with socket.create_connection((LOOPBACK, serving.port), timeout=10):
        assert request(serving.port, b"ok.txt\n") == (b"Content-Length: 4", b"fine")


# ------------------------------------------------------------------ receiving bad answers


@pytest.mark.parametrize(
    "reply",
    [
        b"Error: no such file\n",
        b"Content-Length: 10\nshort",
        b"Content-Length: abc\n",
        b"HTTP/1.0 200 OK\r\n\r\n",
        b"",
        b"Content-Length: 3\nbad",  # size fine, hash wrong
    ],
)
def test_a_bad_answer_keeps_the_good_old_file(tmp_path: Path, make_peer, reply: bytes) -> None:
    (tmp_path / "keep.txt").write_text("good old")
    os.utime(tmp_path / "keep.txt", (1000, 1000))
    peer = make_peer(tmp_path, 9)
    holder = Holder(lambda conn, line: conn.sendall(reply))
    info = info_for(b"new", holder.port)
    if reply.startswith(b"Content-Length: 10"):
        info.pop("size")
    assert peer.syncfile("keep.txt", info) is False
    holder.close()
    assert holder.requests == [b"keep.txt"]
    assert (tmp_path / "keep.txt").read_text() == "good old"
    assert os.path.getmtime(tmp_path / "keep.txt") == 1000
    # nothing beside it; a broken-off hashed download may be kept, hidden, for a resume
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != STATE_DIR) == ["keep.txt"]


@pytest.mark.parametrize("anonymous", [True, False], ids=["anonymous-partials", "named-partials"])
@pytest.mark.parametrize("local_mtime", [1000, 2000], ids=["older-local-edit", "newer-local-edit"])
def test_a_file_written_locally_during_a_download(tmp_path: Path, make_peer, anonymous: bool, local_mtime: int) -> None:
    """The name appears locally while the download is in flight: a newer local file
    stays (the download is dropped, nothing left beside it), an older one is replaced."""
    peer = make_peer(tmp_path, 9)
    peer.folder._anonymous_ok = anonymous

    def edit_then_answer(conn: socket.socket, line: bytes) -> None:
        (tmp_path / "race.txt").write_text("local edit")
        os.utime(tmp_path / "race.txt", (local_mtime, local_mtime))
        conn.sendall(b"Content-Length: 6\nremote")

    holder = Holder(edit_then_answer)
    info = info_for(b"remote", holder.port, mtime=1500)
    newer_local = local_mtime > 1500
    assert peer.syncfile("race.txt", info) is not newer_local
    holder.close()
    assert (tmp_path / "race.txt").read_text() == ("local edit" if newer_local else "remote")
    assert os.path.getmtime(tmp_path / "race.txt") == (local_mtime if newer_local else 1500)
    assert [p.name for p in tmp_path.iterdir()] == ["race.txt"]


def test_an_oversize_offer_is_refused_before_writing(tmp_path: Path, make_peer) -> None:
    peer = make_peer(tmp_path, 9)
    holder = Holder(lambda conn, line: conn.sendall(b"Content-Length: 99999999999999999\n"))
    assert not peer.syncfile("huge.bin", {"ip": LOOPBACK, "port": holder.port, "mtime": 5})
    holder.close()
    assert holder.requests == [b"huge.bin"]
    assert list(tmp_path.iterdir()) == []


def test_a_verified_download_installs(tmp_path: Path, make_peer) -> None:
    peer = make_peer(tmp_path, 9)
    holder = Holder(lambda conn, line: conn.sendall(b"Content-Length: 3\nnew"))
    assert peer.syncfile("fresh.txt", info_for(b"new", holder.port)) is True
    holder.close()
    assert holder.requests == [b"fresh.txt"]
    assert (tmp_path / "fresh.txt").read_bytes() == b"new"
    assert os.path.getmtime(tmp_path / "fresh.txt") == 2000


def test_a_failed_holder_falls_back_to_another_source(tmp_path: Path, make_peer) -> None:
    peer = make_peer(tmp_path, 9)
    bad = Holder(lambda conn, line: conn.sendall(b"Content-Length: 3\nx"))
    good = Holder(lambda conn, line: conn.sendall(b"Content-Length: 3\nnew"))
    info = {"ip": LOOPBACK, "port": bad.port, "mtime": 2000, "sources": [[LOOPBACK, bad.port], [LOOPBACK, good.port]]}
    assert peer.syncfile("f.txt", info) is True
    bad.close()
    good.close()
    assert bad.requests == good.requests == [b"f.txt"]
    assert (tmp_path / "f.txt").read_bytes() == b"new"


def _junk_tracker(reply: bytes) -> tuple[socket.socket, threading.Event]:
    server = socket.create_server((LOOPBACK, 0))
    server.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            with conn:
                try:
                    Buffer(conn, 8192).read_line()
                    conn.sendall(reply)
                except Exception:
                    pass

    threading.Thread(target=serve, daemon=True).start()
    return server, stop


@pytest.mark.parametrize(
    "reply",
    [
        b"garbage\n",
        b'{"../../escape.txt": {"ip": "127.0.0.1", "port": HOLDER, "mtime": 5}}\n',
        b'{"/etc/escape.txt": {"ip": "127.0.0.1", "port": HOLDER, "mtime": 5}}\n',
        b'{"sub/inner.txt": {"ip": "127.0.0.1", "port": HOLDER, "mtime": 5}}\n',  # the classic rule: flat only
        b'{"code.py": {"ip": "127.0.0.1", "port": HOLDER, "mtime": 5}}\n',
        b'{"x": {"ip": 5}}\n',
        b"",
    ],
)
def test_a_junk_tracker_never_makes_the_peer_write_or_crash(tmp_path: Path, make_peer, reply: bytes) -> None:
    folder = tmp_path / "folder"
    folder.mkdir()
    holder = Holder(lambda conn, line: conn.sendall(b"Content-Length: 4\nevil"))  # would serve anything asked
    reply = reply.replace(b"HOLDER", b"%d" % holder.port)
    server, stop = _junk_tracker(reply)
    with server, contextlib.closing(holder.listener):
        peer = make_peer(folder, server.getsockname()[1], **FAST)
        peer.start()
        wait_until(lambda: peer._first_round is False or peer._backoff > 0, 10, "a round against the junk tracker")
        for _ in range(3):
            peer.sync()
        assert peer.is_alive()
        stop.set()
    assert holder.requests == []  # the names were refused before anyone was asked for them
    assert list(folder.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder"]


def _files_open_in(folder: Path) -> list[str]:
    """What this process has open inside `folder` (an O_TMPFILE shows as `#inode (deleted)`)."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith(f"{folder}/"):
                found.append(target)
    return found


@pytest.mark.parametrize("anonymous", [True, False], ids=["anonymous-partials", "named-partials"])
def test_exit_is_quick_and_leaves_no_part(tmp_path: Path, make_peer, anonymous: bool) -> None:
    """A download in flight when exit() is called is abandoned and cleaned up."""
    peer = make_peer(tmp_path, 9)
    peer.folder._anonymous_ok = anonymous  # both ways a download can start (O_TMPFILE, or `name.part`)
    server = socket.create_server((LOOPBACK, 0))
    started = threading.Event()

    def trickle() -> None:
        conn, _ = server.accept()
        with conn:
            conn.recv(1024)
            conn.sendall(b"Content-Length: 1000000\n" + b"x" * 1000)
            started.set()
            conn.recv(1)  # hold the transfer open until the peer hangs up

    with server:
        sender = in_thread(trickle)
        fetch = in_thread(
            lambda: peer.syncfile("big.bin", {"ip": LOOPBACK, "port": server.getsockname()[1], "mtime": 1})
        )
        started.wait(10)
        wait_until(lambda: _files_open_in(tmp_path), 10, "the partial file")
        peer.exit()
        assert fetch() is False
        sender()
    assert list(tmp_path.iterdir()) == []


def test_a_file_removed_locally_leaves_the_directory(tmp_path: Path, start_tracker, make_peer) -> None:
    tracker = start_tracker()
    (tmp_path / "temp.txt").write_text("short-lived")
    peer = make_peer(tmp_path, tracker.port, **FAST)
    peer.start()
    wait_until(lambda: "temp.txt" in tracker.directory.entries(), 10, "the tracker to list the file")
    (tmp_path / "temp.txt").unlink()
    wait_until(lambda: "temp.txt" not in tracker.directory.entries(), 10, "the next report to drop it")


def test_several_requests_on_one_kept_connection(serving, tmp_path: Path) -> None:
    digest = hashlib.sha256(b"fine").hexdigest().encode()
    with socket.create_connection((LOOPBACK, serving.port), timeout=10) as sock:
        for _ in range(3):
            sock.sendall(b"ok.txt\x000\x00" + digest + b"\x00keep-open\n")
            header, rest = recv_line(sock)
            assert header == b"Content-Length: 4"
            while len(rest) < 4:
                rest += sock.recv(10)
            assert rest == b"fine"
        sock.sendall(b"ok.txt\n")  # a classic request ends the exchange
        header, rest = recv_line(sock)
        while chunk := sock.recv(10):
            rest += chunk
        assert (header, rest) == (b"Content-Length: 4", b"fine")


def _recv_all(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_pipelined_requests_get_their_replies_in_order(serving, monkeypatch) -> None:
    """Requests sent back to back: small replies are held and sent together, but
    in order, before a large reply and before a refusal, which ends the exchange."""
    from p2psync.peer import server as server_module

    uploads: list[int] = []
    real_upload = server_module.upload

    def counted(conn, fd, st, *args):  # only a large reply goes out on its own
        uploads.append(st.st_size)
        return real_upload(conn, fd, st, *args)

    monkeypatch.setattr(server_module, "upload", counted)
    folder = Path(serving.folder.root)
    big = os.urandom(3 * 1024 * 1024)
    (folder / "big.bin").write_bytes(big)
    fine, large = (hashlib.sha256(d).hexdigest().encode() for d in (b"fine", big))
    ask = b"ok.txt\x000\x00" + fine + b"\x00keep-open\n"
    requests = ask * 3 + b"big.bin\x000\x00" + large + b"\x00keep-open\n" + ask + b"missing.txt\n" + ask
    with socket.create_connection((LOOPBACK, serving.port), timeout=10) as sock:
        sock.sendall(requests)
        got = _recv_all(sock)
    small = b"Content-Length: 4\nfine"
    expected = small * 3 + b"Content-Length: %d\n" % len(big) + big + small + b"Error: no such file\n"
    assert got == expected  # and nothing for the request after the refusal
    assert uploads == [len(big)]  # the small replies were held, not sent one by one


def test_a_client_that_hangs_up_mid_pipeline_does_not_stop_the_server(serving) -> None:
    digest = hashlib.sha256(b"fine").hexdigest().encode()
    with socket.create_connection((LOOPBACK, serving.port), timeout=10) as sock:
        sock.sendall((b"ok.txt\x000\x00" + digest + b"\x00keep-open\n") * 500)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST, unread replies and all
    assert request(serving.port, b"ok.txt\n") == (b"Content-Length: 4", b"fine")


def test_a_round_rescans_once_unless_it_wrote_to_the_folder(tmp_path: Path, start_tracker, make_peer) -> None:
    """The scan that opens a round is reused to build the next message, unless
    the round installed something, which needs a second look."""
    tracker = start_tracker()
    src, dst = folders(tmp_path, "src", "dst")
    holder = make_peer(src, tracker.port, interval=3600, first_delay=3600)
    holder.start()  # serves files; its rounds are the test's calls below
    wait_until(holder._client_connected, 10, "the holder's own connection to the tracker")
    receiver = make_peer(dst, tracker.port)
    holder.sync()
    receiver.sync()  # the first round: the constructor's scan opened it
    scans = [0]
    original = receiver.folder.scan

    def counted():
        scans[0] += 1
        return original()

    receiver.folder.scan = counted
    receiver.sync()  # nothing new: one scan
    assert scans[0] == 1
    (src / "new.txt").write_text("new")
    holder.sync()
    receiver.sync()  # installs new.txt: the opening scan, and one to report it
    assert scans[0] == 3
    assert (dst / "new.txt").read_text() == "new"
    assert b'"name": "new.txt"' in receiver.msg  # reported at the next round


def test_a_round_fetches_many_files_in_parallel(tmp_path: Path, start_tracker, make_peer) -> None:
    tracker = start_tracker()
    src, dst = folders(tmp_path, "src", "dst")
    for i in range(300):
        (src / f"f{i:03}.txt").write_bytes(os.urandom(4096))
    holder = make_peer(src, tracker.port, **FAST)
    holder.start()
    wait_until(lambda: len(tracker.directory) == 300, 20, "the tracker to list 300 files")
    receiver = make_peer(dst, tracker.port)
    receiver.sync()  # one round fetches them all
    assert sorted(p.name for p in dst.iterdir()) == sorted(p.name for p in src.iterdir())
    for p in src.iterdir():
        assert (dst / p.name).read_bytes() == p.read_bytes()
        assert int((dst / p.name).stat().st_mtime) == int(p.stat().st_mtime)


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _ipv6_loopback(), reason="this machine has no IPv6 loopback (::1)")
def test_peers_sync_over_ipv6_loopback(tmp_path: Path) -> None:
    tracker = Tracker(0, "::1")
    tracker.start()
    a, b = folders(tmp_path, "a", "b")
    (a / "v6.txt").write_text("over ::1")
    peers = []
    try:
        for folder in (a, b):
            with inside(folder):
                peers.append(FileSynchronizer("::1", tracker.port, 0, "::1", **FAST))
        for p in peers:
            p.start()
        wait_until(lambda: (b / "v6.txt").exists(), 20, "the file to cross ::1")
        assert (b / "v6.txt").read_text() == "over ::1"
        assert tracker.directory.entries()["v6.txt"].ip == "::1"
    finally:
        for p in peers:
            p.exit()
        tracker.exit()
