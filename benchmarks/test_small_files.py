"""Many small files in a tree: an empty folder catching up with 100 folders x 100
files x 4 KiB, p2psync against an rsync daemon pull of the same tree,
interleaved in one run.

p2psync: a holder process (`p2psync sync SRC`) registered with a tracker; the
receiver is a second `p2psync sync DEST --tracker ...` process, timed from
starting it to the last file present, since that is what a user waits for
(its start-up, connecting, the tracker round, fetching every file verified
and installed). rsync: `rsync -a rsync://127.0.0.1:PORT/src/ DEST/` against
`rsync --daemon`, timed until it exits. Skipped with a message when rsync is
not installed (apt-get install rsync).
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

import bench_support
import pytest
from bench_support import wait_until

from p2psync.tracker import Tracker

FOLDERS = 100
FILES_PER_FOLDER = 100
FILES = FOLDERS * FILES_PER_FOLDER
FILE_BYTES = 4096
ROUNDS = 5
POLL_S = 0.01


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
    for d in range(FOLDERS):
        (src / f"dir-{d:03}").mkdir(parents=True)
        for i in range(FILES_PER_FOLDER):
            (src / f"dir-{d:03}" / f"file-{i:03}.dat").write_bytes(os.urandom(FILE_BYTES))
    yield src


def _paths(root: Path) -> list[Path]:
    return [root / f"dir-{d:03}" / f"file-{i:03}.dat" for d in range(FOLDERS) for i in range(FILES_PER_FOLDER)]


def _count(root: Path) -> int:
    return sum(len(os.listdir(root / f"dir-{d:03}")) for d in range(FOLDERS) if (root / f"dir-{d:03}").is_dir())


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
    with bench_support.rsync_daemon(tree, tmp_path_factory.mktemp("rsyncd")) as port:
        yield port


def _p2psync_round(tracker_port: int, dest: Path) -> float:
    """From starting `p2psync sync DEST` to the last file present. The watcher looks
    every `POLL_S` for the file that arrives last (files come in path order) and
    only then counts them all: a watcher that stat'ed each file as it came would
    take a share of the two cores from the join it times (rsync is timed to its exit)."""
    last = _paths(dest)[-1]
    args = [sys.executable, "-m", "p2psync.cli", "sync", str(dest), "--tracker", f"127.0.0.1:{tracker_port}"]
    began = time.perf_counter()
    receiver = subprocess.Popen([*args, "--port", "0", "-qq"])
    try:
        while not (last.exists() and _count(dest) == FILES):
            if receiver.poll() is not None:
                raise RuntimeError(f"p2psync sync exited with {receiver.returncode}")
            time.sleep(POLL_S)
        took = time.perf_counter() - began
    finally:
        receiver.terminate()
        receiver.wait(10)
    return took


def _rsync_round(port: int, dest: Path) -> float:
    began = time.perf_counter()
    subprocess.run(["rsync", "-a", f"rsync://127.0.0.1:{port}/src/", f"{dest}/"], check=True)
    return time.perf_counter() - began


def test_10000_small_files_in_100_folders(
    benchmark, place: Path, p2psync_holder: int, rsync_daemon: int, capsys
) -> None:
    times: dict[str, list[float]] = {"p2psync": [], "rsync": []}

    def run_rounds() -> None:
        for r in range(ROUNDS):
            order = ["p2psync", "rsync"] if r % 2 == 0 else ["rsync", "p2psync"]
            for name in order:
                dest = place / f"{name}-{r}"
                took = _p2psync_round(p2psync_holder, dest) if name == "p2psync" else _rsync_round(rsync_daemon, dest)
                assert _count(dest) == FILES, name
                times[name].append(took)

    where = "tmpfs" if str(place).startswith("/dev/shm") else "disk"
    benchmark.group = (
        f"{FOLDERS} folders x {FILES_PER_FOLDER} x {FILE_BYTES // 1024} KiB into an empty folder ({where})"
    )
    benchmark.pedantic(run_rounds, rounds=1, iterations=1)
    ratio = statistics.median(r / p for p, r in zip(times["p2psync"], times["rsync"], strict=True))
    for name, values in times.items():
        benchmark.extra_info[f"{name} median s"] = round(statistics.median(values), 3)
    benchmark.extra_info["rsync time / p2psync time"] = round(ratio, 2)
    with capsys.disabled():
        print(
            f"\n{FOLDERS} folders x {FILES_PER_FOLDER} x {FILE_BYTES} B on {where}, {ROUNDS} interleaved rounds, "
            "from starting the process to the last file: p2psync median "
            f"{statistics.median(times['p2psync']):.2f} s, "
            f"rsync daemon pull {statistics.median(times['rsync']):.2f} s; "
            f"p2psync is {ratio:.2f}x rsync's speed (median of per-round ratios)"
        )
