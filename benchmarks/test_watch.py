"""Change watching (`p2psync sync --watch`) against the classic polling round.

- a round of a peer whose 10,000-file folder did not change: with watching
  the rescan is skipped (no `stat` per file), without it every file is stat'ed;
- how long a new file takes to reach the tracker: at once with watching, at
  the next 5 s round without.
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


def test_a_round_of_an_unchanged_folder(benchmark, tracker: Tracker, tmp_path: Path, capsys) -> None:
    peers = {}
    for watch in (True, False):
        folder = tmp_path / ("watched" if watch else "polled")
        folder.mkdir()
        for i in range(FILES):
            (folder / f"{folder.name}-{i:05}.dat").write_bytes(b"x")
        peers[watch] = _peer(folder, tracker, interval=3600, watch=watch)  # no timed rounds: we run them
    wait_until(lambda: len(tracker.directory) == 2 * FILES, 60, "both peers to report")
    times: dict[bool, list[float]] = {True: [], False: []}

    def run_rounds() -> None:
        for r in range(ROUNDS):
            for watch in (True, False) if r % 2 == 0 else (False, True):
                began = time.perf_counter()
                peers[watch].sync()
                times[watch].append(time.perf_counter() - began)

    try:
        benchmark.group = f"a round, {FILES} unchanged files"
        benchmark.pedantic(run_rounds, rounds=1, iterations=1)
    finally:
        for peer in peers.values():
            peer.exit()
    watched, polled = (statistics.median(times[w]) for w in (True, False))
    benchmark.extra_info.update({"watched median s": round(watched, 4), "polled median s": round(polled, 4)})
    with capsys.disabled():
        print(
            f"\na round with {FILES} unchanged files (each peer also receives the {2 * FILES}-entry directory): "
            f"watched {watched * 1000:.1f} ms, polled (rescan) {polled * 1000:.1f} ms"
        )


def test_time_for_a_new_file_to_reach_the_tracker(benchmark, tracker: Tracker, tmp_path: Path, capsys) -> None:
    peers = {}
    for watch in (True, False):
        folder = tmp_path / ("watched" if watch else "polled")
        folder.mkdir()
        peers[watch] = _peer(folder, tracker, watch=watch)  # the classic 5 s round
    times: dict[bool, list[float]] = {True: [], False: []}

    def run_rounds() -> None:
        for r in range(ROUNDS):
            for watch in (True, False):
                name = f"{'watched' if watch else 'polled'}-{r}.txt"
                began = time.perf_counter()
                (Path(peers[watch].folder.root) / name).write_text("new")
                wait_until(lambda n=name: n in tracker.directory.entries(), 30, name)
                times[watch].append(time.perf_counter() - began)

    try:
        benchmark.group = "a new file reaching the tracker"
        benchmark.pedantic(run_rounds, rounds=1, iterations=1)
    finally:
        for peer in peers.values():
            peer.exit()
    watched, polled = (statistics.median(times[w]) for w in (True, False))
    benchmark.extra_info.update({"watched median s": round(watched, 3), "polled median s": round(polled, 3)})
    with capsys.disabled():
        print(
            f"\na new file reaching the tracker, {ROUNDS} tries: watched {watched:.3f} s, "
            f"polled (5 s rounds) {polled:.3f} s (medians)"
        )
