"""Delta transfers: chunk lists on the wire, the plan (pure, property-tested),
and changed files built from their old version between real peers on
loopback, on both backends: only the new chunks cross the network, a holder
sending a bad chunk is dropped for the file, an older holder without chunk
lists is fetched from whole."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import itertools
import os
import random
import re
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2psync._twin import chunk_lengths as twin_chunk_lengths
from p2psync.chunking import MAX_CHUNK, MIN_CHUNK
from p2psync.deadlines import Watchdog
from p2psync.errors import ProtocolError
from p2psync.events import Event, Events, Kind
from p2psync.ignore import STATE_DIR
from p2psync.local import TRASH_DIR, Folder
from p2psync.local.chunks import verified_prefix
from p2psync.local.partial import PARTIAL_SUFFIX
from p2psync.peer.delta import Build
from p2psync.peer.fetch import DELTA_MIN_BYTES, Fetcher
from p2psync.protocol import DirectoryEntry, decode_request, encode_request
from p2psync.protocol.chunks import ENTRY_BYTES, ChunkList, decode_chunk_list
from p2psync.sync.delta import RUN_MAX_BYTES, plan_delta
from p2psync.transfer import transfer_deadline

from .loopback import LOOPBACK, Relay, wait_until

# ------------------------------------------------------------------ sans-IO


def chunk_list(lengths: list[int], seed: int = 0) -> ChunkList:
    rng = random.Random(seed)
    return ChunkList(tuple(lengths), tuple(rng.randbytes(32) for _ in lengths))


lengths = st.lists(st.integers(MIN_CHUNK, MAX_CHUNK), max_size=30).flatmap(
    lambda body: st.integers(1, MAX_CHUNK).map(lambda last: [*body, last])
)


@given(lengths)
def test_a_chunk_list_round_trips_and_a_bad_one_is_refused(sizes: list[int]) -> None:
    chunks = chunk_list(sizes)
    body = chunks.encode()
    assert len(body) == ENTRY_BYTES * len(sizes)
    assert decode_chunk_list(body, chunks.size) == chunks
    for bad, size in ((body[:-1], chunks.size), (body, chunks.size + 1), (body + body[:ENTRY_BYTES], chunks.size)):
        with pytest.raises(ProtocolError):
            decode_chunk_list(bad, size)


@given(
    offset=st.integers(0, 2**40),
    length=st.none() | st.integers(0, 2**40),
    chunks=st.booleans(),
    keep_open=st.booleans(),
)
def test_range_and_chunk_list_requests_round_trip(offset, length, chunks, keep_open) -> None:
    sha = "ab" * 32
    line = encode_request("dir/file.bin", offset, sha, keep_open, length, chunks).rstrip(b"\n")
    got = decode_request(line)
    classic = not (offset or length is not None or chunks or keep_open)  # then it is the classic `name\n`
    expected = (offset, length, chunks, keep_open, None if classic else sha)
    assert (got.offset, got.length, got.chunks, got.keep_open, got.sha256) == expected
    for bad in (line + b"\x00chunks\x00chunks", line + b"\x00length=x", line + b"\x00shiny"):
        with pytest.raises(ProtocolError):
            decode_request(bad)


@settings(max_examples=200)
@given(st.data())
def test_a_plan_builds_exactly_the_wanted_version(data: st.DataObject) -> None:
    """Whatever the folder holds, the steps cover the new version front to back,
    every copy takes chunks with the same ids, and every run is within bounds."""
    pool = [random.Random(i).randbytes(32) for i in range(12)]  # few ids: many chunks shared
    wanted_ids = data.draw(st.lists(st.sampled_from(pool), min_size=1, max_size=40))
    wanted = ChunkList(tuple(data.draw(st.integers(MIN_CHUNK, MAX_CHUNK)) for _ in wanted_ids), tuple(wanted_ids))
    held = [
        ChunkList(tuple(MIN_CHUNK + 7 * i for i in range(len(ids))), tuple(ids))
        for ids in data.draw(st.lists(st.lists(st.sampled_from(pool), max_size=20), max_size=3))
    ]
    steps = plan_delta(wanted, held)
    offsets = list(itertools.accumulate(wanted.lengths, initial=0))
    everywhere = {digest for h in held for digest in h.digests}
    at = chunk = 0
    for step in steps:
        taken = range(chunk, chunk + step.count)
        assert (step.offset, step.first) == (at, chunk) and step.length == sum(wanted.lengths[i] for i in taken)
        if step.source is None:
            assert step.count == 1 or step.length <= RUN_MAX_BYTES
            assert all(wanted.digests[i] not in everywhere for i in taken)
        else:
            source = held[step.source]
            starts = source.offsets()
            first = starts.index(step.source_offset)
            assert source.digests[first : first + step.count] == wanted.digests[chunk : chunk + step.count]
        at, chunk = at + step.length, chunk + step.count
    assert at == offsets[-1] and chunk == len(wanted.lengths)


def _list_of(data: bytes, impl_chunks=twin_chunk_lengths) -> ChunkList:
    """The chunk list of `data`, cut by `impl_chunks` (a backend's `chunk_lengths`)."""
    lengths = impl_chunks(data)
    offsets = list(itertools.accumulate(lengths, initial=0))
    return ChunkList(tuple(lengths), tuple(hashlib.sha256(data[a:b]).digest() for a, b in itertools.pairwise(offsets)))


@pytest.mark.parametrize("stale", [False, True])
def test_copied_chunks_are_read_back_and_checked_as_they_are_copied(tmp_path: Path, stale: bool) -> None:
    """A build copying every chunk from a file here checks each copied stretch on
    the pool: a source whose bytes are no longer those its list names (edited in
    place since it was cut) is caught, and nothing is left reading the output."""
    data = random.Random(7).randbytes(6 << 20)
    wanted = _list_of(data)
    source_path, out_path = tmp_path / "old.bin", tmp_path / "new.bin"
    source_path.write_bytes(data if not stale else data[:3_000_000] + b"X" + data[3_000_001:])
    steps = plan_delta(wanted, [wanted])  # the source's list as the index last saw it: every chunk copied
    assert all(step.source == 0 for step in steps)
    src = os.open(source_path, os.O_RDONLY)
    out = os.open(out_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        build = Build("new.bin", hashlib.sha256(data).hexdigest(), wanted, steps, out, Watchdog(), None, True)
        build.run([], [src])
        assert build.copies_checked is (not stale)
        assert build.copied == len(data) and build.fetched == 0
    finally:
        os.close(src)
        os.close(out)
    assert (out_path.read_bytes() == data) is (not stale)


# ------------------------------------------------------------------ between peers


def _edited(data: bytes, at: float, insert: bytes) -> bytes:
    cut = int(len(data) * at)
    return data[:cut] + insert + data[cut:]


def _fetched(events: list[Event], name: str) -> bool:
    return any(event.kind is Kind.FETCHED and event.path == name for event in events)


def _delta_note(events: list[Event], name: str) -> tuple[float, float] | None:
    """(KiB fetched, MiB reused) from the fetched event of `name`, if it came as a delta."""
    for event in events:
        if event.kind is Kind.FETCHED and event.path == name:
            found = re.search(r"delta: ([\d.]+) (KiB|MiB) fetched, ([\d.]+) MiB reused", event.detail)
            if found is None:
                return None
            return float(found.group(1)) * (1024 if found.group(2) == "MiB" else 1), float(found.group(3))
    return None


def _replace(path: Path, data: bytes, staging: Path) -> None:
    """Put `data` at `path` in one step, as an editor saves (written in `staging`,
    outside the folder): a write in place can be scanned half done, and that
    half version synced first makes a second round."""
    staged = staging / f"{path.name}.staged"
    staged.write_bytes(data)
    os.chmod(staged, path.stat().st_mode & 0o777 if path.exists() else 0o644)
    os.replace(staged, path)


def _wait_for_fetched(events: list[Event], name: str) -> None:
    """The fetched event of `name` is emitted just after the install, on the
    engine's thread: a test that saw the new bytes waits for it too."""
    wait_until(lambda: any(e.kind is Kind.FETCHED and e.path == name for e in events), 10, f"the event of {name}")


@pytest.mark.usefixtures("backend")
def test_a_changed_large_file_crosses_as_its_new_chunks(tmp_path: Path, start_tracker, engine) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    old = os.urandom(12 << 20)
    (a / "data" / "log.bin").parent.mkdir()
    (a / "data" / "log.bin").write_bytes(old)
    (a / "data" / "log.bin").chmod(0o640)
    tracker = start_tracker()
    holder = engine(a, tracker.port)
    receiver = engine(b, tracker.port)
    copy = b / "data" / "log.bin"
    wait_until(lambda: copy.exists() and copy.read_bytes() == old, 30, "the first copy")
    seen: list[Event] = []
    rounds: list[str] = []
    receiver.events.subscribe(seen.append, lambda summary: rounds.append(summary.line()))
    new = _edited(old, 0.1, os.urandom(300_000))
    _replace(a / "data" / "log.bin", new, tmp_path)
    wait_until(lambda: copy.read_bytes() == new, 30, "the edit to reach b")
    listed = tracker.directory.entries()["data/log.bin"]
    assert listed.chunks is not None  # the holder cut it at its scan: the list is vouched for by the directory
    _wait_for_fetched(seen, "data/log.bin")
    note = _delta_note(seen, "data/log.bin")
    assert note is not None, [e.detail for e in seen]
    fetched_kib, reused_mib = note
    assert fetched_kib < 1024 and reused_mib > 11  # ~300 kB new (+ the chunks it touched + the list), not 12 MiB

    # The first copy's round line (12.0 MiB) may come after the subscription too: only the edit's counts.
    def edit_lines() -> list[str]:
        return [line for line in rounds if "1 fetched (12.3 MiB" in line]

    wait_until(edit_lines, 10, f"the round's line in {rounds}")
    (line,) = edit_lines()
    over = re.search(r"([\d.]+) KiB of it over the network", line)
    assert over is not None and float(over.group(1)) == fetched_kib, line
    assert copy.stat().st_mode & 0o777 == 0o640
    assert holder.is_alive() and receiver.is_alive()


@pytest.fixture
def receiver(tmp_path: Path):
    """A fetcher into `tmp_path/dst`, which holds the old version of big.bin, and the events it emits."""
    dst = tmp_path / "dst"
    dst.mkdir()
    old = os.urandom(DELTA_MIN_BYTES + (3 << 20))
    (dst / "big.bin").write_bytes(old)
    with _fetcher_into(dst) as (fetcher, seen):
        yield fetcher, old, seen


@contextlib.contextmanager
def _fetcher_into(dst: Path, state: bool = False):
    """A fetcher into the folder `dst` (scanned first; `state`: as an engine's
    folder, which cuts large files at the scan), and the events it emits."""
    folder = Folder(dst, state=state)
    folder.scan()
    watchdog, events, seen = Watchdog(), Events(), []
    events.subscribe(seen.append)
    try:
        yield Fetcher(folder, watchdog, (LOOPBACK, 1), events=events), seen
    finally:
        watchdog.close()
        folder.close()


def _holder(tmp_path: Path, engine, start_tracker, data: bytes):
    src = tmp_path / "src"
    src.mkdir()
    (src / "big.bin").write_bytes(data)
    peer = engine(src, start_tracker().port)
    newer = int(time.time()) + 3600  # newer than the receiver's copy: the classic rule lets it replace that
    entry = DirectoryEntry(LOOPBACK, peer.port, newer, len(data), hashlib.sha256(data).hexdigest())
    wait_until(lambda: peer.last_round is not None, 20, "the holder's first round")  # its scan has hashed it
    return peer, entry


@pytest.mark.usefixtures("backend")
def test_a_holder_sending_a_bad_chunk_is_dropped_for_the_file(tmp_path: Path, receiver, engine, start_tracker) -> None:
    fetcher, old, seen = receiver
    new = _edited(old, 0.1, os.urandom(500_000))
    peer, entry = _holder(tmp_path, engine, start_tracker, new)

    def corrupt_a_run(direction: str, offset: int, data: bytes) -> bytes:
        at = 200_000 - offset  # past the chunk list (~8 kB), inside the first run of new bytes
        if direction != "down" or not 0 <= at < len(data):
            return data
        return data[:at] + bytes([data[at] ^ 1]) + data[at + 1 :]

    liar = Relay((LOOPBACK, peer.port), corrupt_a_run)
    try:
        entry = DirectoryEntry(LOOPBACK, liar.port, entry.mtime, entry.size, entry.sha256, ((LOOPBACK, peer.port),))
        assert fetcher.fetch("big.bin", entry)
    finally:
        liar.close()
    assert (tmp_path / "dst" / "big.bin").read_bytes() == new
    fetched = [e for e in seen if e.kind is Kind.FETCHED]
    assert len(fetched) == 1 and f"from {LOOPBACK}:{peer.port}" in fetched[0].detail  # the honest one
    assert "delta" in fetched[0].detail


@pytest.mark.usefixtures("backend")
def test_a_holder_without_chunk_lists_is_fetched_from_whole(tmp_path: Path, receiver, engine, start_tracker) -> None:
    fetcher, old, seen = receiver
    new = _edited(old, 0.5, b"x" * 70_000)
    peer, entry = _holder(tmp_path, engine, start_tracker, new)

    def as_an_older_holder(direction: str, offset: int, data: bytes) -> bytes:
        return data.replace(b"\x00chunks", b"\x00chonks") if direction == "up" else data  # a flag it cannot know

    older = Relay((LOOPBACK, peer.port), as_an_older_holder)
    try:
        entry = DirectoryEntry(LOOPBACK, older.port, entry.mtime, entry.size, entry.sha256)
        assert fetcher.fetch("big.bin", entry)
    finally:
        older.close()
    assert (tmp_path / "dst" / "big.bin").read_bytes() == new
    assert [e.detail for e in seen if e.kind is Kind.FETCHED] == [f"from {LOOPBACK}:{older.port}"]  # whole, no delta


def _vouched(entry: DirectoryEntry, data: bytes, impl_chunks) -> DirectoryEntry:
    """`entry` with the list id a holder reports for `data`."""
    return dataclasses.replace(entry, chunks=_list_of(data, impl_chunks).list_id())


@pytest.mark.usefixtures("backend")
def test_a_list_the_directory_vouches_for_checks_every_chunk(tmp_path: Path, receiver, engine, start_tracker) -> None:
    fetcher, old, seen = receiver
    new = _edited(old, 0.3, os.urandom(200_000))
    _, entry = _holder(tmp_path, engine, start_tracker, new)
    wrong = dataclasses.replace(entry, chunks="0" * 64)  # the directory names another list: the holder's is refused
    assert fetcher.fetch("big.bin", wrong)  # ... and the file comes whole, checked by its SHA-256 alone
    assert (tmp_path / "dst" / "big.bin").read_bytes() == new
    assert [e.kind for e in seen] == [Kind.FETCHED] and "delta" not in seen[-1].detail
    assert fetcher.folder.list_id(entry.sha256) is None  # that list is never kept
    (tmp_path / "dst" / "big.bin").write_bytes(old)
    assert fetcher.fetch("big.bin", _vouched(entry, new, twin_chunk_lengths))
    assert (tmp_path / "dst" / "big.bin").read_bytes() == new
    assert "delta" in seen[-1].detail
    assert fetcher.folder.list_id(entry.sha256) is not None  # kept: this version is never cut here


# ------------------------------------------------------------ several holders


@pytest.fixture
def empty_receiver(tmp_path: Path):
    """A fetcher into an empty `tmp_path/dst`, and the events it emits."""
    dst = tmp_path / "dst"
    dst.mkdir()
    with _fetcher_into(dst) as made:
        yield made


def _holders(tmp_path: Path, engine, start_tracker, data: bytes, count: int):
    """`count` p2psync peers holding `data` as big.bin, and its vouched entry (no sources yet)."""
    tracker = start_tracker()
    peers = []
    for i in range(count):
        src = tmp_path / f"src{i}"
        src.mkdir()
        (src / "big.bin").write_bytes(data)
        peers.append(engine(src, tracker.port))
    for peer in peers:
        wait_until(lambda peer=peer: peer.last_round is not None, 20, "a holder's first round")
    newer = int(time.time()) + 3600
    entry = DirectoryEntry(LOOPBACK, peers[0].port, newer, len(data), hashlib.sha256(data).hexdigest())
    return peers, _vouched(entry, data, twin_chunk_lengths)


def _runs_sent(relay: Relay) -> int:
    """How many range requests went up through `relay`."""
    return bytes(relay.up).count(b"\x00length=")


@pytest.mark.usefixtures("backend")
def test_one_file_comes_from_every_holder_at_once(tmp_path: Path, empty_receiver, engine, start_tracker) -> None:
    fetcher, seen = empty_receiver
    data = os.urandom(6 * RUN_MAX_BYTES + 12345)
    peers, entry = _holders(tmp_path, engine, start_tracker, data, 2)

    def slowly(direction: str, offset: int, chunk: bytes) -> bytes:
        time.sleep(0.002)  # both ~30 MB/s: a run takes ~0.1 s, so each holder delivers some
        return chunk

    one, two = Relay((LOOPBACK, peers[0].port), slowly), Relay((LOOPBACK, peers[1].port), slowly)
    try:
        entry = dataclasses.replace(entry, port=one.port, sources=((LOOPBACK, one.port), (LOOPBACK, two.port)))
        assert fetcher.fetch("big.bin", entry)
    finally:
        one.close()
        two.close()
    assert (tmp_path / "dst" / "big.bin").read_bytes() == data
    assert len(one.down) + len(two.down) < 1.5 * len(data)  # each run once, but for endgame copies
    (fetched,) = [e for e in seen if e.kind is Kind.FETCHED]
    delivered = re.findall(r"127\.0\.0\.1:(\d+) \((\d+) runs\)", fetched.detail)
    assert {int(port) for port, _ in delivered} == {one.port, two.port}, fetched.detail
    assert "delta" not in fetched.detail
    assert fetcher.folder.list_id(entry.sha256) == entry.chunks  # kept: the next scan does not cut it


@pytest.mark.usefixtures("backend")
def test_a_holder_that_stalls_is_left_behind(tmp_path: Path, empty_receiver, engine, start_tracker) -> None:
    fetcher, _ = empty_receiver
    data = os.urandom(4 * RUN_MAX_BYTES)
    peers, entry = _holders(tmp_path, engine, start_tracker, data, 2)
    release = threading.Event()

    def stall(direction: str, offset: int, chunk: bytes) -> bytes:
        if direction == "down" and offset > RUN_MAX_BYTES:
            release.wait(120)  # sends nothing more, holds the connection open
        return chunk

    stuck, fine = Relay((LOOPBACK, peers[0].port), stall), Relay((LOOPBACK, peers[1].port))
    done = threading.Event()
    try:
        entry = dataclasses.replace(entry, port=stuck.port, sources=((LOOPBACK, stuck.port), (LOOPBACK, fine.port)))
        threading.Thread(target=lambda: fetcher.fetch("big.bin", entry) and done.set(), daemon=True).start()
        # The endgame asks the other holder for the stalled runs, and the build ends
        # when they are in: far sooner than the stalled transfer's own deadline.
        wait_until(done.is_set, transfer_deadline(RUN_MAX_BYTES) / 2, "the file, without the stalled holder")
    finally:
        release.set()
        stuck.close()
        fine.close()
    assert (tmp_path / "dst" / "big.bin").read_bytes() == data


@pytest.mark.usefixtures("backend")
def test_an_interrupted_chunked_fetch_resumes_from_what_it_checked(
    tmp_path: Path, empty_receiver, engine, start_tracker
) -> None:
    fetcher, _ = empty_receiver
    data = os.urandom(6 * RUN_MAX_BYTES)
    peers, entry = _holders(tmp_path, engine, start_tracker, data, 1)
    cut = threading.Event()

    def break_once(direction: str, offset: int, chunk: bytes) -> bytes:
        if direction == "down" and offset > 2.5 * RUN_MAX_BYTES and not cut.is_set():
            cut.set()
            relay.cut()  # the holder vanishes mid-file
        return chunk

    relay = Relay((LOOPBACK, peers[0].port), break_once)
    try:  # the chunked fetch fails; what it checked is kept, and the whole fetch resumes after it
        assert fetcher.fetch("big.bin", dataclasses.replace(entry, port=relay.port))
    finally:
        relay.close()
    assert cut.is_set() and (tmp_path / "dst" / "big.bin").read_bytes() == data
    assert len(relay.down) < len(data) + RUN_MAX_BYTES  # not the 2.5 runs sent before the cut again, plus the file


@pytest.mark.usefixtures("backend")
def test_a_new_file_reuses_the_chunks_of_another_file_here(tmp_path: Path, engine, start_tracker) -> None:
    dst = tmp_path / "dst"
    dst.mkdir()
    old = os.urandom(DELTA_MIN_BYTES + (8 << 20))
    (dst / "clone.bin").write_bytes(old)  # e.g. the disk image this one was cloned from
    with _fetcher_into(dst, state=True) as (fetcher, seen):  # an engine's folder: clone.bin is cut at the scan
        new = _edited(old, 0.6, os.urandom(100_000))
        _, entry = _holder(tmp_path, engine, start_tracker, new)
        assert fetcher.fetch("big.bin", _vouched(entry, new, twin_chunk_lengths))
        note = _delta_note(seen, "big.bin")
    assert (dst / "big.bin").read_bytes() == new and (dst / "clone.bin").read_bytes() == old
    assert note is not None, [e.detail for e in seen]
    fetched_kib, reused_mib = note
    assert fetched_kib < 1024 and reused_mib > 11


@pytest.mark.usefixtures("backend")
def test_a_file_deleted_and_brought_back_edited_reuses_the_trashed_copy(tmp_path: Path, start_tracker, engine) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    old = os.urandom(12 << 20)
    (a / "vm.img").write_bytes(old)
    tracker = start_tracker()
    engine(a, tracker.port)
    receiver = engine(b, tracker.port)
    wait_until(lambda: (b / "vm.img").exists() and (b / "vm.img").read_bytes() == old, 30, "the first copy")
    (a / "vm.img").unlink()
    trashed = b / STATE_DIR / TRASH_DIR / "vm.img"
    wait_until(trashed.exists, 30, "the deletion to move b's copy to its trash")
    seen: list[Event] = []
    receiver.events.subscribe(seen.append)
    receiver.folder.expire(30 * 86400)  # what a long run does: the trashed copy's chunk list is kept
    new = _edited(old, 0.4, os.urandom(200_000))
    (a / "disks").mkdir()
    _replace(a / "disks" / "vm.img", new, tmp_path)  # restored from a backup elsewhere, then edited
    wait_until(lambda: (b / "disks" / "vm.img").exists() and (b / "disks" / "vm.img").read_bytes() == new, 30, "it")
    _wait_for_fetched(seen, "disks/vm.img")
    note = _delta_note(seen, "disks/vm.img")
    assert note is not None, [e.detail for e in seen]
    fetched_kib, reused_mib = note
    assert fetched_kib < 1024 and reused_mib > 11  # the trashed copy's chunks were copied, not fetched
    assert trashed.read_bytes() == old  # and it stays in the trash
    assert list(receiver.folder.index.trashed()) == ["vm.img"]
    receiver.folder.expire(0, now=time.time() + 60)  # emptied: its row and its list go too
    assert not trashed.exists() and receiver.folder.index.trashed() == {}


@pytest.mark.usefixtures("backend")
def test_a_partial_left_by_a_killed_fetch_resumes_from_its_checked_part(
    tmp_path: Path, empty_receiver, engine, start_tracker
) -> None:
    fetcher, _ = empty_receiver
    data = os.urandom(6 * RUN_MAX_BYTES)
    peers, entry = _holders(tmp_path, engine, start_tracker, data, 1)
    state = tmp_path / "dst" / STATE_DIR
    state.mkdir(exist_ok=True)
    good = 2 * RUN_MAX_BYTES + 12345  # what a kill -9 left: some checked runs, then allocated zeros
    (state / f"{entry.sha256}{PARTIAL_SUFFIX}").write_bytes(data[:good] + bytes(len(data) - good))
    relay = Relay((LOOPBACK, peers[0].port))
    try:
        assert fetcher.fetch("big.bin", dataclasses.replace(entry, port=relay.port))
    finally:
        relay.close()
    assert (tmp_path / "dst" / "big.bin").read_bytes() == data
    assert len(relay.down) < len(data) - RUN_MAX_BYTES  # the checked stretch was kept, the zeros were not
    assert not (state / f"{entry.sha256}{PARTIAL_SUFFIX}").exists()


@settings(max_examples=25, deadline=None)
@given(st.data())
def test_the_verified_prefix_ends_at_the_first_bad_chunk(tmp_path_factory, data: st.DataObject) -> None:
    lengths = data.draw(st.lists(st.integers(1, 3 << 20), min_size=1, max_size=12))
    content = random.Random(data.draw(st.integers(0, 2**32))).randbytes(sum(lengths))
    offsets = list(itertools.accumulate(lengths, initial=0))
    digests = tuple(hashlib.sha256(content[a:b]).digest() for a, b in itertools.pairwise(offsets))
    chunks = ChunkList(tuple(lengths), digests)
    bad = data.draw(st.none() | st.integers(0, len(content) - 1))
    kept = bytearray(content)
    if bad is not None:
        kept[bad] ^= 0xFF
    path = tmp_path_factory.mktemp("prefix") / "partial"
    path.write_bytes(kept)
    fd = os.open(path, os.O_RDONLY)
    try:
        got = verified_prefix(fd, chunks, len(lengths))
    finally:
        os.close(fd)
    expected = len(lengths) if bad is None else sum(1 for end in offsets[1:] if end <= bad)
    assert got == expected
