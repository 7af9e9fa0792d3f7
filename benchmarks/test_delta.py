"""Delta transfers against rsync, in the same run (issue 14, benchmarks a, b, d).

(a) A 1 GiB file of random bytes with 1,000,000 random bytes inserted at its
10 % mark (not a multiple of any block size). Each round, as when a file both
peers hold is edited on one: the holder holds the old version, a fresh
receiver folder fetches it whole (untimed: now both hold that version), the
holder's file becomes the new version (untimed: until its tracker lists it),
and `p2psync sync DEST --once` is timed from start to exit; against `rsync
-a --stats rsync://127.0.0.1:PORT/src/ DEST/` into a fresh copy of the old
version (an rsync daemon serving the new one: its delta algorithm). Bytes on the wire: rsync's own --stats
(sent + received); p2psync's from its fetched line (the chunk list and the
runs of new chunks; the request lines, ~100 bytes a run, are left out).
(b) The same over a 100 Mbit/s link: `--max-rate 12500000` on the p2psync
receiver (TCP holds the holder to it), `--bwlimit=12207` (KiB/s) for rsync; sending the file whole at that
rate would take size / rate (computed, not run: 86 s).
(d) The old version renamed on the holder: the receiver copies it locally,
no body bytes sent.

Rounds alternate p2psync and rsync; medians. Skipped without rsync."""

from __future__ import annotations

import hashlib
import os
import re
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
from bench_support import MiB, p2psync_holder

from p2psync.peer.probe import read_directory

ROUNDS = 3
SIZE = 1024 * MiB
INSERT = 1_000_000
RATE = 12_500_000  # 100 Mbit/s in bytes per second
P2PSYNC = [sys.executable, "-m", "p2psync.cli"]
_FETCHED = re.compile(r"as a delta: ([\d.]+) (B|KiB|MiB|GiB) fetched")
_UNITS = {"B": 1, "KiB": 1024, "MiB": MiB, "GiB": 1024 * MiB}


