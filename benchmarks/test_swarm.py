"""One file from several holders at once (issue 14, benchmark e).

Three p2psync holders, each with `--max-rate RATE` (their uploads, each its
own limit): `one` alone behind its own embedded tracker, and `first` plus
`second` behind another (`second` got the file by syncing from `first`, so
both hold the same version and the directory lists both). Each round times
`p2psync sync DEST --once` into a fresh folder from each tracker, in
alternating order; the figure is the round line's own rate (bytes over the
time the round spent fetching). Goal: two holders >= 1.6x one.
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import bench_support
import pytest
from bench_support import MiB, p2psync_holder, receive_once, write_source

from p2psync.peer.probe import read_directory

ROUNDS = 3
SIZE = 256 * MiB
RATE = 40 * 1000 * 1000  # bytes per second, each holder's upload limit


@pytest.fixture(scope="module")
def trackers() -> Iterator[dict[str, int]]:
    with tempfile.TemporaryDirectory(prefix="p2psync-swarm-") as tmp, ExitStack() as stack:
        base = Path(tmp)
        (base / "one").mkdir()
        write_source(base / "one" / "data.bin", SIZE)
        (base / "first").mkdir()
        (base / "first" / "data.bin").hardlink_to(base / "one" / "data.bin")
        limit = ("--max-rate", str(RATE), "--interval", "0.5")
        alone = stack.enter_context(p2psync_holder(base / "one", *limit))
        pair = stack.enter_context(p2psync_holder(base / "first", *limit))
        stack.enter_context(bench_support.p2psync_peer(base / "second", pair, *limit))

        def both_listed() -> bool:
            entry = read_directory("127.0.0.1", pair).files.get("data.bin")
            return entry is not None and len(entry.holders()) == 2

        bench_support.wait_until(both_listed, 120, "the second holder to hold the file")
        yield {"one holder": alone, "two holders": pair, "base": tmp}  # type: ignore[dict-item]


def test_one_file_from_two_rate_limited_holders(benchmark, trackers: dict, capsys) -> None:
    rates: dict[str, list[float]] = {"one holder": [], "two holders": []}
    base = Path(trackers["base"])

    def run_rounds() -> None:
        for r in range(ROUNDS):
            for how in ("one holder", "two holders") if r % 2 == 0 else ("two holders", "one holder"):
                dest = base / f"dest-{r}-{how.replace(' ', '-')}"
                mib, seconds = receive_once(trackers[how], dest)
                assert (dest / "data.bin").stat().st_size == SIZE
                rates[how].append(mib / seconds)
                shutil.rmtree(dest)

    benchmark.group = f"one {SIZE // MiB} MiB file, holders' uploads limited to {RATE / 1e6:g} MB/s each"
    benchmark.pedantic(run_rounds, rounds=1, iterations=1)
    medians = {how: statistics.median(v) for how, v in rates.items()}
    ratio = statistics.median(two / one for one, two in zip(rates["one holder"], rates["two holders"], strict=True))
    benchmark.extra_info.update(mib_s=medians, two_over_one=round(ratio, 2))
    with capsys.disabled():
        print(
            f"\n{SIZE // MiB} MiB, uploads limited to {RATE / 1e6:g} MB/s per holder, {ROUNDS} interleaved rounds:"
            f"\n  one holder {medians['one holder']:.1f} MiB/s, two holders {medians['two holders']:.1f} MiB/s"
            f" ({ratio:.2f}x; goal >= 1.6x)"
        )
