"""Fetching many small files through pipelines of keep-open requests, against
hand-made holders that misbehave on purpose. Both backends."""

from __future__ import annotations

import collections
import os
from pathlib import Path

import pytest

from p2psync.deadlines import Watchdog
from p2psync.local import Folder
from p2psync.peer.fetch import PIPELINE_BATCH, PIPELINE_BATCH_BYTES, Fetcher
from p2psync.protocol import DirectoryEntry

from .holders import PipelineHolder, sha
from .loopback import LOOPBACK

pytestmark = pytest.mark.usefixtures("backend")

COUNT = 2 * PIPELINE_BATCH + 7  # more than one batch, not a whole number of them


def _files(count: int = COUNT) -> dict[str, bytes]:
    return {f"f{i:03}.bin": os.urandom(100 + i) for i in range(count)}


def _entry(data: bytes, port: int, mtime: int = 1_700_000_000) -> DirectoryEntry:
    return DirectoryEntry(LOOPBACK, port, mtime, len(data), sha(data))


@pytest.fixture
def fetcher(tmp_path: Path):
    """A fetcher into the empty folder `tmp_path/dst`."""
    (tmp_path / "dst").mkdir()
    folder = Folder(tmp_path / "dst")
    watchdog = Watchdog()
    yield Fetcher(folder, watchdog, (LOOPBACK, 1))
    watchdog.close()
    folder.close()


def _reply(files: dict[str, bytes], **overrides: bytes | None):
    def reply(name: str) -> bytes | None:
        if name in overrides:
            return overrides[name]
        return b"Content-Length: %d\n" % len(files[name]) + files[name]

    return reply


def _installed(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_a_pipeline_installs_every_file_verified_with_its_mtime(fetcher: Fetcher, tmp_path: Path) -> None:
    files = _files()
    holder = PipelineHolder(_reply(files))
    wanted = [(name, _entry(data, holder.port)) for name, data in files.items()]
    assert fetcher.fetch_all(wanted, workers=1) == COUNT
    holder.close()
    assert _installed(tmp_path / "dst") == files
    assert {os.stat(tmp_path / "dst" / n).st_mtime for n in files} == {1_700_000_000}
    assert holder.connections == 1  # one connection for all of them ...
    assert all(r.endswith(b"\x00keep-open") for r in holder.requests)  # ... kept open
    assert len(holder.requests) == COUNT


def test_a_wrong_body_mid_pipeline_installs_nothing_wrong(fetcher: Fetcher, tmp_path: Path) -> None:
    """The holder sends wrong bytes (right length) for one file: that file is not
    installed, the pipeline stops there, and the rest arrive one by one."""
    files = _files()
    bad = "f040.bin"
    holder = PipelineHolder(_reply(files, **{bad: b"Content-Length: %d\n" % len(files[bad]) + b"x" * len(files[bad])}))
    wanted = [(name, _entry(data, holder.port)) for name, data in files.items()]
    assert fetcher.fetch_all(wanted, workers=1) == COUNT - 1
    holder.close()
    assert _installed(tmp_path / "dst") == {n: d for n, d in files.items() if n != bad}
    singles = [r for r in holder.requests if not r.endswith(b"\x00keep-open")]
    assert singles[0] == bad.encode()  # asked again alone (and refused again: wrong bytes) ...
    assert len(holder.requests) > COUNT  # ... then the pipelined ones after it, alone too


@pytest.mark.parametrize(
    "reply", [None, b"Error: no such file\n", b"Content-Length: 3\nabc"], ids=["hang-up", "refusal", "wrong-length"]
)
def test_a_failure_mid_pipeline_hands_the_rest_to_single_fetches(
    fetcher: Fetcher, tmp_path: Path, reply: bytes | None
) -> None:
    files = _files()
    broken = "f010.bin"
    holder = PipelineHolder(_reply(files, **{broken: reply}))
    wanted = [(name, _entry(data, holder.port)) for name, data in files.items()]
    assert fetcher.fetch_all(wanted, workers=2) == COUNT - 1
    holder.close()
    assert _installed(tmp_path / "dst") == {n: d for n, d in files.items() if n != broken}
    assert not [p for p in (tmp_path / "dst").iterdir() if p.name.endswith(".part")]


def test_files_over_the_size_limit_are_refused_not_pipelined(tmp_path: Path) -> None:
    files = {"small.bin": b"s" * 100, "other.bin": b"o" * 100, "big.bin": b"b" * 5000}
    holder = PipelineHolder(_reply(files))
    (tmp_path / "dst").mkdir()
    folder = Folder(tmp_path / "dst")
    watchdog = Watchdog()
    try:
        fetcher = Fetcher(folder, watchdog, (LOOPBACK, 1), max_file_size=1000)
        wanted = [(name, _entry(data, holder.port)) for name, data in files.items()]
        assert fetcher.fetch_all(wanted, workers=1) == 2
    finally:
        watchdog.close()
        folder.close()
        holder.close()
    assert _installed(tmp_path / "dst") == {"small.bin": b"s" * 100, "other.bin": b"o" * 100}
    assert b"big.bin" in holder.requests  # asked alone, refused on its Content-Length


def test_pipeline_batches_are_bounded_in_bytes(fetcher: Fetcher, tmp_path: Path) -> None:
    """Files near the 1 MiB pipelining limit: fewer per batch, all installed."""
    files = {f"big{i}.bin": os.urandom(900_000 + i) for i in range(12)}
    holder = PipelineHolder(_reply(files))
    wanted = [(name, _entry(data, holder.port)) for name, data in files.items()]
    todo = collections.deque(wanted)
    sizes = [sum(len(files[n]) for n, _ in Fetcher._next_batch(todo)) for _ in range(3)]
    assert all(size <= PIPELINE_BATCH_BYTES for size in sizes)
    assert fetcher.fetch_all(wanted, workers=1) == len(files)
    holder.close()
    assert _installed(tmp_path / "dst") == files
    assert holder.connections == 1
