"""Members only: the group key on disk, the sans-IO handshake and line tags
(p2psync/protocol/auth.py), and keyed swarms end to end on loopback, on both
backends: members sync; a wrong key, a classic client, an open tracker, a
tampered line, an oversized or a silent handshake get nothing and write nothing."""

from __future__ import annotations

import os
import socket
import stat
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2psync import cli
from p2psync.errors import ConfigError, ProtocolError
from p2psync.local.keyfile import load_key, write_new_key
from p2psync.protocol.auth import HELLO, MAX_HANDSHAKE_LINE, REFUSAL, ClientHandshake, ServerHandshake, new_key

from .classic_peer import recv_line
from .folders import tree
from .loopback import LOOPBACK, wait_until

KEY = new_key()


def shake(client_key: bytes, server_key: bytes, channel: bytes = b"tracker", server_channel: bytes | None = None):
    client = ClientHandshake(client_key, channel)
    server = ServerHandshake(server_key, server_channel or channel)
    reply = server.hello(client.hello().rstrip(b"\n"))
    proof, client_side = client.answer(reply.rstrip(b"\n"))
    return client_side, server.proof(proof.rstrip(b"\n"))


def test_members_shake_hands_and_tag_every_line() -> None:
    client, server = shake(KEY, KEY)
    assert server.open(client.seal(b'{"port": 8001}').rstrip(b"\n")) == b'{"port": 8001}'
    assert client.open(server.seal(b"{}").rstrip(b"\n")) == b"{}"
    assert client.open(b"x" + server.trailer(b"x").rstrip(b"\n")) == b"x"  # a shared buffer, then its tag


def test_a_wrong_key_fails_in_each_direction() -> None:
    with pytest.raises(ProtocolError):  # the server does not hold the client's key: its proof fails
        shake(KEY, new_key())
    client = ClientHandshake(new_key(), b"peer")
    server = ServerHandshake(KEY, b"peer")
    server_line = server.hello(client.hello().rstrip(b"\n"))
    with pytest.raises(ProtocolError):
        client.answer(server_line.rstrip(b"\n"))  # the client refuses a server without its key ...
    honest = ClientHandshake(KEY, b"peer")
    server = ServerHandshake(KEY, b"peer")
    server.hello(honest.hello().rstrip(b"\n"))
    with pytest.raises(ProtocolError):
        server.proof(b"0" * 64)  # ... and the server a client that cannot prove it


def test_a_replayed_or_reflected_handshake_fails() -> None:
    client = ClientHandshake(KEY, b"tracker")
    first = ServerHandshake(KEY, b"tracker")
    proof, _ = client.answer(first.hello(client.hello().rstrip(b"\n")).rstrip(b"\n"))
    again = ServerHandshake(KEY, b"tracker")  # a new connection: a fresh server nonce
    again.hello(client.hello().rstrip(b"\n"))
    with pytest.raises(ProtocolError):
        again.proof(proof.rstrip(b"\n"))  # the recorded proof is for the other nonce
    server = ServerHandshake(KEY, b"tracker")
    mine = server.hello(ClientHandshake(KEY, b"tracker").hello().rstrip(b"\n"))
    reflected = b"P2PSYNC-AUTH/1 tracker " + mine.split(b" ")[1]
    with pytest.raises(ProtocolError):
        ServerHandshake(KEY, b"tracker", nonce=mine.split(b" ")[1]).hello(reflected)  # its own nonce back
    server_proof = mine.rstrip(b"\n").split(b" ")[2]
    with pytest.raises(ProtocolError):
        server.proof(server_proof)  # the server's proof is not a client's


def test_a_proof_for_one_channel_does_not_open_another() -> None:
    with pytest.raises(ProtocolError):
        shake(KEY, KEY, b"tracker", b"peer")


@pytest.mark.parametrize(
    "line",
    [b"", b"P2PSYNC-AUTH/1", b"P2PSYNC-AUTH/1 tracker", b"P2PSYNC-AUTH/1 tracker abc", b"a.txt", b'{"port": 1}'],
)
def test_anything_but_a_handshake_is_refused(line: bytes) -> None:
    with pytest.raises(ProtocolError):
        ServerHandshake(KEY, b"tracker").hello(line)


@given(st.binary(min_size=1, max_size=200), st.data())
def test_any_changed_byte_fails_its_tag(line: bytes, data: st.DataObject) -> None:
    line = line.replace(b"\n", b"")
    client, server = shake(KEY, KEY)
    sealed = bytearray(client.seal(line).rstrip(b"\n"))
    at = data.draw(st.integers(0, len(sealed) - 1))
    sealed[at] ^= data.draw(st.integers(1, 255))
    with pytest.raises(ProtocolError):
        server.open(bytes(sealed))


