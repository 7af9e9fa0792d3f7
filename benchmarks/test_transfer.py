"""Throughput of the Content-Length transfer path over loopback, both backends and a raw baseline.

Each group holds one operation at one size: the twin, the extension, and the
raw limit (sendfile -> recv_into + write through a 1 MiB buffer, no protocol),
so the bracketed ratios in the table come from one run on one machine. The
sender is a separate process, as a real holder is.
"""

from __future__ import annotations

import importlib
import os
import socket
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest
from bench_support import MiB, sendfile_server, write_source

from p2psync.protocol import decode_reply

twin = importlib.import_module("p2psync._twin")
try:
    fast: ModuleType | None = importlib.import_module("p2psync._speedups")
except ImportError:
    fast = None

RAW_BUFFER = 1 * MiB
SIZES = [
    pytest.param(1 * MiB, id="1MiB"),
    pytest.param(64 * MiB, id="64MiB"),
    pytest.param(1024 * MiB, id="1GiB", marks=pytest.mark.big),
]


@pytest.fixture(scope="module", params=SIZES)
def holder(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple]:
    """A source file of the size, and two holder processes: with and without the protocol."""
    size = request.param
    src = tmp_path_factory.mktemp("src") / "source.bin"
    write_source(src, size)
    servers = {protocol: sendfile_server(src, protocol) for protocol in (True, False)}
    listeners = {protocol: listener for protocol, (_, listener) in servers.items()}
    procs = [proc for proc, _ in servers.values()]
    yield size, listeners[True].getsockname(), listeners[False].getsockname(), src.parent
    for proc in procs:
        proc.kill()
        proc.join()
    for listener in listeners.values():
        listener.close()


def _fetch_with(core: ModuleType) -> Callable[[tuple, Path], int]:
    """The real receive path: request, Content-Length header via the core's Buffer, body via its copy loop."""

    def fetch(address: tuple, dest: Path) -> int:
        with socket.create_connection(address) as sock:
            sock.sendall(b"source.bin\n")
            reader = core.Buffer(sock, 8192, 256)
            size = decode_reply(reader.read_line())
            fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                return int(core.recv_to_file(sock, fd, size, reader))
            finally:
                os.close(fd)

    return fetch


def raw_fetch(address: tuple, dest: Path) -> int:
    """The raw limit: recv_into + write through one 1 MiB buffer until the sender closes."""
    buf = bytearray(RAW_BUFFER)
    view = memoryview(buf)
    total = 0
    with socket.create_connection(address) as sock:
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            while got := sock.recv_into(view):
                os.write(fd, view[:got])
                total += got
        finally:
            os.close(fd)
    return total


FETCHERS: dict[str, Callable[[tuple, Path], int] | None] = {
    "python": _fetch_with(twin),
    "cython": _fetch_with(fast) if fast else None,
    "raw": raw_fetch,
}


@pytest.mark.parametrize("how", list(FETCHERS))
def test_content_length_receive(benchmark, holder: tuple, how: str) -> None:
    size, protocol_address, raw_address, folder = holder
    fetch = FETCHERS[how]
    if fetch is None:
        pytest.skip("p2psync._speedups is not built")
    address = raw_address if how == "raw" else protocol_address
    dest = folder / f"dest-{how}.bin"
    benchmark.group = f"Content-Length receive, {size // MiB} MiB"

    def fresh() -> tuple:
        dest.unlink(missing_ok=True)
        return (address, dest), {}

    copied = benchmark.pedantic(fetch, setup=fresh, rounds=5 if size < 1024 * MiB else 3, warmup_rounds=1)
    assert copied == size  # a fast wrong copy must not win
    assert dest.stat().st_size == size
    dest.unlink()
    if benchmark.stats:  # None under --benchmark-disable
        benchmark.extra_info["MiB/s"] = round(size / benchmark.stats.stats.median / MiB)


def test_interleaved_ratios(benchmark, holder: tuple, capsys: pytest.CaptureFixture[str]) -> None:
    """Every round runs each receiver once, in rotating order, so a noisy moment
    hits all of them alike; the ratios are medians of per-round ratios to raw."""
    size, protocol_address, raw_address, folder = holder
    names = [name for name, fetch in FETCHERS.items() if fetch is not None]
    rounds = 7 if size < 1024 * MiB else 5
    times: dict[str, list[float]] = {name: [] for name in names}

    def run_rounds() -> None:
        for r in range(rounds):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                fetch = FETCHERS[name]
                assert fetch is not None
                dest = folder / f"interleaved-{name}.bin"
                dest.unlink(missing_ok=True)
                began = time.perf_counter()
                copied = fetch(raw_address if name == "raw" else protocol_address, dest)
                times[name].append(time.perf_counter() - began)
                assert copied == size == dest.stat().st_size
                dest.unlink()

    benchmark.group = f"interleaved rounds, {size // MiB} MiB"
    benchmark.pedantic(run_rounds, rounds=1, iterations=1)
    lines = [f"\n{size // MiB} MiB, {rounds} interleaved rounds (median MiB/s, median per-round ratio to raw):"]
    for name in names:
        speed = round(size / statistics.median(times[name]) / MiB)
        ratio = statistics.median(raw / mine for raw, mine in zip(times["raw"], times[name], strict=True))
        benchmark.extra_info[f"{name} MiB/s"] = speed
        benchmark.extra_info[f"{name} / raw"] = round(ratio, 3)
        lines.append(f"  {name:>7}: {speed:6d} MiB/s  {ratio:.2f}x raw")
    with capsys.disabled():
        print("\n".join(lines))
