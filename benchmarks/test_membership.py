"""Members only against an open swarm, in the same run: a 256 MiB file and the
10,000-small-files join (100 folders x 100 x 4 KiB), each received by
`p2psync sync DEST --once` from a `p2psync sync` holder, with and without
`--secret` on both sides. The rate is the receiver's own round line (bytes over
the time the round spent fetching). The goal: keyed >= 0.95x open (one
handshake per connection, bodies still zero copy)."""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from bench_support import MiB, p2psync_holder, receive_once, write_source

ROUNDS = 5
P2PSYNC = [sys.executable, "-m", "p2psync.cli"]


@pytest.fixture(scope="module")
def place() -> Iterator[Path]:
    root = "/dev/shm" if Path("/dev/shm").is_dir() and shutil.disk_usage("/dev/shm").free > 2 << 30 else None
    with tempfile.TemporaryDirectory(prefix="p2psync-keyed-", dir=root) as tmp:
        folder = Path(tmp)
        subprocess.run([*P2PSYNC, "keygen", str(folder / "group.key")], check=True, capture_output=True)
        yield folder


@pytest.fixture(scope="module", params=["256MiB", "10000x4KiB"])
def sources(request: pytest.FixtureRequest, place: Path) -> Iterator[tuple[str, dict[str, int]]]:
    source = place / f"src-{request.param}"
    source.mkdir()
    if request.param == "256MiB":
        write_source(source / "large.bin", 256 * MiB)
    else:
        for d in range(100):
            (source / f"d{d:03}").mkdir()
            for f in range(100):
                (source / f"d{d:03}" / f"f{f:03}.bin").write_bytes(os.urandom(4096))
    copy = place / f"src-{request.param}-keyed"  # one p2psync per folder: the keyed holder serves a copy
    shutil.copytree(source, copy)
    with p2psync_holder(source) as open_port, p2psync_holder(copy, "--secret", str(place / "group.key")) as keyed:
        yield request.param, {"open": open_port, "keyed": keyed}


def _receive(port: int, dest: Path, key: Path | None) -> float:
    mib, seconds = receive_once(port, dest, *(["--secret", str(key)] if key is not None else []))
    return mib / seconds


def test_keyed_against_open(benchmark, place: Path, sources, capsys) -> None:
    what, ports = sources
    rates: dict[str, list[float]] = {"open": [], "keyed": []}

    def run_rounds() -> None:
        for r in range(ROUNDS):
            for mode in ("open", "keyed") if r % 2 == 0 else ("keyed", "open"):
                dest = place / f"dest-{what}-{mode}-{r}"
                rates[mode].append(_receive(ports[mode], dest, place / "group.key" if mode == "keyed" else None))
                shutil.rmtree(dest)

    benchmark.group = f"members only against open: {what}"
    benchmark.pedantic(run_rounds, rounds=1, iterations=1)
    ratio = statistics.median(k / o for k, o in zip(rates["keyed"], rates["open"], strict=True))
    benchmark.extra_info.update(open=statistics.median(rates["open"]), keyed=statistics.median(rates["keyed"]))
    with capsys.disabled():
        print(
            f"\n{what}, {ROUNDS} interleaved rounds, medians: open {statistics.median(rates['open']):.1f} MiB/s, "
            f"keyed {statistics.median(rates['keyed']):.1f} MiB/s ({ratio:.2f}x, median of per-round ratios)"
        )
