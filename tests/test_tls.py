"""Members only, encrypted (`--tls`): the certificate every member derives from the
group key, TLS 1.3 only, and keyed TLS swarms end to end on loopback, on both
backends: members sync and nothing readable crosses the wire; another key, a
client in clear, a member without --tls, a rewriting proxy, altered records
and a stalled handshake get nothing and write nothing."""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from p2psync import tls
from p2psync.errors import ProtocolError, TransferError
from p2psync.membership import client_handshake, wrap_client
from p2psync.protocol import FEATURES, FileInfo, decode_listing, encode_init
from p2psync.protocol.auth import REFUSAL, ClientHandshake, new_key
from p2psync.transfer import Buffer, receive_body, request

from .loopback import LOOPBACK, Relay, in_thread, wait_until
from .test_membership import plant, refused, tree

KEY = new_key()


def test_every_member_derives_the_same_certificate() -> None:
    cert_pem, key_pem = tls.certificate(KEY)
    assert tls.certificate(KEY) == (cert_pem, key_pem)  # byte for byte: Ed25519 signs deterministically
    assert tls.certificate(new_key())[0] != cert_pem
    cert = x509.load_pem_x509_certificate(cert_pem)
    assert isinstance(cert.public_key(), Ed25519PublicKey)
    assert cert.issuer == cert.subject  # self-signed: the swarm's own trust anchor
    assert KEY.hex().encode() not in cert_pem + key_pem  # the group key is not the TLS key


def _pair(client: ssl.SSLContext, server: ssl.SSLContext) -> tuple[object, object]:
    """A TLS handshake over a socket pair: (client result, server result); each an
    SSLSocket or the exception it raised."""
    a, b = socket.socketpair()
    a.settimeout(10)
    b.settimeout(10)

    def serve() -> object:
        try:
            return server.wrap_socket(b, server_side=True)
        except (OSError, ssl.SSLError) as exc:
            return exc

    join = in_thread(serve)
    try:
        got: object = client.wrap_socket(a, server_hostname=tls.SERVER_NAME)
    except (OSError, ssl.SSLError) as exc:
        got = exc
        a.close()
    return got, join()


def test_tls_1_3_only_and_both_sides_prove_the_certificate() -> None:
    ours = tls.Contexts(KEY)
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.maximum_version = ssl.TLSVersion.TLSv1_2
    old.check_hostname, old.verify_mode = False, ssl.CERT_NONE
    client, server = _pair(old, ours.server)
    assert isinstance(client, ssl.SSLError) and isinstance(server, ssl.SSLError)  # no TLS 1.2, ever
    anonymous = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # TLS 1.3, trusts the swarm, has no certificate
    anonymous.load_verify_locations(cadata=tls.certificate(KEY)[0].decode())
    client, server = _pair(anonymous, ours.server)
    assert isinstance(server, ssl.SSLError)  # the server wants the client's certificate too
    client, server = _pair(ours.client, ours.server)
    assert isinstance(client, ssl.SSLSocket) and client.version() == "TLSv1.3"
    assert client.getpeercert(binary_form=True) == ours.certificate
    client.close()


def tls_member(engine, folder: Path, port: int, key: bytes = KEY, use_tls: bool = True):
    return engine(folder, port, group_key=key, tls=use_tls)


@pytest.fixture
def tls_tracker(start_tracker):
    def start(key: bytes = KEY, **kwargs: object):
        return start_tracker(group_key=key, use_tls=True, **kwargs)

    return start


@pytest.mark.usefixtures("backend")
def test_members_sync_over_tls_and_the_tracker_line_is_unreadable(tmp_path: Path, tls_tracker, engine) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    files = {f"docs/note-{i}.txt": os.urandom(3000) for i in range(30)} | {"big-archive.bin": os.urandom(3 << 20)}
    plant(a, files)
    tracker = tls_tracker()
    relay = Relay((LOOPBACK, tracker.port))  # records the tracker lines of both members
    try:
        tls_member(engine, a, relay.port)
        tls_member(engine, b, relay.port)
        wait_until(lambda: tree(b) == files, 30, "every file between TLS members")  # pipelined and single
    finally:
        relay.close()
    wire = bytes(relay.up + relay.down)
    assert len(wire) > 1000 and b"note-" not in wire and b"big-archive" not in wire and b"P2PSYNC-AUTH" not in wire


