"""Members only against an open swarm, in the same run: a 256 MiB and a 1 GiB
file and the 10,000-small-files join (100 folders x 100 x 4 KiB), each received
by `p2psync sync DEST --once` from a `p2psync sync` holder: open, with
`--secret` on both sides (keyed), and with `--secret --tls` (TLS). Modes are
interleaved round by round; the ratios are medians of per-round ratios.

Rates are the receiver's own round line (bytes over the time the round spent
fetching). The small-files join is also timed whole (the --once process from
start to exit, which is what a user waits for) against an rsync daemon pull
of the same tree (`rsync -a rsync://127.0.0.1:PORT/src/ DEST/`), when rsync is
installed. Goals (issue 13): keyed >= 0.95x open; TLS reported (>= 0.5x in
user space); the keyed join faster than rsync."""

from __future__ import annotations

import contextlib
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
from bench_support import MiB, p2psync_holder, receive_once, write_source

ROUNDS = 5
P2PSYNC = [sys.executable, "-m", "p2psync.cli"]
MODES = ("open", "keyed", "tls")
SIZES = {"256MiB": 256 * MiB, "1GiB": 1024 * MiB}


@pytest.fixture(scope="module")
def place() -> Iterator[Path]:
    root = "/dev/shm" if Path("/dev/shm").is_dir() and shutil.disk_usage("/dev/shm").free > 6 << 30 else None
    with tempfile.TemporaryDirectory(prefix="p2psync-keyed-", dir=root) as tmp:
        folder = Path(tmp)
        subprocess.run([*P2PSYNC, "keygen", str(folder / "group.key")], check=True, capture_output=True)
        yield folder


def _flags(mode: str, place: Path) -> list[str]:
    return {"open": [], "keyed": ["--secret", str(place / "group.key")]}.get(
        mode, ["--secret", str(place / "group.key"), "--tls"]
    )


@pytest.fixture(scope="module", params=[*SIZES, "10000x4KiB"])
def sources(request: pytest.FixtureRequest, place: Path) -> Iterator[tuple[str, dict[str, int], Path]]:
    source = place / f"src-{request.param}"
    source.mkdir()
    if request.param in SIZES:
        write_source(source / "large.bin", SIZES[request.param])
    else:
        for d in range(100):
            (source / f"d{d:03}").mkdir()
            for f in range(100):
                (source / f"d{d:03}" / f"f{f:03}.bin").write_bytes(os.urandom(4096))
    folders = {"open": source}
    for mode in MODES[1:]:  # one p2psync per folder: each holder serves its own copy
        folders[mode] = place / f"src-{request.param}-{mode}"
        shutil.copytree(source, folders[mode])
    with (
        p2psync_holder(folders["open"]) as open_port,
        p2psync_holder(folders["keyed"], *_flags("keyed", place)) as keyed_port,
        p2psync_holder(folders["tls"], *_flags("tls", place)) as tls_port,
    ):
        yield request.param, {"open": open_port, "keyed": keyed_port, "tls": tls_port}, source
    for mode in MODES[1:]:
        shutil.rmtree(folders[mode])
    shutil.rmtree(source)


def _rsync_pull(port: int, dest: Path) -> float:
    began = time.perf_counter()
    subprocess.run(["rsync", "-a", f"rsync://127.0.0.1:{port}/src/", f"{dest}/"], check=True)
    return time.perf_counter() - began


def test_keyed_and_tls_against_open(benchmark, place: Path, sources, capsys) -> None:
    what, ports, source = sources
    rates: dict[str, list[float]] = {mode: [] for mode in MODES}
    walls: dict[str, list[float]] = {mode: [] for mode in (*MODES, "rsync")}
    with contextlib.ExitStack() as stack:
        rsync_port = None
        if what == "10000x4KiB" and shutil.which("rsync") is not None:
            rsync_port = stack.enter_context(bench_support.rsync_daemon(source, place))
        order = [*MODES, "rsync"] if rsync_port is not None else list(MODES)

        def run_rounds() -> None:
            for r in range(ROUNDS):
                for mode in order[r % len(order) :] + order[: r % len(order)]:  # rotated: none always first
                    dest = place / f"dest-{what}-{mode}-{r}"
                    if mode == "rsync":
                        walls["rsync"].append(_rsync_pull(rsync_port, dest))
                    else:
                        began = time.perf_counter()
                        mib, seconds = receive_once(ports[mode], dest, *_flags(mode, place))
                        walls[mode].append(time.perf_counter() - began)
                        rates[mode].append(mib / seconds)
                    shutil.rmtree(dest)

        benchmark.group = f"members only against open: {what}"
        benchmark.pedantic(run_rounds, rounds=1, iterations=1)
    med = {mode: statistics.median(values) for mode, values in rates.items()}
    ratio = {m: statistics.median(x / o for x, o in zip(rates[m], rates["open"], strict=True)) for m in MODES[1:]}
    benchmark.extra_info.update(med)
    lines = [
        f"\n{what}, {ROUNDS} interleaved rounds, medians: open {med['open']:.1f} MiB/s, "
        f"keyed {med['keyed']:.1f} MiB/s ({ratio['keyed']:.2f}x), TLS {med['tls']:.1f} MiB/s ({ratio['tls']:.2f}x)"
    ]
    if walls["rsync"]:
        wall = {mode: statistics.median(values) for mode, values in walls.items()}
        lines.append(
            "  whole join, start to exit: "
            + ", ".join(f"{mode} {wall[mode]:.2f} s" for mode in (*MODES, "rsync"))
            + f"; keyed vs rsync {wall['rsync'] / wall['keyed']:.2f}x as fast"
        )
    with capsys.disabled():
        print("\n".join(lines))
