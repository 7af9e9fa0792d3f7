"""A change in a large tree: what one edit on one peer costs the other peer's round.

Two p2psync peers (the command's engine, in process) and a tracker on loopback
share a tree of `FILES` files in 100 folders. Each round one file is edited on
the holder and the receiver's round that brings it over is measured: the
thread CPU of its bring-up (decide, agree, fetch, install) and how many paths it
decided. Rounds alternate the way the engine decides now (only the paths whose
file, directory entry or deletions changed) with its full decision of every
path, which the engine still makes once a minute (`FULL_DECISION_INTERVAL_S`),
as the baseline in the same run. Medians. `P2PSYNC_TREE_FILES` sets the tree's
size (default 20,000; the README's numbers are from 100,000).
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from bench_support import wait_until

from p2psync.config import PeerSettings
from p2psync.peer import FileSynchronizer, synchronizer
from p2psync.tracker import Tracker

FILES = int(os.environ.get("P2PSYNC_TREE_FILES", "20000"))
ROUNDS = 5
SETTINGS = PeerSettings(interval=0.5, first_delay=0.0, max_backoff=0.5, classic=False)


@pytest.fixture(scope="module")
def swarm() -> Iterator[tuple[Path, FileSynchronizer]]:
    shm = Path("/dev/shm")
    with tempfile.TemporaryDirectory(prefix="p2psync-tree-", dir=shm if shm.is_dir() else None) as tmp:
        holder_dir, receiver_dir = Path(tmp) / "holder", Path(tmp) / "receiver"
        for i in range(FILES):
            path = holder_dir / f"d{i % 100:02}" / f"f{i}.txt"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"x" * 100)
        receiver_dir.mkdir()
        tracker = Tracker(0, "127.0.0.1")
        tracker.start()
        peers = [
            FileSynchronizer("127.0.0.1", tracker.port, 0, "127.0.0.1", folder=folder, settings=SETTINGS)
            for folder in (holder_dir, receiver_dir)
        ]
        for peer in peers:
            peer.start()
        try:
            wait_until(lambda: len(peers[1]._as_decided) == FILES, 300, "the receiver to hold and settle the tree")
            yield holder_dir, peers[1]
        finally:
            for peer in peers:
                peer.exit()
            tracker.exit()


def test_one_edit_in_a_large_tree(benchmark, swarm, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    holder_dir, receiver = swarm
    rounds: list[tuple[float, int]] = []  # the receiver's bring-ups: (thread CPU s, paths decided)
    decided: list[int] = []
    bring_up, decide_paths = synchronizer.FileSynchronizer._bring_up_to_date, synchronizer.decide_paths

    def timed_bring_up(self: FileSynchronizer, listing: Any) -> bool:
        began = time.thread_time()
        try:
            return bring_up(self, listing)
        finally:
            if self is receiver:
                rounds.append((time.thread_time() - began, decided[-1] if decided else 0))

    def counted(paths: list[str], *rest: Any) -> Any:
        decided.append(len(paths))
        return decide_paths(paths, *rest)

    monkeypatch.setattr(synchronizer.FileSynchronizer, "_bring_up_to_date", timed_bring_up)
    monkeypatch.setattr(synchronizer, "decide_paths", counted)
    results: dict[str, list[tuple[float, int]]] = {"what changed": [], "every path": []}

    def run_rounds() -> None:
        for r in range(ROUNDS):
            for way in ("what changed", "every path") if r % 2 == 0 else ("every path", "what changed"):
                every = way == "every path"
                monkeypatch.setattr(synchronizer, "FULL_DECISION_INTERVAL_S", 0.0 if every else 60.0)
                receiver._next_full_decision = time.monotonic() + (0.0 if every else 60.0)
                edited = holder_dir / f"d{r % 100:02}" / f"f{r}.txt"
                arrived = Path(receiver.folder.root) / edited.relative_to(holder_dir)
                text = f"{way} {r}".encode()
                before = len(rounds)
                edited.write_bytes(text)
                wait_until(lambda a=arrived, t=text: a.read_bytes() == t, 60, "the edit to arrive")
                wait_until(lambda b=before: len(rounds) > b, 10, "the round that fetched it to end")
                results[way].append(max(rounds[before:]))  # the round that fetched it: the costliest since

    benchmark.group = f"one edit in a {FILES}-file tree: the other peer's round"
    benchmark.pedantic(run_rounds, rounds=1, iterations=1)
    cpu = {way: statistics.median(c for c, _ in values) for way, values in results.items()}
    paths = {way: max(n for _, n in values) for way, values in results.items()}
    for way in results:
        benchmark.extra_info[f"{way}: median CPU s"] = round(cpu[way], 4)
        benchmark.extra_info[f"{way}: paths decided"] = paths[way]
    assert paths["what changed"] < FILES // 10 <= paths["every path"]  # each way decided what it says
    with capsys.disabled():
        print(
            f"\none edit in a {FILES}-file tree, {ROUNDS} interleaved rounds, the receiving round's bring-up "
            f"(thread CPU, median): deciding what changed {cpu['what changed'] * 1000:.0f} ms "
            f"({paths['what changed']} paths at most), deciding every path {cpu['every path'] * 1000:.0f} ms "
            f"({paths['every path']} paths): {cpu['every path'] / cpu['what changed']:.1f}x the CPU"
        )