def _fetch_over(port: int, name: str, out: Path, key: bytes = KEY) -> int:
    """What a TLS member does to fetch `name` from the holder on `port`: TLS, the
    group-key handshake, one request, the body into `out`."""
    sock = wrap_client(socket.create_connection((LOOPBACK, port), timeout=10), key, True)
    with sock, open(out, "wb") as file:
        channel = client_handshake(sock, key, b"peer")
        length, reader = request(sock, name, channel=channel)
        return receive_body(sock, file.fileno(), length, reader)


@pytest.mark.usefixtures("backend")
def test_file_bodies_cross_the_wire_encrypted(tmp_path: Path, tls_tracker, engine) -> None:
    a = tmp_path / "a"
    a.mkdir()
    small, large = b"small and secret " * 100, b"large and secret " * 200_000  # one reply in one piece; streamed
    (a / "small.txt").write_bytes(small)
    (a / "large.txt").write_bytes(large)
    peer = tls_member(engine, a, tls_tracker().port)
    for name, data in (("small.txt", small), ("large.txt", large)):
        relay = Relay((LOOPBACK, peer.port))
        try:
            assert _fetch_over(relay.port, name, tmp_path / name) == len(data)
        finally:
            relay.close()
        assert (tmp_path / name).read_bytes() == data
        assert len(relay.down) > len(data) and b"and secret" not in relay.down and b"Content-Length" not in relay.down


@pytest.mark.usefixtures("backend")
def test_a_changed_record_ends_the_transfer(tmp_path: Path, tls_tracker, engine) -> None:
    a = tmp_path / "a"
    a.mkdir()
    (a / "large.bin").write_bytes(os.urandom(2 << 20))
    peer = tls_member(engine, a, tls_tracker().port)

    def flip(direction: str, offset: int, data: bytes) -> bytes:
        at = 1_000_000 - offset  # one bit, well inside the body
        if direction != "down" or not 0 <= at < len(data):
            return data
        return data[:at] + bytes([data[at] ^ 1]) + data[at + 1 :]

    relay = Relay((LOOPBACK, peer.port), flip)
    try:
        with pytest.raises(TransferError, match="receive failed"):
            _fetch_over(relay.port, "large.bin", tmp_path / "got.bin")
    finally:
        relay.close()
    assert _fetch_over(peer.port, "large.bin", tmp_path / "again.bin") == 2 << 20  # and it still serves


@pytest.mark.usefixtures("backend")
def test_another_key_gets_nothing_and_gives_nothing(tmp_path: Path, tls_tracker, engine) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    (a / "private.txt").write_text("members only")
    b.mkdir()
    (b / "planted.txt").write_text("from an outsider")
    tracker = tls_tracker()
    peer = tls_member(engine, a, tracker.port)
    outsider = tls_member(engine, b, tracker.port, key=new_key())
    wait_until(lambda: "private.txt" in tracker.directory.entries(), 20, "the member's report")
    wait_until(lambda: outsider.tracker_error is not None, 20, "the outsider to be refused")
    began = time.monotonic()
    with pytest.raises(ProtocolError):
        _fetch_over(peer.port, "private.txt", tmp_path / "stolen.txt", key=new_key())
    assert time.monotonic() - began < 9  # refused at the TLS handshake, not at a deadline
    assert (tmp_path / "stolen.txt").read_bytes() == b""
    assert set(tracker.directory.entries()) == {"private.txt"}
    assert tree(b) == {"planted.txt": b"from an outsider"} and tree(a) == {"private.txt": b"members only"}


@pytest.mark.usefixtures("backend")
def test_clients_in_clear_get_one_refusal_line(tmp_path: Path, tls_tracker, engine) -> None:
    a = tmp_path / "a"
    a.mkdir()
    (a / "x.txt").write_text("members only")
    tracker = tls_tracker()
    peer = tls_member(engine, a, tracker.port)
    wait_until(lambda: "x.txt" in tracker.directory.entries(), 20, "the member's report")
    for port, first in (
        (tracker.port, b'{"port": 9999, "files": [{"name": "evil.txt", "mtime": 9999999999}]}\n'),  # classic
        (tracker.port, ClientHandshake(KEY, b"tracker").hello()),  # a member without --tls
        (peer.port, b"x.txt\n"),
        (peer.port, ClientHandshake(KEY, b"peer").hello()),
    ):
        with socket.create_connection((LOOPBACK, port)) as sock:
            sock.sendall(first)
            assert refused(sock) == REFUSAL
    assert set(tracker.directory.entries()) == {"x.txt"}


