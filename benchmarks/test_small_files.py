"""Many small files: an empty folder catching up with 10,000 x 4 KiB files, p2psync
against an rsync daemon pull of the same tree, interleaved in one run.

p2psync: a holder process (`p2psync sync SRC`) registered with a tracker; the
receiver is a real `FileSynchronizer` in an empty folder, and one `sync()`
round is timed: Init, directory, fetching every file, verified and installed.
rsync: `rsync -a rsync://127.0.0.1:PORT/src/ DEST/` against `rsync --daemon`.
Skipped with a message when rsync is not installed (apt-get install rsync).
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from bench_support import free_port, listening, wait_until

from p2psync.peer import FileSynchronizer
from p2psync.tracker import Tracker

FILES = 10_000
FILE_BYTES = 4096
ROUNDS = 5


@pytest.fixture(scope="module", params=["disk", "tmpfs"])
def place(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Where both trees live: the usual temp folder (a disk), or RAM (/dev/shm), where
    no disk noise hides what the two programs themselves cost."""
    if request.param == "disk":
        yield tmp_path_factory.mktemp("small")
        return
    if not os.path.isdir("/dev/shm") or not os.access("/dev/shm", os.W_OK):
        pytest.skip("no writable /dev/shm (tmpfs) here")
    base = Path(tempfile.mkdtemp(prefix="p2psync-bench-", dir="/dev/shm"))
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)  # RAM: give it back


@pytest.fixture(scope="module")
def tree(place: Path) -> Iterator[Path]:
    src = place / "src"
    src.mkdir()
    for i in range(FILES):
        (src / f"file-{i:05}.dat").write_bytes(os.urandom(FILE_BYTES))
    yield src


@pytest.fixture(scope="module")
def p2psync_holder(tree: Path) -> Iterator[int]:
    tracker = Tracker(0, "127.0.0.1")
    tracker.start()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "p2psync.cli",
            "sync",
            str(tree),
            "--tracker",
            f"127.0.0.1:{tracker.port}",
            "--port",
            "0",
            "-qq",
        ],  # default 5 s rounds: a holder rescanning every second would steal CPU from the transfer
    )
    try:
        wait_until(lambda: len(tracker.directory) == FILES, 120, "the holder to report its files")
        yield tracker.port
    finally:
        holder.terminate()
        holder.wait(10)
        tracker.exit()


@pytest.fixture(scope="module")
def rsync_daemon(tree: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    if shutil.which("rsync") is None:
        pytest.skip("rsync is not installed (apt-get install rsync): no baseline to compare with")
    conf = tmp_path_factory.mktemp("rsyncd") / "rsyncd.conf"
    conf.write_text(f"use chroot = no\nuid = root\ngid = root\n[src]\n    path = {tree}\n    read only = yes\n")
    port = free_port()
    daemon = subprocess.Popen(
        ["rsync", "--daemon", "--no-detach", "--address=127.0.0.1", f"--port={port}", f"--config={conf}"]
    )

    try:
        wait_until(lambda: listening(port), 10, "the rsync daemon")
        yield port
    finally:
        daemon.terminate()
        daemon.wait(10)


def _p2psync_round(tracker_port: int, dest: Path) -> float:
    dest.mkdir()
    before = os.getcwd()
    os.chdir(dest)
    try:
        peer = FileSynchronizer("127.0.0.1", tracker_port, 0, "127.0.0.1")
    finally:
        os.chdir(before)
    try:
        began = time.perf_counter()
        peer.sync()
        took = time.perf_counter() - began
    finally:
        peer.exit()
    return took


def _rsync_round(port: int, dest: Path) -> float:
    began = time.perf_counter()
    subprocess.run(["rsync", "-a", f"rsync://127.0.0.1:{port}/src/", f"{dest}/"], check=True)
    return time.perf_counter() - began


def test_10000_small_files(benchmark, place: Path, p2psync_holder: int, rsync_daemon: int, capsys) -> None:
    times: dict[str, list[float]] = {"p2psync": [], "rsync": []}

    def run_rounds() -> None:
        for r in range(ROUNDS):
            order = ["p2psync", "rsync"] if r % 2 == 0 else ["rsync", "p2psync"]
            for name in order:
                dest = place / f"{name}-{r}"
                took = _p2psync_round(p2psync_holder, dest) if name == "p2psync" else _rsync_round(rsync_daemon, dest)
                assert len(os.listdir(dest)) == FILES, name
                times[name].append(took)

    where = "tmpfs" if str(place).startswith("/dev/shm") else "disk"
    benchmark.group = f"{FILES} x {FILE_BYTES // 1024} KiB files into an empty folder ({where})"
    benchmark.pedantic(run_rounds, rounds=1, iterations=1)
    ratio = statistics.median(r / p for p, r in zip(times["p2psync"], times["rsync"], strict=True))
    for name, values in times.items():
        benchmark.extra_info[f"{name} median s"] = round(statistics.median(values), 3)
    benchmark.extra_info["rsync time / p2psync time"] = round(ratio, 2)
    with capsys.disabled():
        print(
            f"\n{FILES} x {FILE_BYTES} B on {where}, {ROUNDS} interleaved rounds: p2psync median "
            f"{statistics.median(times['p2psync']):.2f} s, "
            f"rsync daemon pull {statistics.median(times['rsync']):.2f} s; "
            f"p2psync is {ratio:.2f}x rsync's speed (median of per-round ratios)"
        )