@pytest.fixture(scope="module")
def place() -> Iterator[Path]:
    if shutil.which("rsync") is None:
        pytest.skip("rsync is not installed (apt-get install rsync): no baseline to compare with")
    shm = Path("/dev/shm")
    root = shm if shm.is_dir() and shutil.disk_usage(shm).free > 8 * SIZE else None
    with tempfile.TemporaryDirectory(prefix="p2psync-delta-", dir=root) as tmp:
        base = Path(tmp)
        with open(base / "old.bin", "wb") as out:  # random throughout: no chunk repeats by chance
            for _ in range(SIZE // (64 * MiB)):
                out.write(os.urandom(64 * MiB))
        old_mtime = time.time() - 3600
        os.utime(base / "old.bin", (old_mtime, old_mtime))
        yield base


@pytest.fixture(scope="module")
def new_version(place: Path) -> Path:
    """The new version, 1,000,000 bytes inserted at 10 %."""
    cut = SIZE // 10
    with open(place / "old.bin", "rb") as old, open(place / "new.bin", "wb") as new:
        new.write(old.read(cut))
        new.write(os.urandom(INSERT))
        shutil.copyfileobj(old, new, 64 * MiB)
    return place / "new.bin"


@pytest.fixture(scope="module")
def rsync_source(place: Path, new_version: Path) -> Path:
    src = place / "rsync-src"
    src.mkdir()
    os.link(new_version, src / "data.bin")
    return src


def _sha256(path: Path) -> str:
    with open(path, "rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


class Holder:
    """A p2psync holder whose data.bin is switched between the two versions."""

    def __init__(self, place: Path, tracker_port: int) -> None:
        self.place, self.port, self.folder = place, tracker_port, place / "holder"
        self.digests = {name: _sha256(place / name) for name in ("old.bin", "new.bin")}

    def hold(self, name: str) -> None:
        """Put that version in place and wait until the tracker lists it."""
        staged = self.folder / "data.bin.part"  # *.part: never scanned
        shutil.copy2(self.place / name, staged)
        if name == "new.bin":
            os.utime(staged)  # an edit made now
        os.replace(staged, self.folder / "data.bin")
        want = self.digests[name]
        bench_support.wait_until(
            lambda: (
                (e := read_directory("127.0.0.1", self.port).files.get("data.bin")) is not None and e.sha256 == want
            ),
            120,
            f"the holder's {name} to be listed",
        )


@pytest.fixture(scope="module")
def holder(place: Path, new_version: Path) -> Iterator[Holder]:
    folder = place / "holder"
    folder.mkdir()
    shutil.copy2(place / "old.bin", folder / "data.bin")
    with p2psync_holder(folder, "--interval", "0.5") as port:
        yield Holder(place, port)


def _fresh(place: Path, name: str) -> Path:
    dest = place / name
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir()
    shutil.copy2(place / "old.bin", dest / "data.bin")  # the old version, its old mtime
    return dest


def _agreed(holder: Holder, name: str) -> Path:
    """A fresh receiver folder that synced the old version from the holder (whole):
    what it holds is the holder's version, lineage and all."""
    holder.hold("old.bin")
    dest = holder.place / name
    shutil.rmtree(dest, ignore_errors=True)
    args = [*P2PSYNC, "sync", str(dest), "--once", "--port", "0", "--tracker", f"127.0.0.1:{holder.port}", "-q"]
    subprocess.run(args, check=True, timeout=900, stdout=subprocess.DEVNULL)  # its "in sync with" line
    holder.hold("new.bin")
    return dest


def _p2psync(tracker_port: int, dest: Path, *extra: str) -> tuple[float, int]:
    """(seconds from start to exit, bytes fetched as a delta)."""
    args = [*P2PSYNC, "sync", str(dest), "--once", "--port", "0", "--tracker", f"127.0.0.1:{tracker_port}"]
    began = time.perf_counter()
    result = subprocess.run([*args, "--no-progress", *extra], capture_output=True, text=True, timeout=900)
    seconds = time.perf_counter() - began
    assert result.returncode == 0, result.stderr
    found = _FETCHED.search(result.stderr)
    assert found, f"no delta in: {result.stderr}"
    return seconds, int(float(found.group(1)) * _UNITS[found.group(2)])


def _rsync(port: int, dest: Path, *extra: str) -> tuple[float, int]:
    """(seconds, bytes sent + received by the rsync client, from --stats)."""
    began = time.perf_counter()
    result = subprocess.run(
        ["rsync", "-a", "--stats", *extra, f"rsync://127.0.0.1:{port}/src/", f"{dest}/"],
        capture_output=True,
        text=True,
        check=True,
    )
    seconds = time.perf_counter() - began
    sent = int(re.search(r"Total bytes sent: ([\d,]+)", result.stdout).group(1).replace(",", ""))  # type: ignore[union-attr]
    got = int(re.search(r"Total bytes received: ([\d,]+)", result.stdout).group(1).replace(",", ""))  # type: ignore[union-attr]
    return seconds, sent + got


@pytest.mark.parametrize("link", ["loopback", "100 Mbit/s"])
def test_an_insert_in_a_1_gib_file_against_rsync(
    benchmark, place: Path, holder: Holder, rsync_source: Path, link: str, capsys
) -> None:
    limited = link != "loopback"
    p2p_extra = ["--max-rate", str(RATE)] if limited else []
    rsync_extra = [f"--bwlimit={RATE // 1024}"] if limited else []
    times: dict[str, list[float]] = {"p2psync": [], "rsync": []}
    wire: dict[str, list[int]] = {"p2psync": [], "rsync": []}
    with bench_support.rsync_daemon(rsync_source, place) as rsync_port:

        def run_rounds() -> None:
            for r in range(ROUNDS):
                for tool in ("p2psync", "rsync") if r % 2 == 0 else ("rsync", "p2psync"):
                    if tool == "p2psync":
                        dest = _agreed(holder, "dest-p2psync")
                        seconds, nbytes = _p2psync(holder.port, dest, *p2p_extra)
                    else:
                        dest = _fresh(place, "dest-rsync")
                        seconds, nbytes = _rsync(rsync_port, dest, *rsync_extra)
                    assert os.path.getsize(dest / "data.bin") == SIZE + INSERT
                    times[tool].append(seconds)
                    wire[tool].append(nbytes)
                    shutil.rmtree(dest)

        benchmark.group = f"1 GiB, 1,000,000 bytes inserted at 10 %, {link}"
        benchmark.pedantic(run_rounds, rounds=1, iterations=1)
    med_t = {tool: statistics.median(v) for tool, v in times.items()}
    med_b = {tool: statistics.median(v) for tool, v in wire.items()}
    benchmark.extra_info.update(seconds=med_t, wire_bytes=med_b)
    lines = [
        f"\n1 GiB + 1,000,000 bytes at 10 %, {link}, {ROUNDS} interleaved rounds, medians:",
        f"  p2psync {med_t['p2psync']:.2f} s, {med_b['p2psync'] / 1e6:.2f} MB fetched",
        f"  rsync   {med_t['rsync']:.2f} s, {med_b['rsync'] / 1e6:.2f} MB sent + received",
        f"  bytes: {med_b['p2psync'] / med_b['rsync']:.2f}x rsync's, "
        f"time: {med_t['p2psync'] / med_t['rsync']:.2f}x rsync's",
    ]
    if limited:
        whole = (SIZE + INSERT) / RATE
        faster = whole / med_t["p2psync"]
        lines.append(f"  sending it whole at that rate: {whole:.0f} s; the delta is {faster:.0f}x faster")
    with capsys.disabled():
        print("\n".join(lines))


def test_a_renamed_1_gib_file_sends_no_body(benchmark, place: Path, capsys) -> None:
    src = place / "renamed-src"
    shutil.rmtree(src, ignore_errors=True)
    src.mkdir()
    os.link(place / "old.bin", src / "renamed.bin")  # the same bytes under a new name
    seconds: list[float] = []
    with p2psync_holder(src) as tracker_port:

        def run_rounds() -> None:
            for _ in range(ROUNDS):
                dest = _fresh(place, "dest-rename")
                args = [*P2PSYNC, "sync", str(dest), "--once", "--port", "0", "--tracker", f"127.0.0.1:{tracker_port}"]
                began = time.perf_counter()
                result = subprocess.run([*args, "--no-progress"], capture_output=True, text=True, timeout=900)
                seconds.append(time.perf_counter() - began)
                assert result.returncode == 0, result.stderr
                copied = "copied renamed.bin from data.bin (same content, nothing fetched)"
                assert copied in result.stderr, result.stderr
                shutil.rmtree(dest)

        benchmark.group = "1 GiB renamed on the holder"
        benchmark.pedantic(run_rounds, rounds=1, iterations=1)
    with capsys.disabled():
        print(f"\nrenamed 1 GiB: copied locally, no body bytes sent; {statistics.median(seconds):.2f} s (median)")
