"""The line splitter on many short lines: both backends against two pure-Python baselines.

Baselines: a straightforward splitter (find + slice per line, the classic
Buffer's way), and the fastest pure-Python way known (bytes.split with a
carried remainder). The stream is 4 MiB of 60-byte lines fed in 64 KiB
chunks, as recv would deliver them.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from types import ModuleType

import pytest

twin = importlib.import_module("p2psync._twin")
try:
    fast: ModuleType | None = importlib.import_module("p2psync._speedups")
except ImportError:
    fast = None

LINE = b"x" * 59 + b"\n"
CHUNK = 64 * 1024
STREAM = LINE * (4 * 1024 * 1024 // len(LINE))
CHUNKS = [STREAM[i : i + CHUNK] for i in range(0, len(STREAM), CHUNK)]
N_LINES = STREAM.count(b"\n")


def find_and_slice(chunks: list[bytes]) -> int:
    """Straightforward: search the held bytes, slice one line off, repeat."""
    held, count = b"", 0
    for chunk in chunks:
        held += chunk
        while (i := held.find(b"\n")) >= 0:
            _line, held = held[:i], held[i + 1 :]
            count += 1
    return count


def split_with_remainder(chunks: list[bytes]) -> int:
    """Fastest pure Python: one split per chunk, carrying the unterminated tail."""
    rest, count = b"", 0
    for chunk in chunks:
        lines = (rest + chunk).split(b"\n")
        rest = lines.pop()
        count += len(lines)
    return count


def with_splitter(core: ModuleType, batch: bool) -> Callable[[list[bytes]], int]:
    def run(chunks: list[bytes]) -> int:
        splitter, count = core.LineSplitter(), 0
        for chunk in chunks:
            splitter.feed(chunk)
            if batch:
                count += len(splitter.lines())
            else:
                while splitter.next_line() is not None:
                    count += 1
        return count

    return run


SPLITTERS: dict[str, Callable[[list[bytes]], int] | None] = {
    "baseline-find-slice": find_and_slice,
    "baseline-split": split_with_remainder,
    "python-lines": with_splitter(twin, True),
    "python-next_line": with_splitter(twin, False),
    "cython-lines": with_splitter(fast, True) if fast else None,
    "cython-next_line": with_splitter(fast, False) if fast else None,
}


@pytest.mark.parametrize("how", list(SPLITTERS))
def test_split_60_byte_lines(benchmark, how: str) -> None:
    run = SPLITTERS[how]
    if run is None:
        pytest.skip("p2psync._speedups is not built")
    benchmark.group = "4 MiB of 60-byte lines in 64 KiB chunks"
    count = benchmark.pedantic(run, args=(CHUNKS,), rounds=10, warmup_rounds=1)
    assert count == N_LINES
    if benchmark.stats:
        benchmark.extra_info["Mlines/s"] = round(N_LINES / benchmark.stats.stats.median / 1e6, 1)
