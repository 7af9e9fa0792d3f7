"""Change watching (`p2psync sync --watch`) against the classic polling round.

- the local part of a round of a peer whose 10,000-file folder did not change:
  with watching the rescan is skipped (no `stat` per file), without it every
  file is stat'ed;
- how long a new file written on one peer takes to be installed on another:
  with watching, the writer reports it at once and the tracker answers the
  other's long poll; without, each waits for its next 5 s round.
Interleaved rounds; medians. Skipped when the watch extra is not installed.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from bench_support import wait_until

from p2psync.peer import FileSynchronizer
from p2psync.tracker import Tracker

pytest.importorskip("watchdog.observers", reason="the watch extra is not installed: pip install 'p2psync[watch]'")

FILES = 10_000
ROUNDS = 5


def _peer(folder: Path, tracker: Tracker, **kwargs: object) -> FileSynchronizer:
    before = os.getcwd()
    os.chdir(folder)
    try:
        peer = FileSynchronizer("127.0.0.1", tracker.port, 0, "127.0.0.1", first_delay=0.05, **kwargs)  # type: ignore[arg-type]
    finally:
        os.chdir(before)
    peer.start()
    return peer


@pytest.fixture
def tracker() -> Iterator[Tracker]:
    made = Tracker(0, "127.0.0.1")
    made.start()
    yield made
    made.exit()


def test_the_local_part_of_a_round_of_an_unchanged_folder(benchmark, tracker: Tracker, tmp_path: Path, capsys) -> None:
    """What a round costs before it talks to the tracker: deciding what to report.
    Polling, that is a rescan (a stat per file); watching, with no event, nothing."""
    peers = {}
    for watch in (True, False):
        folder = tmp_path / ("watched" if watch else "polled")
        folder.mkdir()
        for i in range(FILES):
            (folder / f"{folder.name}-{i:05}.dat").write_bytes(b"x")
        peers[watch] = _peer(folder, tracker, interval=3600, watch=watch)  # no timed rounds
    wait_until(lambda: len(tracker.directory) == 2 * FILES, 60, "both peers to report")
    # They share the tracker, so each fetches the other's files first: measure once that is over.
    folders = [tmp_path / "watched", tmp_path / "polled"]
    wait_until(lambda: all(len(os.listdir(f)) >= 2 * FILES for f in folders), 120, "both peers in sync")
    wait_until(lambda: all(len(p._local) == 2 * FILES for p in peers.values()), 60, "both peers to report it")
    wait_until(lambda: not peers[True]._rescan.is_set(), 10, "the watched peer's events to settle")
    times: dict[bool, list[float]] = {True: [], False: []}

    def run_rounds() -> None:
        for r in range(ROUNDS):
            for watch in (True, False) if r % 2 == 0 else (False, True):
                began = time.perf_counter()
                peers[watch]._set_next_message()
                times[watch].append(time.perf_counter() - began)

    try:
        benchmark.group = f"the local part of a round, {FILES} unchanged files"
        benchmark.pedantic(run_rounds, rounds=1, iterations=1)
    finally:
        for peer in peers.values():
            peer.exit()
    watched, polled = (statistics.median(times[w]) for w in (True, False))
    benchmark.extra_info.update({"watched median s": round(watched, 5), "polled median s": round(polled, 5)})
    with capsys.disabled():
        print(
            f"\nthe local part of a round, {FILES} unchanged files: watched {watched * 1000:.2f} ms, "
            f"polled (rescan) {polled * 1000:.1f} ms"
        )


def test_time_for_a_new_file_to_reach_another_peer(benchmark, tracker: Tracker, tmp_path: Path, capsys) -> None:
    """A file written in one peer's folder until it is installed in another's: two
    watching peers (long polls) against two polling ones (the classic 5 s rounds)."""
    pairs: dict[bool, tuple[FileSynchronizer, FileSynchronizer]] = {}
    for watch in (True, False):
        made = []
        for side in ("from", "to"):
            folder = tmp_path / f"{'watched' if watch else 'polled'}-{side}"
            folder.mkdir()
            made.append(_peer(folder, tracker, watch=watch))
        pairs[watch] = (made[0], made[1])
    times: dict[bool, list[float]] = {True: [], False: []}

    def run_rounds() -> None:
        for r in range(ROUNDS):
            for watch in (True, False) if r % 2 == 0 else (False, True):
                source, target = pairs[watch]
                name = f"{'watched' if watch else 'polled'}-{r}.txt"
                began = time.perf_counter()
                (Path(source.folder.root) / name).write_text("new")
                wait_until(lambda n=name, t=target: os.path.exists(os.path.join(t.folder.root, n)), 30, name)
                times[watch].append(time.perf_counter() - began)

    try:
        benchmark.group = "a new file reaching another peer"
        benchmark.pedantic(run_rounds, rounds=1, iterations=1)
    finally:
        for pair in pairs.values():
            for peer in pair:
                peer.exit()
    watched, polled = (statistics.median(times[w]) for w in (True, False))
    benchmark.extra_info.update({"watched median s": round(watched, 3), "polled median s": round(polled, 3)})
    with capsys.disabled():
        print(
            f"\na new file reaching another peer, {ROUNDS} tries: watched (long polls) {watched:.3f} s, "
            f"polled (5 s rounds) {polled:.3f} s (medians; max {max(times[True]):.3f} s vs {max(times[False]):.3f} s)"
        )
