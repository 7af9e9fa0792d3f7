"""Change watching (`--watch`): a change is reported without waiting for the
round, and a round with no change does not rescan the folder."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest

from p2psync import cli
from p2psync.watching import WatchingUnavailable, require_watching

from .loopback import wait_until

pytest.importorskip("watchdog.observers", reason="the watch extra (watchdog) is not installed")


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


def test_rounds_without_a_change_skip_the_rescan(tmp_path: Path, start_tracker, make_peer) -> None:
    tracker = start_tracker()
    (tmp_path / "a.txt").write_text("a")
    peer = make_peer(tmp_path, tracker.port, interval=0.05, first_delay=0.05, watch=True)
    scans = _counting(peer.folder, "scan")
    rounds = _counting(peer, "sync")
    peer.start()
    wait_until(lambda: "a.txt" in tracker.directory.entries(), 10, "the first round")
    wait_until(lambda: rounds[0] >= 3, 10, "rounds after the first")
    scanned, done = scans[0], rounds[0]
    wait_until(lambda: rounds[0] >= done + 10, 10, "ten more rounds")
    assert scans[0] == scanned  # nothing changed: no rescan
    (tmp_path / "b.txt").write_text("b")
    wait_until(lambda: "b.txt" in tracker.directory.entries(), 10, "the change to reach the tracker")
    assert scans[0] > scanned


def test_a_dead_watcher_means_a_rescan_every_round(tmp_path: Path, start_tracker, make_peer) -> None:
    tracker = start_tracker()
    peer = make_peer(tmp_path, tracker.port, interval=0.05, first_delay=0.05, watch=True)
    scans = _counting(peer.folder, "scan")
    rounds = _counting(peer, "sync")
    peer.start()
    wait_until(lambda: rounds[0] >= 2, 10, "the first rounds")
    peer._watcher.stop()
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
