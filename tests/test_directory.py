"""The tracker's directory state, sans-IO."""

from __future__ import annotations

from p2psync.directory import Directory, is_loopback
from p2psync.protocol import DirectoryEntry, FileInfo, decode_directory

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
    d.report(A, [FileInfo("f", 100, 3, SHA1)])
    d.report(B, [FileInfo("f", 100, 3, SHA2)])
    d.report(C, [FileInfo("f", 100, 3, SHA1)])
    d.report(("10.0.0.4", 1), [FileInfo("f", 100)])  # a classic peer: nothing to verify or resume with
    assert d.entries()["f"].sources == (A, C)


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
    d.report(C, [FileInfo("f", 1)])
    d.report(A, [FileInfo("f", 1)])
    remote_view = decode_directory(d.encoded("192.0.2.7"))
    assert remote_view["f"].ip == "192.0.2.7"
    assert remote_view["f"].sources == (("192.0.2.7", 8003), A)
    assert decode_directory(d.encoded())["f"].ip == "127.0.0.1"


def test_is_loopback() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("127.1.2.3") and is_loopback("::1")
    assert is_loopback("::ffff:127.0.0.1")
    assert not is_loopback("10.0.0.1") and not is_loopback("not an ip")