def test_dropped_reordered_or_replayed_lines_fail() -> None:
    client, server = shake(KEY, KEY)
    first, second = client.seal(b"one").rstrip(b"\n"), client.seal(b"two").rstrip(b"\n")
    with pytest.raises(ProtocolError):
        server.open(second)  # the first was dropped (or they were swapped)
    assert server.open(first) == b"one"
    with pytest.raises(ProtocolError):
        server.open(first)  # replayed
    back = server.seal(b"reply").rstrip(b"\n")
    with pytest.raises(ProtocolError):
        server.open(back)  # a line sent back to its sender


def test_keygen_writes_a_private_key_and_never_overwrites(tmp_path: Path, capsys) -> None:
    path = tmp_path / "group.key"
    assert cli.main(["keygen", str(path)]) == 0
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    key = load_key(str(path))
    assert len(key) == 32 and key.hex() not in capsys.readouterr().out  # the key is never printed
    before = path.read_bytes()
    assert cli.main(["keygen", str(path)]) == 2
    assert path.read_bytes() == before


def test_a_key_others_can_read_is_refused_with_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "group.key"
    write_new_key(str(path))
    secret = path.read_text().strip()
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match=r"chmod 600") as caught:
        load_key(str(path))
    assert secret not in str(caught.value)
    path.write_text("not a key\n")
    os.chmod(path, 0o600)
    with pytest.raises(ConfigError, match="64 hex digits") as caught:
        load_key(str(path))
    assert "not a key" not in str(caught.value)


# ------------------------------------------------------------------ end to end


@pytest.fixture
def keyed(start_tracker):
    def start(key: bytes = KEY, **kwargs: object):
        return start_tracker(group_key=key, **kwargs)

    return start


def member(engine, folder: Path, port: int, key: bytes = KEY):
    return engine(folder, port, group_key=key)


def plant(folder: Path, files: dict[str, bytes]) -> None:
    """Write `files` (relative path -> bytes) into `folder`, making subfolders."""
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)


def refused(sock: socket.socket) -> bytes:
    """Everything the other side sends before it closes (a refusal is one line, then the close)."""
    sock.settimeout(10)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


@pytest.mark.usefixtures("backend")
def test_members_sync_small_and_large_files(tmp_path: Path, keyed, engine) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    files = {f"docs/{i}.txt": os.urandom(3000) for i in range(40)} | {"big.bin": os.urandom(3 << 20)}
    plant(a, files)
    tracker = keyed()
    member(engine, a, tracker.port)
    member(engine, b, tracker.port)
    wait_until(lambda: tree(b) == files, 30, "every file between members")  # pipelined and single fetches


@pytest.mark.usefixtures("backend")
def test_a_wrong_key_gets_nothing_and_gives_nothing(tmp_path: Path, keyed, engine) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    (a / "private.txt").write_text("members only")
    b.mkdir()
    (b / "planted.txt").write_text("from an outsider")
    tracker = keyed()
    member(engine, a, tracker.port)
    outsider = member(engine, b, tracker.port, key=new_key())
    wait_until(lambda: "private.txt" in tracker.directory.entries(), 20, "the member's report")
    wait_until(lambda: outsider.tracker_error is not None, 20, "the outsider to be refused")
    assert "planted.txt" not in tracker.directory.entries()
    assert tree(b) == {"planted.txt": b"from an outsider"} and tree(a) == {"private.txt": b"members only"}


@pytest.mark.usefixtures("backend")
def test_a_classic_client_gets_one_refusal_line(tmp_path: Path, keyed, engine) -> None:
    a = tmp_path / "a"
    a.mkdir()
    (a / "x.txt").write_text("members only")
    tracker = keyed()
    peer = member(engine, a, tracker.port)
    wait_until(lambda: "x.txt" in tracker.directory.entries(), 20, "the member's report")
    with socket.create_connection((LOOPBACK, tracker.port)) as sock:
        sock.sendall(b'{"port": 9999, "files": [{"name": "evil.txt", "mtime": 9999999999}]}\n')
        assert refused(sock) == REFUSAL
    with socket.create_connection((LOOPBACK, peer.port)) as sock:
        sock.sendall(b"x.txt\n")
        assert refused(sock) == REFUSAL  # no Content-Length, no byte of the file
    assert set(tracker.directory.entries()) == {"x.txt"}


def test_a_member_never_talks_to_an_open_tracker(tmp_path: Path, engine) -> None:
    with socket.create_server((LOOPBACK, 0)) as fake:
        (tmp_path / "a").mkdir()
        (tmp_path / "a" / "secret.txt").write_text("never sent")
        member(engine, tmp_path / "a", fake.getsockname()[1])
        conn, _ = fake.accept()
        with conn:
            conn.settimeout(10)
            first = conn.recv(4096)
            conn.sendall(b"{}\n")  # an open (or stripping) tracker answers with a directory
            rest = refused(conn)
    assert first.startswith(HELLO + b" tracker ") and b"secret" not in first + rest
    assert b"{" not in rest  # no Init followed


