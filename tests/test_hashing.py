"""The background SHA-256 gives the same digest as hashing in line."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2psync.local.hashing import BACKGROUND_MIN_BYTES, BackgroundHasher, new_hasher

from .holders import Holder, info_for


@settings(max_examples=50, deadline=None)
@given(st.lists(st.binary(max_size=5000), max_size=20))
def test_same_digest_as_inline(chunks: list[bytes]) -> None:
    background = BackgroundHasher()
    buffer = bytearray(5000)
    for chunk in chunks:  # the caller reuses one buffer, as the receive loop does
        buffer[: len(chunk)] = chunk
        background.update(memoryview(buffer)[: len(chunk)])
    assert background.hexdigest() == hashlib.sha256(b"".join(chunks)).hexdigest()


def test_close_is_idempotent_and_ends_the_thread() -> None:
    background = BackgroundHasher()
    background.update(b"abc")
    background.close()
    background.close()
    assert background.hexdigest() == hashlib.sha256(b"abc").hexdigest()
    assert not background._thread.is_alive()


def test_small_downloads_hash_in_line() -> None:
    assert not isinstance(new_hasher(BACKGROUND_MIN_BYTES - 1), BackgroundHasher)
    big = new_hasher(BACKGROUND_MIN_BYTES)
    assert isinstance(big, BackgroundHasher)
    big.close()


@pytest.mark.usefixtures("backend")
def test_a_large_verified_download(tmp_path: Path, make_peer) -> None:
    data = os.urandom(BACKGROUND_MIN_BYTES + 12345)
    peer = make_peer(tmp_path, 9)
    holder = Holder(lambda conn, line: conn.sendall(b"Content-Length: %d\n" % len(data) + data))
    assert peer.syncfile("big.bin", info_for(data, holder.port)) is True
    bad = Holder(lambda conn, line: conn.sendall(b"Content-Length: %d\n" % len(data) + data[:-1] + b"!"))
    assert peer.syncfile("other.bin", info_for(data, bad.port)) is False
    holder.close()
    bad.close()
    assert (tmp_path / "big.bin").read_bytes() == data
    assert not (tmp_path / "other.bin").exists()
