"""Change watching (`--watch`): a change is reported without waiting for the
round, and a round with no change does not rescan the folder."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import socket
import sys
from pathlib import Path

import pytest

from p2psync import cli
from p2psync.local.watching import WatchingUnavailable, require_watching

from .classic_peer import recv_line
from .loopback import LOOPBACK, wait_until

pytest.importorskip("watchdog.observers", reason="the watch extra (watchdog) is not installed")
pytestmark = pytest.mark.usefixtures("backend")  # peers and trackers on both cores


def _counting(peer, method: str) -> list[int]:
    """Count the calls of `peer.<method>` (a one-item list, read as it grows)."""
    calls = [0]
    original = getattr(peer, method)

    def counted(*args, **kwargs):
        calls[0] += 1
        return original(*args, **kwargs)

    setattr(peer, method, counted)
    return calls


def test_a_change_is_reported_without_waiting_for_the_round(tmp_path: Path, start_tracker, make_peer) -> None:
    tracker = start_tracker()
    (tmp_path / "first.txt").write_text("here from the start")
    peer = make_peer(tmp_path, tracker.port, interval=3600, first_delay=0.05, watch=True)
    peer.start()
    wait_until(lambda: "first.txt" in tracker.directory.entries(), 10, "the first round")
    (tmp_path / "new.txt").write_text("written after the first round")
    # The next timed round is an hour away: only the watcher can bring this about.
    wait_until(lambda: "new.txt" in tracker.directory.entries(), 10, "the watched change to reach the tracker")
    assert tracker.directory.entries()["new.txt"].port == peer.port


def test_a_file_changing_while_scanned_is_looked_at_again_without_a_new_event(
    tmp_path: Path, start_tracker, make_peer
) -> None:
    """The scan that a write's event started finds the file still changing and keeps
    it for later; no event may follow (the writer is done), so the peer looks again
    by itself and the file reaches the tracker."""
    tracker = start_tracker()
    (tmp_path / "first.txt").write_text("here from the start")
    peer = make_peer(tmp_path, tracker.port, interval=3600, first_delay=0.05, watch=True)
    peer.start()
    wait_until(lambda: "first.txt" in tracker.directory.entries(), 10, "the first round")
    hash_file, tries = peer.folder._hash, [0]

    def busy_at_first(path: str, key):
        if path == "busy.log":
            tries[0] += 1
            if tries[0] == 1:  # still being written when the scan reads it
                raise OSError(errno.EAGAIN, "changed while being hashed")
        return hash_file(path, key)

    peer.folder._hash = busy_at_first
    (tmp_path / "busy.log").write_text("written, then left alone")
    wait_until(lambda: "busy.log" in tracker.directory.entries(), 10, "the file, on a second look")
    assert tries[0] >= 2


def test_rounds_without_a_change_skip_the_rescan(tmp_path: Path, start_tracker, make_peer) -> None:
    """Rounds that another peer brings about (its report changes the directory,
    which ends the long poll) do not rescan the watching peer's unchanged folder;
    a change of its own does."""
    tracker = start_tracker()
    (tmp_path / "a.txt").write_text("a")
    a_mtime = int(os.stat(tmp_path / "a.txt").st_mtime)
    peer = make_peer(tmp_path, tracker.port, interval=3600, first_delay=0.05, watch=True)
    scans = _counting(peer.folder, "scan")
    rounds = _counting(peer, "sync")
    peer.start()
    wait_until(lambda: "a.txt" in tracker.directory.entries(), 10, "the first round")
    wait_until(lambda: peer._polling, 10, "the peer's long poll")
    scanned, done = scans[0], rounds[0]
    same_version = {"name": "a.txt", "mtime": a_mtime, "size": 1, "sha256": hashlib.sha256(b"a").hexdigest()}
    with socket.create_connection((LOOPBACK, tracker.port), timeout=10) as other:
        for i in range(3):  # another holder of the same a.txt comes and goes: the directory changes
            files = [same_version] if i % 2 == 0 else []
            other.sendall(json.dumps({"port": 9, "files": files}).encode() + b"\n")
            recv_line(other)
            wait_until(lambda i=i: rounds[0] >= done + i + 1, 10, f"round {i + 1} brought about by the other peer")
    assert scans[0] == scanned  # nothing changed here: no rescan
    (tmp_path / "b.txt").write_text("b")
    wait_until(lambda: "b.txt" in tracker.directory.entries(), 10, "the change to reach the tracker")
    assert scans[0] > scanned


def test_a_change_reaches_another_watching_peer_at_once(tmp_path: Path, start_tracker, make_peer) -> None:
    """Both peers watch and have no timed round for an hour: a file written on one
    arrives on the other through the tracker answering the other's long poll."""
    tracker = start_tracker()
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    peers = [make_peer(folder, tracker.port, interval=3600, first_delay=0.05, watch=True) for folder in (a, b)]
    for peer in peers:
        peer.start()
    wait_until(lambda: all(p._polling for p in peers), 10, "both peers' long polls")
    (a / "news.txt").write_text("fresh")
    wait_until(lambda: (b / "news.txt").exists(), 10, "news.txt on the other peer")
    assert (b / "news.txt").read_text() == "fresh"
    # b reports what it installed at once too (an Init does not wait for a timed round) ...
    wait_until(lambda: len(tracker.directory.entries()["news.txt"].sources) == 2, 10, "b to report news.txt")
    (b / "reply.txt").write_text("back")  # ... and it works the other way
    wait_until(lambda: (a / "reply.txt").exists(), 10, "reply.txt on the first peer")


def test_a_dead_watcher_means_a_rescan_every_round(tmp_path: Path, start_tracker, make_peer) -> None:
    tracker = start_tracker()
    peer = make_peer(tmp_path, tracker.port, interval=0.05, first_delay=0.05, watch=True)
    scans = _counting(peer.folder, "scan")
    rounds = _counting(peer, "sync")
    peer.start()
    wait_until(lambda: rounds[0] >= 2, 10, "the first rounds")
    peer._watcher.stop()
    peer._cut_poll_short()  # as a last event would have: from here on, plain rounds
    scanned, done = scans[0], rounds[0]
    wait_until(lambda: rounds[0] >= done + 5, 10, "five more rounds")
    assert scans[0] >= scanned + 4


def test_watch_without_the_extra_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "watchdog.observers", None)  # as if not installed
    with pytest.raises(WatchingUnavailable, match=r"pip install 'p2psync\[watch\]'"):
        require_watching()
    with caplog.at_level(logging.ERROR):
        assert cli.main(["sync", str(tmp_path / "never"), "--watch", "-q"]) == 2
    assert "p2psync[watch]" in caplog.text
    assert not (tmp_path / "never").exists()  # nothing was started or created


def test_a_watcher_that_cannot_start_leaves_a_polling_peer(
    tmp_path: Path, start_tracker, make_peer, caplog: pytest.LogCaptureFixture
) -> None:
    tracker = start_tracker()
    peer = make_peer(tmp_path, tracker.port, interval=0.05, first_delay=0.05, watch=True)

    def no_watches() -> None:
        raise OSError(28, "inotify watch limit reached")

    peer._watcher.start = no_watches
    peer.start()
    (tmp_path / "late.txt").write_text("found by a rescan")
    wait_until(lambda: "late.txt" in tracker.directory.entries(), 10, "a polling round to report the file")
    assert peer.is_alive()
    assert "rescanning every round instead" in caplog.text
