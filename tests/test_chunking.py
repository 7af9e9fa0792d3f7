"""Content-defined chunking (p2psync.chunking): FastCDC with fixed constants, the
same cut points from both backends whether data comes whole or in any pieces,
and the same as pyfastcdc, an independent port of the canonical algorithm."""

from __future__ import annotations

import importlib
import itertools
import random
from types import ModuleType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pyfastcdc import FastCDC

from p2psync.chunking import AVG_CHUNK, MAX_CHUNK, MIN_CHUNK

twin = importlib.import_module("p2psync._twin")
CANONICAL = FastCDC(AVG_CHUNK, min_size=MIN_CHUNK, max_size=MAX_CHUNK, normalized_chunking=1)


def canonical(data: bytes) -> list[int]:
    return [chunk.length for chunk in CANONICAL.cut_buf(data)]


def sample(seed: int, size: int, kind: str) -> bytes:
    """Random bytes, or data with little entropy (runs, a short repeated pattern),
    where cut points are rare and the 256 KiB bound is what cuts."""
    rng = random.Random(seed)
    if kind == "random":
        return rng.randbytes(size)
    if kind == "runs":
        return b"".join(bytes([rng.randrange(256)]) * rng.randrange(1, 5000) for _ in range(size // 2500 + 1))[:size]
    return (rng.randbytes(rng.randrange(1, 64)) * (size // 2 + 1))[:size]


def fed(mod: ModuleType, data: bytes, pieces: list[int]) -> list[int]:
    chunker, lengths, at = mod.Chunker(), [], 0
    for size in itertools.chain(pieces, [len(data)]):
        lengths += chunker.feed(data[at : at + size])
        at += size
        if at >= len(data):
            break
    return lengths + chunker.finish()


sizes = st.one_of(
    st.integers(0, 2 * MIN_CHUNK),  # around the minimum: one chunk
    st.integers(MIN_CHUNK, 2 * MAX_CHUNK),  # one to a few chunks, ends of every kind
    st.integers(2 * MAX_CHUNK, 3 << 20),  # tens of chunks
)


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    size=sizes,
    kind=st.sampled_from(["random", "runs", "pattern"]),
    pieces=st.lists(st.integers(1, 3 * MAX_CHUNK), max_size=40),
)
def test_both_backends_cut_the_same_whole_or_in_pieces(impl: ModuleType, seed, size, kind, pieces) -> None:
    data = sample(seed, size, kind)
    whole = impl.chunk_lengths(data)
    assert sum(whole) == len(data)
    assert all(MIN_CHUNK <= n <= MAX_CHUNK for n in whole[:-1]) and all(0 < n <= MAX_CHUNK for n in whole)
    assert fed(impl, data, pieces) == whole  # a stream is cut exactly as the whole buffer
    assert twin.chunk_lengths(data) == whole  # and both backends agree


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**32), size=st.integers(0, 4 << 20), kind=st.sampled_from(["random", "runs", "pattern"]))
def test_the_cut_points_are_fastcdcs(impl: ModuleType, seed, size, kind) -> None:
    data = sample(seed, size, kind)
    assert impl.chunk_lengths(data) == canonical(data)


def test_edges(impl: ModuleType) -> None:
    assert impl.chunk_lengths(b"") == [] and impl.Chunker().finish() == []
    assert impl.chunk_lengths(b"x" * MIN_CHUNK) == [MIN_CHUNK]
    assert impl.chunk_lengths(bytes(5 * MAX_CHUNK + 7)) == [MAX_CHUNK] * 5 + [7]  # no cut point in zeros
    data = random.Random(7).randbytes(8 << 20)
    lengths = impl.chunk_lengths(memoryview(data))
    assert 0.6 * AVG_CHUNK < len(data) / len(lengths) < 1.4 * AVG_CHUNK  # about the average, normalized
    assert impl.chunk_lengths(bytearray(data)) == lengths


def test_an_edit_moves_only_the_chunks_around_it(impl: ModuleType) -> None:
    """What content-defined chunks are for: bytes inserted in the middle change the
    chunks there; the chunks before and after are the same bytes as before."""
    data = random.Random(11).randbytes(4 << 20)
    edited = data[: 2 << 20] + b"inserted" * 1000 + data[2 << 20 :]

    def chunks(blob: bytes) -> list[bytes]:
        offsets = list(itertools.accumulate(impl.chunk_lengths(blob), initial=0))
        return [blob[a:b] for a, b in itertools.pairwise(offsets)]

    before, after = chunks(data), chunks(edited)
    shared = set(before) & set(after)
    assert len(shared) >= len(before) - 3  # at most the chunk holding the edit and its neighbour change
    assert sum(map(len, shared)) > len(data) - 4 * MAX_CHUNK


def test_feeding_refuses_what_is_not_bytes(impl: ModuleType) -> None:
    with pytest.raises(TypeError):
        impl.Chunker().feed("text")
    with pytest.raises(TypeError):
        impl.chunk_lengths(12)
