"""The tracker's directory state, sans-IO."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2psync.errors import ProtocolError
from p2psync.net import is_loopback
from p2psync.protocol import DirectoryEntry, FileInfo, apply_delta, decode_directory, decode_listing
from p2psync.sync import Deletion
from p2psync.tracker.directory import Directory

A, B, C = ("10.0.0.1", 8001), ("10.0.0.2", 8002), ("127.0.0.1", 8003)
SHA1, SHA2 = "1" * 64, "2" * 64


def test_newest_mtime_wins() -> None:
    d = Directory()
    assert d.report(A, [FileInfo("f", 100)])
    assert d.report(B, [FileInfo("f", 200)])
    assert d.entries()["f"] == DirectoryEntry("10.0.0.2", 8002, 200)
    assert not d.report(C, [FileInfo("f", 150)])  # older: nothing changes
    assert d.entries()["f"].port == 8002


def test_a_tie_keeps_the_holder_it_has() -> None:
    d = Directory()
    d.report(A, [FileInfo("f", 100)])
    d.report(B, [FileInfo("f", 100)])
    entry = d.entries()["f"]
    assert (entry.ip, entry.port) == A
    assert entry.sources == (A, B)  # both hold that version


def test_a_peer_leaving_keeps_versions_others_hold() -> None:
    d = Directory()
    d.report(A, [FileInfo("f", 100), FileInfo("only-a", 5)])
    d.report(B, [FileInfo("f", 100)])
    assert d.forget(A)
    assert set(d.entries()) == {"f"}
    assert (d.entries()["f"].ip, d.entries()["f"].port) == B
    assert d.entries()["f"].sources == ()
    assert d.forget(B)
    assert d.entries() == {}


def test_when_the_newest_holder_leaves_the_best_remaining_version_is_listed() -> None:
    d = Directory()
    d.report(A, [FileInfo("f", 100)])
    d.report(B, [FileInfo("f", 200)])
    d.forget(B)
    assert d.entries()["f"].mtime == 100


def test_a_file_dropped_from_a_report_is_dropped() -> None:
    d = Directory()
    d.report(A, [FileInfo("f", 100), FileInfo("g", 1)])
    assert d.report(A, [FileInfo("g", 1)])
    assert set(d.entries()) == {"g"}


def test_different_content_at_the_same_mtime_is_not_a_source() -> None:
    d = Directory()
    d.report(A, [FileInfo("f", 100, 3, SHA2)])
    d.report(B, [FileInfo("f", 100, 3, SHA1)])
    d.report(C, [FileInfo("f", 100, 3, SHA2)])
    d.report(("10.0.0.4", 1), [FileInfo("f", 100)])  # a classic peer: nothing to verify or resume with
    assert d.entries()["f"].sources == (A, C)


def test_a_tie_goes_to_the_larger_hash_whoever_reported_first() -> None:
    """The tie rule is a function of the versions, not of report order."""
    for order in ([A, B], [B, A]):
        d = Directory()
        for peer, digest in zip(order, (SHA1, SHA2), strict=True):
            d.report(peer, [FileInfo("f", 100, 3, digest)])
        assert d.entries()["f"].sha256 == SHA2


def test_a_version_made_from_another_wins_whatever_the_clocks_say() -> None:
    d = Directory()
    d.report(A, [FileInfo("f", 500, 3, SHA1, vector=(("PA", 5),))])
    d.report(B, [FileInfo("f", 100, 3, SHA2, vector=(("PA", 5), ("PB", 1)))])  # an edit of A's, slow clock
    assert d.entries()["f"].sha256 == SHA2


def test_deletions_stay_after_their_peer_leaves_and_hide_what_they_deleted() -> None:
    d = Directory()
    d.report(A, [FileInfo("f", 100, 3, SHA1, vector=(("PA", 1),))])
    assert d.report(B, [], [("f", Deletion(200, SHA1, (("PA", 1),)))])
    assert "f" not in d.entries()  # the only version listed is the one deleted
    d.forget(B)
    assert d.deletions()["f"] == (Deletion(200, SHA1),)
    d.report(C, [FileInfo("f", 300, 3, SHA2, vector=(("PA", 1), ("PC", 1)))])  # an edit after: it wins
    assert d.entries()["f"].sha256 == SHA2
    assert d.expire(200 + d.tombstone_age_s + 1) and d.deletions() == {}


def test_deletions_are_bounded() -> None:
    d = Directory(max_tombstones=100)
    for i in range(500):
        d.report(A, [], [(f"f{i}", Deletion(i, SHA1))])
    kept = d.deletions()
    assert len(kept) <= 110 and "f499" in kept and "f0" not in kept  # the oldest go first


def test_classic_peers_get_only_classic_names_and_no_deletions() -> None:
    d = Directory()
    d.report(A, [FileInfo("a.txt", 1), FileInfo("sub/b.txt", 1), FileInfo("tool.py", 1)], [("gone.txt", Deletion(5))])
    assert set(decode_directory(d.encoded())) == {"a.txt"}
    listing = decode_listing(d.encoded(extended=True))
    assert listing.extended and set(listing.files) == {"a.txt", "sub/b.txt", "tool.py"}
    assert listing.deleted == {"gone.txt": (Deletion(5),)}


def test_the_encoded_reply_is_built_once_per_change() -> None:
    d = Directory()
    d.report(A, [FileInfo("f", 100)])
    first = d.encoded()
    assert d.encoded() is first
    assert not d.report(A, [FileInfo("f", 100)])
    assert d.encoded() is first
    d.report(B, [FileInfo("g", 1)])
    assert d.encoded() is not first
    assert decode_directory(d.encoded()) == d.entries()


def test_loopback_holders_are_aliased_for_remote_peers() -> None:
    d = Directory()
    d.report(C, [FileInfo("f", 1), FileInfo("only-c", 1)])
    d.report(A, [FileInfo("f", 1)])
    remote_view = decode_directory(d.encoded("192.0.2.7"))
    assert remote_view["only-c"].ip == "192.0.2.7"  # the loopback holder, as a remote peer must reach it
    assert remote_view["f"].sources == (A, ("192.0.2.7", 8003))
    assert decode_directory(d.encoded())["only-c"].ip == "127.0.0.1"


def test_the_holder_of_a_tie_is_the_same_whatever_the_report_order() -> None:
    first, second = Directory(), Directory()
    for peer in (A, B, C):
        first.report(peer, [FileInfo("f", 5, 3, "a" * 64)])
    for peer in (C, B, A):
        second.report(peer, [FileInfo("f", 5, 3, "a" * 64)])
    assert first.entries() == second.entries()
    assert (first.entries()["f"].ip, first.entries()["f"].port) == A  # the lowest (ip, port)
    first.forget(A)
    second.forget(A)
    assert first.entries() == second.entries()


def test_is_loopback() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("127.1.2.3") and is_loopback("::1")
    assert is_loopback("::ffff:127.0.0.1")
    assert not is_loopback("10.0.0.1") and not is_loopback("not an ip")


# ------------------------------------------------------------------ delta directories

PEERS = [("10.0.0.1", 8001), ("10.0.0.2", 8002), ("127.0.0.1", 8003)]
NAMES = ["a", "b", "d/c", "d/e"]
OPS = st.lists(
    st.one_of(
        st.tuples(
            st.just("report"),
            st.sampled_from(PEERS),
            st.lists(st.tuples(st.sampled_from(NAMES), st.integers(1, 4)), max_size=4),
        ),
        st.tuples(st.just("forget"), st.sampled_from(PEERS), st.just([])),
        st.tuples(st.just("delete"), st.sampled_from(PEERS), st.lists(st.sampled_from(NAMES), max_size=2)),
        st.tuples(st.just("expire"), st.sampled_from(PEERS), st.just([])),
        st.tuples(st.just("snapshot"), st.sampled_from(PEERS), st.just([])),
    ),
    max_size=25,
)


def _whole(d: Directory, alias: str | None) -> tuple[dict, dict]:
    listing = decode_listing(d.encoded(alias, extended=True))
    return listing.files, listing.deleted


@given(OPS, st.integers(2, 40))
def test_a_delta_applied_to_a_stale_peer_equals_the_whole_directory(ops, max_log: int) -> None:
    d = Directory(max_log=max_log)
    snapshots = []
    clock = 1000
    for op, peer, arg in ops:
        clock += 1
        if op == "report":
            d.report(peer, [FileInfo(n, m, m, str(m) * 64) for n, m in dict(arg).items()])
        elif op == "forget":
            d.forget(peer)
        elif op == "delete":
            d.report(peer, [], [(n, Deletion(clock, str(clock % 9) * 64)) for n in arg])
        elif op == "expire":
            d.tombstone_age_s = 5
            d.expire(clock)
        for alias in (None, "192.0.2.7"):
            if op == "snapshot" or len(snapshots) < 2:
                snapshots.append((alias, decode_listing(d.encoded(alias, extended=True))))
    for alias, stale in snapshots:
        assert stale.generation is not None
        reply = decode_listing(d.encoded(alias, extended=True, since=stale.generation))
        current = apply_delta(stale, reply)
        assert (current.files, current.deleted) == _whole(d, alias)
        assert current.generation == d.token


def test_an_idle_peer_gets_a_few_bytes_and_a_stranger_gets_everything() -> None:
    d = Directory()
    for i, peer in enumerate(PEERS):
        d.report(peer, [FileInfo(f"f{i}-{j}", 100 + j, 10, "a" * 64) for j in range(100)])
    whole = d.encoded(None, extended=True)
    idle = d.encoded(None, extended=True, since=d.token)
    assert len(idle) < 120 < len(whole) // 100  # nothing changed: next to nothing sent
    assert decode_listing(idle).files == {} and decode_listing(idle).since == d.token
    other = Directory()
    assert decode_listing(other.encoded(None, True, since=d.token)).since is None  # another tracker's token
    assert decode_listing(d.encoded(None, True, since="junk.7")).since is None
    assert d.encoded(None, extended=False) == d.encoded(None, extended=False)  # classic replies untouched
    with pytest.raises(ProtocolError):
        decode_listing(b'{"p2psync": 1, "files": {}, "since": "x.1"}\n')  # a delta without its generation