@pytest.mark.usefixtures("backend")
def test_a_tampered_line_or_a_bad_handshake_is_closed(keyed) -> None:
    tracker = keyed(identify_timeout=1.0)
    with socket.create_connection((LOOPBACK, tracker.port)) as sock:
        hs = ClientHandshake(KEY, b"tracker")
        sock.sendall(hs.hello())
        proof, channel = hs.answer(recv_line(sock)[0])
        sock.sendall(proof)
        sealed = bytearray(channel.seal(b'{"port": 9001, "files": [{"name": "a.txt", "mtime": 5}]}'))
        sealed[12] ^= 1  # one bit of the message changed on the way
        sock.sendall(bytes(sealed))
        assert refused(sock) == b""  # closed, nothing answered
    assert tracker.directory.entries() == {}
    with socket.create_connection((LOOPBACK, tracker.port)) as sock:
        sock.sendall(b"P" * (MAX_HANDSHAKE_LINE + 10))  # no newline, longer than any handshake line
        assert refused(sock) == REFUSAL
    with socket.create_connection((LOOPBACK, tracker.port)) as sock:
        began = time.monotonic()
        assert refused(sock) == b""  # silent: closed at the identify deadline
        assert time.monotonic() - began < 9


@pytest.mark.usefixtures("backend")
def test_a_tampered_request_gets_no_byte_of_the_file(tmp_path: Path, keyed, engine) -> None:
    a = tmp_path / "a"
    a.mkdir()
    (a / "x.txt").write_text("members only")
    tracker = keyed()
    peer = member(engine, a, tracker.port)
    for tamper in (False, True):
        with socket.create_connection((LOOPBACK, peer.port)) as sock:
            hs = ClientHandshake(KEY, b"peer")
            sock.sendall(hs.hello())
            proof, channel = hs.answer(recv_line(sock)[0])
            sock.sendall(proof)
            sealed = bytearray(channel.seal(b"x.txt"))
            if tamper:
                sealed[0] ^= ord("x") ^ ord("y")  # asks for y.txt under x.txt's tag
            sock.sendall(bytes(sealed))
            got = refused(sock)
        if tamper:
            assert b"members only" not in got and b"Content-Length" not in got
        else:  # the untampered request, as a member sends it: a tagged header, the raw bytes
            header, _, body = got.partition(b"\n")
            assert channel.open(header) == b"Content-Length: 12" and body == b"members only"


@pytest.mark.usefixtures("backend")
def test_truncated_handshakes_leave_both_servers_serving(tmp_path: Path, keyed, engine) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    (a / "x.txt").write_text("still served")
    tracker = keyed()
    peer = member(engine, a, tracker.port)
    wait_until(lambda: "x.txt" in tracker.directory.entries(), 20, "the member's report")
    for port in (tracker.port, peer.port):
        with socket.create_connection((LOOPBACK, port)) as sock:
            sock.sendall(ClientHandshake(KEY, b"peer" if port == peer.port else b"tracker").hello()[:20])
        with socket.create_connection((LOOPBACK, port)) as sock:
            hs = ClientHandshake(KEY, b"peer" if port == peer.port else b"tracker")
            sock.sendall(hs.hello())
            recv_line(sock)  # the server's proof, then this client goes away without its own
    member(engine, b, tracker.port)
    wait_until(lambda: tree(b) == {"x.txt": b"still served"}, 20, "a member's sync after the broken ones")


def test_keyed_and_open_swarms_side_by_side_never_mix(tmp_path: Path, start_tracker, engine) -> None:
    keyed_folders = [tmp_path / "k1", tmp_path / "k2"]
    open_folders = [tmp_path / "o1", tmp_path / "o2"]
    for folder in (*keyed_folders, *open_folders):
        folder.mkdir()
        (folder / f"{folder.name}.txt").write_text(folder.name)
    keyed_tracker, open_tracker = start_tracker(group_key=KEY), start_tracker()
    for folder in keyed_folders:
        member(engine, folder, keyed_tracker.port)
    for folder in open_folders:
        engine(folder, open_tracker.port)
    wait_until(lambda: all(len(tree(f)) == 2 for f in (*keyed_folders, *open_folders)), 30, "both swarms in sync")
    assert set(keyed_tracker.directory.entries()) == {"k1.txt", "k2.txt"}
    assert set(open_tracker.directory.entries()) == {"o1.txt", "o2.txt"}
    assert all(set(tree(f)) == {"k1.txt", "k2.txt"} for f in keyed_folders)