@pytest.mark.usefixtures("backend")
def test_with_and_without_tls_members_never_talk(tmp_path: Path, start_tracker, tls_tracker, engine) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    (a / "a.txt").write_text("a")
    b.mkdir()
    (b / "b.txt").write_text("b")
    clear, encrypted = start_tracker(group_key=KEY), tls_tracker()
    with_tls = tls_member(engine, a, clear.port)  # a TLS member, a keyed tracker without TLS
    without = tls_member(engine, b, encrypted.port, use_tls=False)  # and the other way round
    wait_until(lambda: with_tls.tracker_error is not None and without.tracker_error is not None, 20, "both refused")
    assert clear.directory.entries() == {} and encrypted.directory.entries() == {}
    assert tree(a) == {"a.txt": b"a"} and tree(b) == {"b.txt": b"b"}


@pytest.mark.usefixtures("backend")
def test_a_proxy_that_rewrites_the_handshake_gets_no_report_through(tmp_path: Path, tls_tracker, engine) -> None:
    tracker = tls_tracker()

    def rewrite_server_hello(direction: str, offset: int, data: bytes) -> bytes:
        at = 60 - offset  # inside the ServerHello: the server's random, say
        if direction != "down" or not 0 <= at < len(data):
            return data
        return data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1 :]

    def strip_to_clear(direction: str, offset: int, data: bytes) -> bytes:
        return b'{"port": 1}\n' if direction == "up" and offset == 0 else data  # TLS stripped for a clear hello

    for rewrite in (rewrite_server_hello, strip_to_clear):
        a = tmp_path / rewrite.__name__
        a.mkdir()
        (a / "secret.txt").write_text("never listed")
        relay = Relay((LOOPBACK, tracker.port), rewrite)
        try:
            peer = tls_member(engine, a, relay.port)
            wait_until(lambda p=peer: p.tracker_error is not None, 20, "the member to refuse the proxy")
            assert tracker.directory.entries() == {}
            assert b"secret" not in relay.up
        finally:
            relay.close()


@pytest.mark.usefixtures("backend")
def test_a_stalled_tls_handshake_is_cut_and_the_tracker_serves_on(tmp_path: Path, tls_tracker, engine) -> None:
    tracker = tls_tracker(identify_timeout=1.0)
    with socket.create_connection((LOOPBACK, tracker.port)) as sock:
        sock.sendall(b"\x16\x03\x01\x02")  # a TLS record begins, and never goes on
        began = time.monotonic()
        assert refused(sock) == b""
        assert time.monotonic() - began < 9
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    (a / "x.txt").write_text("still served")
    tls_member(engine, a, tracker.port)
    tls_member(engine, b, tracker.port)
    wait_until(lambda: tree(b) == {"x.txt": b"still served"}, 20, "members' sync after the stalled one")


def test_tls_without_a_key_is_one_line_and_exit_2(tmp_path: Path) -> None:
    for command in (["sync", str(tmp_path / "f"), "--tracker", "127.0.0.1:9"], ["tracker", "--port", "0"]):
        result = subprocess.run(
            [sys.executable, "-m", "p2psync.cli", *command, "--tls"], capture_output=True, text=True, timeout=30
        )
        assert result.returncode == 2, result.stderr
        assert "--secret" in result.stderr and "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


def test_a_large_report_and_directory_cross_the_tls_tracker_whole(tls_tracker) -> None:
    """Megabytes each way through the tracker's non-blocking TLS: records taken whole
    on the way in, writes retried until the whole directory is out."""
    tracker = tls_tracker()
    files = [FileInfo(f"folder-{i // 1000}/file-{i:06}.txt", 1_700_000_000 + i, 10, "ab" * 32) for i in range(40_000)]
    sock = wrap_client(socket.create_connection((LOOPBACK, tracker.port), timeout=20), KEY, True)
    with sock:
        channel = client_handshake(sock, KEY, b"tracker")
        line = encode_init(9001, files, features=FEATURES)
        assert len(line) > 4 << 20
        sock.sendall(channel.seal(line.rstrip(b"\n")))
        reader = Buffer(sock, 64 * 1024, 64 << 20)
        listing = decode_listing(channel.open(reader.read_line()))
    assert len(listing.files) == len(files) == len(tracker.directory.entries())
