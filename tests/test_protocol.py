"""The sans-IO wire protocol: classic bytes pinned, every malformed input refused clearly."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2psync.errors import ProtocolError, TransferError, UnsafeName
from p2psync.paths import safe_name, safe_path
from p2psync.protocol import (
    FEATURES,
    MAX_WAIT_S,
    DirectoryEntry,
    FileInfo,
    FileRequest,
    PeerMessage,
    decode_directory,
    decode_listing,
    decode_peer_message,
    decode_reply,
    decode_request,
    encode_directory,
    encode_header,
    encode_init,
    encode_keepalive,
    encode_listing,
    encode_refusal,
    encode_request,
)
from p2psync.sync import Deletion

SHA = "ab" * 32


def test_init_is_byte_for_byte_classic() -> None:
    assert encode_init(8001, []) == b'{"port": 8001, "files": []}\n'
    classic = json.dumps({"port": 8001, "files": [{"name": "a.txt", "mtime": 1772047595}]}) + "\n"
    assert encode_init(8001, [FileInfo("a.txt", 1772047595)]) == classic.encode()


def test_extensions_ride_in_extra_keys() -> None:
    line = encode_init(8001, [FileInfo("a.txt", 5, size=3, sha256=SHA)])
    assert (
        line
        == b'{"port": 8001, "files": [{"name": "a.txt", "mtime": 5, "size": 3, "sha256": "' + SHA.encode() + b'"}]}\n'
    )
    assert decode_peer_message(line.rstrip(b"\n")) == PeerMessage(8001, (FileInfo("a.txt", 5, 3, SHA),))


def test_keepalive() -> None:
    assert encode_keepalive(8001) == b'{"port": 8001}\n'
    assert decode_peer_message(b'{"port": 8001}') == PeerMessage(8001, None)


def test_classic_peer_message_decodes() -> None:
    msg = decode_peer_message(b'{"port": 8001, "files": [{"name": "x", "mtime": 1772047595.9}]}')
    assert msg == PeerMessage(8001, (FileInfo("x", 1772047595),))  # rounded down


@pytest.mark.parametrize(
    ("line", "complaint"),
    [
        (b"", "not valid JSON"),
        (b"{", "not valid JSON"),
        (b"\xff", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b'{"files": []}', "'port' must be a number"),
        (b'{"port": "8001"}', "'port' must be a number"),
        (b'{"port": true}', "'port' must be a number"),
        (b'{"port": 0}', "out of range"),
        (b'{"port": 70000}', "out of range"),
        (b'{"port": 8001, "files": {}}', "'files' must be a list"),
        (b'{"port": 8001, "files": [1]}', "must be an object"),
        (b'{"port": 8001, "files": [{"mtime": 1}]}', "'name' must be a non-empty string"),
        (b'{"port": 8001, "files": [{"name": "a"}]}', "'mtime' must be a number"),
        (b'{"port": 8001, "files": [{"name": "a", "mtime": -1}]}', "out of range"),
        (b'{"port": 8001, "files": [{"name": "a", "mtime": NaN}]}', "finite"),
        (b'{"port": 8001, "files": [{"name": "a", "mtime": 1, "size": -5}]}', "out of range"),
        (b'{"port": 8001, "files": [{"name": "a", "mtime": 1, "sha256": "xyz"}]}', "64 lowercase hex"),
        (b"[" * 100000, "not valid JSON"),
    ],
)
def test_malformed_peer_messages(line: bytes, complaint: str) -> None:
    with pytest.raises(ProtocolError, match=complaint):
        decode_peer_message(line)


def test_directory_round_trip() -> None:
    entries = {
        "a.txt": DirectoryEntry("127.0.0.1", 8001, 1772047595),
        "b.bin": DirectoryEntry("::1", 8002, 7, size=10, sha256=SHA, sources=(("::1", 8002), ("10.0.0.2", 9000))),
    }
    line = encode_directory(entries)
    assert line.startswith(b'{"a.txt": {"ip": "127.0.0.1", "port": 8001, "mtime": 1772047595}, ')
    assert line.endswith(b"\n")
    assert decode_directory(line.rstrip(b"\n")) == entries
    assert entries["b.bin"].holders() == [("::1", 8002), ("10.0.0.2", 9000)]


def test_classic_directory_decodes() -> None:
    line = b'{"a.txt": {"ip": "127.0.0.1", "port": 8001, "mtime": 1772047595}}'
    assert decode_directory(line) == {"a.txt": DirectoryEntry("127.0.0.1", 8001, 1772047595)}
    assert decode_directory(b"{}") == {}


@pytest.mark.parametrize(
    ("line", "complaint"),
    [
        (b"null", "must be a JSON object"),
        (b'{"a": 1}', "must be an object"),
        (b'{"a": {"port": 1, "mtime": 1}}', "'ip' must be a non-empty string"),
        (b'{"a": {"ip": "x", "port": 1, "mtime": "1"}}', "'mtime' must be a number"),
        (b'{"a": {"ip": "x", "port": 1, "mtime": 1, "sources": [["x"]]}}', "each source must be"),
        (b'{"a": {"ip": "x", "port": 1, "mtime": 1, "sources": 5}}', "'sources' must be a list"),
    ],
)
def test_malformed_directories(line: bytes, complaint: str) -> None:
    with pytest.raises(ProtocolError, match=complaint):
        decode_directory(line)


def test_request_line() -> None:
    assert encode_request("test.txt") == b"test.txt\n"
    assert decode_request(b"test.txt") == FileRequest("test.txt")
    assert decode_request(b"test.txt\r") == FileRequest("test.txt")  # a CRLF client
    assert decode_request("résumé.pdf".encode()) == FileRequest("résumé.pdf")


def test_resume_request_bytes() -> None:
    line = encode_request("big.iso", 1234, SHA)
    assert line == b"big.iso\x001234\x00" + SHA.encode() + b"\n"
    assert decode_request(line[:-1]) == FileRequest("big.iso", 1234, SHA)
    assert encode_request("big.iso", 0, SHA) == b"big.iso\n"  # nothing to resume: the classic form
    with pytest.raises(ValueError):
        encode_request("big.iso", 5)


@pytest.mark.parametrize(
    "line", [b"a\x00", b"a\x00x\x00" + SHA.encode(), b"a\x00-1\x00" + SHA.encode(), b"a\x005\x00nothex", b"a\x005"]
)
def test_malformed_resume_requests(line: bytes) -> None:
    with pytest.raises(ProtocolError, match="bad extended request"):
        decode_request(line)


@given(
    st.integers(0, 10**20 - 1),
    st.text("0123456789abcdef", min_size=64, max_size=64),
    st.booleans(),
    st.one_of(st.none(), st.integers(0, 10**20 - 1)),
    st.booleans(),
)
def test_every_extended_request_round_trips(
    offset: int, sha: str, keep: bool, length: int | None, chunks: bool
) -> None:
    # The pipelined form is read by one match; every other by the full check: the same answer.
    line = encode_request("dir/f.bin", offset, sha, keep, length, chunks)
    classic = not (offset or keep or chunks) and length is None  # then the classic form, no version
    want = FileRequest("dir/f.bin") if classic else FileRequest("dir/f.bin", offset, sha, keep, length, chunks)
    assert decode_request(line[:-1]) == want


@pytest.mark.parametrize(
    "tail",
    [
        b"1" * 21 + b"\x00" + SHA.encode() + b"\x00keep-open",  # an offset past 20 digits
        b"0\x00" + SHA.upper().encode() + b"\x00keep-open",  # the hash in capitals
        b"0\x00" + SHA.encode()[:-1] + b"\x00keep-open",  # 63 digits
        b"0\x00" + SHA.encode() + b"\x00keep-open\x00keep-open",  # a flag twice
        b"0\x00" + SHA.encode() + b"\x00keep-openx",
        b"-0\x00" + SHA.encode() + b"\x00keep-open",
    ],
)
def test_near_misses_of_the_pipelined_request_are_refused(tail: bytes) -> None:
    with pytest.raises(ProtocolError, match="bad extended request"):
        decode_request(b"a.txt\x00" + tail)


@pytest.mark.parametrize(
    "line",
    [
        b"",
        b"..",
        b".",
        b"../etc/passwd",
        b"/etc/passwd",
        b"a/../../b",
        b"a//b",
        b"a/",
        b"a\\b",
        b"C:x",
        b"a\tb",
        b"NUL.txt",
        b"x" * 300,
        b"/".join([b"d"] * 65),
        b"/".join([b"x" * 200] * 21),
    ],
)
def test_unsafe_requests_are_refused(line: bytes) -> None:
    with pytest.raises(UnsafeName):
        decode_request(line)


def test_request_not_utf8() -> None:
    with pytest.raises(ProtocolError, match="not UTF-8"):
        decode_request(b"\xff\xfe")


def test_we_never_request_an_unsafe_name() -> None:
    with pytest.raises(UnsafeName):
        encode_request("../x")


def test_header_and_refusal() -> None:
    assert encode_header(11) == b"Content-Length: 11\n"
    assert decode_reply(b"Content-Length: 11") == 11
    assert decode_reply(b"Content-Length:0") == 0
    assert encode_refusal("no such\nfile") == b"Error: no such file\n"
    with pytest.raises(ValueError):
        encode_header(-1)


@pytest.mark.parametrize(
    ("line", "error"),
    [
        (b"Content-Length: -1", ProtocolError),
        (b"Content-Length: abc", ProtocolError),
        (b"Content-Length: ", ProtocolError),
        (b"Content-Length: 1e9", ProtocolError),
        (b"Content-Length: " + b"9" * 30, ProtocolError),
        (b"Error: file not found", TransferError),
        (b"HTTP/1.1 404", TransferError),
        (b"", TransferError),
    ],
)
def test_bad_replies(line: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        decode_reply(line)


def test_relative_paths_are_requests_too() -> None:
    assert decode_request(b"docs/a.txt") == FileRequest("docs/a.txt")
    assert encode_request("docs/sub/a.txt") == b"docs/sub/a.txt\n"
    assert safe_path("/".join(["d"] * 64)) == "/".join(["d"] * 64)  # as deep as allowed


def test_safe_names() -> None:
    for ok in ["a.txt", ".hidden", "résumé", "x" * 255, "with space", "日本語.txt"]:
        assert safe_name(ok) == ok
    unnormalized = "re\u0301sume\u0301"  # e + combining acute: not NFC
    for bad in ["", ".", "..", "a/b", "a\\b", "a\x01", "a\x7f", "con", "LPT1.txt", "x.", "x ", unnormalized, "é" * 200]:
        with pytest.raises(UnsafeName):
            safe_name(bad)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_give_a_value_or_a_protocol_error(data: bytes) -> None:
    for decode in (decode_peer_message, decode_directory, decode_request, decode_reply):
        with contextlib.suppress(ProtocolError, UnsafeName, TransferError):
            decode(data)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=500, deadline=None)
@given(st.dictionaries(st.sampled_from(["port", "files", "name", "mtime", "ip", "a.txt"]), json_values, max_size=4))
def test_any_json_gives_a_value_or_a_protocol_error(obj: dict) -> None:
    line = json.dumps(obj).encode()
    for decode in (decode_peer_message, decode_directory):
        with contextlib.suppress(ProtocolError):
            decode(line)


def test_keep_open_request_bytes() -> None:
    line = encode_request("a.txt", 0, SHA, keep_open=True)
    assert line == b"a.txt\x000\x00" + SHA.encode() + b"\x00keep-open\n"
    assert decode_request(line[:-1]) == FileRequest("a.txt", 0, SHA, keep_open=True)
    with pytest.raises(ProtocolError, match="bad extended request"):
        decode_request(b"a.txt\x000\x00" + SHA.encode() + b"\x00keep-closed")


def test_long_poll_keepalive_bytes() -> None:
    assert encode_keepalive(8001) == b'{"port": 8001}\n'  # the classic bytes, unchanged
    line = encode_keepalive(8001, wait=25)
    assert line == b'{"port": 8001, "wait": 25}\n'
    assert decode_peer_message(line[:-1]) == PeerMessage(8001, None, 25.0)
    assert decode_peer_message(b'{"port": 8001}') == PeerMessage(8001, None, 0.0)
    for bad in (0, -1, MAX_WAIT_S + 1):
        with pytest.raises(ValueError):
            encode_keepalive(8001, wait=bad)


_KEYS = ["p2psync", "files", "deleted", "features", "vector", "mode", "ip", "port", "mtime", "sha256", "a/b.txt"]


@settings(max_examples=500, deadline=None)
@given(
    st.dictionaries(st.sampled_from(_KEYS), json_values, max_size=5),
    st.dictionaries(st.sampled_from(_KEYS), json_values, max_size=5),
)
def test_any_listing_gives_a_listing_or_a_protocol_error(outer: dict, inner: dict) -> None:
    """An extended reply, whatever is in it, parses to what could be used (and what
    was skipped, named) or raises ProtocolError: never anything else."""
    for obj in (outer, {"p2psync": 1, "files": {"x": inner, "y": outer}, "deleted": {"x": [inner]}}):
        try:
            listing = decode_listing(json.dumps(obj).encode())
        except ProtocolError:
            continue
        assert all(isinstance(e, DirectoryEntry) for e in listing.files.values())
        assert all(isinstance(d, Deletion) for ds in listing.deleted.values() for d in ds)
        assert {n for n, _ in listing.skipped} | set(listing.files) | set(listing.deleted) >= set(listing.files)


_PEER_IDS = st.text(alphabet="ABCDEFGHJKLMNPQRSTUVWXYZ23456789", min_size=1, max_size=7)
_VECTORS = st.dictionaries(_PEER_IDS, st.integers(0, 2**62), max_size=3).map(lambda d: tuple(sorted(d.items())))
_ENTRIES = st.builds(
    DirectoryEntry,
    ip=st.sampled_from(["127.0.0.1", "::1", "10.0.0.2"]),
    port=st.integers(1, 65535),
    mtime=st.integers(0, 2**40),
    size=st.none() | st.integers(0, 2**50),
    sha256=st.none() | st.text(alphabet="0123456789abcdef", min_size=64, max_size=64),
    mode=st.none() | st.integers(0, 0o777),
    vector=_VECTORS,
)
_DELETIONS = st.builds(
    Deletion,
    time=st.integers(0, 2**40),
    sha256=st.none() | st.text(alphabet="0123456789abcdef", min_size=64, max_size=64),
    vector=_VECTORS,
)
_PATHS = st.sampled_from(["a.txt", "docs/a.txt", "d/e/f.bin", "ü.txt"])


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(_PATHS, _ENTRIES, max_size=4), st.dictionaries(_PATHS, st.lists(_DELETIONS, min_size=1, max_size=3))
)
def test_listings_round_trip(entries: dict, deleted: dict) -> None:
    listing = decode_listing(encode_listing(entries, deleted, FEATURES))
    assert listing.extended and listing.features == FEATURES and listing.skipped == ()
    assert listing.files == entries
    assert {p: [(d, d.vector) for d in ds] for p, ds in listing.deleted.items()} == {
        p: [(d, d.vector) for d in ds] for p, ds in deleted.items()
    }
    assert all(listing.files[p].vector == e.vector for p, e in entries.items())


@settings(max_examples=300, deadline=None)
@given(st.lists(st.builds(FileInfo, name=_PATHS, mtime=st.integers(0, 2**40), vector=_VECTORS), max_size=4))
def test_inits_round_trip(files: list[FileInfo]) -> None:
    message = decode_peer_message(encode_init(8001, files, FEATURES, [("gone.txt", Deletion(5, None, (("P", 1),)))]))
    assert message.files == tuple(files) and message.features == FEATURES
    assert [f.vector for f in message.files] == [f.vector for f in files]
    assert message.deleted == (("gone.txt", Deletion(5)),) and message.deleted[0][1].vector == (("P", 1),)
